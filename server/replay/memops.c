/* memops.c — cuStreamBatchMemOp_v2 for one session: "u64 stream, u32 count, u32 flags, count x
 * CUstreamBatchMemOpParams" (the application's array as the stub copied it). The count is bounded before the array
 * is read; every wait and write must name memory of this session (its allocations and module globals, the whole
 * 4 or 8 bytes), so a batch cannot reach another process's memory or the worker's own; the operation codes and
 * flags are the driver's to check. The driver's internal field (alias) is cleared. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_OPS 256

CUresult fgs_cuStreamBatchMemOp_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t sid = fg_get_u64(r);
    uint32_t count = fg_get_u32(r), flags = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (count > MAX_OPS) return CUDA_ERROR_INVALID_VALUE;
    CUstreamBatchMemOpParams ops[MAX_OPS];
    if (count) fg_get(r, ops, (size_t)count * sizeof ops[0]);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    void *stream;
    if (fgs_handle_get(S, FGH_STREAM, sid, &stream)) return CUDA_ERROR_INVALID_HANDLE;
    for (uint32_t i = 0; i < count; i++) {
        CUstreamBatchMemOpParams *p = &ops[i];
        uint64_t n = p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32
                         ? 4
                     : p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_64
                         ? 8
                         : 0;
        if (!n) continue;
        if (!fgs_device_range_ok(S, p->waitValue.address, n)) return CUDA_ERROR_INVALID_VALUE;
        p->waitValue.alias = 0;
    }
    if (!S->api->cuStreamBatchMemOp_v2) return fgs_missing(S, "cuStreamBatchMemOp_v2");
    return S->api->cuStreamBatchMemOp_v2((CUstream)stream, count, count ? ops : NULL, flags);
}
