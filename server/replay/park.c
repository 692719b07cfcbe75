/* park.c — snapshot and restore of a session: parking a paged-out session's state off the node, and rebuilding
 * it in a new worker on any node with the same GPU model and driver.
 *
 * Park ("park DIR" from the node agent, between batches, after a page-out): the session must be parkable (no
 * graphs, link states, stream captures, client VMM mappings, host-function connection or undelivered async
 * copies: anything else is rebuilt from the creation journal). The worker writes DIR/state — salt, the last
 * applied batch, the journal's live entries, every allocation's address, size and place in the page store, and
 * the contents of every module global the client was told of — and each loaded image as DIR/img-SHA256. The
 * agent stores those and the paged memory in the park store, confirms them, and answers "park-commit": the
 * worker ends the session with CLOSE "parked: ..." and exits, releasing the GPU context. Anything that arrived
 * from the client meanwhile makes the park fail instead (the agent then deletes what it stored), so no applied
 * work is ever missing from a park.
 *
 * Restore (fgs_restore, before the worker answers the client's resume HELLO): the salt comes back first, then
 * every journal entry is replayed through the ordinary dispatch with each handle placed in its recorded slot
 * (journal.c); as soon as the first context is back, every allocation's address range is reserved again at exactly
 * its old address (park_place.c: asked for, or reached by filling the free ranges the driver offers below it), and
 * its memory is left paged where the agent fetched it (an extent of the node's host pool, "host:OFF:LEN", or a
 * spill file) for the first batch to page in (paging.c). Module globals are written back; one that came back at
 * another address is translated for the session's copies (fgs_park_xlate). Any difference fails the restore, and
 * the session stays parked: it is never resumed wrong. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fgs_impl.h"
#include "fgs_globals.h"
#include "fgs_journal.h"
#include "fgs_public.h"
#include "fgs_session.h"

#define MAGIC "FGPARK04" /* 03: memory pools after the events; 04: the session's address block */
#define VERDICT_WAIT_MS 900000            /* how long a park waits for the agent's verdict before it gives up */
#define ARENA_BASE 0x600000000000ull      /* FARGPU_ARENA ("0xBASE:0xSIZE", "off") overrides */
#define ARENA_SIZE (16ull << 40)
#define STATE_LIMIT (8ull << 30)

void fgs_pager_status(fgs_session *S, const char *line);

/* FARGPU_ARENA: "0xBASE:0xSIZE" or "off", as the agent passes it (server/park/arena.py checked it); the older
 * FARGPU_ARENA_BASE (hex base, 16 TiB) still works. A value that does not parse leaves the default, logged. */
void fgs_arena_init(fgs_session *S) {
    const char *e = getenv("FARGPU_ARENA"), *old = getenv("FARGPU_ARENA_BASE");
    uint64_t base = ARENA_BASE, size = ARENA_SIZE;
    if (!e || !*e) e = old && *old ? old : NULL;
    if (e && !strcmp(e, "off")) base = 0;
    else if (e) {
        char *end = NULL;
        errno = 0;
        uint64_t b = strtoull(e, &end, 16), n = size;
        if (!errno && end && *end == ':') n = strtoull(end + 1, &end, 16);
        if (errno || !end || *end || !b || b & ((2ull << 20) - 1) || n < (1ull << 30) || n > (1ull << 47) ||
            b > (1ull << 47) - n)
            fgs_log(S, "ignoring the address arena %s (want 0xBASE:0xSIZE, 2 MiB aligned, below 2^47); using "
                    "0x%llx", e, (unsigned long long)base);
        else {
            base = b;
            size = n & ~((2ull << 20) - 1);
        }
    }
    S->arena_next = base;
    S->arena_end = base ? base + size : 0;
}

static void hex(const uint8_t *sha, char out[65]) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = d[sha[i] >> 4];
        out[2 * i + 1] = d[sha[i] & 15];
    }
    out[64] = 0;
}

