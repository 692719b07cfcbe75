/* fgn_topology.c - peer-to-peer status between the devices a session sees (nvmlDeviceGetP2PStatus), answered from
 * the driver API on the node: NCCL reads the read and write status of every device pair (itself included) while
 * it initialises, and stops if the call fails. Between two devices, read and write follow
 * CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED and atomics CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED. A device
 * with itself succeeds with status NOT_SUPPORTED for the five defined indexes and OK for any index past them, which
 * is what the real library answers on the H100 (tests/acceptance/torch/nvml_p2p.py compares the two on the GPU).
 * Between two devices, whether the path is NVLink or PCIe is not visible through the driver API: those two indexes
 * are refused with NVML_ERROR_NOT_SUPPORTED (logged once), never guessed. */
#include <dlfcn.h>

#include "fgn_internal.h"

enum {
    FGN_P2P_READ = 0,
    FGN_P2P_WRITE = 1,
    FGN_P2P_NVLINK = 2,
    FGN_P2P_ATOMICS = 3,
    FGN_P2P_PCI = 4,
};
enum { FGN_P2P_STATUS_OK = 0, FGN_P2P_STATUS_NOT_SUPPORTED = 5 };

typedef CUresult (*p2p_attr_fn)(int *value, CUdevice_P2PAttribute attr, CUdevice src, CUdevice dst);

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static p2p_attr_fn g_p2p_attr;

static void resolve_once(void)
{
    if (fgn_cu.handle)
        *(void **)&g_p2p_attr = dlsym(fgn_cu.handle, "cuDeviceGetP2PAttribute");
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetP2PStatus(nvmlDevice_t device1, nvmlDevice_t device2, unsigned int p2pIndex,
                                               unsigned int *p2pStatus)
{
    struct fgn_device *a, *b;
    nvmlReturn_t r = fgn_device_ident(device1, &a);
    if (r == NVML_SUCCESS)
        r = fgn_device_ident(device2, &b);
    if (r != NVML_SUCCESS)
        return r;
    if (!p2pStatus)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (a == b) {
        *p2pStatus = p2pIndex > FGN_P2P_PCI ? FGN_P2P_STATUS_OK : FGN_P2P_STATUS_NOT_SUPPORTED;
        return NVML_SUCCESS;
    }
    if (p2pIndex > FGN_P2P_PCI)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (p2pIndex == FGN_P2P_NVLINK || p2pIndex == FGN_P2P_PCI) {
        static int logged;
        return fgn_unsupported("nvmlDeviceGetP2PStatus (NVLink or PCI index: the link type is not visible "
                               "through the driver API)", &logged);
    }
    pthread_once(&g_once, resolve_once);
    if (!g_p2p_attr) {
        static int logged;
        return fgn_unsupported("nvmlDeviceGetP2PStatus (libcuda.so.1 has no cuDeviceGetP2PAttribute)", &logged);
    }
    CUdevice_P2PAttribute attr = p2pIndex == FGN_P2P_ATOMICS ? CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED
                                                               : CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED;
    int value = 0;
    CUresult cr = g_p2p_attr(&value, attr, a->cu, b->cu);
    if (cr != CUDA_SUCCESS) {
        fgn_log(FGN_LOG_WARN, "cuDeviceGetP2PAttribute(%u, %u) failed (%s)", a->index, b->index,
                fgn_cuda_error_name(cr));
        return fgn_from_cuda(cr);
    }
    *p2pStatus = value ? FGN_P2P_STATUS_OK : FGN_P2P_STATUS_NOT_SUPPORTED;
    return NVML_SUCCESS;
}
