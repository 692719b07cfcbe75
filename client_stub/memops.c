/* memops.c — batched stream memory operations (cuStreamBatchMemOp_v2: wait and write values of 32 and 64 bits,
 * flushes of remote writes, memory barriers), and cuStreamGetCtx_v2.
 *
 * A batch is one async record: the stream and the operations as the application filled them. The addresses must
 * be device memory the stub knows (allocations, module globals, managed memory: the ranges the node handed out).
 * A host address (pinned or mapped host memory, which CUDA lets these operations reach natively) lies in this
 * process, which the remote GPU cannot see, so such a batch is refused with CUDA_ERROR_NOT_SUPPORTED and a log
 * line. The node checks the addresses again against the session's memory. Dirty managed pages go to the device
 * before the batch is queued, and host copies of managed memory count as stale after it (mirror.c).
 * cuStreamGetCtx_v2 is cuStreamGetCtx with no green context: green contexts are refused through fargpu, so a
 * stream never has one. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_OPS 256 /* the driver's documented bound ("less than 256") with one to spare: the node decides */

static int device_address(uint64_t p, uint64_t n) {
    uint64_t base = 0, size = 0;
    return fgc_device_range_find(p, &base, &size) && p - base <= size && n <= size - (p - base);
}

CUresult fgc_cuStreamBatchMemOp_v2(CUstream stream, unsigned int count, CUstreamBatchMemOpParams *paramArray,
                                   unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (count > MAX_OPS || (count && !paramArray)) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned i = 0; i < count; i++) {
        const CUstreamBatchMemOpParams *p = &paramArray[i];
        uint64_t n = p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32
                         ? 4
                     : p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_64
                         ? 8
                         : 0;
        if (n && !device_address(p->waitValue.address, n)) {
            static int logged;
            if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
                fgc_log(FGC_LOG_WARN, "cuStreamBatchMemOp_v2 on memory that is not device memory of the node (host "
                                      "memory cannot be reached by the remote GPU): CUDA_ERROR_NOT_SUPPORTED");
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    }
    fg_writer *w = fgc_begin(FG_OP_cuStreamBatchMemOp_v2);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, stream);
    fg_put_u32(w, count);
    fg_put_u32(w, flags);
    if (count) fg_put(w, paramArray, (size_t)count * sizeof *paramArray);
    return fgc_async();
}

CUresult fgc_cuStreamGetCtx_v2(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx) {
    if (!pCtx) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = cuStreamGetCtx(hStream, pCtx);
    if (r == CUDA_SUCCESS && pGreenCtx) *pGreenCtx = NULL;
    return r;
}