static void status(fgs_session *S, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void status(fgs_session *S, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    for (char *p = line; *p; p++)
        if (*p == '\n') *p = ' ';
    fgs_pager_status(S, line);
}

static int live(fgs_session *S, int kind) {
    fgs_table *t = &S->tables[kind];
    for (uint32_t i = 0; i < t->n; i++)
        if (t->real[i]) return 1;
    return 0;
}

/* Why this session cannot be parked faithfully (NULL: it can). */
static const char *unparkable(fgs_session *S) {
    if (!S->journal || S->journal->incomplete) return "its creation journal is incomplete (the worker ran out of memory)";
    if (live(S, FGH_GRAPHEXEC) || live(S, FGH_GRAPH) || live(S, FGH_GRAPHNODE))
        return "it holds CUDA graphs, which parking cannot rebuild";
    if (live(S, FGH_LINKSTATE)) return "it holds a JIT link state";
    if (live(S, FGH_GREENCTX)) return "it holds green contexts (SM partitions), which parking does not rebuild";
    if (live(S, FGH_DEVRESOURCEDESC))
        return "it made green-context resource descriptors (they live as long as the worker), which parking does not "
               "rebuild";
    if (live(S, FGH_ARRAY) || live(S, FGH_MIPMAPPEDARRAY)) return "it holds CUDA arrays, which parking does not restore";
    if (S->n_texsurf)
        return "it holds texture or surface objects, whose values a rebuilt worker cannot promise to keep";
    if (S->vmm) return "it maps memory itself with the VMM API (cuMemCreate/cuMemMap), which parking does not restore";
    for (size_t i = 0; i < S->n_allocs; i++)
        if (S->allocs[i].client_vmm) return "it maps memory itself with the VMM API, which parking does not restore";
    if (S->cb_fd >= 0) return "it runs host functions over a callback connection, which parking does not move";
    if (fgs_ipc_active(S)) return "it shares device memory with another process through CUDA IPC";
    if (fgs_peer_any()) return "it enabled peer access between its GPUs, which parking does not restore";
    if (S->n_later) return "asynchronous device-to-host copies still await delivery to the client";
    fgs_table *t = &S->tables[FGH_STREAM];
    for (uint32_t i = 0; i < t->n; i++) {
        CUstreamCaptureStatus cs = CU_STREAM_CAPTURE_STATUS_NONE;
        if (t->real[i] && S->api->cuStreamIsCapturing &&
            S->api->cuStreamIsCapturing((CUstream)t->real[i], &cs) == CUDA_SUCCESS && cs != CU_STREAM_CAPTURE_STATUS_NONE)
            return "a stream capture is under way";
    }
    return NULL;
}

static int write_file(const char *path, const void *p, size_t n) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < n) {
        ssize_t k = write(fd, (const uint8_t *)p + off, n - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        off += (size_t)k;
    }
    if (close(fd) == 0 && off == n && rename(tmp, path) == 0) return 0;
    unlink(tmp);
    return -1;
}

static CUcontext any_context(fgs_session *S) {
    fgs_table *t = &S->tables[FGH_CONTEXT];
    for (uint32_t i = 0; i < t->n; i++)
        if (t->real[i]) return (CUcontext)t->real[i];
    return NULL;
}

/* The compute capability of the current context's device (picks a fatbin's cubins when listing globals). */
static int device_sm(fgs_session *S) {
    CUdevice d = 0;
    int major = 0, minor = 0;
    if (S->api->cuCtxGetDevice(&d) != CUDA_SUCCESS) d = 0;
    S->api->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, d);
    S->api->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, d);
    return major * 10 + minor;
}

/* One global by name in a module (ctx 0) or in a library for the context ctx: CUDA_ERROR_NOT_FOUND when the
 * loaded code lacks it. */
static CUresult global_of(fgs_session *S, int is_lib, void *h, void *ctx, const char *name, CUdeviceptr *p,
                          size_t *n) {
    if (!is_lib) return S->api->cuModuleGetGlobal_v2(p, n, (CUmodule)h, name);
    S->api->cuCtxSetCurrent((CUcontext)ctx);
    return S->api->cuLibraryGetGlobal(p, n, (CUlibrary)h, name);
}

/* Whether a live journal entry other than its load names this module or library: a function or kernel taken from
 * it, a global looked up in it, ... A module or library nothing was ever taken from has run no code and had no
 * global written, so its globals are still what its image says: it is skipped (and, with lazy loading, not made
 * to load in a context just to be read). */
static int touched(const struct fgs_journal *J, size_t load, uint64_t id) {
    for (size_t i = 0; i < J->n; i++) {
        const fgs_jentry *e = &J->e[i];
        if (i == load || e->dead) continue;
        for (uint32_t k = 0; k < e->n_deps; k++)
            if (e->deps[k] == id) return 1;
    }
    return 0;
}

/* Every module-scope variable of every loaded module and library, by name, with its bytes: the globals a kernel
 * changed count as much as those the client looked up. A record is (handle id, context id (libraries: each live
 * context), name, size, bytes). An image whose variables cannot be listed blocks the park (*blocked = 1). */
