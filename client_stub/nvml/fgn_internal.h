/* fgn_internal.h - state shared by the files of the NVML shim: the driver-API entry points it resolves from
 * libcuda.so.1 (the fargpu stub), the device table that NVML handles point into, the init refcount, and the
 * logging / error helpers. */
#ifndef FGN_INTERNAL_H
#define FGN_INTERNAL_H

#include <cuda.h>
#include <pthread.h>
#include <stdarg.h>

#include "fgn_nvml.h"

#define FGN_MAX_DEVICES 64

enum { FGN_LOG_ERROR = 0, FGN_LOG_WARN = 1, FGN_LOG_INFO = 2, FGN_LOG_DEBUG = 3 };

/* Writes one "fargpu-nvml: ..." line to stderr if FARGPU_LOG allows the level (default: warn). */
void fgn_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fgn_vlog(int level, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
/* Whether FARGPU_LOG lets lines of this level through. */
int fgn_log_enabled(int level);

/* Returns NVML_ERROR_NOT_SUPPORTED, logging `name` the first time (per *logged flag). */
nvmlReturn_t fgn_unsupported(const char *name, int *logged);

/* Driver-API entry points, resolved once by fgn_cuda_load(). GetErrorName may be NULL. */
struct fgn_cuda {
    void *handle;
    CUresult (*Init)(unsigned int flags);
    CUresult (*DriverGetVersion)(int *version);
    CUresult (*DeviceGetCount)(int *count);
    CUresult (*DeviceGet)(CUdevice *dev, int ordinal);
    CUresult (*DeviceGetName)(char *name, int len, CUdevice dev);
    CUresult (*DeviceGetUuid)(CUuuid *uuid, CUdevice dev);
    CUresult (*DeviceTotalMem)(size_t *bytes, CUdevice dev);
    CUresult (*DeviceGetAttribute)(int *value, CUdevice_attribute attr, CUdevice dev);
    CUresult (*DeviceGetPCIBusId)(char *busId, int len, CUdevice dev);
    CUresult (*DevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
    CUresult (*CtxPushCurrent)(CUcontext ctx);
    CUresult (*CtxPopCurrent)(CUcontext *ctx);
    CUresult (*MemGetInfo)(size_t *free_b, size_t *total_b);
    CUresult (*GetErrorName)(CUresult err, const char **name);
    CUresult (*GetExportTable)(const void **table, const CUuuid *id); /* the stub's own table: node facts */
};
extern struct fgn_cuda fgn_cu;

/* dlopens libcuda.so.1 and resolves the entry points (once; later calls return the first result). */
nvmlReturn_t fgn_cuda_load(void);
/* The NVML code for a failed driver-API call. */
nvmlReturn_t fgn_from_cuda(CUresult r);
/* "CUDA_ERROR_..." for r, or "CUDA error" if the driver cannot name it. */
const char *fgn_cuda_error_name(CUresult r);

/* One entry per device the driver reports. The identity fields are read on first use (fgn_device_ident). */
struct fgn_device {
    unsigned int index;
    CUdevice cu;
    int have_cu;   /* cu was read with cuDeviceGet */
    int have_ident;
    char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    char uuid[NVML_DEVICE_UUID_V2_BUFFER_SIZE]; /* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" */
    unsigned int pci_domain, pci_bus, pci_device, pci_function;
    unsigned int pci_device_id, pci_subsystem_id;
    int cc_major, cc_minor;
    CUcontext ctx; /* primary context retained for memory queries, kept for the life of the process */
};
extern struct fgn_device fgn_devices[FGN_MAX_DEVICES];
extern unsigned int fgn_device_count;

/* Guards init/shutdown, the device table and the lazily read fields. */
extern pthread_mutex_t fgn_mu;

/* NVML_SUCCESS while at least one nvmlInit* is outstanding, else NVML_ERROR_UNINITIALIZED. */
nvmlReturn_t fgn_check_init(void);
/* Checks init and that h is one of the shim's handles; *out is the device. */
nvmlReturn_t fgn_device(nvmlDevice_t h, struct fgn_device **out);
/* fgn_device, then makes sure the identity fields are read. */
nvmlReturn_t fgn_device_ident(nvmlDevice_t h, struct fgn_device **out);
/* Reads the identity of d if not read yet (caller holds no lock). */
nvmlReturn_t fgn_load_ident(struct fgn_device *d);
/* Reads one device attribute. */
nvmlReturn_t fgn_attr(struct fgn_device *d, CUdevice_attribute attr, int *value);

/* Copies src (with its NUL) into dst[len]; NVML_ERROR_INSUFFICIENT_SIZE if it does not fit. */
nvmlReturn_t fgn_copy_string(char *dst, unsigned int len, const char *src);

#endif
