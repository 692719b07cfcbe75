/* managed.c — managed memory (cuMemAllocManaged, cuMemPrefetchAsync and its batched form, the batched
 * discards, cuMemAdvise, cuStreamAttachMemAsync, cuMemRangeGetAttribute[s]) and mapped host memory
 * (cuMemHostGetDevicePointer) over the mirrors of mirror.c.
 *
 * Managed memory is a device allocation on the node and a host mirror at the same address in this process
 * (mmap with MAP_FIXED_NOREPLACE; an address already taken here is retried with another allocation), so one
 * pointer works on both sides, as under unified addressing. It starts zeroed on both. Mapped host memory gets a
 * device shadow when the application first asks for its device pointer: the pinned block (or registered range)
 * is copied there and mirrored from then on; its device pointer is the shadow's address, not the host address
 * (CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM is reported 0, so programs ask for it).
 *
 * The device is reported without concurrent managed access and without pageable memory access (device.c), so
 * programs follow CUDA's rules for such devices. Prefetching and advice change no placement (there is one copy
 * on the node and one here); they are checked as the driver checks them and remembered for
 * cuMemRangeGetAttribute. A prefetch to the device sends pending host writes at once. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_transport.h"
#include "fgc_mirror_impl.h"

#define MAX_TRIES 8

static size_t page_round(size_t n) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    return (n + pg - 1) / pg * pg;
}

CUresult fgc_cuMemAllocManaged(CUdeviceptr *dptr, size_t bytesize, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!dptr || bytesize == 0 || (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST))
        return CUDA_ERROR_INVALID_VALUE;
    size_t span = page_round(bytesize);
    CUdeviceptr taken[MAX_TRIES];
    int n_taken = 0;
    CUdeviceptr p = 0;
    CUresult r = CUDA_SUCCESS;
    while (n_taken < MAX_TRIES) {
        r = cuMemAlloc_v2(&p, bytesize);
        if (r != CUDA_SUCCESS) break;
        void *h = mmap((void *)(uintptr_t)p, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
                       MAP_FIXED_NOREPLACE, -1, 0);
        if (h == (void *)(uintptr_t)p) break;
        if (h != MAP_FAILED) munmap(h, span); /* a kernel without MAP_FIXED_NOREPLACE placed it elsewhere */
        taken[n_taken++] = p; /* that address is in use in this process: keep it while asking for another */
        p = 0;
    }
    for (int i = 0; i < n_taken; i++) cuMemFree_v2(taken[i]);
    if (r != CUDA_SUCCESS) return r;
    if (!p) {
        fgc_log(FGC_LOG_WARN, "cuMemAllocManaged: no device address the node offered is free in this process");
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    r = cuMemsetD8_v2(p, 0, bytesize); /* zero on the device, as the fresh host pages are */
    fgc_mirror *m = r == CUDA_SUCCESS ? fgc_mirror_add((uintptr_t)p, p, span, FGC_MIRROR_MANAGED) : NULL;
    if (!m) {
        munmap((void *)(uintptr_t)p, span);
        cuMemFree_v2(p);
        return r == CUDA_SUCCESS ? CUDA_ERROR_OUT_OF_MEMORY : r;
    }
    m->user = p;
    m->user_size = bytesize;
    if (flags == CU_MEM_ATTACH_HOST) {
        pthread_mutex_lock(&g_mirror_mu);
        fgc_mirror_set_attach_host(m, 1);
        pthread_mutex_unlock(&g_mirror_mu);
    }
    *dptr = p;
    return CUDA_SUCCESS;
}

/* cuMemFree of managed memory (before the node frees it): the mirror and its pages go. */
void fgc_mirror_managed_freed(CUdeviceptr p) {
    fgc_mirror *m = fgc_mirror_find_dev(p);
    if (!m || m->kind != FGC_MIRROR_MANAGED || m->dev != p) return;
    uintptr_t host = m->host;
    size_t span = m->span;
    fgc_mirror_remove(m, 0);
    munmap((void *)host, span);
}

static fgc_mirror *managed_range(CUdeviceptr p, size_t count) {
    fgc_mirror *m = fgc_mirror_find_dev(p);
    if (!m || m->kind != FGC_MIRROR_MANAGED || !count || count > m->user_size - (p - m->dev)) return NULL;
    return m;
}

