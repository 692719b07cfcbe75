/* callbacks.c — host functions and stream callbacks (cuLaunchHostFunc, cuStreamAddCallback). They run in the
 * client process, in stream order: the stub waits (on the server) for the work enqueued on the stream before
 * the callback, then calls it on the submitting thread before returning, so everything enqueued afterwards
 * follows it. The submitting thread therefore blocks until the callback has run (the driver would return at
 * once); a callback that waits for work the same thread submits later would deadlock, and host nodes inside
 * stream capture are not supported (the wait would break the capture). */
#include "fgc_impl.h"
#include "fgc_internal.h"

static CUresult capturing(CUstream s) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    CUresult r = cuStreamIsCapturing(s, &st);
    if (r != CUDA_SUCCESS) return r;
    if (st != CU_STREAM_CAPTURE_STATUS_NONE) {
        static int logged;
        return fgc_unsupported("host functions inside stream capture (graph host nodes)", &logged);
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
    FGC_REQUIRE_INIT();
    if (!fn) return CUDA_ERROR_INVALID_VALUE;
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
    CUresult r = capturing(hStream);
    if (r != CUDA_SUCCESS) return r;
    /* The callback learns the stream's status; a failed stream still calls it, as the driver does. */
    CUresult st = cuStreamSynchronize(hStream);
    if (st == CUDA_ERROR_INVALID_HANDLE || st == CUDA_ERROR_INVALID_CONTEXT || st == CUDA_ERROR_NOT_INITIALIZED)
        return st;
    callback(hStream, st, userData);
    return CUDA_SUCCESS;
}
