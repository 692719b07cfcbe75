/* sim_copy2d.c - pitched (2D) copies and memsets: cuMemcpy2D, cuMemcpy2DUnaligned, cuMemcpy2DAsync and
 * cuMemsetD2D8/16/32 (+Async), between host memory and the simulated device's memory.
 *
 * A 2D region is Height rows of Width bytes, row r starting at base + r * pitch. The device side of a region
 * must lie in mapped segments with the needed access over its whole span, from the first byte of the first row
 * to the last byte of the last row (sim_range_check), checked before any byte moves; every size computation is
 * overflow-checked. Host pointers (CU_MEMORYTYPE_HOST) belong to the caller and are trusted, as with the
 * driver. CU_MEMORYTYPE_UNIFIED pointers are accepted where the sim knows them (device or pinned host memory),
 * as for cuMemcpy. CUDA arrays do not exist in the sim (CUDA_ERROR_NOT_SUPPORTED). The aligned and unaligned
 * copies behave alike here. Async variants validate the stream and run at once, like all stream work. */
#include "sim.h"

#include <string.h>

/* Bytes from the first byte of row 0 to the end of row h-1; 0 on overflow (callers reject w, h == 0 first). */
static int span(size_t pitch, size_t w, size_t h, size_t *out)
{
    size_t rows;
    if (__builtin_mul_overflow(h - 1, pitch, &rows) || __builtin_add_overflow(rows, w, out))
        return 0;
    return 1;
}

static CUresult enter(CUstream s, int async)
{
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS && async)
        rc = sim_stream_check_op(s);
    return rc;
}

static CUresult memset2d(CUdeviceptr dst, size_t pitch, unsigned int value, size_t width, size_t height,
                         unsigned int elem, CUstream s, int async)
{
    size_t row_bytes, total;
    if ((uintptr_t)dst % elem || pitch % elem || __builtin_mul_overflow(width, elem, &row_bytes))
        return CUDA_ERROR_INVALID_VALUE;
    if (height > 1 && pitch < row_bytes)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = enter(s, async);
    if (rc == CUDA_SUCCESS && row_bytes && height) {
        if (!span(pitch, row_bytes, height, &total))
            rc = CUDA_ERROR_INVALID_VALUE;
        else
            rc = sim_range_check(dst, total, SIM_PROT_W);
    }
    if (rc == CUDA_SUCCESS && row_bytes && height) {
        for (size_t r = 0; r < height; r++) {
            unsigned char *p = (unsigned char *)(uintptr_t)dst + r * pitch;
            if (elem == 1) {
                memset(p, (int)(value & 0xff), row_bytes);
            } else if (elem == 2) {
                uint16_t v = (uint16_t)value;
                for (size_t i = 0; i < width; i++)
                    memcpy(p + 2 * i, &v, 2);
            } else {
                uint32_t v = value;
                for (size_t i = 0; i < width; i++)
                    memcpy(p + 4 * i, &v, 4);
            }
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemsetD2D8(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc, size_t Width, size_t Height)
{
    return memset2d(dstDevice, dstPitch, uc, Width, Height, 1, NULL, 0);
}

SIM_API CUresult cuMemsetD2D16(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us, size_t Width, size_t Height)
{
    return memset2d(dstDevice, dstPitch, us, Width, Height, 2, NULL, 0);
}

SIM_API CUresult cuMemsetD2D32(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui, size_t Width, size_t Height)
{
    return memset2d(dstDevice, dstPitch, ui, Width, Height, 4, NULL, 0);
}

SIM_API CUresult cuMemsetD2D8Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned char uc, size_t Width,
                                   size_t Height, CUstream hStream)
{
    return memset2d(dstDevice, dstPitch, uc, Width, Height, 1, hStream, 1);
}

SIM_API CUresult cuMemsetD2D16Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned short us, size_t Width,
                                    size_t Height, CUstream hStream)
{
    return memset2d(dstDevice, dstPitch, us, Width, Height, 2, hStream, 1);
}

SIM_API CUresult cuMemsetD2D32Async(CUdeviceptr dstDevice, size_t dstPitch, unsigned int ui, size_t Width,
                                    size_t Height, CUstream hStream)
{
    return memset2d(dstDevice, dstPitch, ui, Width, Height, 4, hStream, 1);
}

/* One side of a 2D copy: resolves its first byte and checks the device side's span. Caller holds sim_lock. */
static CUresult side(CUmemorytype type, const void *host, CUdeviceptr dev, size_t x, size_t y, size_t pitch,
                     size_t w, size_t h, int prot, unsigned char **out)
{
    size_t off, total;
    if (pitch < w && h > 1)
        return CUDA_ERROR_INVALID_VALUE;
    if (__builtin_mul_overflow(y, pitch, &off) || __builtin_add_overflow(off, x, &off) || !span(pitch, w, h, &total))
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t base;
    switch (type) {
    case CU_MEMORYTYPE_HOST:
        if (!host)
            return CUDA_ERROR_INVALID_VALUE;
        base = (uintptr_t)host;
        break;
    case CU_MEMORYTYPE_DEVICE:
    case CU_MEMORYTYPE_UNIFIED:
        base = (uintptr_t)dev;
        break;
    case CU_MEMORYTYPE_ARRAY:
        sim_log_once("cuMemcpy2D (CUDA arrays)", "the simulated device has no CUDA arrays");
        return CUDA_ERROR_NOT_SUPPORTED;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (base + off < base)
        return CUDA_ERROR_INVALID_VALUE;
    if (type != CU_MEMORYTYPE_HOST) {
        CUresult rc = sim_range_check((CUdeviceptr)(base + off), total, prot);
        if (rc != CUDA_SUCCESS)
            return rc;
    }
    *out = (unsigned char *)(base + off);
    return CUDA_SUCCESS;
}

static CUresult copy2d(const CUDA_MEMCPY2D *c, CUstream s, int async)
{
    if (!c)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = enter(s, async);
    int empty = c->WidthInBytes == 0 || c->Height == 0;
    unsigned char *src = NULL, *dst = NULL;
    if (rc == CUDA_SUCCESS && !empty)
        rc = side(c->srcMemoryType, c->srcHost, c->srcDevice, c->srcXInBytes, c->srcY, c->srcPitch, c->WidthInBytes,
                  c->Height, SIM_PROT_R, &src);
    if (rc == CUDA_SUCCESS && !empty)
        rc = side(c->dstMemoryType, c->dstHost, c->dstDevice, c->dstXInBytes, c->dstY, c->dstPitch, c->WidthInBytes,
                  c->Height, SIM_PROT_W, &dst);
    for (size_t r = 0; rc == CUDA_SUCCESS && !empty && r < c->Height; r++)
        memmove(dst + r * c->dstPitch, src + r * c->srcPitch, c->WidthInBytes);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemcpy2D(const CUDA_MEMCPY2D *pCopy) { return copy2d(pCopy, NULL, 0); }

SIM_API CUresult cuMemcpy2DUnaligned(const CUDA_MEMCPY2D *pCopy) { return copy2d(pCopy, NULL, 0); }

SIM_API CUresult cuMemcpy2DAsync(const CUDA_MEMCPY2D *pCopy, CUstream hStream) { return copy2d(pCopy, hStream, 1); }