static int put_globals(fgs_session *S, fg_writer *w, char *err, size_t errlen, int *blocked) {
    struct fgs_journal *J = S->journal;
    size_t count_at = w->len;
    fg_put_u32(w, 0);
    uint32_t count = 0, images = 0;
    uint64_t bytes = 0;
    int sm = device_sm(S);
    fgs_table *ct = &S->tables[FGH_CONTEXT];
    for (size_t i = 0; i < J->n; i++) {
        const fgs_jentry *e = &J->e[i];
        if (e->dead || !fgs_journal_is_load(e->op) || !e->n_ids || !e->image || !touched(J, i, e->ids[0])) continue;
        int is_lib = e->op == FG_OP_cuLibraryLoadData;
        void *h = NULL;
        if (fgs_handle_get(S, is_lib ? FGH_LIBRARY : FGH_MODULE, e->ids[0], &h)) continue;
        fgs_names L;
        memset(&L, 0, sizeof L);
        char why[256] = "";
        if (fgs_image_global_names(e->image, e->image_size, sm, &L, why, sizeof why)) {
            snprintf(err, errlen, "the variables of a loaded image cannot be listed (%s), so its module globals "
                     "cannot all be saved", why);
            *blocked = 1;
            fgs_names_free(&L);
            return -1;
        }
        void *mctx = NULL;
        if (!is_lib) {
            if (e->ctx) fgs_handle_get(S, FGH_CONTEXT, e->ctx, &mctx);
            S->api->cuCtxSetCurrent((CUcontext)mctx);
        }
        for (uint32_t c = 0; c < (is_lib ? ct->n : 1); c++) {
            void *ctx = is_lib ? ct->real[c] : mctx;
            if (is_lib && !ctx) continue;
            uint64_t ctx_id = ctx ? fgs_handle_id_of(S, FGH_CONTEXT, ctx) : 0;
            for (size_t k = 0; k < L.n; k++) {
                CUdeviceptr p = 0;
                size_t n = 0;
                CUresult r = global_of(S, is_lib, h, ctx, L.name[k], &p, &n);
                if (r == CUDA_ERROR_NOT_FOUND || (r == CUDA_SUCCESS && !n)) continue;
                if (r != CUDA_SUCCESS) { /* a variable the driver will not hand out by name: never parked without */
                    snprintf(err, errlen, "the module global %s cannot be looked up by name (CUDA error %d), so it "
                             "cannot be saved", L.name[k], (int)r);
                    *blocked = 1;
                    fgs_names_free(&L);
                    return -1;
                }
                size_t len = strlen(L.name[k]);
                fg_put_u64(w, e->ids[0]);
                fg_put_u64(w, ctx_id);
                fg_put_u16(w, (uint16_t)len);
                fg_put(w, L.name[k], len);
                fg_put_u64(w, n);
                void *dst = r == CUDA_SUCCESS ? fg_put_space(w, n) : NULL;
                if (r == CUDA_SUCCESS && !dst) r = CUDA_ERROR_OUT_OF_MEMORY;
                if (r == CUDA_SUCCESS) r = S->api->cuMemcpyDtoH_v2(dst, p, n);
                if (r != CUDA_SUCCESS) {
                    snprintf(err, errlen, "reading the module global %s failed with CUDA error %d", L.name[k], (int)r);
                    fgs_names_free(&L);
                    return -1;
                }
                count++;
                bytes += n;
            }
        }
        images++;
        fgs_names_free(&L);
    }
    if (!w->failed) memcpy(w->buf + count_at, &count, 4);
    fgs_log(S, "park: %u module globals (%llu bytes) of %u loaded images saved by name", count,
            (unsigned long long)bytes, images);
    return 0;
}