static int location_device(CUmemLocation loc, int *dev) {
    int n = 0;
    if (loc.type == CU_MEM_LOCATION_TYPE_HOST || loc.type == CU_MEM_LOCATION_TYPE_HOST_NUMA ||
        loc.type == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT) {
        *dev = CU_DEVICE_CPU;
        return 1;
    }
    if (loc.type != CU_MEM_LOCATION_TYPE_DEVICE || cuDeviceGetCount(&n) != CUDA_SUCCESS || loc.id < 0 || loc.id >= n)
        return 0;
    *dev = loc.id;
    return 1;
}

CUresult fgc_cuMemPrefetchAsync_v2(CUdeviceptr devPtr, size_t count, CUmemLocation location, unsigned int flags,
                                   CUstream hStream) {
    FGC_REQUIRE_INIT();
    (void)hStream;
    int dev;
    fgc_mirror *m = managed_range(devPtr, count);
    if (!m || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    if (!location_device(location, &dev)) return CUDA_ERROR_INVALID_DEVICE;
    m->last_prefetch = dev;
    if (dev != CU_DEVICE_CPU) fgc_mirror_sync_all(0); /* pending host writes go now */
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemPrefetchAsync(CUdeviceptr devPtr, size_t count, CUdevice dstDevice, CUstream hStream) {
    CUmemLocation loc;
    memset(&loc, 0, sizeof loc);
    loc.type = dstDevice == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE;
    loc.id = dstDevice == CU_DEVICE_CPU ? 0 : dstDevice;
    return fgc_cuMemPrefetchAsync_v2(devPtr, count, loc, 0, hStream);
}

/* The batched forms (CUDA 13): every range and location is checked as the driver documents it before any takes
 * effect. A discard keeps the contents (the driver leaves them indeterminate, so keeping them is one of the
 * answers it allows); a prefetch is cuMemPrefetchAsync's for each range. The driver takes them only on devices with
 * concurrent managed access, which the stub reports absent; they are accepted anyway, as cuMemPrefetchAsync is,
 * since they change no result. */
static CUresult batch(CUdeviceptr *dptrs, size_t *sizes, size_t count, CUmemLocation *locs, size_t *loc_idxs,
                      size_t n_locs, unsigned long long flags, CUstream hStream, int prefetch) {
    FGC_REQUIRE_INIT();
    if (!dptrs || !sizes || !count || flags || !hStream || hStream == CU_STREAM_LEGACY)
        return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < count; i++)
        if (!managed_range(dptrs[i], sizes[i])) return CUDA_ERROR_INVALID_VALUE;
    if (!prefetch) return CUDA_SUCCESS;
    if (!locs || !loc_idxs || !n_locs || n_locs > count || loc_idxs[0] != 0) return CUDA_ERROR_INVALID_VALUE;
    for (size_t k = 1; k < n_locs; k++)
        if (loc_idxs[k] <= loc_idxs[k - 1] || loc_idxs[k] >= count) return CUDA_ERROR_INVALID_VALUE;
    int dev, to_device = 0;
    for (size_t k = 0; k < n_locs; k++)
        if (!location_device(locs[k], &dev)) return CUDA_ERROR_INVALID_DEVICE;
    for (size_t k = 0; k < n_locs; k++) {
        location_device(locs[k], &dev);
        to_device |= dev != CU_DEVICE_CPU;
        for (size_t i = loc_idxs[k]; i < (k + 1 < n_locs ? loc_idxs[k + 1] : count); i++)
            managed_range(dptrs[i], sizes[i])->last_prefetch = dev;
    }
    if (to_device) fgc_mirror_sync_all(0); /* pending host writes go now */
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemPrefetchBatchAsync(CUdeviceptr *dptrs, size_t *sizes, size_t count, CUmemLocation *prefetchLocs,
                                     size_t *prefetchLocIdxs, size_t numPrefetchLocs, unsigned long long flags,
                                     CUstream hStream) {
    return batch(dptrs, sizes, count, prefetchLocs, prefetchLocIdxs, numPrefetchLocs, flags, hStream, 1);
}

CUresult fgc_cuMemDiscardBatchAsync(CUdeviceptr *dptrs, size_t *sizes, size_t count, unsigned long long flags,
                                    CUstream hStream) {
    return batch(dptrs, sizes, count, NULL, NULL, 0, flags, hStream, 0);
}

CUresult fgc_cuMemDiscardAndPrefetchBatchAsync(CUdeviceptr *dptrs, size_t *sizes, size_t count,
                                               CUmemLocation *prefetchLocs, size_t *prefetchLocIdxs,
                                               size_t numPrefetchLocs, unsigned long long flags, CUstream hStream) {
    return batch(dptrs, sizes, count, prefetchLocs, prefetchLocIdxs, numPrefetchLocs, flags, hStream, 1);
}

CUresult fgc_cuMemAdvise_v2(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUmemLocation location) {
    FGC_REQUIRE_INIT();
    fgc_mirror *m = managed_range(devPtr, count);
    if (!m) return CUDA_ERROR_INVALID_VALUE;
    int dev = CU_DEVICE_INVALID;
    if (advice != CU_MEM_ADVISE_SET_READ_MOSTLY && advice != CU_MEM_ADVISE_UNSET_READ_MOSTLY &&
        advice != CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION && !location_device(location, &dev))
        return CUDA_ERROR_INVALID_DEVICE;
    switch (advice) {
    case CU_MEM_ADVISE_SET_READ_MOSTLY: m->read_mostly = 1; break;
    case CU_MEM_ADVISE_UNSET_READ_MOSTLY: m->read_mostly = 0; break;
    case CU_MEM_ADVISE_SET_PREFERRED_LOCATION: m->preferred = dev; break;
    case CU_MEM_ADVISE_UNSET_PREFERRED_LOCATION: m->preferred = CU_DEVICE_INVALID; break;
    case CU_MEM_ADVISE_SET_ACCESSED_BY: m->accessed_by |= 1u << (dev + 1); break;
    case CU_MEM_ADVISE_UNSET_ACCESSED_BY: m->accessed_by &= ~(1u << (dev + 1)); break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemAdvise(CUdeviceptr devPtr, size_t count, CUmem_advise advice, CUdevice device) {
    CUmemLocation loc;
    memset(&loc, 0, sizeof loc);
    loc.type = device == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_DEVICE;
    loc.id = device == CU_DEVICE_CPU ? 0 : device;
    return fgc_cuMemAdvise_v2(devPtr, count, advice, loc);
}

CUresult fgc_cuStreamAttachMemAsync(CUstream hStream, CUdeviceptr dptr, size_t length, unsigned int flags) {
    FGC_REQUIRE_INIT();
    (void)hStream;
    fgc_mirror *m = fgc_mirror_find_dev(dptr);
    if (!m || m->kind != FGC_MIRROR_MANAGED || dptr != m->dev || (length && length != m->user_size))
        return CUDA_ERROR_INVALID_VALUE;
    if (flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST && flags != CU_MEM_ATTACH_SINGLE)
        return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&g_mirror_mu);
    fgc_mirror_set_attach_host(m, flags == CU_MEM_ATTACH_HOST);
    pthread_mutex_unlock(&g_mirror_mu);
    return CUDA_SUCCESS;
}

static CUmemLocationType loc_type(int dev) {
    return dev == CU_DEVICE_CPU ? CU_MEM_LOCATION_TYPE_HOST
           : dev == CU_DEVICE_INVALID ? CU_MEM_LOCATION_TYPE_INVALID : CU_MEM_LOCATION_TYPE_DEVICE;
}

CUresult fgc_cuMemRangeGetAttribute(void *data, size_t dataSize, CUmem_range_attribute attribute, CUdeviceptr devPtr,
                                    size_t count) {
    FGC_REQUIRE_INIT();
    fgc_mirror *m = managed_range(devPtr, count);
    if (!m || !data || dataSize < 4 || dataSize % 4) return CUDA_ERROR_INVALID_VALUE;
    int *out = (int *)data;
    if (attribute != CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY && dataSize != 4) return CUDA_ERROR_INVALID_VALUE;
    switch (attribute) {
    case CU_MEM_RANGE_ATTRIBUTE_READ_MOSTLY: *out = m->read_mostly; break;
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION: *out = m->preferred; break;
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION: *out = m->last_prefetch; break;
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_TYPE: *out = (int)loc_type(m->preferred); break;
    case CU_MEM_RANGE_ATTRIBUTE_PREFERRED_LOCATION_ID: *out = m->preferred >= 0 ? m->preferred : CU_DEVICE_INVALID; break;
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_TYPE: *out = (int)loc_type(m->last_prefetch); break;
    case CU_MEM_RANGE_ATTRIBUTE_LAST_PREFETCH_LOCATION_ID:
        *out = m->last_prefetch >= 0 ? m->last_prefetch : CU_DEVICE_INVALID;
        break;
    case CU_MEM_RANGE_ATTRIBUTE_ACCESSED_BY: {
        size_t k = 0, n = dataSize / 4;
        for (int d = -1; d < 31 && k < n; d++)
            if (m->accessed_by & (1u << (d + 1))) out[k++] = d;
        while (k < n) out[k++] = CU_DEVICE_INVALID;
        break;
    }
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemRangeGetAttributes(void **data, size_t *dataSizes, CUmem_range_attribute *attributes,
                                     size_t numAttributes, CUdeviceptr devPtr, size_t count) {
    FGC_REQUIRE_INIT();
    if (!data || !dataSizes || !attributes || !numAttributes) return CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; i < numAttributes; i++) {
        CUresult r = fgc_cuMemRangeGetAttribute(data[i], dataSizes[i], attributes[i], devPtr, count);
        if (r != CUDA_SUCCESS) return r;
    }
    return CUDA_SUCCESS;
}

/* ---- mapped host memory ---- */

CUresult fgc_cuMemHostGetDevicePointer_v2(CUdeviceptr *pdptr, void *p, unsigned int Flags) {
    FGC_REQUIRE_INIT();
    /* FARGPU_MAPPED_MEMORY=refuse: answer as before mapped memory was emulated (libraries that only probe for it,
     * cuDNN and PyTorch among them, then keep their fallback path). */
    const char *mode = getenv("FARGPU_MAPPED_MEMORY");
    if (mode && !strcmp(mode, "refuse")) {
        static int logged;
        return fgc_unsupported("cuMemHostGetDevicePointer_v2 (FARGPU_MAPPED_MEMORY=refuse)", &logged);
    }
    if (!pdptr || !p || Flags != 0) return CUDA_ERROR_INVALID_VALUE;
    CUresult shm_res; /* co-located: the shared-memory region is real mapped memory (shm.c) */
    if (fgc_shm_devptr(p, pdptr, &shm_res)) return shm_res;
    uint64_t d;
    if (fgc_mirror_device_of(p, &d)) {
        *pdptr = d;
        return CUDA_SUCCESS;
    }
    void *base;
    size_t size;
    if (!fgc_host_block_find(p, &base, &size, NULL)) return CUDA_ERROR_INVALID_VALUE;
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)base / pg * pg, hi = ((uintptr_t)base + size + pg - 1) / pg * pg;
    CUdeviceptr shadow = 0;
    CUresult r = cuMemAlloc_v2(&shadow, hi - lo);
    if (r != CUDA_SUCCESS) return r;
    r = cuMemcpyHtoD_v2(shadow, (const void *)lo, hi - lo); /* what the host holds now */
    fgc_mirror *m = r == CUDA_SUCCESS ? fgc_mirror_add(lo, shadow, hi - lo, FGC_MIRROR_MAPPED) : NULL;
    if (!m) {
        cuMemFree_v2(shadow);
        return r == CUDA_SUCCESS ? CUDA_ERROR_OUT_OF_MEMORY : r;
    }
    m->user = (uint64_t)(uintptr_t)base;
    m->user_size = size;
    *pdptr = shadow + ((uintptr_t)p - lo);
    return CUDA_SUCCESS;
}


/* Pinned memory freed or unregistered (memory.c, before it goes): its shadow goes, the host range is the
 * application's again (read-write, with the device's last bytes). */
void fgc_mirror_host_gone(void *p) {
    fgc_mirror *m = fgc_mirror_find_host((uintptr_t)p);
    if (!m || m->kind != FGC_MIRROR_MAPPED || m->user != (uint64_t)(uintptr_t)p) return;
    uint64_t shadow = m->dev;
    fgc_mirror_remove(m, 1);
    cuMemFree_v2(shadow);
}
