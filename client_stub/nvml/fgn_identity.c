/* fgn_identity.c - what identifies a device, read once from the driver API and kept: name, UUID (in NVML's
 * "GPU-..." form), PCI location and ids, compute capability; and the NVML queries answered from it (name, UUID,
 * brand, architecture, compute capability). The minor number is not visible: NVML_ERROR_NOT_SUPPORTED. */
#include <stdio.h>
#include <string.h>

#include "fgn_internal.h"

nvmlReturn_t fgn_attr(struct fgn_device *d, CUdevice_attribute attr, int *value)
{
    return fgn_from_cuda(fgn_cu.DeviceGetAttribute(value, attr, d->cu));
}

/* The CUdevice of d (cuDeviceGet), read once. Called with fgn_mu held. */
static nvmlReturn_t load_cu(struct fgn_device *d)
{
    if (d->have_cu)
        return NVML_SUCCESS;
    CUresult cr = fgn_cu.DeviceGet(&d->cu, (int)d->index);
    if (cr != CUDA_SUCCESS) {
        fgn_log(FGN_LOG_WARN, "cuDeviceGet(%u) failed (%s)", d->index, fgn_cuda_error_name(cr));
        return fgn_from_cuda(cr);
    }
    d->have_cu = 1;
    return NVML_SUCCESS;
}

static void format_uuid(char *out, size_t cap, const CUuuid *u)
{
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, cap, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
             b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* Called with fgn_mu held. */
static nvmlReturn_t read_ident(struct fgn_device *d)
{
    nvmlReturn_t r = load_cu(d);
    if (r != NVML_SUCCESS)
        return r;
    char name[sizeof d->name];
    CUresult cr = fgn_cu.DeviceGetName(name, (int)sizeof name, d->cu);
    if (cr != CUDA_SUCCESS)
        return fgn_from_cuda(cr);
    name[sizeof name - 1] = 0;
    CUuuid u;
    cr = fgn_cu.DeviceGetUuid(&u, d->cu);
    if (cr != CUDA_SUCCESS)
        return fgn_from_cuda(cr);
    int domain = 0, bus = 0, dev = 0, major = 0, minor = 0;
    if ((r = fgn_attr(d, CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID, &domain)) != NVML_SUCCESS ||
        (r = fgn_attr(d, CU_DEVICE_ATTRIBUTE_PCI_BUS_ID, &bus)) != NVML_SUCCESS ||
        (r = fgn_attr(d, CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID, &dev)) != NVML_SUCCESS ||
        (r = fgn_attr(d, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &major)) != NVML_SUCCESS ||
        (r = fgn_attr(d, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &minor)) != NVML_SUCCESS)
        return r;
    /* PCI ids are newer attributes; a driver without them leaves them 0. */
    int pci_id = 0, pci_sub = 0;
    if (fgn_attr(d, CU_DEVICE_ATTRIBUTE_GPU_PCI_DEVICE_ID, &pci_id) != NVML_SUCCESS)
        pci_id = 0;
    if (fgn_attr(d, CU_DEVICE_ATTRIBUTE_GPU_PCI_SUBSYSTEM_ID, &pci_sub) != NVML_SUCCESS)
        pci_sub = 0;
    /* The function number is only in the bus id string ("dddd:bb:dd.f"). */
    unsigned int function = 0, a, b, c;
    char busid[64];
    if (fgn_cu.DeviceGetPCIBusId(busid, (int)sizeof busid, d->cu) == CUDA_SUCCESS &&
        sscanf(busid, "%x:%x:%x.%x", &a, &b, &c, &function) != 4)
        function = 0;

    memcpy(d->name, name, sizeof name);
    format_uuid(d->uuid, sizeof d->uuid, &u);
    d->pci_domain = (unsigned int)domain;
    d->pci_bus = (unsigned int)bus;
    d->pci_device = (unsigned int)dev;
    d->pci_function = function;
    d->pci_device_id = (unsigned int)pci_id;
    d->pci_subsystem_id = (unsigned int)pci_sub;
    d->cc_major = major;
    d->cc_minor = minor;
    return NVML_SUCCESS;
}

nvmlReturn_t fgn_load_ident(struct fgn_device *d)
{
    if (__atomic_load_n(&d->have_ident, __ATOMIC_ACQUIRE))
        return NVML_SUCCESS;
    pthread_mutex_lock(&fgn_mu);
    nvmlReturn_t r = NVML_SUCCESS;
    if (!d->have_ident) {
        r = read_ident(d);
        if (r == NVML_SUCCESS)
            __atomic_store_n(&d->have_ident, 1, __ATOMIC_RELEASE);
        else
            fgn_log(FGN_LOG_WARN, "reading the identity of device %u failed (%s)", d->index, nvmlErrorString(r));
    }
    pthread_mutex_unlock(&fgn_mu);
    return r;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    return r != NVML_SUCCESS ? r : fgn_copy_string(name, length, d->name);
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    return r != NVML_SUCCESS ? r : fgn_copy_string(uuid, length, d->uuid);
}

/* The remote /dev/nvidiaN minor number is not visible through the driver API (and no device node exists here). */
FGN_EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
    static int logged;
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!minorNumber)
        return NVML_ERROR_INVALID_ARGUMENT;
    return fgn_unsupported("nvmlDeviceGetMinorNumber (the remote device node is not visible)", &logged);
}

