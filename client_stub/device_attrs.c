/* device_attrs.c — cuDeviceGetAttribute: the node's answer (cached: it never changes), with the attributes that
 * describe how host and device share memory set to what this stub gives. There is no page-level sharing with a
 * remote GPU: managed memory and mapped host memory are host mirrors (mirror.c), so the device is reported as
 * one without concurrent managed access, pageable memory access, host-native atomics or direct host access to
 * managed memory, and without use of host pointers for registered memory (programs ask for the device pointer).
 * CUDA's documented rules for such a device are then the ones the application follows: cuDeviceGetHostAtomicCapabilities
 * (answered here) reports no native atomic operation on this host's memory. cuDeviceGetP2PAtomicCapabilities (the
 * link between two GPUs of the node) and cuDeviceGetLuid are the node driver's answers.
 * Shareable memory: only the POSIX file descriptor handle type is served between the sessions of a lease (ipc.c),
 * so fabric handles and multicast objects (NVLink SHARP, cuMulticast*, refused) are reported unsupported: NCCL
 * and others then take the POSIX descriptor path, as on a machine without them. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

static int forced(CUdevice_attribute a, int *v) {
    switch (a) {
    case CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS:
    case CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS:
    case CU_DEVICE_ATTRIBUTE_PAGEABLE_MEMORY_ACCESS_USES_HOST_PAGE_TABLES:
    case CU_DEVICE_ATTRIBUTE_DIRECT_MANAGED_MEM_ACCESS_FROM_HOST:
    case CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED:
    case CU_DEVICE_ATTRIBUTE_ONLY_PARTIAL_HOST_NATIVE_ATOMIC_SUPPORTED:
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

static CUresult check_operations(unsigned int *capabilities, const CUatomicOperation *operations, unsigned int count) {
    if (!capabilities || !operations || !count) return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < count; i++)
        if ((unsigned)operations[i] >= (unsigned)CU_ATOMIC_OPERATION_MAX) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

CUresult fgc_cuDeviceGetHostAtomicCapabilities(unsigned int *capabilities, const CUatomicOperation *operations,
                                               unsigned int count, CUdevice dev) {
    FGC_REQUIRE_INIT();
    int n = 0;
    CUresult r = cuDeviceGetCount(&n);
    if (r != CUDA_SUCCESS) return r;
    if (dev < 0 || dev >= n) return CUDA_ERROR_INVALID_DEVICE;
    if ((r = check_operations(capabilities, operations, count)) != CUDA_SUCCESS) return r;
    memset(capabilities, 0, count * sizeof *capabilities);
    return CUDA_SUCCESS;
}

/* u32 count + count operations, i32 source and destination devices; the reply: count capability masks. */
#define MAX_ATOMIC_OPS 1024
CUresult fgc_cuDeviceGetP2PAtomicCapabilities(unsigned int *capabilities, const CUatomicOperation *operations,
                                              unsigned int count, CUdevice srcDevice, CUdevice dstDevice) {
    FGC_REQUIRE_INIT();
    CUresult r = check_operations(capabilities, operations, count);
    if (r != CUDA_SUCCESS) return r;
    if (count > MAX_ATOMIC_OPS) {
        static int logged;
        return fgc_unsupported("cuDeviceGetP2PAtomicCapabilities with more than 1024 operations", &logged);
    }
    fg_writer *w = fgc_begin(FG_OP_cuDeviceGetP2PAtomicCapabilities);
    if (!w) return fgc_last_error();
    fg_put_u32(w, count);
    for (unsigned int i = 0; i < count; i++) fg_put_u32(w, (uint32_t)operations[i]);
    fg_put_u32(w, (uint32_t)srcDevice);
    fg_put_u32(w, (uint32_t)dstDevice);
    fgc_expect(capabilities, count * sizeof *capabilities);
    return fgc_sync();
}

/* i32 device; the reply: the 8 LUID bytes and the node mask (a Linux driver answers CUDA_ERROR_NOT_SUPPORTED). */
CUresult fgc_cuDeviceGetLuid(char *luid, unsigned int *deviceNodeMask, CUdevice dev) {
    FGC_REQUIRE_INIT();
    if (!luid || !deviceNodeMask) return CUDA_ERROR_INVALID_VALUE;
    struct {
        char luid[8];
        uint32_t mask;
    } reply;
    fg_writer *w = fgc_begin(FG_OP_cuDeviceGetLuid);
    if (!w) return fgc_last_error();
    fg_put_u32(w, (uint32_t)dev);
    fgc_expect(&reply, sizeof reply);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        memcpy(luid, reply.luid, sizeof reply.luid);
        *deviceNodeMask = reply.mask;
    }
    return r;
}
