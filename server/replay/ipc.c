/* ipc.c — CUDA IPC between the sessions of one lease on this node (DDP and NCCL: one process per GPU, each its own
 * session and worker process).
 *
 * The client never sees a real handle. What it gets is a fargpu token (64 bytes, the size of CUipcMemHandle and
 * CUipcEventHandle): a magic, a random 128-bit id, the size and the device. The real handle goes to the node's
 * IPC broker (server/ipc_broker.py) under that id, over this worker's own socket; a worker asked to open a token
 * gets the real handle from the broker, which answers only workers of the lease that exported it. So a token is
 * worth nothing to a session of another lease (refused, and the broker logs it), and a made-up id names nothing.
 *
 *  memory   cuIpcGetMemHandle: the session's device memory is VMM memory (memory.c, created with a POSIX file
 *           descriptor as its shareable handle type), so the export is cuMemExportToShareableHandle's descriptor,
 *           passed to the broker with SCM_RIGHTS. cuIpcOpenMemHandle imports it (cuMemImportFromShareableHandle),
 *           reserves an address range, maps it and grants the current device (and the memory's own device, when
 *           they differ) read-write access; it returns the allocation's base, as the driver does. Opening the same
 *           token again returns the same address (counted); cuIpcCloseMemHandle unmaps at the last close. Memory
 *           opened this way counts against the exporter's quota only, and copies may name it (fgs_ipc_range_ok).
 *  events   cuIpcGetEventHandle / cuIpcOpenEventHandle: the driver's own event handle bytes travel through the
 *           broker (an event handle is no descriptor); the opened event is one of the session's events.
 *  VMM      cuMemExportToShareableHandle (POSIX file descriptor type) / cuMemImportFromShareableHandle: as memory,
 *           on the application's own VMM handles (vmm.c); the client stub turns the token into a real descriptor
 *           of the client process (client_stub/ipc.c), which the application passes to its peers as it likes.
 * A session that has exported or opened IPC memory is never paged out or parked: another process maps that memory
 * and would not follow it to a new place. Freeing an exported allocation withdraws its token (new opens fail;
 * processes that opened it keep their mapping, as with the driver). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define TOKEN_MEM "FGIPCMEM"
#define TOKEN_EVT "FGIPCEVT"
#define TOKEN_VMM "FGIPCVMM"
#define OP_EXPORT 1
#define OP_IMPORT 2
#define OP_DROP 3
#define KIND_MEM 1
#define KIND_EVENT 2
#define BROKER_TIMEOUT_MS 10000
#define MAX_REASON 240

typedef struct __attribute__((packed)) {
    uint8_t op, kind;
    uint16_t reserved;
    int32_t dev;
    uint8_t id[16];
    uint64_t size;
    uint8_t payload[64];
} broker_msg; /* server/ipc_broker.py: MSG */

typedef struct {
    char magic[8];
    uint8_t id[16];
    uint64_t size;
    int32_t dev;
    uint8_t zero[28];
} token; /* what the client holds: 64 bytes */

_Static_assert(sizeof(broker_msg) == 96, "the broker's message layout");
_Static_assert(sizeof(token) == 64, "a token is the size of a CUDA IPC handle");

typedef struct {
    CUdeviceptr ptr; /* the exported allocation (memory.c) */
    uint8_t id[16];
} exported;

typedef struct {
    uint8_t id[16];
    CUdeviceptr ptr;
    size_t size;
    CUmemGenericAllocationHandle handle;
    unsigned refs;
} opened;

static int g_fd = -1; /* one worker serves one session */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static exported *g_exp;
static size_t g_nexp, g_capexp;
static opened *g_open;
static size_t g_nopen, g_capopen;

FGS_EXPORT void fgs_set_ipc(fgs_session *S, int fd) {
    (void)S;
    g_fd = fd;
}

