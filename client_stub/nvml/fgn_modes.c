/* fgn_modes.c - device modes and static capabilities answered from driver-API attributes: multi-GPU board,
 * compute mode, maximum clocks and memory bus width. Persistence mode and MIG mode are settings of the remote
 * node's GPU that the driver API does not show, so both answer NVML_ERROR_NOT_SUPPORTED (after checking their
 * arguments) rather than a guess. The number of MIG devices that can exist under a device handle is 0: the shim
 * serves no MIG device handles (the remote session sees whole CUDA devices), and 0 is what NVML defines for a
 * device whose MIG devices are not available ("zero if MIG is not supported or enabled"); nvidia-smi asks for
 * it before printing its table and exits with status 3 when the call fails. */
#include "fgn_internal.h"

/* Reads one attribute of a valid, initialised device handle. */
static nvmlReturn_t device_attr(nvmlDevice_t device, CUdevice_attribute attr, int *value)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    return r != NVML_SUCCESS ? r : fgn_attr(d, attr, value);
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetMultiGpuBoard(nvmlDevice_t device, unsigned int *multiGpuBool)
{
    int v = 0;
    nvmlReturn_t r = device_attr(device, CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD, &v);
    if (r == NVML_SUCCESS && !multiGpuBool)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *multiGpuBool = v ? 1u : 0u;
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, nvmlComputeMode_t *mode)
{
    int v = 0;
    nvmlReturn_t r = device_attr(device, CU_DEVICE_ATTRIBUTE_COMPUTE_MODE, &v);
    if (r == NVML_SUCCESS && !mode)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *mode = (nvmlComputeMode_t)v; /* CUcomputemode and nvmlComputeMode_t share their numbering */
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode)
{
    static int logged;
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!mode)
        return NVML_ERROR_INVALID_ARGUMENT;
    return fgn_unsupported("nvmlDeviceGetPersistenceMode (the remote node's setting is not visible)", &logged);
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    static int logged;
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!currentMode || !pendingMode)
        return NVML_ERROR_INVALID_ARGUMENT;
    return fgn_unsupported("nvmlDeviceGetMigMode (the remote GPU's MIG mode is not visible)", &logged);
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    return NVML_SUCCESS;
}

/* The driver API gives the peak SM and memory clocks in kHz; there is no video clock. */
FGN_EXPORT nvmlReturn_t nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    static int video_logged;
    CUdevice_attribute attr;
    if (type == NVML_CLOCK_GRAPHICS || type == NVML_CLOCK_SM)
        attr = CU_DEVICE_ATTRIBUTE_CLOCK_RATE;
    else if (type == NVML_CLOCK_MEM)
        attr = CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE;
    else if (type == NVML_CLOCK_VIDEO)
        return fgn_check_init() != NVML_SUCCESS ? NVML_ERROR_UNINITIALIZED
                                                 : fgn_unsupported("nvmlDeviceGetMaxClockInfo(NVML_CLOCK_VIDEO)",
                                                                   &video_logged);
    else
        return fgn_check_init() != NVML_SUCCESS ? NVML_ERROR_UNINITIALIZED : NVML_ERROR_INVALID_ARGUMENT;
    int khz = 0;
    nvmlReturn_t r = device_attr(device, attr, &khz);
    if (r == NVML_SUCCESS && !clock)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *clock = (unsigned int)khz / 1000u;
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetMemoryBusWidth(nvmlDevice_t device, unsigned int *busWidth)
{
    int v = 0;
    nvmlReturn_t r = device_attr(device, CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, &v);
    if (r == NVML_SUCCESS && !busWidth)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r == NVML_SUCCESS)
        *busWidth = (unsigned int)v;
    return r;
}
