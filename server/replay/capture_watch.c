/* capture_watch.c — says which call invalidated a stream capture. The real driver invalidates a capture, often
 * silently, when a call it deems unsafe runs while the capture is under way (in global mode: on any thread), and
 * the application only learns of it at a later call ("operation failed due to a previous error during capture").
 * While a capture that this worker began is active, the status of its stream is read after every call; the first
 * call after which it reads "invalidated" is logged once per capture, with the call's result. Costs nothing while
 * no capture is under way, one cuStreamIsCapturing per call and capturing stream while one is (two: it is read
 * before each call too, to tell the call from the worker's work before it). Op 0: the worker's own work after a
 * batch. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define WATCHED 16

static uint64_t g_streams[WATCHED]; /* virtual ids: a stream destroyed meanwhile is looked up, never used */
static size_t g_n;

void fgs_capture_watch(fgs_session *S, unsigned op, const uint8_t *args, size_t len, CUresult res) {
    if (!S->api->cuStreamIsCapturing) return;
    int began = op == FG_OP_cuStreamBeginCapture_v2 || op == FG_OP_cuStreamBeginCaptureToGraph;
    if (began && res == CUDA_SUCCESS && len >= 8) {
        uint64_t sid;
        memcpy(&sid, args, 8);
        if (op == FG_OP_cuStreamBeginCapture_v2) fgs_capture_began(sid); /* not into an application's graph */
        if (g_n < WATCHED) g_streams[g_n++] = sid;
    }
    for (size_t i = g_n; i-- > 0;) {
        CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
        void *s = NULL;
        if (fgs_handle_get(S, FGH_STREAM, g_streams[i], &s) == 0 &&
            S->api->cuStreamIsCapturing((CUstream)s, &st) == CUDA_SUCCESS && st == CU_STREAM_CAPTURE_STATUS_ACTIVE)
            continue;
        if (st == CU_STREAM_CAPTURE_STATUS_INVALIDATED)
            fgs_log(S, "a stream capture was invalidated by %s (result %d) or by a call of another thread before it",
                    op ? fg_op_name(op) : "the worker's work after a batch (pending frees)", (int)res);
        g_streams[i] = g_streams[--g_n]; /* ended, invalidated or gone: watched no more */
    }
}

/* Before a call runs: a capture found invalidated here was invalidated since the previous call's own check, so by
 * the worker's work between the two (the reply to the previous batch, the work after it) or by another thread. */
void fgs_capture_watch_before(fgs_session *S, unsigned op) {
    if (!g_n || !S->api->cuStreamIsCapturing) return;
    for (size_t i = g_n; i-- > 0;) {
        CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
        void *s = NULL;
        if (fgs_handle_get(S, FGH_STREAM, g_streams[i], &s) != 0 ||
            S->api->cuStreamIsCapturing((CUstream)s, &st) != CUDA_SUCCESS || st != CU_STREAM_CAPTURE_STATUS_INVALIDATED)
            continue; /* active (or gone, or ended: the check after the call sorts those out) */
        fgs_log(S, "a stream capture was found invalidated before %s began: by the worker's work since the previous "
                "call (its reply, the work after its batch) or by another thread", fg_op_name(op));
        g_streams[i] = g_streams[--g_n];
    }
}
