/* sim_capture.c - stream capture state. The simulated device does not capture streams into graphs (it has no
 * graph API and no cuStreamBeginCapture), so every stream reports CU_STREAM_CAPTURE_STATUS_NONE; these calls
 * exist because the CUDA runtime asks them around ordinary work. The per-thread capture mode of
 * cuThreadExchangeStreamCaptureMode is kept as the driver keeps it (it only matters while something captures,
 * which never happens here). */
#include "sim.h"

static _Thread_local CUstreamCaptureMode t_mode = CU_STREAM_CAPTURE_MODE_GLOBAL;

SIM_API CUresult cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus)
{
    if (!captureStatus)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
    sim_unlock();
    if (rc == CUDA_SUCCESS)
        *captureStatus = CU_STREAM_CAPTURE_STATUS_NONE;
    return rc;
}

SIM_API CUresult cuStreamGetCaptureInfo_v3(CUstream hStream, CUstreamCaptureStatus *captureStatus_out,
                                           cuuint64_t *id_out, CUgraph *graph_out,
                                           const CUgraphNode **dependencies_out, const CUgraphEdgeData **edgeData_out,
                                           size_t *numDependencies_out)
{
    if (!captureStatus_out || (edgeData_out && !dependencies_out))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    *captureStatus_out = CU_STREAM_CAPTURE_STATUS_NONE;
    /* Not capturing: there is no sequence, graph or dependency set; the outputs say so. */
    if (id_out)
        *id_out = 0;
    if (graph_out)
        *graph_out = NULL;
    if (dependencies_out)
        *dependencies_out = NULL;
    if (edgeData_out)
        *edgeData_out = NULL;
    if (numDependencies_out)
        *numDependencies_out = 0;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuThreadExchangeStreamCaptureMode(CUstreamCaptureMode *mode)
{
    if (!mode)
        return CUDA_ERROR_INVALID_VALUE;
    if (*mode != CU_STREAM_CAPTURE_MODE_GLOBAL && *mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        *mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    CUstreamCaptureMode old = t_mode;
    t_mode = *mode;
    *mode = old;
    return CUDA_SUCCESS;
}
