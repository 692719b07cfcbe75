/* fgn_cuda.c - finds the CUDA driver API the shim reads its answers from: libcuda.so.1, which on a fargpu
 * client is the fargpu stub (first on LD_LIBRARY_PATH, installed beside this library). Order: a libcuda.so.1
 * the process has already loaded, then the one next to this library, then whatever the loader finds. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "fgn_internal.h"

struct fgn_cuda fgn_cu;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static nvmlReturn_t g_load_result = NVML_ERROR_LIBRARY_NOT_FOUND;

/* The libcuda.so.1 in the folder this library was loaded from, if there is one. */
static void *open_sibling(void)
{
    Dl_info info;
    if (!dladdr((void *)&fgn_cuda_load, &info) || !info.dli_fname)
        return NULL;
    const char *slash = strrchr(info.dli_fname, '/');
    if (!slash)
        return NULL;
    char path[PATH_MAX];
    int n = snprintf(path, sizeof path, "%.*s/libcuda.so.1", (int)(slash - info.dli_fname), info.dli_fname);
    if (n < 0 || (size_t)n >= sizeof path)
        return NULL;
    return dlopen(path, RTLD_NOW | RTLD_GLOBAL);
}

static int resolve(void *h, const char *name, void *slot, int required)
{
    void *p = dlsym(h, name);
    memcpy(slot, &p, sizeof p);
    if (!p && required)
        fgn_log(FGN_LOG_ERROR, "libcuda.so.1 does not export %s; is it the fargpu stub?", name);
    return p || !required;
}

static void load_once(void)
{
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
    if (!h)
        h = open_sibling();
    if (!h)
        h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        const char *err = dlerror();
        fgn_log(FGN_LOG_ERROR, "cannot load libcuda.so.1 (%s). Put the fargpu stub folder first on "
                "LD_LIBRARY_PATH, or run the program with `fargpu run -- ...`", err ? err : "not found");
        return;
    }
    fgn_cu.handle = h;
    int ok = 1;
    ok &= resolve(h, "cuInit", &fgn_cu.Init, 1);
    ok &= resolve(h, "cuDriverGetVersion", &fgn_cu.DriverGetVersion, 1);
    ok &= resolve(h, "cuDeviceGetCount", &fgn_cu.DeviceGetCount, 1);
    ok &= resolve(h, "cuDeviceGet", &fgn_cu.DeviceGet, 1);
    ok &= resolve(h, "cuDeviceGetName", &fgn_cu.DeviceGetName, 1);
    ok &= resolve(h, "cuDeviceGetUuid_v2", &fgn_cu.DeviceGetUuid, 1);
    ok &= resolve(h, "cuDeviceTotalMem_v2", &fgn_cu.DeviceTotalMem, 1);
    ok &= resolve(h, "cuDeviceGetAttribute", &fgn_cu.DeviceGetAttribute, 1);
    ok &= resolve(h, "cuDeviceGetPCIBusId", &fgn_cu.DeviceGetPCIBusId, 1);
    ok &= resolve(h, "cuDevicePrimaryCtxRetain", &fgn_cu.DevicePrimaryCtxRetain, 1);
    ok &= resolve(h, "cuCtxPushCurrent_v2", &fgn_cu.CtxPushCurrent, 1);
    ok &= resolve(h, "cuCtxPopCurrent_v2", &fgn_cu.CtxPopCurrent, 1);
    ok &= resolve(h, "cuMemGetInfo_v2", &fgn_cu.MemGetInfo, 1);
    ok &= resolve(h, "cuGetErrorName", &fgn_cu.GetErrorName, 0);
    ok &= resolve(h, "cuGetExportTable", &fgn_cu.GetExportTable, 0);
    if (!ok)
        return;

    Dl_info info, self;
    const char *where = dladdr((void *)fgn_cu.Init, &info) && info.dli_fname ? info.dli_fname : "?";
    const char *shim = dladdr((void *)&fgn_cuda_load, &self) && self.dli_fname ? self.dli_fname : "?";
    fgn_log(FGN_LOG_INFO, "the fargpu NVML shim (%s) is using libcuda.so.1 at %s%s", shim, where,
            dlsym(h, "cuGetExportTable") ? "" : " (no cuGetExportTable: not a driver-API library?)");
    g_load_result = NVML_SUCCESS;
}

nvmlReturn_t fgn_cuda_load(void)
{
    pthread_once(&g_once, load_once);
    return g_load_result;
}
