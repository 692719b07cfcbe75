/* fgn_handles.c - device enumeration and handle lookup: count, handle by index / UUID / PCI bus id, the index
 * of a handle, and the MIG-handle test (the shim never hands out MIG handles). */
#include <stdio.h>
#include <strings.h>

#include "fgn_internal.h"

FGN_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    if (!deviceCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = fgn_device_count;
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

FGN_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    if (!device || index >= fgn_device_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = (nvmlDevice_t)&fgn_devices[index];
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < fgn_device_count; i++) {
        if ((r = fgn_load_ident(&fgn_devices[i])) != NVML_SUCCESS)
            return r;
        if (!strcasecmp(fgn_devices[i].uuid, uuid)) {
            *device = (nvmlDevice_t)&fgn_devices[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* Accepts "domain:bus:device.function", "domain:bus:device" and "bus:device.function", hex, any case, with a
 * 4- or 8-digit domain (NVML's legacy and current forms). */
static int parse_bus_id(const char *s, unsigned int *domain, unsigned int *bus, unsigned int *dev)
{
    unsigned int a, b, c, f;
    char tail;
    if (sscanf(s, "%x:%x:%x.%x%c", &a, &b, &c, &f, &tail) == 4 || sscanf(s, "%x:%x:%x%c", &a, &b, &c, &tail) == 3) {
        *domain = a, *bus = b, *dev = c;
        return 0;
    }
    if (sscanf(s, "%x:%x.%x%c", &b, &c, &f, &tail) == 3) {
        *domain = 0, *bus = b, *dev = c;
        return 0;
    }
    return -1;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    unsigned int domain, bus, dev;
    if (!pciBusId || !device || parse_bus_id(pciBusId, &domain, &bus, &dev) != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < fgn_device_count; i++) {
        struct fgn_device *d = &fgn_devices[i];
        if ((r = fgn_load_ident(d)) != NVML_SUCCESS)
            return r;
        if (d->pci_domain == domain && d->pci_bus == bus && d->pci_device == dev) {
            *device = (nvmlDevice_t)d;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!index)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = d->index;
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!isMigDevice)
        return NVML_ERROR_INVALID_ARGUMENT;
    *isMigDevice = 0;
    return NVML_SUCCESS;
}
