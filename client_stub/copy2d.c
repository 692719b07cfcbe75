/* copy2d.c — 2D copies (cuMemcpy2D, cuMemcpy2DUnaligned, cuMemcpy2DAsync) between host and device memory, as
 * one 1D copy per row through the stub's ordinary copy paths (all rows of one call travel in one batch, in
 * stream order). Unified addresses are classified by the device ranges the stub knows; a copy with a CUDA
 * array on one side goes to arrays.c. An async copy with host memory outside the shared-memory region on a
 * capturing stream is one copy through a device shadow instead (capture_copies.c). The synchronous forms wait
 * for the legacy stream at the end, as the driver's do for pageable memory. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"

enum { MEM_HOST, MEM_DEVICE, MEM_BAD };

static int kind(CUmemorytype t, const void *host, CUdeviceptr dev) {
    switch (t) {
    case CU_MEMORYTYPE_HOST: return host ? MEM_HOST : MEM_BAD;
    case CU_MEMORYTYPE_DEVICE: return MEM_DEVICE;
    case CU_MEMORYTYPE_UNIFIED: return fgc_device_range_find(dev, NULL, NULL) ? MEM_DEVICE : MEM_HOST;
    default: return MEM_BAD; /* arrays */
    }
}

static CUresult copy2d(const CUDA_MEMCPY2D *c, CUstream s, int async) {
    FGC_REQUIRE_INIT();
    if (!c) return CUDA_ERROR_INVALID_VALUE;
    if (c->srcMemoryType == CU_MEMORYTYPE_ARRAY || c->dstMemoryType == CU_MEMORYTYPE_ARRAY)
        return fgc_copy2d_arrays(c, s, async); /* arrays.c, as a 3D copy */
    int sk = kind(c->srcMemoryType, c->srcHost, c->srcDevice), dk = kind(c->dstMemoryType, c->dstHost, c->dstDevice);
    if (sk == MEM_BAD || dk == MEM_BAD) return CUDA_ERROR_INVALID_VALUE;
    size_t w = c->WidthInBytes, h = c->Height;
    if ((h > 1 && (c->srcPitch < w + c->srcXInBytes || c->dstPitch < w + c->dstXInBytes)) || c->srcPitch > (1ull << 40) ||
        c->dstPitch > (1ull << 40))
        return CUDA_ERROR_INVALID_VALUE;
    if (!w || !h) return CUDA_SUCCESS;
    /* With CU_MEMORYTYPE_UNIFIED the pointer is in srcDevice / dstDevice whatever it points to. */
    const char *shost = c->srcMemoryType == CU_MEMORYTYPE_UNIFIED ? (const char *)(uintptr_t)c->srcDevice
                                                                   : (const char *)c->srcHost;
    char *dhost = c->dstMemoryType == CU_MEMORYTYPE_UNIFIED ? (char *)(uintptr_t)c->dstDevice : (char *)c->dstHost;
    CUstream st = async ? s : NULL;
    if (async && sk != dk && fgc_capture_active()) { /* on a capturing stream: one copy through a device shadow */
        CUDA_MEMCPY3D c3;
        memset(&c3, 0, sizeof c3);
        c3.srcXInBytes = c->srcXInBytes;
        c3.srcY = c->srcY;
        c3.srcPitch = c->srcPitch;
        c3.dstXInBytes = c->dstXInBytes;
        c3.dstY = c->dstY;
        c3.dstPitch = c->dstPitch;
        c3.WidthInBytes = w;
        c3.Height = h;
        c3.Depth = 1;
        c3.srcMemoryType = sk == MEM_HOST ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
        c3.srcHost = sk == MEM_HOST ? shost : NULL;
        c3.srcDevice = sk == MEM_HOST ? 0 : c->srcDevice;
        c3.dstMemoryType = dk == MEM_HOST ? CU_MEMORYTYPE_HOST : CU_MEMORYTYPE_DEVICE;
        c3.dstHost = dk == MEM_HOST ? dhost : NULL;
        c3.dstDevice = dk == MEM_HOST ? 0 : c->dstDevice;
        uint64_t mirrored;
        CUresult r;
        if (!fgc_mirror_device_of(sk == MEM_HOST ? (const void *)shost : (const void *)dhost, &mirrored) &&
            fgc_capture_copy3d(&c3, s, 1, &r))
            return r;
    }
    if (sk == MEM_HOST && dk == MEM_HOST) { /* host to host: in stream order, here */
        CUresult r = cuStreamSynchronize(st);
        if (r != CUDA_SUCCESS) return r;
        for (size_t y = 0; y < h; y++)
            memmove(dhost + (c->dstY + y) * c->dstPitch + c->dstXInBytes,
                    shost + (c->srcY + y) * c->srcPitch + c->srcXInBytes, w);
        return CUDA_SUCCESS;
    }
    CUresult r = CUDA_SUCCESS;
    for (size_t y = 0; y < h && r == CUDA_SUCCESS; y++) {
        size_t so = (c->srcY + y) * c->srcPitch + c->srcXInBytes, dof = (c->dstY + y) * c->dstPitch + c->dstXInBytes;
        if (sk == MEM_HOST) r = fgc_cuMemcpyHtoDAsync_v2(c->dstDevice + dof, shost + so, w, st);
        else if (dk == MEM_HOST) r = fgc_cuMemcpyDtoHAsync_v2(dhost + dof, c->srcDevice + so, w, st);
        else r = fgc_cuMemcpyDtoDAsync_v2(c->dstDevice + dof, c->srcDevice + so, w, st);
    }
    if (r == CUDA_SUCCESS && !async) r = cuStreamSynchronize(NULL);
    return r;
}

CUresult fgc_cuMemcpy2D_v2(const CUDA_MEMCPY2D *pCopy) { return copy2d(pCopy, NULL, 0); }
CUresult fgc_cuMemcpy2DUnaligned_v2(const CUDA_MEMCPY2D *pCopy) { return copy2d(pCopy, NULL, 0); }
CUresult fgc_cuMemcpy2DAsync_v2(const CUDA_MEMCPY2D *pCopy, CUstream hStream) { return copy2d(pCopy, hStream, 1); }