static CUresult no_broker(fgs_session *S, const char *call) {
    static int told;
    if (!told++) fgs_log(S, "%s: this worker has no IPC broker (not started by a node agent): CUDA_ERROR_NOT_SUPPORTED", call);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* One request, one reply; with fd_out >= 0 a descriptor goes along; *fd_in receives one that comes back. */
static int ask(broker_msg *m, int fd_out, int *fd_in, char *why, size_t whylen) {
    if (fd_in) *fd_in = -1;
    struct iovec iov = {m, sizeof *m};
    union {
        struct cmsghdr h;
        char buf[CMSG_SPACE(sizeof(int))];
    } ctl;
    memset(&ctl, 0, sizeof ctl);
    struct msghdr mh = {0};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (fd_out >= 0) {
        mh.msg_control = ctl.buf;
        mh.msg_controllen = sizeof ctl.buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd_out, sizeof fd_out);
    }
    ssize_t n;
    do n = sendmsg(g_fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof *m) {
        snprintf(why, whylen, "the node's IPC broker is gone");
        return -1;
    }
    struct pollfd p = {g_fd, POLLIN, 0};
    int pr;
    do pr = poll(&p, 1, BROKER_TIMEOUT_MS);
    while (pr < 0 && errno == EINTR);
    if (pr <= 0) {
        snprintf(why, whylen, "the node's IPC broker did not answer within %d s", BROKER_TIMEOUT_MS / 1000);
        return -1;
    }
    char buf[sizeof(broker_msg) + MAX_REASON + 1];
    struct iovec riov = {buf, sizeof buf - 1};
    memset(&ctl, 0, sizeof ctl);
    struct msghdr rh = {0};
    rh.msg_iov = &riov;
    rh.msg_iovlen = 1;
    rh.msg_control = ctl.buf;
    rh.msg_controllen = sizeof ctl.buf;
    do n = recvmsg(g_fd, &rh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    int got = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&rh); c; c = CMSG_NXTHDR(&rh, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(sizeof(int)))
            memcpy(&got, CMSG_DATA(c), sizeof got);
    if (n < (ssize_t)sizeof(broker_msg) || (rh.msg_flags & MSG_CTRUNC)) {
        if (got >= 0) close(got);
        snprintf(why, whylen, "the node's IPC broker sent a malformed answer");
        return -1;
    }
    broker_msg *reply = (broker_msg *)(void *)buf;
    if (reply->op != 0) {
        buf[n] = 0;
        snprintf(why, whylen, "%s", n > (ssize_t)sizeof(broker_msg) ? buf + sizeof(broker_msg) : "refused");
        if (got >= 0) close(got);
        return 1;
    }
    memcpy(m, reply, sizeof *m);
    if (fd_in) *fd_in = got;
    else if (got >= 0) close(got);
    return 0;
}

static void new_id(uint8_t id[16]) {
    size_t have = 0;
    while (have < 16) {
        ssize_t k = getrandom(id + have, 16 - have, 0);
        if (k > 0) have += (size_t)k;
        else if (errno != EINTR) abort(); /* no randomness: a guessable id must never be handed out */
    }
}

static void put_token(fg_writer *out, const char *magic, const uint8_t id[16], uint64_t size, int dev) {
    token t;
    memset(&t, 0, sizeof t);
    memcpy(t.magic, magic, 8);
    memcpy(t.id, id, 16);
    t.size = size;
    t.dev = dev;
    fg_put(out, &t, sizeof t);
}

/* The descriptor of a memory export travels to the broker; ours is closed either way. */
static CUresult export_fd(fgs_session *S, int fd, int kind, int dev, uint64_t size, const void *payload, uint8_t id[16]) {
    broker_msg m;
    memset(&m, 0, sizeof m);
    m.op = OP_EXPORT;
    m.kind = (uint8_t)kind;
    m.dev = dev;
    m.size = size;
    new_id(m.id);
    if (payload) memcpy(m.payload, payload, 64);
    char why[MAX_REASON + 1];
    int rc = ask(&m, fd, NULL, why, sizeof why);
    if (fd >= 0) close(fd);
    if (rc != 0) {
        fgs_log(S, "CUDA IPC export refused: %s", why);
        return rc < 0 ? CUDA_ERROR_OPERATING_SYSTEM : CUDA_ERROR_INVALID_VALUE;
    }
    memcpy(id, m.id, 16);
    return CUDA_SUCCESS;
}

