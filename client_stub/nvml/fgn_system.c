/* fgn_system.c - system-wide queries: CUDA driver version, driver and NVML version strings, S-class unit count
 * and excluded-device count.
 *
 * Driver version: the driver API exposes only the CUDA version of the remote driver (cuDriverGetVersion), not
 * its release number ("580.159.04"). The shim reports FARGPU_NVML_DRIVER_VERSION if set (e.g. by whoever knows
 * the node's driver), and otherwise the CUDA version as "major.minor" (e.g. "13.0"). Callers that compare the
 * result against release numbers such as 450 will see a lower number than a real driver's. */
#include <stdio.h>
#include <stdlib.h>

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

static nvmlReturn_t driver_version(char *out, size_t cap)
{
    const char *env = getenv("FARGPU_NVML_DRIVER_VERSION");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return NVML_SUCCESS;
    }
    int v = 0;
    nvmlReturn_t r = cuda_version(&v);
    if (r == NVML_SUCCESS)
        snprintf(out, cap, "%d.%d", NVML_CUDA_DRIVER_VERSION_MAJOR(v), NVML_CUDA_DRIVER_VERSION_MINOR(v));
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    char buf[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS)
        r = driver_version(buf, sizeof buf);
    return r != NVML_SUCCESS ? r : fgn_copy_string(version, length, buf);
}

/* Real NVML reports "<CUDA major>.<driver version>"; the shim follows that with its own driver version. */
FGN_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    char drv[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE], buf[NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE + 16];
    int v = 0;
    nvmlReturn_t r = cuda_version(&v);
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
