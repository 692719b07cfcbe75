/* fgn_init.c - nvmlInit / nvmlInit_v2 / nvmlInitWithFlags / nvmlShutdown with a process-wide refcount (as real
 * NVML: every successful init needs one shutdown), and the device table the handles point into. Init loads
 * libcuda.so.1 and calls cuInit, which is where the fargpu stub connects to its node server. The driver library
 * and any retained contexts stay for the life of the process; shutdown only ends the caller's use of the API. */
#include <stdint.h>

#include "fgn_internal.h"

pthread_mutex_t fgn_mu = PTHREAD_MUTEX_INITIALIZER;
struct fgn_device fgn_devices[FGN_MAX_DEVICES];
unsigned int fgn_device_count;

static unsigned int g_refcount; /* written under fgn_mu, read atomically */

/* Called with fgn_mu held and the refcount at 0. */
static nvmlReturn_t first_init(unsigned int flags)
{
    nvmlReturn_t r = fgn_cuda_load();
    if (r != NVML_SUCCESS)
        return r;
    CUresult cr = fgn_cu.Init(0);
    if (cr != CUDA_SUCCESS) {
        if (flags & NVML_INIT_FLAG_NO_GPUS) {
            fgn_log(FGN_LOG_INFO, "cuInit failed (%s); NVML_INIT_FLAG_NO_GPUS given, so continuing with no devices",
                    fgn_cuda_error_name(cr));
            fgn_device_count = 0;
            return NVML_SUCCESS;
        }
        fgn_log(FGN_LOG_ERROR, "cuInit failed (%s, %d): the fargpu stub has no remote GPU to report. Set "
                "FARGPU_SERVER (host:port of a node server) and FARGPU_TOKEN, or run the program with "
                "`fargpu run -- ...`", fgn_cuda_error_name(cr), (int)cr);
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    int n = 0;
    cr = fgn_cu.DeviceGetCount(&n);
    if (cr != CUDA_SUCCESS) {
        fgn_log(FGN_LOG_ERROR, "cuDeviceGetCount failed (%s, %d)", fgn_cuda_error_name(cr), (int)cr);
        return cr == CUDA_ERROR_NO_DEVICE ? NVML_ERROR_DRIVER_NOT_LOADED : fgn_from_cuda(cr);
    }
    if (n < 0)
        n = 0;
    if (n > FGN_MAX_DEVICES) {
        fgn_log(FGN_LOG_WARN, "the driver reports %d devices; NVML shows the first %d", n, FGN_MAX_DEVICES);
        n = FGN_MAX_DEVICES;
    }
    for (int i = 0; i < n; i++)
        fgn_devices[i].index = (unsigned int)i;
    fgn_device_count = (unsigned int)n;
    if (n == 0 && !(flags & NVML_INIT_FLAG_NO_GPUS)) {
        fgn_log(FGN_LOG_ERROR, "the node server reports no devices");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    pthread_mutex_lock(&fgn_mu);
    nvmlReturn_t r = NVML_SUCCESS;
    if (g_refcount == 0)
        r = first_init(flags);
    if (r == NVML_SUCCESS)
        __atomic_store_n(&g_refcount, g_refcount + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&fgn_mu);
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

FGN_EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

FGN_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&fgn_mu);
    nvmlReturn_t r = NVML_ERROR_UNINITIALIZED;
    if (g_refcount > 0) {
        __atomic_store_n(&g_refcount, g_refcount - 1, __ATOMIC_RELEASE);
        r = NVML_SUCCESS;
    }
    pthread_mutex_unlock(&fgn_mu);
    return r;
}

nvmlReturn_t fgn_check_init(void)
{
    return __atomic_load_n(&g_refcount, __ATOMIC_ACQUIRE) > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
}

nvmlReturn_t fgn_device(nvmlDevice_t h, struct fgn_device **out)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    uintptr_t p = (uintptr_t)h, base = (uintptr_t)&fgn_devices[0];
    if (p < base || (p - base) % sizeof fgn_devices[0] != 0 || (p - base) / sizeof fgn_devices[0] >= fgn_device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = &fgn_devices[(p - base) / sizeof fgn_devices[0]];
    return NVML_SUCCESS;
}

nvmlReturn_t fgn_device_ident(nvmlDevice_t h, struct fgn_device **out)
{
    nvmlReturn_t r = fgn_device(h, out);
    return r == NVML_SUCCESS ? fgn_load_ident(*out) : r;
}