/* Asks the broker for what `t` names (kind); the memory's descriptor (kind MEM) in *fd. */
static CUresult import(fgs_session *S, const token *t, int kind, broker_msg *m, int *fd) {
    memset(m, 0, sizeof *m);
    m->op = OP_IMPORT;
    m->kind = (uint8_t)kind;
    memcpy(m->id, t->id, 16);
    char why[MAX_REASON + 1];
    int rc = ask(m, -1, fd, why, sizeof why);
    if (rc != 0) {
        fgs_log(S, "CUDA IPC open refused: %s", why);
        return rc < 0 ? CUDA_ERROR_OPERATING_SYSTEM : CUDA_ERROR_INVALID_VALUE;
    }
    if (kind == KIND_MEM && (!fd || *fd < 0)) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

static int take_token(fg_reader *r, token *t, const char *magic) {
    const uint8_t *b = fg_take(r, sizeof *t);
    if (r->failed) return -1;
    memcpy(t, b, sizeof *t);
    return memcmp(t->magic, magic, 8) == 0 ? 0 : 1;
}

/* ---- memory ---- */

CUresult fgs_cuIpcGetMemHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t p = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (g_fd < 0) return no_broker(S, "cuIpcGetMemHandle");
    if (!S->api->cuMemExportToShareableHandle) return fgs_missing(S, "cuMemExportToShareableHandle");
    if (fgs_mempool_holds(S, p)) return CUDA_ERROR_INVALID_VALUE; /* pool memory is not legacy-IPC capable */
    fgs_alloc *a = NULL;
    for (size_t i = 0; i < S->n_allocs && !a; i++)
        if (!S->allocs[i].client_vmm && p >= S->allocs[i].ptr && p - S->allocs[i].ptr < S->allocs[i].size)
            a = &S->allocs[i];
    if (!a || !a->handle) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_nexp; i++)
        if (g_exp[i].ptr == a->ptr) {
            put_token(out, TOKEN_MEM, g_exp[i].id, a->mapped, a->dev);
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    CUresult res = CUDA_SUCCESS;
    if (g_nexp == g_capexp) {
        size_t cap = g_capexp ? g_capexp * 2 : 16;
        exported *ne = (exported *)realloc(g_exp, cap * sizeof *ne);
        if (!ne) res = CUDA_ERROR_OUT_OF_MEMORY;
        else {
            g_exp = ne;
            g_capexp = cap;
        }
    }
    int fd = -1;
    if (res == CUDA_SUCCESS)
        res = S->api->cuMemExportToShareableHandle(&fd, a->handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    uint8_t id[16];
    if (res == CUDA_SUCCESS) res = export_fd(S, fd, KIND_MEM, a->dev, a->mapped, NULL, id);
    if (res == CUDA_SUCCESS) {
        g_exp[g_nexp].ptr = a->ptr;
        memcpy(g_exp[g_nexp].id, id, 16);
        g_nexp++;
        put_token(out, TOKEN_MEM, id, a->mapped, a->dev);
    }
    pthread_mutex_unlock(&g_mu);
    return res;
}

/* Maps imported memory into a fresh address range, readable and writable from `devs` (bits). */
static CUresult map_imported(fgs_session *S, CUmemGenericAllocationHandle h, size_t size, uint64_t devs,
                             CUdeviceptr *at) {
    CUdeviceptr p = 0;
    CUresult res = S->api->cuMemAddressReserve(&p, size, 0, 0, 0);
    if (res != CUDA_SUCCESS) return res;
    res = S->api->cuMemMap(p, size, 0, h, 0);
    if (res != CUDA_SUCCESS) {
        S->api->cuMemAddressFree(p, size);
        return res;
    }
    CUmemAccessDesc d[64];
    size_t n = 0;
    for (int dev = 0; dev < 64; dev++)
        if (devs >> dev & 1u) {
            memset(&d[n], 0, sizeof d[n]);
            d[n].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
            d[n].location.id = dev;
            d[n].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            n++;
        }
    res = S->api->cuMemSetAccess(p, size, d, n);
    if (res != CUDA_SUCCESS) {
        S->api->cuMemUnmap(p, size);
        S->api->cuMemAddressFree(p, size);
        return res;
    }
    *at = p;
    return CUDA_SUCCESS;
}

CUresult fgs_cuIpcOpenMemHandle_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    token t;
    int bad = take_token(r, &t, TOKEN_MEM);
    uint32_t flags = fg_get_u32(r);
    if (r->failed || bad < 0) return FGS_PROTOCOL_ERROR;
    if (bad) return CUDA_ERROR_INVALID_VALUE;
    (void)flags; /* CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS: the mapping is reachable from both devices anyway */
    if (g_fd < 0) return no_broker(S, "cuIpcOpenMemHandle");
    if (!S->api->cuMemImportFromShareableHandle) return fgs_missing(S, "cuMemImportFromShareableHandle");
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_nopen; i++)
        if (memcmp(g_open[i].id, t.id, 16) == 0) {
            g_open[i].refs++;
            fg_put_u64(out, g_open[i].ptr);
            fg_put_u64(out, g_open[i].size);
            pthread_mutex_unlock(&g_mu);
            return CUDA_SUCCESS;
        }
    CUresult res = CUDA_SUCCESS;
    if (g_nopen == g_capopen) {
        size_t cap = g_capopen ? g_capopen * 2 : 16;
        opened *no = (opened *)realloc(g_open, cap * sizeof *no);
        if (!no) res = CUDA_ERROR_OUT_OF_MEMORY;
        else {
            g_open = no;
            g_capopen = cap;
        }
    }
    broker_msg m;
    int fd = -1;
    if (res == CUDA_SUCCESS) res = import(S, &t, KIND_MEM, &m, &fd);
    CUmemGenericAllocationHandle h = 0;
    if (res == CUDA_SUCCESS)
        res = S->api->cuMemImportFromShareableHandle(&h, (void *)(intptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (fd >= 0) close(fd);
    CUdevice cur = 0;
    if (res == CUDA_SUCCESS) res = S->api->cuCtxGetDevice(&cur);
    uint64_t devs = 0;
    if (cur >= 0 && cur < 64) devs |= 1ull << cur;
    if (m.dev >= 0 && m.dev < 64) devs |= 1ull << m.dev;
    CUdeviceptr p = 0;
    if (res == CUDA_SUCCESS && m.size > SIZE_MAX) res = CUDA_ERROR_INVALID_VALUE;
    if (res == CUDA_SUCCESS) res = map_imported(S, h, (size_t)m.size, devs, &p);
    if (res != CUDA_SUCCESS && h) S->api->cuMemRelease(h);
    if (res == CUDA_SUCCESS) {
        opened *o = &g_open[g_nopen++];
        memcpy(o->id, t.id, 16);
        o->ptr = p;
        o->size = (size_t)m.size;
        o->handle = h;
        o->refs = 1;
        fg_put_u64(out, p);
        fg_put_u64(out, m.size);
    }
    pthread_mutex_unlock(&g_mu);
    return res;
}

static void unmap_opened(fgs_session *S, opened *o) {
    S->api->cuMemUnmap(o->ptr, o->size);
    S->api->cuMemRelease(o->handle);
    S->api->cuMemAddressFree(o->ptr, o->size);
}

CUresult fgs_cuIpcCloseMemHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t p = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    pthread_mutex_lock(&g_mu);
    CUresult res = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < g_nopen; i++)
        if (g_open[i].ptr == p) {
            if (--g_open[i].refs == 0) {
                S->api->cuCtxSynchronize(); /* work that may still use it */
                unmap_opened(S, &g_open[i]);
                g_open[i] = g_open[--g_nopen];
            }
            res = CUDA_SUCCESS;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    return res;
}

