/* sim_memory.c - linear device memory (cuMemAlloc/cuMemFree/cuMemGetInfo/cuMemGetAddressRange) and pinned
 * host memory (cuMemAllocHost/cuMemHostAlloc/cuMemFreeHost/cuMemHostGetDevicePointer).
 *
 * cuMemAlloc charges the page-rounded size against the simulated device memory (FARGPU_SIM_MEM_BYTES) and
 * backs it with an anonymous private mapping; exceeding the total gives CUDA_ERROR_OUT_OF_MEMORY without
 * touching the host. Allocations and pinned host memory belong to the current context and are freed with it.
 * Pinned host memory is device-accessible (unified addressing: the device pointer equals the host pointer) and
 * is not charged against device memory. The VMM API is in sim_vmm.c.
 *
 * Stream-ordered allocation (cuMemAllocAsync / cuMemFreeAsync) validates the stream and then allocates or frees
 * at once, which is what stream order means when streams run synchronously; the memory is an ordinary
 * allocation of the current context (the sim has no memory pools: no cuDeviceGetDefaultMemPool, and its
 * pointer attributes name no pool). cuMemFreeAsync accepts any cuMemAlloc-style allocation. cuMemAlloc is an
 * unsafe call under stream capture (sim_capture_unsafe: refused, and the capture invalidated, unless the capture
 * modes allow it). */
#include "sim.h"

SIM_API CUresult cuMemGetInfo(size_t *free, size_t *total)
{
    if (!free || !total)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS) {
        struct sim_device *d = &sim_g.dev[c->device];
        *total = (size_t)d->total_mem;
        *free = (size_t)(d->total_mem - d->used_mem);
    }
    sim_unlock();
    return rc;
}

static CUresult mem_alloc(CUdeviceptr *dptr, size_t bytesize, CUstream stream, int async)
{
    if (!dptr || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult unsafe = async ? CUDA_SUCCESS : sim_capture_unsafe(); /* cuMemAlloc under a capture (its mode) */
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS && async)
        rc = sim_stream_check_op(stream);
    struct sim_seg *s = NULL;
    if (rc == CUDA_SUCCESS)
        rc = sim_seg_alloc(SIM_SEG_ALLOC, c->device, bytesize, c, NULL, &s);
    if (rc == CUDA_SUCCESS)
        *dptr = (CUdeviceptr)s->base;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemAlloc(CUdeviceptr *dptr, size_t bytesize) { return mem_alloc(dptr, bytesize, NULL, 0); }

SIM_API CUresult cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream)
{
    return mem_alloc(dptr, bytesize, hStream, 1);
}

static CUresult mem_free(CUdeviceptr dptr, CUstream stream, int async)
{
    sim_lock();
    CUresult rc = async ? sim_stream_check_op(stream) : sim_check_init();
    if (rc == CUDA_SUCCESS) {
        struct sim_seg *s = sim_seg_find_base((uintptr_t)dptr, SIM_SEG_ALLOC);
        if (s)
            sim_seg_free(s);
        else
            rc = CUDA_ERROR_INVALID_VALUE;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemFree(CUdeviceptr dptr) { return mem_free(dptr, NULL, 0); }

SIM_API CUresult cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) { return mem_free(dptr, hStream, 1); }

SIM_API CUresult cuMemGetAddressRange(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr)
{
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS) {
        struct sim_seg *s = sim_seg_find((uintptr_t)dptr);
        if (!s || s->kind == SIM_SEG_HOST) {
            rc = CUDA_ERROR_NOT_FOUND;
        } else {
            if (pbase)
                *pbase = (CUdeviceptr)s->base;
            if (psize)
                *psize = s->size;
        }
    }
    sim_unlock();
    return rc;
}

static CUresult host_alloc(void **pp, size_t bytesize)
{
    if (!pp || bytesize == 0)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    struct sim_seg *s = NULL;
    if (rc == CUDA_SUCCESS)
        rc = sim_seg_alloc(SIM_SEG_HOST, c->device, bytesize, c, NULL, &s);
    if (rc == CUDA_SUCCESS)
        *pp = (void *)s->base;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemAllocHost(void **pp, size_t bytesize) { return host_alloc(pp, bytesize); }

SIM_API CUresult cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags)
{
    if (Flags & ~(unsigned int)(CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED))
        return CUDA_ERROR_INVALID_VALUE;
    return host_alloc(pp, bytesize);
}

SIM_API CUresult cuMemFreeHost(void *p)
{
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS) {
        struct sim_seg *s = sim_seg_find_base((uintptr_t)p, SIM_SEG_HOST);
        if (s && !s->registered)
            sim_seg_free(s);
        else
            rc = CUDA_ERROR_INVALID_VALUE;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemHostGetDevicePointer(CUdeviceptr *pdptr, void *p, unsigned int Flags)
{
    if (!pdptr || Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS) {
        struct sim_seg *s = sim_seg_find((uintptr_t)p);
        if (s && s->kind == SIM_SEG_HOST)
            *pdptr = (CUdeviceptr)(uintptr_t)p;
        else
            rc = CUDA_ERROR_INVALID_VALUE;
    }
    sim_unlock();
    return rc;
}

/* Host registration: the caller's pages become pinned host memory the device may read and write (a HOST
 * segment the sim neither maps nor unmaps), as cuMemHostRegister makes them for the real driver's DMA engines
 * and, with DEVICEMAP, for kernels (device pointer = host pointer under unified addressing). */
SIM_API CUresult cuMemHostRegister(void *p, size_t bytesize, unsigned int Flags)
{
    unsigned int known = CU_MEMHOSTREGISTER_PORTABLE | CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_IOMEMORY |
                         CU_MEMHOSTREGISTER_READ_ONLY;
    if (!p || bytesize == 0 || (Flags & ~known))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS && sim_seg_overlaps((uintptr_t)p, bytesize))
        rc = CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    struct sim_seg *s = NULL;
    if (rc == CUDA_SUCCESS && !(s = calloc(1, sizeof *s)))
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) {
        s->base = (uintptr_t)p;
        s->size = bytesize;
        s->kind = SIM_SEG_HOST;
        s->prot = (Flags & CU_MEMHOSTREGISTER_READ_ONLY) ? SIM_PROT_R : SIM_PROT_R | SIM_PROT_W;
        s->device = c->device;
        s->owner = c;
        s->registered = 1;
        if (sim_seg_insert(s) != 0) {
            free(s);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemHostUnregister(void *p)
{
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS) {
        struct sim_seg *s = sim_seg_find_base((uintptr_t)p, SIM_SEG_HOST);
        if (s && s->registered)
            sim_seg_free(s);
        else
            rc = CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
    }
    sim_unlock();
    return rc;
}
