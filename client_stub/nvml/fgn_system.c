/* fgn_system.c - system-wide queries: CUDA driver version, driver and NVML version strings, S-class unit count
 * and excluded-device count.
 *
 * Driver version: the driver API exposes only the CUDA version of the remote driver (cuDriverGetVersion), not
 * its release number ("580.159.04"), and the stub learns nothing else about the node's driver. So the shim
 * reports FARGPU_NVML_DRIVER_VERSION if set (by whoever knows the node's driver, e.g. the operator of a node
 * server on the same host), and otherwise answers NVML_ERROR_NOT_SUPPORTED rather than a number it made up.
 * The NVML version ("<CUDA major>.<driver version>") follows the same rule. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgn_internal.h"

static nvmlReturn_t cuda_version(int *v)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    if (!v)
        return NVML_ERROR_INVALID_ARGUMENT;
    return fgn_from_cuda(fgn_cu.DriverGetVersion(v));
}

FGN_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    return cuda_version(cudaDriverVersion);
}

FGN_EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    return cuda_version(cudaDriverVersion);
}

/* The node driver's version string as the node server told the stub (its private FARGPU_NODE table, slot 1).
 * Returns 0 with buf filled, or -1 when the stub has no such table or the node did not say. */
static int node_driver_version(char *buf, size_t cap)
{
    static const CUuuid id = {{'f', 'a', 'r', 'g', 'p', 'u', '-', 'n', 'o', 'd', 'e', '-', 'v', '1', 0, 0}};
    const void *table = NULL;
    if (!fgn_cu.GetExportTable || fgn_cu.GetExportTable(&table, &id) != CUDA_SUCCESS || !table)
        return -1;
    const void *const *slots = (const void *const *)table;
    if ((uintptr_t)slots[0] < 2 * sizeof(void *) || !slots[1])
        return -1;
    CUresult (*get)(char *, size_t) = (CUresult(*)(char *, size_t))(uintptr_t)slots[1];
    return get(buf, cap) == CUDA_SUCCESS ? 0 : -1;
}

/* The node's driver version string: FARGPU_NVML_DRIVER_VERSION when set, else what the node server told the stub,
 * else NVML_ERROR_NOT_SUPPORTED (logged once). */
static nvmlReturn_t driver_version(char *out, size_t cap)
{
    static int unset_logged, long_logged;
    const char *env = getenv("FARGPU_NVML_DRIVER_VERSION");
    if ((!env || !*env) && node_driver_version(out, cap) == 0)
        return NVML_SUCCESS;
    if (!env || !*env) {
        if (!__atomic_exchange_n(&unset_logged, 1, __ATOMIC_RELAXED))
            fgn_log(FGN_LOG_WARN, "the node server did not say its driver's version string: "
                    "nvmlSystemGetDriverVersion and nvmlSystemGetNVMLVersion return NVML_ERROR_NOT_SUPPORTED. Set "
                    "FARGPU_NVML_DRIVER_VERSION to the node's driver version (e.g. from `nvidia-smi "
                    "--query-gpu=driver_version --format=csv,noheader` on the node) to report it");
        return NVML_ERROR_NOT_SUPPORTED;
    }
    if (strlen(env) >= cap) {
        if (!__atomic_exchange_n(&long_logged, 1, __ATOMIC_RELAXED))
            fgn_log(FGN_LOG_WARN, "FARGPU_NVML_DRIVER_VERSION is longer than %zu characters; ignoring it", cap - 1);
        return NVML_ERROR_NOT_SUPPORTED;
    }
    memcpy(out, env, strlen(env) + 1);
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    char buf[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS && !version)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        r = driver_version(buf, sizeof buf);
    return r != NVML_SUCCESS ? r : fgn_copy_string(version, length, buf);
}

/* Real NVML reports "<CUDA major>.<driver version>"; the shim does the same when it knows the driver version. */
FGN_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    char drv[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE], buf[NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE + 16];
    int v = 0;
    nvmlReturn_t r = cuda_version(&v);
    if (r == NVML_SUCCESS && !version)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        r = driver_version(drv, sizeof drv);
    if (r != NVML_SUCCESS)
        return r;
    snprintf(buf, sizeof buf, "%d.%s", NVML_CUDA_DRIVER_VERSION_MAJOR(v), drv);
    return fgn_copy_string(version, length, buf);
}

/* S-class units are rack enclosures a node could report; the remote GPUs come without any. */
FGN_EXPORT nvmlReturn_t nvmlUnitGetCount(unsigned int *unitCount)
{
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS && !unitCount)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *unitCount = 0;
    return r;
}

/* Devices the driver excluded from use; the stub reports only devices it can use. */
FGN_EXPORT nvmlReturn_t nvmlGetExcludedDeviceCount(unsigned int *deviceCount)
{
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS && !deviceCount)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *deviceCount = 0;
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlGetBlacklistDeviceCount(unsigned int *deviceCount)
{
    return nvmlGetExcludedDeviceCount(deviceCount);
}
