/* callbacks.c — host functions and stream callbacks (cuLaunchHostFunc, cuStreamAddCallback), run in the client in
 * stream order. The stub opens a second connection to its session (once, at the first one; the server checks
 * the session's secret) and a thread that serves it: the server replays the call with a trampoline that, when
 * the stream reaches it, sends RUN {cookie, status, n} and the data of n async device→host copies made before it
 * on its stream (protocol/SPEC.md, "Callbacks"); this thread writes those into the application's buffers (batch.c
 * checks each id and length against what the stub asked for), calls the function and answers DONE, and only then
 * does the stream go on. The submitting thread returns at once, as with the driver. Host functions submitted
 * and not yet run are counted (captured ones run at each graph launch and are not): an async host→device copy
 * from pinned memory waits for them (fgc_host_fns_wait), since the driver reads such a source only when the copy
 * runs. If the channel cannot be opened (an older server), the stub falls back to waiting for the stream on the
 * submitting thread and calling the function there — still in stream order. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fg_io.h"
#include "fgc_impl.h"
#include "fgc_internal.h"

#define CB_MAGIC 0x42434746u /* "FGCB" */
enum { CB_RUN = 1, CB_DONE = 2 };

typedef struct {
    uint32_t magic, kind;
    uint64_t cookie;
    int32_t status;
    uint32_t n_copies; /* RUN: async device→host copies that follow, each u64 id, u64 length, bytes */
} cb_msg;

typedef struct {
    uint64_t cookie;
    CUhostFn fn;
    CUstreamCallback cb;
    CUstream stream;
    void *data;
    int counted; /* in `outstanding` until its DONE (0: captured into a graph, or already run) */
} cb_entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ran = PTHREAD_COND_INITIALIZER; /* signalled when `outstanding` drops or the channel ends */
static cb_entry *entries; /* kept for the process: a callback captured into a graph runs at every launch */
static size_t n_entries, cap_entries;
static uint64_t next_cookie = 1;
static int chan_fd = -1, chan_state; /* 0 not tried, 1 open, -1 unavailable */
static int chan_ended;               /* the callback connection failed: no host function runs any more */
static int outstanding;              /* counted host functions not yet run (changed under mu, read without) */
static __thread int t_serving;       /* this is the callback thread */

int fgc_open_callback_channel(void);

/* Receive a RUN message's copies into the application's buffers. All or nothing: on failure the ones received
 * are pending again (the next reply writes them; the function never runs). Returns 0 or -1. */
