/* array_async.c — cuMemcpyHtoAAsync_v2 and cuMemcpyAtoHAsync_v2 (and their per-thread-stream forms): the async
 * 1D copies between host memory and a CUDA array, emulated as one-row 2D copies on the stream, which arrays.c
 * turns into the 3D copy record the node replays on that stream. The host bytes travel with the record (a source)
 * or its reply (a destination), so the node waits for the stream and the call returns once the copy is done: a
 * host source may be reused at once and a host destination holds the data on return, which the asynchronous
 * contract allows (it promises no overlap). */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

static CUDA_MEMCPY2D row(size_t n) {
    CUDA_MEMCPY2D c;
    memset(&c, 0, sizeof c);
    c.WidthInBytes = n;
    c.Height = 1;
    return c;
}

CUresult fgc_cuMemcpyHtoAAsync_v2(CUarray dstArray, size_t dstOffset, const void *srcHost, size_t ByteCount,
                                  CUstream hStream) {
    CUDA_MEMCPY2D c = row(ByteCount);
    c.srcMemoryType = CU_MEMORYTYPE_HOST;
    c.srcHost = srcHost;
    c.dstMemoryType = CU_MEMORYTYPE_ARRAY;
    c.dstArray = dstArray;
    c.dstXInBytes = dstOffset;
    return fgc_copy2d_arrays(&c, hStream, 1);
}

CUresult fgc_cuMemcpyAtoHAsync_v2(void *dstHost, CUarray srcArray, size_t srcOffset, size_t ByteCount,
                                  CUstream hStream) {
    CUDA_MEMCPY2D c = row(ByteCount);
    c.srcMemoryType = CU_MEMORYTYPE_ARRAY;
    c.srcArray = srcArray;
    c.srcXInBytes = srcOffset;
    c.dstMemoryType = CU_MEMORYTYPE_HOST;
    c.dstHost = dstHost;
    return fgc_copy2d_arrays(&c, hStream, 1);
}
