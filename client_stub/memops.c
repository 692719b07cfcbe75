/* memops.c — stream memory operations: batched (cuStreamBatchMemOp_v2: wait and write values of 32 and 64 bits,
 * flushes of remote writes, memory barriers) and single (cuStreamWaitValue32/64_v2, cuStreamWriteValue32/64_v2).
 *
 * A batch is one async record: the stream and the operations as the application filled them; a single operation
 * is one async record "u64 stream, u64 address, u32 or u64 value, u32 flags". The addresses must
 * be device memory the stub knows (allocations, module globals, managed memory: the ranges the node handed out).
 * A host address (pinned or mapped host memory, which CUDA lets these operations reach natively) lies in this
 * process, which the remote GPU cannot see, so such a batch is refused with CUDA_ERROR_NOT_SUPPORTED and a log
 * line, a single operation alike. The node checks the addresses again against the session's memory. Dirty managed
 * pages go to the device before a batch or a single operation is queued, and host copies of managed memory count as
 * stale after a batch or a write (mirror.c).
 * cuMemBatchDecompressAsync is one sync record (its errorIndex comes back): the stream, the count, the flags and the
 * application's array; the node checks every operation's memory (server/replay/memops.c) and its driver decides the
 * rest (H100 and H200 have no decompression engine). */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define MAX_OPS 256 /* the driver's documented bound ("less than 256") with one to spare: the node decides */

static int device_address(uint64_t p, uint64_t n) {
    uint64_t base = 0, size = 0;
    return fgc_device_range_find(p, &base, &size) && p - base <= size && n <= size - (p - base);
}

/* Host memory, or memory the node never handed out: refused (once logged per call name). */
static CUresult refuse_host(const char *call, int *logged) {
    if (!__atomic_exchange_n(logged, 1, __ATOMIC_RELAXED))
        fgc_log(FGC_LOG_WARN, "%s on memory that is not device memory of the node (host memory cannot be reached by "
                              "the remote GPU): CUDA_ERROR_NOT_SUPPORTED", call);
    return CUDA_ERROR_NOT_SUPPORTED;
}

/* The optional operations, as the driver gates them: a NOR comparison, a flush of remote writes (standalone or as
 * a wait's flag) and 64-bit values are refused at the call (CUDA_ERROR_NOT_SUPPORTED, logged once) where the
 * device's attribute says it cannot do them, as the driver refuses them, instead of failing later at a sync. The
 * attributes are the node's (memoized: no round trip after the first). */
static int device_can(CUdevice_attribute a) {
    CUdevice dev = 0;
    int v = 1;
    if (cuCtxGetDevice(&dev) != CUDA_SUCCESS || cuDeviceGetAttribute(&v, a, dev) != CUDA_SUCCESS) return 1;
    return v != 0;
}

static CUresult optional_op(const char *call, unsigned operation, unsigned flags) {
    static int logged[3];
    const char *what = NULL;
    int i = 0;
    int wait = operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || operation == CU_STREAM_MEM_OP_WAIT_VALUE_64;
    if ((operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 || operation == CU_STREAM_MEM_OP_WRITE_VALUE_64) &&
        !device_can(CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS))
        what = "64-bit values (CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS)";
    else if (wait && (flags & ~(unsigned)CU_STREAM_WAIT_VALUE_FLUSH) == CU_STREAM_WAIT_VALUE_NOR &&
             !device_can(CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR))
        what = "NOR waits (CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR)", i = 1;
    else if ((operation == CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES || (wait && (flags & CU_STREAM_WAIT_VALUE_FLUSH))) &&
             !device_can(CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES))
        what = "flushes of remote writes (CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES)", i = 2;
    if (!what) return CUDA_SUCCESS;
    if (!__atomic_exchange_n(&logged[i], 1, __ATOMIC_RELAXED))
        fgc_log(FGC_LOG_WARN, "%s: the device has no %s: CUDA_ERROR_NOT_SUPPORTED", call, what);
    return CUDA_ERROR_NOT_SUPPORTED;
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
        static int logged;
        if (n && !device_address(p->waitValue.address, n)) return refuse_host("cuStreamBatchMemOp_v2", &logged);
        CUresult r = optional_op("cuStreamBatchMemOp_v2", p->operation, n ? p->waitValue.flags : 0);
        if (r != CUDA_SUCCESS) return r;
    }
    fg_writer *w = fgc_begin(FG_OP_cuStreamBatchMemOp_v2);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, stream);
    fg_put_u32(w, count);
    fg_put_u32(w, flags);
    if (count) fg_put(w, paramArray, (size_t)count * sizeof *paramArray);
    return fgc_async();
}