static int receive_copies(int fd, uint32_t n) {
    uint64_t *ids = NULL;
    uint32_t got = 0, cap = 0;
    int rc = 0;
    for (uint32_t i = 0; i < n && rc == 0; i++) {
        uint64_t hd[2];
        void *dst;
        if (got == cap) {
            uint32_t nc = cap ? cap * 2 : 16;
            uint64_t *ni = nc > cap ? (uint64_t *)realloc(ids, nc * sizeof *ni) : NULL;
            if (!ni) {
                rc = -1;
                break;
            }
            ids = ni;
            cap = nc;
        }
        int to = fg_io_timeout_ms();
        if (fg_io_read_deadline(fd, hd, sizeof hd, to, to, NULL) || fgc_later_claim(hd[0], hd[1], 1, &dst) != 1) {
            rc = -1;
            break;
        }
        ids[got++] = hd[0];
        if (hd[1] && fg_io_read_deadline(fd, dst, (size_t)hd[1], to, to, NULL)) rc = -1;
    }
    if (rc) fgc_log(FGC_LOG_ERROR, "the server sent async copy data the stub did not ask for (or the callback "
                                   "connection failed); host functions no longer run");
    for (uint32_t i = 0; i < got; i++) fgc_later_settle(ids[i], rc == 0);
    free(ids);
    return rc;
}

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    t_serving = 1;
    cb_msg m;
    int rd;
    /* Idle between RUN messages for as long as the session lasts; a RUN that has begun must arrive whole. */
    while (!(rd = fg_io_read_deadline(fd, &m, sizeof m, -1, fg_io_timeout_ms(), NULL)) && m.magic == CB_MAGIC &&
           m.kind == CB_RUN) {
        if (receive_copies(fd, m.n_copies)) break;
        cb_entry e = {0};
        int found = 0;
        pthread_mutex_lock(&mu);
        if (m.cookie >= 1 && m.cookie <= n_entries) {
            e = entries[m.cookie - 1];
            found = 1;
        }
        pthread_mutex_unlock(&mu);
        if (found && e.fn) e.fn(e.data);
        else if (found && e.cb) e.cb(e.stream, (CUresult)m.status, e.data);
        cb_msg d = {CB_MAGIC, CB_DONE, m.cookie, 0, 0};
        int failed = fg_io_full(fd, &d, sizeof d, 1);
        if (found && e.counted) { /* what it wrote is in memory now: copies from pinned memory may read it */
            pthread_mutex_lock(&mu);
            if (entries[m.cookie - 1].counted) {
                entries[m.cookie - 1].counted = 0;
                __atomic_sub_fetch(&outstanding, 1, __ATOMIC_RELEASE);
                pthread_cond_broadcast(&ran);
            }
            pthread_mutex_unlock(&mu);
        }
        if (failed) break;
    }
    /* The session ended or the server misbehaved: host functions no longer run; waiters learn it. */
    if (rd == -2)
        fgc_log(FGC_LOG_WARN, "the server sent part of a host function's RUN message, then nothing for %d s; "
                              "closing the callback connection", fg_io_timeout_ms() / 1000);
    pthread_mutex_lock(&mu);
    chan_ended = 1;
    __atomic_store_n(&outstanding, 0, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&ran);
    pthread_mutex_unlock(&mu);
    shutdown(fd, SHUT_RDWR);
    return NULL;
}

int fgc_host_fns_outstanding(void) { return __atomic_load_n(&outstanding, __ATOMIC_ACQUIRE); }

CUresult fgc_host_fns_wait(void) {
    if (t_serving || !fgc_host_fns_outstanding()) return CUDA_SUCCESS; /* a host function calling CUDA: no wait */
    /* The server must get the host functions' records to run them; the batch may still hold them. */
    pthread_mutex_lock(&g_fgc.mu);
    int rc = g_fgc.broken ? -1 : fgc_send_pending();
    pthread_mutex_unlock(&g_fgc.mu);
    if (rc) return fgc_state_error();
    CUresult r = CUDA_SUCCESS;
    pthread_mutex_lock(&mu);
    while (outstanding > 0 && !chan_ended) {
        if (__atomic_load_n(&g_fgc.broken, __ATOMIC_RELAXED)) break; /* the session ended: never wait for ever */
        struct timespec t;
        clock_gettime(CLOCK_REALTIME, &t);
        t.tv_nsec += 100 * 1000 * 1000;
        if (t.tv_nsec >= 1000000000L) {
            t.tv_sec++;
            t.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&ran, &mu, &t);
    }
    if (chan_ended) r = CUDA_ERROR_OPERATING_SYSTEM; /* as the server reports a host function it could not run */
    else if (outstanding > 0) r = fgc_state_error();
    pthread_mutex_unlock(&mu);
    return r;
}

/* Returns 1 when the channel is open (opening it the first time). */
static int channel(void) {
    pthread_mutex_lock(&mu);
    if (chan_state == 0) {
        chan_state = -1;
        int fd = fgc_open_callback_channel();
        pthread_t t;
        if (fd >= 0) {
            pthread_attr_t a;
            pthread_attr_init(&a);
            pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
            if (pthread_create(&t, &a, serve, (void *)(intptr_t)fd) == 0) {
                chan_fd = fd;
                chan_state = 1;
            } else {
                close(fd);
            }
            pthread_attr_destroy(&a);
        }
    }
    int ok = chan_state == 1;
    pthread_mutex_unlock(&mu);
    return ok;
}

