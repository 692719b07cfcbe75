/* sim_copy.c - memory copies (HtoD, DtoH, DtoD, unified cuMemcpy) and memsets (D8/D16/D32), sync and async.
 *
 * Async variants validate the stream and then run at once: the simulated device executes stream work
 * synchronously at enqueue (see sim_stream.c), which is a legal schedule of the same program. Every device
 * range is checked (sim_range_check) before a byte is touched; the host side of a copy belongs to the caller.
 * cuMemcpy (unified addressing) accepts device memory and pinned host memory on either side; a pointer the sim
 * does not know is CUDA_ERROR_INVALID_VALUE (the real driver would also accept pageable host memory there). */
#include "sim.h"

#include <string.h>

static CUresult enter(CUstream s, int async)
{
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS && async)
        rc = sim_stream_check_op(s);
    return rc;
}

static CUresult htod(CUdeviceptr dst, const void *src, size_t n, CUstream s, int async)
{
    sim_lock();
    CUresult rc = enter(s, async);
    if (rc == CUDA_SUCCESS && n && !src)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(dst, n, SIM_PROT_W);
    if (rc == CUDA_SUCCESS && n)
        memmove((void *)(uintptr_t)dst, src, n);
    sim_unlock();
    return rc;
}

static CUresult dtoh(void *dst, CUdeviceptr src, size_t n, CUstream s, int async)
{
    sim_lock();
    CUresult rc = enter(s, async);
    if (rc == CUDA_SUCCESS && n && !dst)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(src, n, SIM_PROT_R);
    if (rc == CUDA_SUCCESS && n)
        memmove(dst, (const void *)(uintptr_t)src, n);
    sim_unlock();
    return rc;
}

static CUresult dtod(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s, int async)
{
    sim_lock();
    CUresult rc = enter(s, async);
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(src, n, SIM_PROT_R);
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(dst, n, SIM_PROT_W);
    if (rc == CUDA_SUCCESS && n)
        memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemcpyHtoD(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount)
{
    return htod(dstDevice, srcHost, ByteCount, NULL, 0);
}

SIM_API CUresult cuMemcpyDtoH(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount)
{
    return dtoh(dstHost, srcDevice, ByteCount, NULL, 0);
}

SIM_API CUresult cuMemcpyDtoD(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount)
{
    return dtod(dstDevice, srcDevice, ByteCount, NULL, 0);
}

SIM_API CUresult cuMemcpyHtoDAsync(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream)
{
    CUresult rc;
    if (srcHost && sim_capture_copy(hStream, dstDevice, NULL, 0, srcHost, ByteCount, &rc))
        return rc;
    return htod(dstDevice, srcHost, ByteCount, hStream, 1);
}

SIM_API CUresult cuMemcpyDtoHAsync(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream)
{
    CUresult rc;
    if (dstHost && sim_capture_copy(hStream, 0, dstHost, srcDevice, NULL, ByteCount, &rc))
        return rc;
    return dtoh(dstHost, srcDevice, ByteCount, hStream, 1);
}

SIM_API CUresult cuMemcpyDtoDAsync(CUdeviceptr dstDevice, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream)
{
    CUresult rc;
    if (sim_capture_copy(hStream, dstDevice, NULL, srcDevice, NULL, ByteCount, &rc))
        return rc;
    return dtod(dstDevice, srcDevice, ByteCount, hStream, 1);
}

SIM_API CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount)
{
    return dtod(dst, src, ByteCount, NULL, 0); /* pinned host memory is a segment too */
}

SIM_API CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t ByteCount, CUstream hStream)
{
    CUresult rc;
    if (sim_capture_copy(hStream, dst, NULL, src, NULL, ByteCount, &rc))
        return rc;
    return dtod(dst, src, ByteCount, hStream, 1);
}

/* Fills n elements of `width` bytes (1, 2 or 4) with the low bytes of value. */
static CUresult memset_any(CUdeviceptr dst, unsigned int value, size_t n, unsigned int width, CUstream s, int async)
{
    if ((uintptr_t)dst % width)
        return CUDA_ERROR_INVALID_VALUE;
    if (n > SIZE_MAX / width)
        return CUDA_ERROR_INVALID_VALUE;
    size_t bytes = n * width;
    CUresult cap = CUDA_SUCCESS;
    if (async && sim_capture_memset(s, dst, value, n, width, &cap))
        return cap; /* a memset node of the capture's graph */
    sim_lock();
    CUresult rc = enter(s, async);
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(dst, bytes, SIM_PROT_W);
    if (rc == CUDA_SUCCESS && bytes) {
        unsigned char *p = (unsigned char *)(uintptr_t)dst;
        if (width == 1) {
            memset(p, (int)(value & 0xff), bytes);
        } else if (width == 2) {
            uint16_t v = (uint16_t)value;
            for (size_t i = 0; i < n; i++)
                memcpy(p + 2 * i, &v, 2);
        } else {
            uint32_t v = value;
            for (size_t i = 0; i < n; i++)
                memcpy(p + 4 * i, &v, 4);
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemsetD8(CUdeviceptr dstDevice, unsigned char uc, size_t N)
{
    return memset_any(dstDevice, uc, N, 1, NULL, 0);
}

SIM_API CUresult cuMemsetD16(CUdeviceptr dstDevice, unsigned short us, size_t N)
{
    return memset_any(dstDevice, us, N, 2, NULL, 0);
}

SIM_API CUresult cuMemsetD32(CUdeviceptr dstDevice, unsigned int ui, size_t N)
{
    return memset_any(dstDevice, ui, N, 4, NULL, 0);
}

SIM_API CUresult cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream)
{
    return memset_any(dstDevice, uc, N, 1, hStream, 1);
}

SIM_API CUresult cuMemsetD16Async(CUdeviceptr dstDevice, unsigned short us, size_t N, CUstream hStream)
{
    return memset_any(dstDevice, us, N, 2, hStream, 1);
}

SIM_API CUresult cuMemsetD32Async(CUdeviceptr dstDevice, unsigned int ui, size_t N, CUstream hStream)
{
    return memset_any(dstDevice, ui, N, 4, hStream, 1);
}
