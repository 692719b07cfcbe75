/* bulk.c — pipelined bulk copies over the session's stream sockets (protocol/SPEC.md, "Bulk copies").
 *
 * A large host↔device copy travels as raw bytes right after the batch that names it (host→device) or right
 * before the reply (device→host), cut into FG_BULK_PIECE pieces. Piece j rides connection j mod C: the session's
 * own connection is 0, extra authenticated data connections (handed over by the node agent) are 1..C-1, so a
 * copy is striped over several TCP streams. Each connection is served by its own thread through slots of a
 * pinned staging ring, allocated once per worker: a piece is received into
 * a slot while the DMA of the previous one runs (host→device), or DMA'd into a slot while the previous one is
 * sent (device→host). A slot is reused only after the event recorded behind its DMA completed, so async copies
 * keep pageable semantics (the bytes are taken at the call) in stream order. A broken or stalled connection ends
 * the session with the reason, or, where the worker lingers for its client (reattach.c), shuts the copy's other
 * connections down at once and leaves the copy unapplied: the client sends it again after it resumes. A failed DMA
 * keeps the byte stream whole (device→host pieces are sent as zeros) and is the copy's error. The same connections
 * carry the bytes of staged async device→host copies a reply delivers over the bulk path (fgs_bulk_deliver). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fg_io.h"
#include "fgs_impl.h"
#include "fgs_public.h"
#include "fgs_session.h"

#define SLOTS 16
#define MAX_DATA 15

struct fgs_bulk {
    uint8_t *ring; /* SLOTS x FG_BULK_PIECE, registered with the driver (pinned) when it allows */
    CUevent ev[SLOTS];
    CUcontext ctx; /* the context current at the last registration check */
    int pinned;
    int data_fd[MAX_DATA];
    int n_data; /* atomic: fds are appended by the worker's Python thread, read by the serve loop */
    int ready[MAX_DATA]; /* atomic: its HELLO_OK was written (fgs_data_fd_ready); cleared when it is appended */
    int io_broken; /* the last copy's connections broke (it was not applied) */
    uint64_t delivered, delivered_bytes; /* async device→host copies delivered over the bulk path */
    char error[200];
};

static pthread_mutex_t bulk_mu = PTHREAD_MUTEX_INITIALIZER; /* creation of S->bulk */

static struct fgs_bulk *bulk_of(fgs_session *S) {
    pthread_mutex_lock(&bulk_mu);
    if (!S->bulk) S->bulk = (struct fgs_bulk *)calloc(1, sizeof *S->bulk);
    pthread_mutex_unlock(&bulk_mu);
    return S->bulk;
}

FGS_EXPORT int fgs_add_data_fd(fgs_session *S, int fd) {
    struct fgs_bulk *B = bulk_of(S);
    if (!B) return -1;
    int n = __atomic_load_n(&B->n_data, __ATOMIC_ACQUIRE);
    if (n >= MAX_DATA) return -1;
    int one = 1, fl = fcntl(fd, F_GETFL); /* the agent's sockets are non-blocking; the lanes block on this one */
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    fg_io_send_deadline(fd);
    B->data_fd[n] = fd;
    __atomic_store_n(&B->ready[n], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&B->n_data, n + 1, __ATOMIC_RELEASE);
    fgs_log(S, "data connection %d installed (bulk copies stripe over %d connections)", n + 1, n + 2);
    return 0;
}

