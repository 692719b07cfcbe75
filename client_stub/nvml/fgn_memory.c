/* fgn_memory.c - device memory (nvmlDeviceGetMemoryInfo and the versioned _v2) from cuMemGetInfo, which needs a
 * current context: the shim retains the device's primary context on first use, keeps it for the life of the
 * process, and pushes / pops it around each query on the calling thread. */
#include "fgn_internal.h"

static nvmlReturn_t query(nvmlDevice_t device, unsigned long long *free_b, unsigned long long *total_b)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    pthread_mutex_lock(&fgn_mu);
    CUresult cr = CUDA_SUCCESS;
    if (!d->ctx)
        cr = fgn_cu.DevicePrimaryCtxRetain(&d->ctx, d->cu);
    CUcontext ctx = d->ctx;
    pthread_mutex_unlock(&fgn_mu);
    if (cr != CUDA_SUCCESS) {
        fgn_log(FGN_LOG_WARN, "cuDevicePrimaryCtxRetain(%u) failed (%s)", d->index, fgn_cuda_error_name(cr));
        return fgn_from_cuda(cr);
    }
    if ((cr = fgn_cu.CtxPushCurrent(ctx)) != CUDA_SUCCESS)
        return fgn_from_cuda(cr);
    size_t f = 0, t = 0;
    cr = fgn_cu.MemGetInfo(&f, &t);
    CUcontext popped;
    fgn_cu.CtxPopCurrent(&popped);
    if (cr != CUDA_SUCCESS)
        return fgn_from_cuda(cr);
    *free_b = f;
    *total_b = t;
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    unsigned long long f, t;
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS && !memory)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        r = query(device, &f, &t);
    if (r != NVML_SUCCESS)
        return r;
    memory->total = t;
    memory->free = f;
    memory->used = t - f;
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    unsigned long long f, t;
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS && !memory)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS && memory->version != nvmlMemory_v2)
        r = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (r == NVML_SUCCESS)
        r = query(device, &f, &t);
    if (r != NVML_SUCCESS)
        return r;
    memory->total = t;
    memory->reserved = 0; /* not visible through the driver API */
    memory->free = f;
    memory->used = t - f;
    return NVML_SUCCESS;
}