/* DIR/state and DIR/img-*. Returns the state's size, or 0 with err filled. */
static uint64_t write_state(fgs_session *S, const char *dir, char *err, size_t errlen, int *blocked) {
    struct fgs_journal *J = S->journal;
    fg_writer w;
    fg_writer_init(&w, 1u << 20, (size_t)STATE_LIMIT);
    fg_put(&w, MAGIC, 8);
    CUcontext cur = NULL;
    S->api->cuCtxGetCurrent(&cur);
    fg_put_u64(&w, S->salt);
    fg_put_u64(&w, S->later_next);
    fg_put_u32(&w, S->applied_seq);
    fg_put_u64(&w, cur ? fgs_handle_id_of(S, FGH_CONTEXT, cur) : 0);
    fg_put_u64(&w, S->arena_next);
    uint64_t vb_base, vb_size;
    fgs_va_where(S, &vb_base, &vb_size);
    fg_put_u64(&w, vb_base);
    fg_put_u64(&w, vb_size);
    uint32_t n_live = 0;
    for (size_t i = 0; i < J->n; i++) n_live += !J->e[i].dead;
    fg_put_u32(&w, n_live);
    char path[1100], h[65];
    for (size_t i = 0; i < J->n; i++) {
        const fgs_jentry *e = &J->e[i];
        if (e->dead) continue;
        fg_put_u16(&w, e->op);
        fg_put_u64(&w, e->ctx);
        fg_put_u32(&w, e->n_ids);
        fg_put(&w, e->ids, e->n_ids * sizeof *e->ids);
        fg_put_u32(&w, e->arglen);
        fg_put(&w, e->args, e->arglen);
        fg_put_u32(&w, e->outlen);
        fg_put(&w, e->outb, e->outlen);
        if (fgs_journal_is_load(e->op)) {
            hex(e->args, h);
            snprintf(path, sizeof path, "%s/img-%s", dir, h);
            struct stat st;
            if (stat(path, &st) != 0 && write_file(path, e->image, (size_t)e->image_size)) {
                snprintf(err, errlen, "cannot write the image %s: %s", path, strerror(errno));
                fg_writer_free(&w);
                return 0;
            }
        }
    }
    fg_put_u32(&w, (uint32_t)S->n_allocs);
    for (size_t i = 0; i < S->n_allocs; i++) {
        const fgs_alloc *a = &S->allocs[i];
        fg_put_u64(&w, a->ptr);
        fg_put_u64(&w, a->size);
        fg_put_u64(&w, a->mapped);
        fg_put_u32(&w, (uint32_t)a->dev);
        fg_put_u64(&w, a->page_off);
    }
    if (!cur && any_context(S)) S->api->cuCtxSetCurrent(any_context(S));
    int r = put_globals(S, &w, err, errlen, blocked);
    if (!r) fgs_events_put(S, &w);
    if (!r) fgs_mempool_put(S, &w); /* which memory pool holds each allocation (mempool_blocks.c) */
    S->api->cuCtxSetCurrent(cur);
    uint64_t n = 0;
    snprintf(path, sizeof path, "%s/state", dir);
    if (r) { /* err says why */
    } else if (w.failed) snprintf(err, errlen, "the session's state is too large to park");
    else if (write_file(path, w.buf, w.len)) snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
    else n = w.len;
    fg_writer_free(&w);
    return n;
}

/* Reads the agent's verdict, one byte at a time (nothing after it is consumed). 1 commit, 0 abort, -1 gone. */
static int verdict(fgs_session *S) {
    int fd = fgs_pager_ctl_fd(S);
    char line[64];
    size_t n = 0;
    uint64_t deadline = fgs_now_ns() + (uint64_t)VERDICT_WAIT_MS * 1000000ull;
    if (fd < 0) return -1;
    for (;;) {
        uint64_t t = fgs_now_ns();
        if (t >= deadline) return 0;
        struct pollfd pf = {fd, POLLIN, 0};
        int np = poll(&pf, 1, (int)((deadline - t) / 1000000ull) + 1);
        if (np < 0 && errno == EINTR) continue;
        if (np <= 0) continue;
        char c;
        ssize_t k = read(fd, &c, 1);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        if (c != '\n') {
            if (n < sizeof line - 1) line[n++] = c;
            continue;
        }
        line[n] = 0;
        n = 0;
        if (!strcmp(line, "park-commit")) return 1;
        if (!strcmp(line, "park-abort") || !strncmp(line, "close", 5)) return 0;
        /* anything else (a page command) waits: the session is being parked */
    }
}