int fgs_ipc_range_ok(fgs_session *S, uint64_t p, uint64_t n) {
    (void)S;
    int ok = 0;
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_nopen && !ok; i++)
        ok = p >= g_open[i].ptr && p - g_open[i].ptr <= g_open[i].size && n <= g_open[i].size - (p - g_open[i].ptr);
    pthread_mutex_unlock(&g_mu);
    return ok;
}

int fgs_ipc_active(fgs_session *S) {
    (void)S;
    pthread_mutex_lock(&g_mu);
    int any = g_nexp > 0 || g_nopen > 0;
    pthread_mutex_unlock(&g_mu);
    return any || (S->vmm && fgs_vmm_shared(S));
}

void fgs_ipc_forget(fgs_session *S, uint64_t ptr) {
    pthread_mutex_lock(&g_mu);
    for (size_t i = 0; i < g_nexp; i++)
        if (g_exp[i].ptr == ptr) {
            broker_msg m;
            memset(&m, 0, sizeof m);
            m.op = OP_DROP;
            memcpy(m.id, g_exp[i].id, 16);
            char why[MAX_REASON + 1];
            if (g_fd >= 0 && ask(&m, -1, NULL, why, sizeof why) != 0) fgs_log(S, "CUDA IPC: withdrawing a handle: %s", why);
            g_exp[i] = g_exp[--g_nexp];
            break;
        }
    pthread_mutex_unlock(&g_mu);
}

void fgs_ipc_close(fgs_session *S) {
    pthread_mutex_lock(&g_mu);
    if (g_nopen) S->api->cuCtxSynchronize();
    for (size_t i = 0; i < g_nopen; i++) unmap_opened(S, &g_open[i]);
    g_nopen = 0;
    g_nexp = 0; /* the broker drops this worker's exports when it ends */
    pthread_mutex_unlock(&g_mu);
}

/* ---- events ---- */

