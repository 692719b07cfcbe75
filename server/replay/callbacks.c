/* callbacks.c — host functions and stream callbacks run in the client. The client opens a second connection to
 * its session (the node agent checks the session's secret and hands it to this worker: fgs_set_callback_fd).
 * cuLaunchHostFunc / cuStreamAddCallback are replayed with a trampoline the driver calls in stream order; the
 * trampoline sends RUN {cookie, status, n} on that connection and waits for DONE {cookie}, so work after the host
 * function waits for it, as it would locally, while the client's submitting thread never blocks. The n records
 * after RUN are the staged async device→host copies the function must see: those of its stream enqueued before
 * it and not yet delivered (memory.c), which have finished since the stream reached the function; the client
 * writes them before calling it, and the next reply leaves them out. A callback captured into a graph runs at
 * every launch of the graph (its cookie stays valid for the session) and carries no copies. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fg_io.h"
#include "fgs_impl.h"
#include "fgs_public.h"
#include "fgs_session.h"

#define CB_MAGIC 0x42434746u /* "FGCB" */
enum { CB_RUN = 1, CB_DONE = 2 };

typedef struct {
    uint32_t magic, kind;
    uint64_t cookie;
    int32_t status;
    uint32_t n_copies; /* RUN: staged copies that follow, each u64 id, u64 length, bytes; DONE: 0 */
} cb_msg;

struct fgs_callback {
    fgs_session *S;
    uint64_t cookie;
    CUstream stream;
    uint64_t upto; /* staged copies with a smaller id were enqueued before the host function */
    int copies;    /* 0 when captured into a graph: it runs at each launch, on whatever stream launches it */
    struct fgs_callback *next;
};

static pthread_mutex_t cb_mu = PTHREAD_MUTEX_INITIALIZER; /* one worker process serves one session */

FGS_EXPORT int fgs_set_callback_fd(fgs_session *S, int fd) {
    int fl = fcntl(fd, F_GETFL); /* the agent's sockets are non-blocking; the trampoline waits on this one */
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return -1;
    fg_io_send_deadline(fd); /* RUN to a client that stopped reading fails after the I/O timeout */
    pthread_mutex_lock(&cb_mu);
    int old = S->cb_fd;
    S->cb_fd = fd;
    pthread_mutex_unlock(&cb_mu);
    if (old > 0) close(old);
    return 0;
}

/* Send RUN with the claimed copies. Returns 0 or -1. */
static int send_run(int fd, const cb_msg *m, const fgs_later_ref *refs, size_t n) {
    struct iovec stack_iov[33];
    size_t niov = 1 + 2 * n;
    struct iovec *iov = niov <= 33 ? stack_iov : (struct iovec *)malloc(niov * sizeof *iov);
    uint64_t *heads = (uint64_t *)malloc((n ? n : 1) * 16);
    int rc = -1;
    if (iov && heads) {
        int c = 0;
        iov[c++] = (struct iovec){(void *)m, sizeof *m};
        for (size_t i = 0; i < n; i++) {
            heads[2 * i] = refs[i].id;
            heads[2 * i + 1] = refs[i].n;
            iov[c++] = (struct iovec){&heads[2 * i], 16};
            if (refs[i].n) iov[c++] = (struct iovec){(void *)refs[i].data, refs[i].n};
        }
        rc = fgs_write_all(fd, iov, c);
    }
    if (iov != stack_iov) free(iov);
    free(heads);
    return rc;
}