int fgs_park_control(fgs_session *S, const char *line, char *why, size_t why_len) {
    if (strncmp(line, "park ", 5)) return 0; /* a verdict after its park gave up */
    const char *dir = line + 5;
    if (fgs_pager_wake(S) != 0) { /* below are CUDA calls: a session at the deeper level comes back first */
        status(S, "park-failed the session's driver checkpoint could not be restored");
        return 0;
    }
    const char *no = unparkable(S);
    if (no) {
        status(S, "park-failed unparkable: %s", no);
        return 0;
    }
    if (!fgs_is_paged(S)) {
        status(S, "park-failed the session is resident: page it out first");
        return 0;
    }
    char err[1400] = "";
    uint64_t t0 = fgs_now_ns();
    int blocked = 0;
    uint64_t n = write_state(S, dir, err, sizeof err, &blocked);
    if (!n) {
        status(S, blocked ? "park-failed unparkable: %s" : "park-failed %s", err);
        return 0;
    }
    status(S, "park-ready %llu %llu", (unsigned long long)n, (unsigned long long)(fgs_now_ns() - t0));
    int v = verdict(S);
    const char *anyway = getenv("FARGPU_PARK_TEST_COMMIT_ANYWAY"); /* tests: the stub's resend path */
    if (v == 1 && S->client_fd >= 0 && !(anyway && *anyway == '1')) {
        struct pollfd pf = {S->client_fd, POLLIN, 0};
        if (fgs_db_posted(S) || fgs_client_pending(S) || (poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN) && !(pf.revents & POLLHUP))) {
            status(S, "park-failed the client sent work while the session was being parked");
            return 0;
        }
    }
    if (v == 1) {
        status(S, "parked");
        snprintf(why, why_len, "parked: the session was parked off its node; the client reconnects to resume it");
        return 1;
    }
    status(S, "park-failed %s", v == 0 ? "the park was called off" : "the node agent went away");
    if (v < 0) { /* nothing was applied since the state was written: if the agent stored it all, it is parked */
        snprintf(why, why_len, "parked: the node server went away during a park; the client resumes the session "
                 "if the park completed");
        return 1;
    }
    return 0;
}

uint64_t fgs_park_xlate(fgs_session *S, uint64_t p, uint64_t n) {
    struct fgs_journal *J = S->journal;
    for (size_t i = 0; J && i < J->n_moves; i++)
        if (p >= J->moves[i].old && p - J->moves[i].old < J->moves[i].size &&
            n <= J->moves[i].size - (p - J->moves[i].old))
            return p - J->moves[i].old + J->moves[i].now;
    return p;
}

/* A restored session's kernel parameters hold the addresses its client knows, among them a moved global's old one:
 * every 8-byte-aligned word of the buffer (pointers, also inside structs passed by value, are 8-byte aligned) that
 * lies in a moved global's old range, and in none of the session's current allocations or globals, is rewritten
 * to where that global is now. A word that only looks like such an address would be rewritten too: an integer
 * parameter equal to an old global address of this session (unlikely; logged once per session). */
void fgs_park_xlate_params(fgs_session *S, uint8_t *buf, size_t n) {
    static int told;
    for (size_t off = 0; off + 8 <= n; off += 8) {
        uint64_t v, t;
        memcpy(&v, buf + off, 8);
        if ((t = fgs_park_xlate(S, v, 1)) == v || fgs_device_range_ok(S, v, 1)) continue;
        memcpy(buf + off, &t, 8);
        if (!told++)
            fgs_log(S, "a kernel parameter named a module global at its address before the park (0x%llx): it is "
                    "passed as 0x%llx", (unsigned long long)v, (unsigned long long)t);
    }
}

/* Before dispatch, for a restored session with moved globals: a memset's destination at a moved global's old
 * address goes to its new one (the other copies translate in memory.c). */
void fgs_park_fix_record(fgs_session *S, unsigned op, uint8_t *args, size_t len) {
    if (!S->journal || !S->journal->n_moves || len < 8) return;
    switch (op) {
    case FG_OP_cuMemsetD8_v2: case FG_OP_cuMemsetD16_v2: case FG_OP_cuMemsetD32_v2:
    case FG_OP_cuMemsetD8Async: case FG_OP_cuMemsetD16Async: case FG_OP_cuMemsetD32Async:
    case FG_OP_cuMemsetD2D8_v2: case FG_OP_cuMemsetD2D16_v2: case FG_OP_cuMemsetD2D32_v2:
    case FG_OP_cuMemsetD2D8Async: case FG_OP_cuMemsetD2D16Async: case FG_OP_cuMemsetD2D32Async: {
        uint64_t v, t;
        memcpy(&v, args, 8);
        if ((t = fgs_park_xlate(S, v, 1)) != v && !fgs_device_range_ok(S, v, 1)) memcpy(args, &t, 8);
        break;
    }
    default:
        break;
    }
}

/* ---- restore ---- */

static uint8_t *read_file(const char *path, size_t limit, size_t *n) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size <= limit && (buf = (uint8_t *)malloc((size_t)st.st_size + 1))) {
        size_t got = 0;
        while (got < (size_t)st.st_size) {
            ssize_t k = read(fd, buf + got, (size_t)st.st_size - got);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            got += (size_t)k;
        }
        if (got != (size_t)st.st_size) {
            free(buf);
            buf = NULL;
        } else {
            buf[got] = 0;
            *n = got;
        }
    }
    close(fd);
    return buf;
}

