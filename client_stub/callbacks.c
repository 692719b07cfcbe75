/* callbacks.c — host functions and stream callbacks (cuLaunchHostFunc, cuStreamAddCallback), run in the client in
 * stream order. The stub opens a second connection to its session (once, at the first one; the server checks
 * the session's secret) and a thread that serves it: the server replays the call with a trampoline that, when
 * the stream reaches it, sends RUN {cookie, status}; this thread calls the function and answers DONE, and only
 * then does the stream go on. The submitting thread returns at once, as with the driver. If the channel cannot
 * be opened (an older server), the stub falls back to waiting for the stream on the submitting thread and
 * calling the function there — still in stream order. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
    uint32_t pad;
} cb_msg;

typedef struct {
    uint64_t cookie;
    CUhostFn fn;
    CUstreamCallback cb;
    CUstream stream;
    void *data;
} cb_entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static cb_entry *entries; /* kept for the process: a callback captured into a graph runs at every launch */
static size_t n_entries, cap_entries;
static uint64_t next_cookie = 1;
static int chan_fd = -1, chan_state; /* 0 not tried, 1 open, -1 unavailable */

int fgc_open_callback_channel(void);

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    cb_msg m;
    while (!fg_io_full(fd, &m, sizeof m, 0) && m.magic == CB_MAGIC && m.kind == CB_RUN) {
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
        if (fg_io_full(fd, &d, sizeof d, 1)) break;
    }
    return NULL;
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

static uint64_t remember(CUhostFn fn, CUstreamCallback cb, CUstream s, void *data) {
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
        entries[n_entries++] = (cb_entry){next_cookie, fn, cb, s, data};
        cookie = next_cookie++;
    }
    pthread_mutex_unlock(&mu);
    return cookie;
}

static CUresult submit(uint16_t op, CUstream s, uint64_t cookie) {
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, s);
    fg_put_u64(w, cookie);
    return fgc_async();
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
        uint64_t cookie = remember(fn, NULL, hStream, userData);
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
        uint64_t cookie = remember(NULL, callback, hStream, userData);
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