static void run_remote(struct fgs_callback *c, CUresult status) {
    fgs_session *S = c->S;
    fgs_later_ref *refs = NULL;
    size_t n = 0;
    pthread_mutex_lock(&cb_mu);
    int fd = S->cb_fd;
    int ok = 0;
    if (fd > 0) {
        if (c->copies) n = fgs_later_claim(S, c->stream, c->upto, &refs);
        cb_msg m = {CB_MAGIC, CB_RUN, c->cookie, (int32_t)status, (uint32_t)n}, d;
        memset(&d, 0, sizeof d);
        /* The host function may run as long as it likes; a DONE that has begun must arrive whole. */
        int w = send_run(fd, &m, refs, n), rd = w ? -1 : fg_io_read_deadline(fd, &d, sizeof d, -1, fg_io_timeout_ms(), NULL);
        if (rd == -2)
            fgs_log(S, "the client's callback connection sent part of a DONE message, then nothing for %d s; closing it",
                    fg_io_timeout_ms() / 1000);
        ok = !w && !rd && d.magic == CB_MAGIC && d.kind == CB_DONE && d.cookie == c->cookie;
        if (!ok)
            fgs_log(S, "callback connection failed (write %d, read %d, magic %x kind %u cookie %llu/%llu, errno %d)", w,
                    rd, d.magic, d.kind, (unsigned long long)d.cookie, (unsigned long long)c->cookie, errno);
        if (!ok) { /* the client went away or misbehaved: no more callbacks for this session */
            close(fd);
            S->cb_fd = -1;
        }
    }
    pthread_mutex_unlock(&cb_mu);
    /* Delivered: freed. Not delivered: the next reply carries them (the client accepts an id it already has). */
    if (n) fgs_later_release(S, refs, n, ok);
    free(refs);
    if (!ok) {
        __atomic_store_n(&S->cb_failed, 1, __ATOMIC_RELAXED); /* the client hears of it with its next sync call */
        static int logged;
        if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
            fgs_log(S, "a host function could not run in the client (no callback connection); it was skipped and "
                       "the client is told CUDA_ERROR_OPERATING_SYSTEM");
    }
}

static void CUDA_CB host_trampoline(void *arg) { run_remote((struct fgs_callback *)arg, CUDA_SUCCESS); }

static void CUDA_CB stream_trampoline(CUstream s, CUresult status, void *arg) {
    (void)s;
    run_remote((struct fgs_callback *)arg, status);
}

static struct fgs_callback *new_callback(fgs_session *S, uint64_t cookie, CUstream s) {
    struct fgs_callback *c = (struct fgs_callback *)calloc(1, sizeof *c);
    if (!c) return NULL;
    c->S = S;
    c->cookie = cookie;
    c->stream = s;
    c->upto = S->later_next;
    /* Only a host function that runs on this stream, once, may carry its copies; when unsure, none. */
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_ACTIVE;
    c->copies = S->api->cuStreamIsCapturing && S->api->cuStreamIsCapturing(s, &st) == CUDA_SUCCESS &&
                st == CU_STREAM_CAPTURE_STATUS_NONE;
    c->next = S->callbacks;
    S->callbacks = c;
    return c;
}

static CUresult enqueue(fgs_session *S, fg_reader *r, int stream_callback) {
    uint64_t sid = fg_get_u64(r), cookie = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (stream_callback ? !S->api->cuStreamAddCallback : !S->api->cuLaunchHostFunc)
        return fgs_missing(S, stream_callback ? "cuStreamAddCallback" : "cuLaunchHostFunc");
    struct fgs_callback *c = new_callback(S, cookie, (CUstream)s);
    if (!c) return CUDA_ERROR_OUT_OF_MEMORY;
    return stream_callback ? S->api->cuStreamAddCallback((CUstream)s, stream_trampoline, c, 0)
                           : S->api->cuLaunchHostFunc((CUstream)s, host_trampoline, c);
}

CUresult fgs_cuLaunchHostFunc(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    return enqueue(S, r, 0);
}

CUresult fgs_cuStreamAddCallback(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    return enqueue(S, r, 1);
}

void fgs_callbacks_close(fgs_session *S) {
    pthread_mutex_lock(&cb_mu);
    if (S->cb_fd > 0) close(S->cb_fd);
    S->cb_fd = -1;
    pthread_mutex_unlock(&cb_mu);
    while (S->callbacks) {
        struct fgs_callback *n = S->callbacks->next;
        free(S->callbacks);
        S->callbacks = n;
    }
}

/* A host node of a graph the client builds (graph_build.c): the trampoline and its argument for the cookie. It
 * runs at every launch of the graph, on whatever stream launches it, and carries no staged copies. */
uint64_t fgs_callback_cookie_of(fgs_session *S, CUhostFn fn, void *arg) {
    if (fn != host_trampoline) return 0;
    for (struct fgs_callback *c = S->callbacks; c; c = c->next)
        if (c == arg) return c->cookie;
    return 0;
}

CUresult fgs_callback_for_graph(fgs_session *S, uint64_t cookie, CUhostFn *fn, void **arg) {
    struct fgs_callback *c = (struct fgs_callback *)calloc(1, sizeof *c);
    if (!c) return CUDA_ERROR_OUT_OF_MEMORY;
    c->S = S;
    c->cookie = cookie;
    c->copies = 0;
    c->next = S->callbacks;
    S->callbacks = c;
    *fn = host_trampoline;
    *arg = c;
    return CUDA_SUCCESS;
}
