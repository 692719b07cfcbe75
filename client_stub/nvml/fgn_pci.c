/* fgn_pci.c - PCI information (nvmlDeviceGetPciInfo, _v2, _v3) from the driver API's PCI attributes. The v1/v2
 * callers' struct is smaller (a 16-byte busId, then the ids, then reserved words), so for them only the common
 * prefix is written. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "fgn_internal.h"

static void fill(const struct fgn_device *d, nvmlPciInfo_t *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->busIdLegacy, sizeof out->busIdLegacy, "%04X:%02X:%02X.%X", d->pci_domain & 0xffffu,
             d->pci_bus & 0xffu, d->pci_device & 0xffu, d->pci_function & 0xfu);
    snprintf(out->busId, sizeof out->busId, "%08X:%02X:%02X.%X", d->pci_domain, d->pci_bus & 0xffu,
             d->pci_device & 0xffu, d->pci_function & 0xfu);
    out->domain = d->pci_domain;
    out->bus = d->pci_bus;
    out->device = d->pci_device;
    out->pciDeviceId = d->pci_device_id;
    out->pciSubSystemId = d->pci_subsystem_id;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!pci)
        return NVML_ERROR_INVALID_ARGUMENT;
    fill(d, pci);
    return NVML_SUCCESS;
}

static nvmlReturn_t legacy(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!pci)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlPciInfo_t full;
    fill(d, &full);
    memcpy(pci, &full, offsetof(nvmlPciInfo_t, busId));
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci) { return legacy(device, pci); }

FGN_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_t *pci) { return legacy(device, pci); }
