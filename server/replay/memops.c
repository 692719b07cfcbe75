/* memops.c — stream memory operations for one session. cuStreamBatchMemOp_v2: "u64 stream, u32 count, u32 flags,
 * count x CUstreamBatchMemOpParams" (the application's array as the stub copied it); the single forms
 * cuStreamWaitValue32_v2/64_v2 and cuStreamWriteValue32_v2/64_v2: "u64 stream, u64 address, u32 or u64 value,
 * u32 flags". A batch's count is bounded before the array is read; every wait and write must name memory of this
 * session (its allocations and module globals, the whole 4 or 8 bytes), so neither form can reach another process's
 * memory or the worker's own (its staging buffers, the shared-memory region's mailboxes: host memory the driver
 * would reach); a module global's address from before a park is translated to where the global is now. The
 * operation codes and flags are the driver's to check. The driver's internal field (alias) is cleared.
 * cuMemBatchDecompressAsync: "u64 stream, u64 count, u32 flags, u8 want errorIndex, count x CUmemDecompressParams";
 * the same rule for each operation's source (srcNumBytes), destination (dstNumBytes, at least a byte: the field is a
 * hint, the decompressed size the data's) and 4-byte dstActBytes, else CUDA_ERROR_INVALID_VALUE with that
 * operation's index. The reply, also on an error: u32 the driver's result, u64 errorIndex. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_OPS 256
#define MAX_DECOMPRESS 4096 /* operations in one decompression batch (the stub refuses more) */

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
        p->waitValue.address = fgs_park_xlate(S, p->waitValue.address, n);
        if (!fgs_device_range_ok(S, p->waitValue.address, n)) return CUDA_ERROR_INVALID_VALUE;
        p->waitValue.alias = 0;
    }
    if (!S->api->cuStreamBatchMemOp_v2) return fgs_missing(S, "cuStreamBatchMemOp_v2");
    return S->api->cuStreamBatchMemOp_v2((CUstream)stream, count, count ? ops : NULL, flags);
}

/* One wait or write of `n` (4 or 8) bytes; `write` picks the call. */
static CUresult single(fgs_session *S, fg_reader *r, unsigned n, int write) {
    uint64_t sid = fg_get_u64(r), addr = fg_get_u64(r);
    uint64_t value = n == 4 ? fg_get_u32(r) : fg_get_u64(r);
    uint32_t flags = fg_get_u32(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    void *stream;
    if (fgs_handle_get(S, FGH_STREAM, sid, &stream)) return CUDA_ERROR_INVALID_HANDLE;
    addr = fgs_park_xlate(S, addr, n);
    if (!fgs_device_range_ok(S, addr, n)) return CUDA_ERROR_INVALID_VALUE;
    CUstream s = (CUstream)stream;
    if (n == 4 && !write) {
        if (!S->api->cuStreamWaitValue32_v2) return fgs_missing(S, "cuStreamWaitValue32_v2");
        return S->api->cuStreamWaitValue32_v2(s, addr, (cuuint32_t)value, flags);
    }
    if (n == 4) {
        if (!S->api->cuStreamWriteValue32_v2) return fgs_missing(S, "cuStreamWriteValue32_v2");
        return S->api->cuStreamWriteValue32_v2(s, addr, (cuuint32_t)value, flags);
    }
    if (!write) {
        if (!S->api->cuStreamWaitValue64_v2) return fgs_missing(S, "cuStreamWaitValue64_v2");
        return S->api->cuStreamWaitValue64_v2(s, addr, value, flags);
    }
    if (!S->api->cuStreamWriteValue64_v2) return fgs_missing(S, "cuStreamWriteValue64_v2");
    return S->api->cuStreamWriteValue64_v2(s, addr, value, flags);
}

CUresult fgs_cuStreamWaitValue32_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    return single(S, r, 4, 0);
}
CUresult fgs_cuStreamWaitValue64_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    return single(S, r, 8, 0);
}
CUresult fgs_cuStreamWriteValue32_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    return single(S, r, 4, 1);
}
CUresult fgs_cuStreamWriteValue64_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    return single(S, r, 8, 1);
}

CUresult fgs_cuMemBatchDecompressAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t sid = fg_get_u64(r), count = fg_get_u64(r);
    uint32_t flags = fg_get_u32(r);
    uint8_t want = 0;
    fg_get(r, &want, 1);
    if (r->failed || count > MAX_DECOMPRESS || fg_reader_left(r) != count * sizeof(CUmemDecompressParams))
        return FGS_PROTOCOL_ERROR;
    CUmemDecompressParams *ops = count ? (CUmemDecompressParams *)fgs_scratch(S, count * sizeof *ops) : NULL;
    if (count && !ops) return CUDA_ERROR_OUT_OF_MEMORY;
    if (count) fg_get(r, ops, count * sizeof *ops);
    void *stream;
    if (fgs_handle_get(S, FGH_STREAM, sid, &stream)) return CUDA_ERROR_INVALID_HANDLE;
    size_t index = FG_INDEX_UNWRITTEN; /* the H100's driver left it untouched for a device without an engine */
    CUresult res = CUDA_SUCCESS;
    for (uint64_t i = 0; i < count && res == CUDA_SUCCESS; i++) {
        CUmemDecompressParams *p = &ops[i];
        uint64_t src = fgs_park_xlate(S, (uint64_t)(uintptr_t)p->src, p->srcNumBytes ? p->srcNumBytes : 1);
        uint64_t dst = fgs_park_xlate(S, (uint64_t)(uintptr_t)p->dst, p->dstNumBytes ? p->dstNumBytes : 1);
        uint64_t act = fgs_park_xlate(S, (uint64_t)(uintptr_t)p->dstActBytes, sizeof(cuuint32_t));
        if (!fgs_device_range_ok(S, src, p->srcNumBytes ? p->srcNumBytes : 1) ||
            !fgs_device_range_ok(S, dst, p->dstNumBytes ? p->dstNumBytes : 1) ||
            !fgs_device_range_ok(S, act, sizeof(cuuint32_t))) {
            res = CUDA_ERROR_INVALID_VALUE;
            index = (size_t)i;
        }
        p->src = (const void *)(uintptr_t)src;
        p->dst = (void *)(uintptr_t)dst;
        p->dstActBytes = (cuuint32_t *)(uintptr_t)act;
    }
    if (res == CUDA_SUCCESS) {
        if (!S->api->cuMemBatchDecompressAsync) return fgs_missing(S, "cuMemBatchDecompressAsync");
        res = S->api->cuMemBatchDecompressAsync(ops, (size_t)count, flags, want ? &index : NULL, (CUstream)stream);
    }
    fg_put_u32(out, (uint32_t)res);
    fg_put_u64(out, (uint64_t)index);
    return CUDA_SUCCESS;
}