/* Brand from the product name (the driver API has no brand query): marketing names carry it. */
FGN_EXPORT nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t device, nvmlBrandType_t *type)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!type)
        return NVML_ERROR_INVALID_ARGUMENT;
    static const struct { const char *word; nvmlBrandType_t brand; } words[] = {
        { "GeForce", NVML_BRAND_GEFORCE }, { "TITAN", NVML_BRAND_TITAN },   { "Quadro RTX", NVML_BRAND_QUADRO_RTX },
        { "Quadro", NVML_BRAND_QUADRO },   { "Tesla", NVML_BRAND_TESLA },   { "NVS", NVML_BRAND_NVS },
        { "RTX", NVML_BRAND_NVIDIA_RTX },
    };
    *type = strncmp(d->name, "NVIDIA", 6) == 0 ? NVML_BRAND_NVIDIA : NVML_BRAND_UNKNOWN;
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++) {
        if (strstr(d->name, words[i].word)) {
            *type = words[i].brand;
            break;
        }
    }
    return NVML_SUCCESS;
}

/* Architecture from the compute capability. */
FGN_EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!arch)
        return NVML_ERROR_INVALID_ARGUMENT;
    int cc = d->cc_major * 10 + d->cc_minor;
    if (cc >= 100)
        *arch = NVML_DEVICE_ARCH_BLACKWELL; /* 10.x and 12.x */
    else if (cc >= 90)
        *arch = NVML_DEVICE_ARCH_HOPPER;
    else if (cc == 89)
        *arch = NVML_DEVICE_ARCH_ADA;
    else if (cc >= 80)
        *arch = NVML_DEVICE_ARCH_AMPERE;
    else if (cc == 75)
        *arch = NVML_DEVICE_ARCH_TURING;
    else if (cc >= 70)
        *arch = NVML_DEVICE_ARCH_VOLTA;
    else if (cc >= 60)
        *arch = NVML_DEVICE_ARCH_PASCAL;
    else if (cc >= 50)
        *arch = NVML_DEVICE_ARCH_MAXWELL;
    else if (cc >= 30)
        *arch = NVML_DEVICE_ARCH_KEPLER;
    else
        *arch = NVML_DEVICE_ARCH_UNKNOWN;
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device_ident(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!major || !minor)
        return NVML_ERROR_INVALID_ARGUMENT;
    *major = d->cc_major;
    *minor = d->cc_minor;
    return NVML_SUCCESS;
}
