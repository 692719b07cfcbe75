/* device_attrs.c — cuDeviceGetAttribute: the node's answer (cached: it never changes), with the attributes that
 * describe how host and device share memory set to what this stub gives. There is no page-level sharing with a
 * remote GPU: managed memory and mapped host memory are host mirrors (mirror.c), so the device is reported as
 * one without concurrent managed access, pageable memory access, host-native atomics or direct host access to
 * managed memory, and without use of host pointers for registered memory (programs ask for the device pointer).
 * CUDA's documented rules for such a device are then the ones the application follows.
 * Shareable memory: only the POSIX file descriptor handle type is served between the sessions of a lease (ipc.c),
 * so fabric handles and multicast objects (NVLink SHARP, cuMulticast*, refused) are reported unsupported: NCCL
 * and others then take the POSIX descriptor path, as on a machine without them. */
#include "fgc_impl.h"
#include "fgc_internal.h"

static int forced(CUdevice_attribute a, int *v) {
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS:
    case CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS:
    case CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES:
    case CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST:
    case CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM:
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_FABRIC_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_MULTICAST_SUPPORTED:
        *v = 0;
        return 1;
    default:
        return 0;
    }
}

CUresult fgc_cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
    FGC_REQUIRE_INIT();
    int d_pi = 0;
    fg_writer *w = fgc_begin(FG_OP_cuDeviceGetAttribute);
    if (!w) return fgc_last_error();
    uint8_t want = pi != NULL;
    fg_put(w, &want, 1);
    fgc_expect(pi ? (void *)pi : (void *)&d_pi, sizeof(int));
    fg_put(w, &attrib, sizeof attrib);
    fg_put(w, &dev, sizeof dev);
    CUresult r = fgc_sync_memo();
    if (r == CUDA_SUCCESS && pi) forced(attrib, pi);
    return r;
}