CUresult fgs_cuIpcGetEventHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (g_fd < 0) return no_broker(S, "cuIpcGetEventHandle");
    if (!S->api->cuIpcGetEventHandle) return fgs_missing(S, "cuIpcGetEventHandle");
    void *ev;
    if (fgs_handle_get(S, FGH_EVENT, id, &ev) || !ev) return CUDA_ERROR_INVALID_HANDLE;
    CUipcEventHandle h;
    CUresult res = S->api->cuIpcGetEventHandle(&h, (CUevent)ev);
    if (res != CUDA_SUCCESS) return res;
    uint8_t tid[16];
    pthread_mutex_lock(&g_mu);
    res = export_fd(S, -1, KIND_EVENT, 0, 0, h.reserved, tid);
    pthread_mutex_unlock(&g_mu);
    if (res == CUDA_SUCCESS) put_token(out, TOKEN_EVT, tid, 0, 0);
    return res;
}

CUresult fgs_cuIpcOpenEventHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    token t;
    int bad = take_token(r, &t, TOKEN_EVT);
    if (r->failed || bad < 0) return FGS_PROTOCOL_ERROR;
    if (bad) return CUDA_ERROR_INVALID_VALUE;
    if (g_fd < 0) return no_broker(S, "cuIpcOpenEventHandle");
    if (!S->api->cuIpcOpenEventHandle) return fgs_missing(S, "cuIpcOpenEventHandle");
    broker_msg m;
    pthread_mutex_lock(&g_mu);
    CUresult res = import(S, &t, KIND_EVENT, &m, NULL);
    pthread_mutex_unlock(&g_mu);
    if (res != CUDA_SUCCESS) return res;
    CUipcEventHandle h;
    memcpy(h.reserved, m.payload, sizeof h.reserved);
    CUevent ev = NULL;
    res = S->api->cuIpcOpenEventHandle(&ev, h);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_EVENT, ev));
    return res;
}

/* ---- the application's VMM handles ---- */

CUresult fgs_cuMemExportToShareableHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    uint32_t type = fg_get_u32(r);
    uint64_t flags = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) {
        static int told;
        if (!told++) fgs_log(S, "cuMemExportToShareableHandle of a handle type other than a POSIX file descriptor: "
                             "CUDA_ERROR_NOT_SUPPORTED");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (g_fd < 0) return no_broker(S, "cuMemExportToShareableHandle");
    if (!S->api->cuMemExportToShareableHandle) return fgs_missing(S, "cuMemExportToShareableHandle");
    CUmemGenericAllocationHandle real;
    size_t size;
    int dev;
    CUresult res = fgs_vmm_real(S, id, &real, &size, &dev);
    int fd = -1;
    if (res == CUDA_SUCCESS)
        res = S->api->cuMemExportToShareableHandle(&fd, real, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, flags);
    uint8_t tid[16];
    pthread_mutex_lock(&g_mu);
    if (res == CUDA_SUCCESS) res = export_fd(S, fd, KIND_MEM, dev, size, NULL, tid);
    if (res == CUDA_SUCCESS) fgs_vmm_mark_shared(S, id);
    pthread_mutex_unlock(&g_mu);
    if (res == CUDA_SUCCESS) put_token(out, TOKEN_VMM, tid, size, dev);
    return res;
}

CUresult fgs_cuMemImportFromShareableHandle(fgs_session *S, fg_reader *r, fg_writer *out) {
    token t;
    int bad = take_token(r, &t, TOKEN_VMM);
    uint32_t type = fg_get_u32(r);
    if (r->failed || bad < 0) return FGS_PROTOCOL_ERROR;
    if (bad || type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_ERROR_INVALID_VALUE;
    if (g_fd < 0) return no_broker(S, "cuMemImportFromShareableHandle");
    if (!S->api->cuMemImportFromShareableHandle) return fgs_missing(S, "cuMemImportFromShareableHandle");
    broker_msg m;
    int fd = -1;
    pthread_mutex_lock(&g_mu);
    CUresult res = import(S, &t, KIND_MEM, &m, &fd);
    pthread_mutex_unlock(&g_mu);
    CUmemGenericAllocationHandle h = 0;
    if (res == CUDA_SUCCESS)
        res = S->api->cuMemImportFromShareableHandle(&h, (void *)(intptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (fd >= 0) close(fd);
    if (res != CUDA_SUCCESS) return res;
    uint64_t id = m.size <= SIZE_MAX ? fgs_vmm_adopt(S, h, (size_t)m.size, m.dev) : 0;
    if (!id) {
        S->api->cuMemRelease(h);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}
