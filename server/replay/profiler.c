/* profiler.c — cuProfilerStart / cuProfilerStop from the client: passed to the node's driver when it exports
 * them, so a profiler attached to this worker sees the range; otherwise (or when the driver says no profiler
 * is attached) they succeed and do nothing, as they do natively without a profiler. Never a deferred error. */
#include "fgs_impl.h"
#include "fgs_session.h"

CUresult fgs_cuProfilerStart(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)r;
    (void)out;
    if (S->api->cuProfilerStart) S->api->cuProfilerStart();
    return CUDA_SUCCESS;
}

CUresult fgs_cuProfilerStop(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)r;
    (void)out;
    if (S->api->cuProfilerStop) S->api->cuProfilerStop();
    return CUDA_SUCCESS;
}