static int add_move(struct fgs_journal *J, uint64_t old, uint64_t now, uint64_t size) {
    void *nm = realloc(J->moves, (J->n_moves + 1) * sizeof *J->moves);
    if (!nm) return -1;
    J->moves = nm;
    J->moves[J->n_moves].old = old;
    J->moves[J->n_moves].now = now;
    J->moves[J->n_moves].size = size;
    J->n_moves++;
    return 0;
}

/* One journal entry read from the state and replayed with its recorded ids. 0, or -1 with err filled. */
static int replay_one(fgs_session *S, const char *dir, fg_reader *r, fg_writer *o, char *err, size_t errlen) {
    struct fgs_journal *J = S->journal;
    fgs_jentry e;
    memset(&e, 0, sizeof e);
    e.op = fg_get_u16(r);
    e.ctx = fg_get_u64(r);
    e.n_ids = fg_get_u32(r);
    const uint8_t *ids = e.n_ids <= (1u << 24) ? fg_take(r, (size_t)e.n_ids * 8) : NULL;
    e.arglen = fg_get_u32(r);
    const uint8_t *args = fg_take(r, e.arglen);
    e.outlen = fg_get_u32(r);
    const uint8_t *outb = fg_take(r, e.outlen);
    if (r->failed || !ids || (e.arglen && !args)) {
        snprintf(err, errlen, "the parked state is malformed");
        return -1;
    }
    if ((e.n_ids && !(e.ids = (uint64_t *)malloc((size_t)e.n_ids * 8))) ||
        (e.arglen && !(e.args = (uint8_t *)malloc(e.arglen))) || (e.outlen && !(e.outb = (uint8_t *)malloc(e.outlen)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (e.n_ids) memcpy(e.ids, ids, (size_t)e.n_ids * 8);
    if (e.arglen) memcpy(e.args, args, e.arglen);
    if (e.outlen) memcpy(e.outb, outb, e.outlen);
    if (fgs_journal_is_load(e.op)) { /* the image goes through the upload path: checked against its name */
        char h[65], path[1100];
        if (e.arglen < 40) {
            snprintf(err, errlen, "the parked state is malformed");
            goto fail;
        }
        uint64_t size;
        memcpy(&size, e.args + 32, 8);
        hex(e.args, h);
        snprintf(path, sizeof path, "%s/img-%s", dir, h);
        size_t n = 0;
        uint8_t *img = read_file(path, FG_MAX_IMAGE, &n);
        if (!img || n != size) {
            free(img);
            snprintf(err, errlen, "the parked image %s is missing or has the wrong size", h);
            goto fail;
        }
        free(S->staging_data);
        S->staging_data = img;
        memcpy(S->staging_sha, e.args, 32);
        S->staging_size = S->staging_have = size;
        e.image_size = size;
    }
    void *ctx = NULL;
    if (e.ctx && fgs_handle_get(S, FGH_CONTEXT, e.ctx, &ctx)) {
        snprintf(err, errlen, "a context of the parked session did not come back");
        goto fail;
    }
    S->api->cuCtxSetCurrent((CUcontext)ctx);
    J->restoring = 1;
    J->forced = e.ids;
    J->n_forced = e.n_ids;
    J->forced_at = 0;
    J->forced_bad = 0;
    size_t images_before = S->n_images;
    fg_reader ar;
    fg_reader_init(&ar, e.args, e.arglen);
    fg_writer_reset(o);
    CUresult res = fgs_dispatch(S, e.op, &ar, o);
    J->restoring = 0;
    const char *name = fg_op_name(e.op);
    if (res != CUDA_SUCCESS) {
        snprintf(err, errlen, "replaying %s failed with CUDA error %d", name ? name : "?", (int)res);
        goto fail;
    }
    if (J->forced_bad || J->forced_at != J->n_forced) {
        snprintf(err, errlen, "replaying %s did not give back the same handle ids", name ? name : "?");
        goto fail;
    }
    if (fgs_journal_is_load(e.op)) {
        if (S->n_images == images_before) {
            snprintf(err, errlen, "replaying %s loaded no image", name ? name : "?");
            goto fail;
        }
        e.image = S->images[S->n_images - 1];
    }
    if (fgs_journal_is_global(e.op) && e.outlen >= 16 && o->len >= 16) {
        uint64_t old, now, size;
        memcpy(&old, e.outb, 8);
        memcpy(&now, o->buf, 8);
        memcpy(&size, e.outb + 8, 8);
        if (old != now) {
            fgs_log(S, "restore: a module global moved from 0x%llx to 0x%llx (%llu bytes); copies to it are translated",
                    (unsigned long long)old, (unsigned long long)now, (unsigned long long)size);
            if (add_move(J, old, now, size)) {
                snprintf(err, errlen, "out of memory");
                goto fail;
            }
        }
    }
    if (fgs_journal_append(J, &e) == 0) return 0;
    snprintf(err, errlen, "out of memory");
fail:
    free(e.ids);
    free(e.args);
    free(e.outb);
    return -1;
}

/* Writes every saved module global back, by name, into the restored modules and libraries; a global missing or
 * of another size fails the restore. 0, or -1 with err filled. */
static int get_globals(fgs_session *S, fg_reader *r, char *err, size_t errlen) {
    uint32_t n = fg_get_u32(r);
    for (uint32_t i = 0; i < n && !r->failed; i++) {
        uint64_t id = fg_get_u64(r), ctx_id = fg_get_u64(r);
        uint16_t len = fg_get_u16(r);
        const uint8_t *nm = fg_take(r, len);
        uint64_t size = fg_get_u64(r);
        const uint8_t *bytes = size <= fg_reader_left(r) ? fg_take(r, (size_t)size) : NULL;
        if (r->failed || !nm || !bytes || len > 4096) {
            snprintf(err, errlen, "the parked state is malformed");
            return -1;
        }
        char name[4097];
        memcpy(name, nm, len);
        name[len] = 0;
        int is_lib = fgs_handle_kind_of(S, id) == FGH_LIBRARY;
        void *h = NULL, *ctx = NULL;
        if (fgs_handle_get(S, is_lib ? FGH_LIBRARY : FGH_MODULE, id, &h) ||
            (ctx_id && fgs_handle_get(S, FGH_CONTEXT, ctx_id, &ctx))) {
            snprintf(err, errlen, "the module or context of the global %s did not come back", name);
            return -1;
        }
        if (!is_lib) S->api->cuCtxSetCurrent((CUcontext)ctx);
        CUdeviceptr p = 0;
        size_t have = 0;
        CUresult res = global_of(S, is_lib, h, ctx, name, &p, &have);
        if (res == CUDA_SUCCESS && have != size) res = CUDA_ERROR_INVALID_VALUE;
        if (res == CUDA_SUCCESS) res = S->api->cuMemcpyHtoD_v2(p, bytes, (size_t)size);
        if (res != CUDA_SUCCESS) {
            snprintf(err, errlen, "the module global %s (%llu bytes) could not be written back (CUDA error %d)", name,
                     (unsigned long long)size, (int)res);
            return -1;
        }
    }
    if (r->failed) snprintf(err, errlen, "the parked state is malformed");
    return r->failed ? -1 : 0;
}

/* Past one journal entry (as replay_one reads it). */
static void skip_entry(fg_reader *r) {
    fg_get_u16(r);
    fg_get_u64(r);
    uint32_t n_ids = fg_get_u32(r);
    if (n_ids > (1u << 24) || !fg_take(r, (size_t)n_ids * 8)) r->failed = 1;
    fg_take(r, fg_get_u32(r));
    fg_take(r, fg_get_u32(r));
}

/* The allocation table: each allocation's old address, sizes, device and place in the page store (paged). */
static fgs_alloc *read_allocs(fg_reader *r, uint32_t *n) {
    *n = fg_get_u32(r);
    if (r->failed || *n > fg_reader_left(r) / 36) {
        r->failed = 1;
        return NULL;
    }
    fgs_alloc *v = (fgs_alloc *)calloc(*n ? *n : 1, sizeof *v);
    if (!v) return NULL;
    for (uint32_t i = 0; i < *n; i++) {
        v[i].ptr = fg_get_u64(r);
        v[i].size = (size_t)fg_get_u64(r);
        v[i].mapped = (size_t)fg_get_u64(r);
        v[i].dev = (int)fg_get_u32(r);
        v[i].page_off = fg_get_u64(r);
        v[i].paged = 1;
    }
    return v;
}

static int restore(fgs_session *S, const char *dir, const char *pages, char *err, size_t errlen) {
    char path[1100];
    snprintf(path, sizeof path, "%s/state", dir);
    size_t len = 0;
    uint8_t *buf = read_file(path, (size_t)STATE_LIMIT, &len);
    if (!buf) {
        snprintf(err, errlen, "cannot read the parked state %s: %s", path, strerror(errno));
        return -1;
    }
    int rc = -1;
    fgs_alloc *wants = NULL;
    fg_reader r;
    fg_reader_init(&r, buf, len);
    const uint8_t *magic = fg_take(&r, 8);
    if (!magic || memcmp(magic, MAGIC, 8)) {
        snprintf(err, errlen, "%s is not a parked state of this fargpu version", path);
        goto done;
    }
    S->salt = fg_get_u64(&r);
    S->later_next = fg_get_u64(&r);
    S->applied_seq = fg_get_u32(&r);
    uint64_t cur = fg_get_u64(&r);
    uint64_t arena = fg_get_u64(&r);
    uint64_t vb_base = fg_get_u64(&r), vb_size = fg_get_u64(&r);
    uint32_t n_entries = fg_get_u32(&r);
    /* The allocation table follows the journal: read it first, to place the allocations as soon as the session's
     * first context is back, before its modules take address space (park_place.c). */
    fg_reader scan = r;
    for (uint32_t i = 0; i < n_entries && !scan.failed; i++) skip_entry(&scan);
    uint32_t n_allocs = 0;
    wants = read_allocs(&scan, &n_allocs);
    if (!wants) {
        snprintf(err, errlen, scan.failed ? "the parked state is malformed" : "out of memory");
        goto done;
    }
    uint64_t total = 0;
    for (uint32_t i = 0; i < n_allocs; i++) total += wants[i].mapped;
    int placed = n_allocs == 0;
    fg_writer o;
    fg_writer_init(&o, 4096, (size_t)FG_CHUNK + (1u << 20));
    for (uint32_t i = 0; i < n_entries && !r.failed; i++) {
        if (replay_one(S, dir, &r, &o, err, errlen)) {
            fg_writer_free(&o);
            goto done;
        }
        if (!placed && any_context(S)) {
            S->api->cuCtxSetCurrent(any_context(S));
            if (fgs_park_place(S, vb_base, vb_size, wants, n_allocs, err, errlen)) {
                fg_writer_free(&o);
                goto done;
            }
            placed = 1;
        }
    }
    fg_writer_free(&o);
    if (!placed) {
        snprintf(err, errlen, "the parked state has allocations but no context");
        goto done;
    }
    fgs_handles_reindex(S);
    void *cctx = NULL;
    if (cur && fgs_handle_get(S, FGH_CONTEXT, cur, &cctx) == 0) S->api->cuCtxSetCurrent((CUcontext)cctx);
    else if (!cctx && any_context(S)) S->api->cuCtxSetCurrent(any_context(S));
    r = scan; /* past the allocation table, read above */
    if (arena > S->arena_next && arena <= S->arena_end) S->arena_next = arena;
    if (get_globals(S, &r, err, errlen) || fgs_events_get(S, &r, err, errlen) ||
        fgs_mempool_get(S, &r, err, errlen))
        goto done;
    if (r.failed || fg_reader_left(&r)) {
        snprintf(err, errlen, "the parked state is malformed");
        goto done;
    }
    unsigned long long hoff = 0, hlen = 0;
    int host = pages && sscanf(pages, "host:%llu:%llu", &hoff, &hlen) == 2;
    if (total && (!pages || (host ? fgs_pager_adopt_host(S, hoff, hlen, total) : fgs_pager_adopt_spill(S, pages, total)))) {
        snprintf(err, errlen, "the session's memory file is missing, or paging is not set up");
        goto done;
    }
    rc = 0;
done:
    free(wants);
    free(buf);
    return rc;
}

FGS_EXPORT int fgs_restore(fgs_session *S, const char *dir, const char *pages, char *err, unsigned long errlen) {
    if (!S || !S->journal || S->journal->n || S->n_allocs) {
        snprintf(err, errlen, "a session can only be restored into a fresh worker");
        return -1;
    }
    uint64_t t0 = fgs_now_ns();
    int rc = restore(S, dir, pages && *pages ? pages : NULL, err, (size_t)errlen);
    if (rc == 0)
        fgs_log(S, "restored a parked session: %zu journal entries, %zu allocations, %zu moved globals in %.3f s",
                S->journal->n, S->n_allocs, S->journal->n_moves, (double)(fgs_now_ns() - t0) / 1e9);
    return rc;
}

FGS_EXPORT unsigned int fgs_applied_seq(fgs_session *S) { return S ? S->applied_seq : 0; }
FGS_EXPORT unsigned long long fgs_moved_globals(fgs_session *S) { return S && S->journal ? S->journal->n_moves : 0; }
