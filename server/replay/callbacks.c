/* callbacks.c — host functions and stream callbacks run in the client. The client opens a second connection to
 * its session (the node agent checks the session's secret and hands it to this worker: fgs_set_callback_fd).
 * cuLaunchHostFunc / cuStreamAddCallback are replayed with a trampoline the driver calls in stream order; the
 * trampoline sends RUN {cookie, status} on that connection and waits for DONE {cookie}, so work after the host
 * function waits for it, as it would locally, while the client's submitting thread never blocks. A callback
 * captured into a graph runs at every launch of the graph (its cookie stays valid for the session). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    uint32_t pad;
} cb_msg;

struct fgs_callback {
    fgs_session *S;
    uint64_t cookie;
    struct fgs_callback *next;
};

static pthread_mutex_t cb_mu = PTHREAD_MUTEX_INITIALIZER; /* one worker process serves one session */

FGS_EXPORT int fgs_set_callback_fd(fgs_session *S, int fd) {
    int fl = fcntl(fd, F_GETFL); /* the agent's sockets are non-blocking; the trampoline waits on this one */
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) return -1;
    pthread_mutex_lock(&cb_mu);
    int old = S->cb_fd;
    S->cb_fd = fd;
    pthread_mutex_unlock(&cb_mu);
    if (old > 0) close(old);
    return 0;
}

static void run_remote(struct fgs_callback *c, CUresult status) {
    fgs_session *S = c->S;
    pthread_mutex_lock(&cb_mu);
    int fd = S->cb_fd;
    int ok = 0;
    if (fd > 0) {
        cb_msg m = {CB_MAGIC, CB_RUN, c->cookie, (int32_t)status, 0}, d;
        memset(&d, 0, sizeof d);
        int w = fg_io_full(fd, &m, sizeof m, 1), rd = w ? -1 : fg_io_full(fd, &d, sizeof d, 0);
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

static struct fgs_callback *new_callback(fgs_session *S, uint64_t cookie) {
    struct fgs_callback *c = (struct fgs_callback *)calloc(1, sizeof *c);
    if (!c) return NULL;
    c->S = S;
    c->cookie = cookie;
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
    struct fgs_callback *c = new_callback(S, cookie);
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
