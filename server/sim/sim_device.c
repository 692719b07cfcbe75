/* sim_device.c - device enumeration and identity queries: count, ordinal, name, UUID, total memory, PCI bus id
 * and LUID (none, as on Linux). Attributes live in sim_attributes.c. A CUdevice is the device ordinal, as with the
 * real driver. */
#include "sim.h"

#include <stdio.h>
#include <string.h>

SIM_API CUresult cuDeviceGetCount(int *count)
{
    if (!count)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS)
        *count = sim_g.ndev;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDeviceGet(CUdevice *device, int ordinal)
{
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_device(ordinal);
    if (rc == CUDA_SUCCESS)
        *device = ordinal;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDeviceGetName(char *name, int len, CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!name || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", "fargpu simulated device");
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!uuid)
        return CUDA_ERROR_INVALID_VALUE;
    sim_phys_uuid(sim_g.dev[dev].phys, (unsigned char *)uuid->bytes); /* the physical device's, fixed */
    return CUDA_SUCCESS;
}

/* As a Linux driver: no LUID (a Windows graphics identifier). */
SIM_API CUresult cuDeviceGetLuid(char *luid, unsigned int *deviceNodeMask, CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    return !luid || !deviceNodeMask ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_NOT_SUPPORTED;
}

SIM_API CUresult cuDeviceTotalMem(size_t *bytes, CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS) {
        if (bytes)
            *bytes = (size_t)sim_g.dev[dev].total_mem;
        else
            rc = CUDA_ERROR_INVALID_VALUE;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDeviceGetPCIBusId(char *pciBusId, int len, CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!pciBusId || len <= 0)
        return CUDA_ERROR_INVALID_VALUE;
    int bus = 0;
    cuDeviceGetAttribute(&bus, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, dev);
    snprintf(pciBusId, (size_t)len, "%04X:%02X:00.0", 0, bus);
    return CUDA_SUCCESS;
}