static uint64_t remember(CUhostFn fn, CUstreamCallback cb, CUstream s, void *data, int counted) {
    pthread_mutex_lock(&mu);
    uint64_t cookie = 0;
    if (n_entries == cap_entries) {
        size_t cap = cap_entries ? cap_entries * 2 : 64;
        cb_entry *ne = (cb_entry *)realloc(entries, cap * sizeof *ne);
        if (ne) {
            entries = ne;
            cap_entries = cap;
        }
    }
    if (n_entries < cap_entries) {
        counted = counted && !chan_ended; /* no host function runs after the channel ended: none to wait for */
        entries[n_entries++] = (cb_entry){next_cookie, fn, cb, s, data, counted};
        __atomic_add_fetch(&outstanding, counted, __ATOMIC_RELEASE);
        cookie = next_cookie++;
    }
    pthread_mutex_unlock(&mu);
    return cookie;
}

/* Not submitted after all: nothing to wait for. */
static void forget(uint64_t cookie) {
    pthread_mutex_lock(&mu);
    if (entries[cookie - 1].counted) {
        entries[cookie - 1].counted = 0;
        __atomic_sub_fetch(&outstanding, 1, __ATOMIC_RELEASE);
        pthread_cond_broadcast(&ran);
    }
    pthread_mutex_unlock(&mu);
}

static CUresult submit(uint16_t op, CUstream s, uint64_t cookie) {
    fg_writer *w = fgc_begin(op);
    if (!w) {
        forget(cookie);
        return fgc_last_error();
    }
    fgc_put_handle(w, s);
    fg_put_u64(w, cookie);
    return fgc_async();
}

/* Whether a host function on s is captured into a graph (it then runs at each launch, not once). */
static int captured(CUstream s) {
    if (!fgc_capture_active()) return 0;
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    return cuStreamIsCapturing(s, &st) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_NONE;
}

/* ---- the fallback: wait for the stream here, then call ---- */
static CUresult capturing(CUstream s) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = cuStreamIsCapturing(s, &st);
    if (r != CUDA_SUCCESS) return r;
    if (st != CU_STREAM_CAPTURE_STATUS_NONE) {
        static int logged;
        return fgc_unsupported("host functions inside stream capture without a callback connection", &logged);
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
    FGC_REQUIRE_INIT();
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
    if (channel()) {
        uint64_t cookie = remember(fn, NULL, hStream, userData, !captured(hStream));
        return cookie ? submit(FG_OP_cuLaunchHostFunc, hStream, cookie) : CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = capturing(hStream);
    if (r != CUDA_SUCCESS) return r;
    r = cuStreamSynchronize(hStream);
    if (r != CUDA_SUCCESS) return r;
    fn(userData);
    return CUDA_SUCCESS;
}

CUresult fgc_cuStreamAddCallback(CUstream hStream, CUstreamCallback callback, void *userData, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!callback || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (channel()) {
        uint64_t cookie = remember(NULL, callback, hStream, userData, !captured(hStream));
        return cookie ? submit(FG_OP_cuStreamAddCallback, hStream, cookie) : CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = capturing(hStream);
    if (r != CUDA_SUCCESS) return r;
    /* The callback learns the stream's status; a failed stream still calls it, as the driver does. */
    CUresult st = cuStreamSynchronize(hStream);
    if (st == CUDA_ERROR_INVALID_HANDLE || st == CUDA_ERROR_INVALID_CONTEXT || st == CUDA_ERROR_NOT_INITIALIZED)
        return st;
    callback(hStream, st, userData);
    return CUDA_SUCCESS;
}

/* A host node of a graph built by hand (graph_build.c): a cookie that stays valid for the session, run at each
 * launch; 0 when no callback connection can be opened (the node is then refused). */
uint64_t fgc_host_node_cookie(CUhostFn fn, void *userData) {
    if (!fn || !channel()) return 0;
    return remember(fn, NULL, NULL, userData, 0);
}

int fgc_host_node_lookup(uint64_t cookie, CUhostFn *fn, void **userData) {
    pthread_mutex_lock(&mu);
    int ok = cookie >= 1 && cookie <= n_entries && entries[cookie - 1].fn;
    if (ok) {
        *fn = entries[cookie - 1].fn;
        *userData = entries[cookie - 1].data;
    }
    pthread_mutex_unlock(&mu);
    return ok;
}