/* One wait or write of `n` (4 or 8) bytes: the address checked as a batch's are, then one async record. */
static CUresult single(uint16_t op, const char *call, int *logged, CUstream stream, CUdeviceptr addr, uint64_t value,
                       unsigned n, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!device_address(addr, n)) return refuse_host(call, logged);
    int wait = op == FG_OP_cuStreamWaitValue32_v2 || op == FG_OP_cuStreamWaitValue64_v2;
    unsigned memop = wait ? (n == 4 ? CU_STREAM_MEM_OP_WAIT_VALUE_32 : CU_STREAM_MEM_OP_WAIT_VALUE_64)
                          : (n == 4 ? CU_STREAM_MEM_OP_WRITE_VALUE_32 : CU_STREAM_MEM_OP_WRITE_VALUE_64);
    CUresult r = optional_op(call, memop, wait ? flags : 0);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, stream);
    fg_put_u64(w, addr);
    if (n == 4) fg_put_u32(w, (uint32_t)value);
    else fg_put_u64(w, value);
    fg_put_u32(w, flags);
    return fgc_async();
}

CUresult fgc_cuStreamWaitValue32_v2(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags) {
    static int logged;
    return single(FG_OP_cuStreamWaitValue32_v2, "cuStreamWaitValue32_v2", &logged, stream, addr, value, 4, flags);
}

CUresult fgc_cuStreamWaitValue64_v2(CUstream stream, CUdeviceptr addr, cuuint64_t value, unsigned int flags) {
    static int logged;
    return single(FG_OP_cuStreamWaitValue64_v2, "cuStreamWaitValue64_v2", &logged, stream, addr, value, 8, flags);
}

CUresult fgc_cuStreamWriteValue32_v2(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags) {
    static int logged;
    return single(FG_OP_cuStreamWriteValue32_v2, "cuStreamWriteValue32_v2", &logged, stream, addr, value, 4, flags);
}

CUresult fgc_cuStreamWriteValue64_v2(CUstream stream, CUdeviceptr addr, cuuint64_t value, unsigned int flags) {
    static int logged;
    return single(FG_OP_cuStreamWriteValue64_v2, "cuStreamWriteValue64_v2", &logged, stream, addr, value, 8, flags);
}

#define MAX_DECOMPRESS 4096 /* operations in one decompression batch, as the node bounds it */

CUresult fgc_cuMemBatchDecompressAsync(CUmemDecompressParams *paramsArray, size_t count, unsigned int flags,
                                       size_t *errorIndex, CUstream stream) {
    FGC_REQUIRE_INIT();
    if (count && !paramsArray) return CUDA_ERROR_INVALID_VALUE;
    if (count > MAX_DECOMPRESS) {
        static int logged;
        if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
            fgc_log(FGC_LOG_WARN, "cuMemBatchDecompressAsync of more than %u operations: CUDA_ERROR_NOT_SUPPORTED",
                    MAX_DECOMPRESS);
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    struct {
        uint32_t result;
        uint64_t index;
    } __attribute__((packed)) reply;
    fg_writer *w = fgc_begin(FG_OP_cuMemBatchDecompressAsync);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, stream);
    fg_put_u64(w, count);
    fg_put_u32(w, flags);
    uint8_t want = errorIndex != NULL;
    fg_put(w, &want, 1);
    if (count) fg_put(w, paramsArray, count * sizeof *paramsArray);
    fgc_expect(&reply, sizeof reply);
    CUresult r = fgc_sync();
    if (r != CUDA_SUCCESS) return r;
    /* FG_INDEX_UNWRITTEN: the node's driver did not write it, and neither do we (as natively) */
    if (errorIndex && reply.result != CUDA_SUCCESS && reply.index != FG_INDEX_UNWRITTEN) *errorIndex = (size_t)reply.index;
    return (CUresult)reply.result;
}