FGS_EXPORT void fgs_data_fd_ready(fgs_session *S, int fd) {
    struct fgs_bulk *B = S->bulk;
    if (!B) return;
    int n = __atomic_load_n(&B->n_data, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (B->data_fd[i] == fd) __atomic_store_n(&B->ready[i], 1, __ATOMIC_RELEASE);
}

/* Data connections 1..k all ready (the same thread appends them and says they are ready, in order). */
static int n_ready(struct fgs_bulk *B) {
    int n = __atomic_load_n(&B->n_data, __ATOMIC_ACQUIRE), k = 0;
    while (k < n && __atomic_load_n(&B->ready[k], __ATOMIC_ACQUIRE)) k++;
    return k;
}

/* The ring: page-aligned memory allocated at the first bulk copy and registered with the driver (portable) under
 * the context current then, and again when the current context changes and the registration went with a
 * destroyed context. The worker holds no context reference of its own (the application's primary context is
 * released when the application releases it, as natively); unregistered, copies through the ring stay correct. */
static int ring_ready(fgs_session *S, struct fgs_bulk *B) {
    if (!B->ring) {
        void *p = NULL;
        if (posix_memalign(&p, 4096, (size_t)SLOTS * FG_BULK_PIECE)) return -1;
        B->ring = (uint8_t *)p;
    }
    CUcontext cur = NULL;
    if (S->api->cuCtxGetCurrent(&cur) != CUDA_SUCCESS || !cur || (cur == B->ctx && B->pinned)) return 0;
    B->ctx = cur;
    CUstreamCaptureMode mode;
    int relaxed = fgs_relax(S, &mode); /* the worker's ring, not the application's call (fgs_session.h) */
    CUresult r = S->api->cuMemHostRegister_v2
                     ? S->api->cuMemHostRegister_v2(B->ring, (size_t)SLOTS * FG_BULK_PIECE, CU_MEMHOSTREGISTER_PORTABLE)
                     : CUDA_ERROR_NOT_SUPPORTED;
    fgs_unrelax(S, relaxed, mode);
    int was = B->pinned;
    B->pinned = r == CUDA_SUCCESS || r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    if (!B->pinned && !was)
        fgs_log(S, "the bulk staging ring could not be pinned (%d); bulk copies go through the driver's staging",
                (int)r);
    return 0;
}

/* A context may be about to go: the ring's events (made in whatever context each copy ran in) are waited for and
 * destroyed now, and the ring's registration is checked again at the next copy. */
void fgs_bulk_drain(fgs_session *S) {
    struct fgs_bulk *B = S->bulk;
    if (!B) return;
    for (int i = 0; i < SLOTS; i++)
        if (B->ev[i]) {
            S->api->cuEventSynchronize(B->ev[i]);
            S->api->cuEventDestroy_v2(B->ev[i]);
            B->ev[i] = NULL;
        }
    B->ctx = NULL;
    B->pinned = 0;
}

void fgs_bulk_close(fgs_session *S) {
    struct fgs_bulk *B = S->bulk;
    if (!B) return;
    if (B->delivered)
        fgs_log(S, "%llu async device-to-host copies (%llu bytes) were delivered over the bulk path",
                (unsigned long long)B->delivered, (unsigned long long)B->delivered_bytes);
    for (int i = 0; i < SLOTS; i++)
        if (B->ev[i]) {
            S->api->cuEventSynchronize(B->ev[i]);
            S->api->cuEventDestroy_v2(B->ev[i]);
        }
    if (B->ring && B->pinned && S->api->cuMemHostUnregister) S->api->cuMemHostUnregister(B->ring);
    free(B->ring);
    int n = __atomic_load_n(&B->n_data, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++) close(B->data_fd[i]);
    free(B);
    S->bulk = NULL;
}

int fgs_bulk_io_broken(fgs_session *S) { return S->bulk && S->bulk->io_broken; }

void fgs_bulk_forget_data(fgs_session *S) {
    struct fgs_bulk *B = S->bulk;
    if (!B) return;
    int n = __atomic_exchange_n(&B->n_data, 0, __ATOMIC_ACQ_REL);
    for (int i = 0; i < n; i++) close(B->data_fd[i]);
    B->io_broken = 0;
    B->error[0] = 0;
}

void fgs_bulk_shutdown_data(fgs_session *S) {
    struct fgs_bulk *B = S->bulk;
    if (!B) return;
    int n = __atomic_load_n(&B->n_data, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++) shutdown(B->data_fd[i], SHUT_RDWR);
}

/* One bulk copy, shared by the threads that serve its connections. */
typedef struct {
    fgs_session *S;
    struct fgs_bulk *B;
    int htod, sync, C;
    uint64_t dev, n;
    CUstream stream;
    CUcontext ctx;
    pthread_mutex_t mu;
    CUresult first; /* the first DMA error */
    int skip;       /* the copy failed before it began (a bad stream): its bytes are moved, no DMA is made */
    int io_failed;
    char io_why[160];
} job;

typedef struct {
    job *J;
    int conn; /* 0: the session's connection */
    pthread_t t;
} lane;

static void note_error(job *J, CUresult r) {
    pthread_mutex_lock(&J->mu);
    if (J->first == CUDA_SUCCESS) J->first = r;
    pthread_mutex_unlock(&J->mu);
}

static void note_io(job *J, int conn, int rc) {
    int e = errno;
    pthread_mutex_lock(&J->mu);
    if (!J->io_failed) {
        if (rc == -2)
            snprintf(J->io_why, sizeof J->io_why, "a bulk copy stalled on connection %d (nothing for %d s)", conn,
                     fg_io_timeout_ms() / 1000);
        else
            snprintf(J->io_why, sizeof J->io_why, "connection %d broke during a bulk copy (%s)", conn,
                     e ? strerror(e) : "closed");
    }
    int first = !J->io_failed;
    J->io_failed = 1;
    pthread_mutex_unlock(&J->mu);
    if (first && fgs_linger_ms()) { /* the client comes back: the other connections stop now, not at a deadline */
        if (J->S->client_fd >= 0) shutdown(J->S->client_fd, SHUT_RDWR);
        fgs_bulk_shutdown_data(J->S);
    }
}

/* Wait for the last DMA through slot s, then make a fresh event for its next one (in the copy's context). */
static CUresult slot_take(job *J, int s) {
    fgs_session *S = J->S;
    if (J->B->ev[s]) {
        S->api->cuEventSynchronize(J->B->ev[s]); /* its error, if any, was the earlier copy's */
        S->api->cuEventDestroy_v2(J->B->ev[s]);
        J->B->ev[s] = NULL;
    }
    return S->api->cuEventCreate(&J->B->ev[s], CU_EVENT_DISABLE_TIMING);
}

static void *run_lane(void *arg) {
    lane *L = (lane *)arg;
    job *J = L->J;
    fgs_session *S = J->S;
    if (L->conn && J->stream != CU_STREAM_PER_THREAD) S->api->cuCtxSetCurrent(J->ctx); /* a lane's own thread */
    int fd = L->conn == 0 ? S->client_fd : J->B->data_fd[L->conn - 1];
    int per = SLOTS / J->C; /* this lane's slots: conn, conn + C, ... */
    uint64_t pieces = (J->n + FG_BULK_PIECE - 1) / FG_BULK_PIECE;
    int to = fg_io_timeout_ms();
    uint64_t k = 0; /* this lane's piece count */
    /* Device→host: DMA up to `per` pieces ahead, send them in order. */
    uint64_t issued = 0;
    for (uint64_t j = (uint64_t)L->conn; j < pieces; j += (uint64_t)J->C, k++) {
        size_t len = (size_t)(J->n - j * FG_BULK_PIECE < FG_BULK_PIECE ? J->n - j * FG_BULK_PIECE : FG_BULK_PIECE);
        int s = L->conn + J->C * (int)(k % (uint64_t)per);
        uint8_t *buf = J->B->ring + (size_t)s * FG_BULK_PIECE;
        if (J->htod) {
            CUresult r = slot_take(J, s);
            size_t got = 0;
            int rc = L->conn == 0 ? fgs_client_read(S, buf, len, to, to, &got) /* (the serve loop's read-ahead) */
                                  : fg_io_read_deadline(fd, buf, len, to, to, &got);
            if (rc) {
                note_io(J, L->conn, rc);
                return NULL;
            }
            if (J->skip) continue;
            if (r == CUDA_SUCCESS) r = S->api->cuMemcpyHtoDAsync_v2(J->dev + j * FG_BULK_PIECE, buf, len, J->stream);
            if (r == CUDA_SUCCESS) r = S->api->cuEventRecord(J->B->ev[s], J->stream);
            if (r != CUDA_SUCCESS) note_error(J, r);
        } else {
            /* Keep `per` DMAs in flight on this lane: issue pieces up to k + per - 1 before sending piece k. */
            while (issued < k + (uint64_t)per) {
                uint64_t jj = (uint64_t)L->conn + issued * (uint64_t)J->C;
                if (jj >= pieces) break;
                size_t l2 = (size_t)(J->n - jj * FG_BULK_PIECE < FG_BULK_PIECE ? J->n - jj * FG_BULK_PIECE : FG_BULK_PIECE);
                int s2 = L->conn + J->C * (int)(issued % (uint64_t)per);
                uint8_t *b2 = J->B->ring + (size_t)s2 * FG_BULK_PIECE;
                CUresult r = J->skip ? J->first : slot_take(J, s2);
                if (r == CUDA_SUCCESS) r = S->api->cuMemcpyDtoHAsync_v2(b2, J->dev + jj * FG_BULK_PIECE, l2, J->stream);
                if (r == CUDA_SUCCESS) r = S->api->cuEventRecord(J->B->ev[s2], J->stream);
                if (r != CUDA_SUCCESS) {
                    if (!J->skip) note_error(J, r);
                    if (J->B->ev[s2]) {
                        S->api->cuEventDestroy_v2(J->B->ev[s2]);
                        J->B->ev[s2] = NULL;
                    }
                    memset(b2, 0, l2); /* nothing of another copy's bytes goes out */
                }
                issued++;
            }
            if (J->B->ev[s]) {
                CUresult r = S->api->cuEventSynchronize(J->B->ev[s]);
                if (r != CUDA_SUCCESS) {
                    note_error(J, r);
                    memset(buf, 0, len);
                }
            }
            if (fg_io_full(fd, buf, len, 1)) { /* EAGAIN: the client took nothing for the I/O timeout */
                note_io(J, L->conn, errno == EAGAIN || errno == EWOULDBLOCK ? -2 : -1);
                return NULL;
            }
        }
    }
    return NULL;
}

/* Args: u64 device address, u64 stream, u64 n, u32 flags (FG_BULK_F_SYNC), u32 C (connections to use).
 * skip: an error that means no DMA is made (the bytes are moved all the same). */
static CUresult bulk(fgs_session *S, fg_reader *r, int htod, CUresult skip) {
    uint64_t dev = fg_get_u64(r), sid = fg_get_u64(r), n = fg_get_u64(r);
    uint32_t flags = fg_get_u32(r), C = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    struct fgs_bulk *B = bulk_of(S);
    if (!B) return FGS_PROTOCOL_ERROR;
    B->io_broken = 0;
    int n_data = __atomic_load_n(&B->n_data, __ATOMIC_ACQUIRE);
    if (C < 1 || C > (uint32_t)n_data + 1 || C > SLOTS / 2 || n > FG_BULK_MAX) {
        snprintf(B->error, sizeof B->error, "a bulk copy named %u connections (%d open) or %llu bytes", C, n_data + 1,
                 (unsigned long long)n);
        return FGS_PROTOCOL_ERROR; /* the byte stream that follows cannot be parsed: the session ends */
    }
    void *s = NULL;
    CUresult early = CUDA_SUCCESS;
    if (skip != CUDA_SUCCESS) early = skip;
    else if (fgs_handle_get(S, FGH_STREAM, sid, &s)) early = CUDA_ERROR_INVALID_HANDLE;
    if (ring_ready(S, B)) {
        snprintf(B->error, sizeof B->error, "out of memory for the bulk staging ring");
        return FGS_PROTOCOL_ERROR;
    }
    job J;
    memset(&J, 0, sizeof J);
    J.S = S;
    J.B = B;
    J.htod = htod;
    J.sync = (flags & FG_BULK_F_SYNC) != 0;
    J.C = (int)C;
    J.dev = dev;
    J.n = n;
    J.stream = (CUstream)s;
    J.first = early;
    J.skip = early != CUDA_SUCCESS;
    S->api->cuCtxGetCurrent(&J.ctx);
    pthread_mutex_init(&J.mu, NULL);
    lane lanes[SLOTS / 2];
    int started = 1;
    if (J.stream == CU_STREAM_PER_THREAD) {
        /* The per-thread default stream is the calling thread's: every DMA must be issued from this one, so the
         * connections are served here one after the other (the client's lanes wait on their socket buffers). */
        for (uint32_t i = 0; i < C && !J.io_failed; i++) {
            lanes[i] = (lane){&J, (int)i, 0};
            run_lane(&lanes[i]);
        }
    } else {
        for (uint32_t i = 1; i < C; i++) {
            lanes[i] = (lane){&J, (int)i, 0};
            if (pthread_create(&lanes[i].t, NULL, run_lane, &lanes[i])) break;
            started++;
        }
        lanes[0] = (lane){&J, 0, 0};
        if ((uint32_t)started == C) run_lane(&lanes[0]);
        else note_io(&J, 0, -1);
    }
    for (int i = 1; i < started; i++) pthread_join(lanes[i].t, NULL);
    pthread_mutex_destroy(&J.mu);
    if (J.io_failed) {
        snprintf(B->error, sizeof B->error, "%s", J.io_why);
        B->io_broken = 1;
        return FGS_PROTOCOL_ERROR;
    }
    if (J.sync || !htod) /* a synchronous copy is whole on the device before its caller hears of it */
        for (int i = 0; i < SLOTS; i++)
            if (B->ev[i]) {
                CUresult e = S->api->cuEventSynchronize(B->ev[i]);
                if (e != CUDA_SUCCESS && J.first == CUDA_SUCCESS) J.first = e;
            }
    return J.first;
}

CUresult fgs_bulk_htod(fgs_session *S, fg_reader *r) { return bulk(S, r, 1, CUDA_SUCCESS); }
CUresult fgs_bulk_dtoh(fgs_session *S, fg_reader *r) { return bulk(S, r, 0, CUDA_SUCCESS); }
CUresult fgs_bulk_skip(fgs_session *S, int htod, fg_reader *r, CUresult err) { return bulk(S, r, htod, err); }

const char *fgs_bulk_error(fgs_session *S) { return S->bulk && S->bulk->error[0] ? S->bulk->error : NULL; }

/* ---- staged async device→host copies delivered over the bulk path (SPEC.md, "Replies") ----
 * A REPLY names each such copy with FG_LATER_BULK and the connection count C; right after the REPLY frame the copies'
 * bytes follow, in id order, each cut into FG_BULK_PIECE pieces, the k-th piece of the reply on connection k mod C.
 * The bytes are already staged in host memory (the reply waited for their streams), so each lane only writes. */

int fgs_bulk_deliver_lanes(fgs_session *S) {
    /* only connections whose HELLO_OK went out: the client reads that before anything else on them */
    int n = S->bulk ? n_ready(S->bulk) + 1 : 1;
    return n > FG_LATER_MAX_C ? FG_LATER_MAX_C : n;
}

typedef struct {
    fgs_session *S;
    int fd, lane, C, failed;
    const fgs_later *later;
    size_t nl;
    pthread_t t;
} dlane;

static void *deliver_lane(void *arg) {
    dlane *L = (dlane *)arg;
    uint64_t k = 0; /* the reply's piece count so far */
    for (size_t i = 0; i < L->nl && !L->failed; i++) {
        const fgs_later *e = &L->later[i];
        if (!e->bulk) continue;
        for (size_t off = 0; off < e->n && !L->failed; off += FG_BULK_PIECE, k++) {
            if (k % (uint64_t)L->C != (uint64_t)L->lane) continue;
            size_t len = e->n - off < FG_BULK_PIECE ? e->n - off : FG_BULK_PIECE;
            if (fg_io_full(L->fd, (uint8_t *)e->data + off, len, 1)) L->failed = errno == EAGAIN ? -2 : -1;
        }
    }
    if (L->failed) { /* the other lanes stop now, not at a deadline */
        if (L->S->client_fd >= 0) shutdown(L->S->client_fd, SHUT_RDWR);
        fgs_bulk_shutdown_data(L->S);
    }
    return NULL;
}

int fgs_bulk_deliver(fgs_session *S, int fd, const fgs_later *later, size_t nl, int C) {
    struct fgs_bulk *B = bulk_of(S);
    if (!B || C < 1 || C > n_ready(B) + 1 || C > FG_LATER_MAX_C) return -1;
    dlane L[FG_LATER_MAX_C];
    int started = 1;
    for (int i = 0; i < C; i++) L[i] = (dlane){S, i ? B->data_fd[i - 1] : fd, i, C, 0, later, nl, 0};
    for (int i = 1; i < C; i++) {
        if (pthread_create(&L[i].t, NULL, deliver_lane, &L[i])) {
            L[0].failed = -1;
            fgs_bulk_shutdown_data(S);
            break;
        }
        started++;
    }
    if (!L[0].failed) deliver_lane(&L[0]);
    int bad = L[0].failed;
    for (int i = 1; i < started; i++) {
        pthread_join(L[i].t, NULL);
        if (L[i].failed && !bad) bad = L[i].failed;
    }
    if (bad) fgs_log(S, "delivering async device-to-host copies over %d connection(s) failed: %s", C,
                     bad == -2 ? "the client took nothing for the I/O timeout" : "a connection broke");
    if (!bad) {
        for (size_t i = 0; i < nl; i++)
            if (later[i].bulk) {
                B->delivered++;
                B->delivered_bytes += later[i].n;
            }
    }
    return bad ? -1 : 0;
}
