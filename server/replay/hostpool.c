/* hostpool.c — the node's host page pool as driver memory: one host-NUMA VMM allocation, made once by a
 * short-lived process (fgs_host_pool_make, run by server/host_pool_vmm.py) and exported as a file descriptor that
 * the node agent holds (the memory lives as long as one descriptor does). Each worker imports it and maps it once,
 * and a page-out or page-in is then one DMA per allocation between the device and the pool, at the link's speed,
 * with no registration, no CPU page tables to fill and no memcpy. Measured on an H100 (bench/probe_hostmem.c): 55 GB/s
 * each way, against 13 GB/s out through bounce buffers into a shared memfd whose 4 KiB page tables each worker must
 * fill. Neither the agent nor the worker reads it with the CPU: a session paged here is parked or restored through
 * a spill file. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fgs_public.h"
#include "fgs_session.h"

/* The export and import calls, looked up here: the replay table holds what the protocol forwards. */
typedef CUresult (*export_fn)(void *, CUmemGenericAllocationHandle, CUmemAllocationHandleType, unsigned long long);
typedef CUresult (*import_fn)(CUmemGenericAllocationHandle *, void *, CUmemAllocationHandleType);

static void say(char *why, unsigned long len, const char *what, CUresult r) {
    if (why && len) snprintf(why, len, "%s failed with CUDA error %d", what, (int)r);
}

static CUmemAllocationProp pool_prop(int numa) {
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    prop.location.id = numa;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return prop;
}

FGS_EXPORT int fgs_host_pool_make(fgs_session *S, unsigned long long bytes, int numa, unsigned long long *len,
                                  char *why, unsigned long why_len) {
    const fgs_api *api = S->api;
    export_fn exp = NULL;
    *(void **)&exp = dlsym(S->dl, "cuMemExportToShareableHandle");
    if (!api->cuMemCreate || !exp) {
        snprintf(why, why_len, "the driver has no VMM export");
        return -1;
    }
    CUdevice dev = 0;
    CUcontext ctx = NULL;
    CUresult r = api->cuDeviceGet(&dev, 0);
    if (r == CUDA_SUCCESS) r = api->cuDevicePrimaryCtxRetain(&ctx, dev);
    if (r == CUDA_SUCCESS) r = api->cuCtxSetCurrent(ctx);
    if (r != CUDA_SUCCESS) {
        say(why, why_len, "opening the device", r);
        return -1;
    }
    CUmemAllocationProp prop = pool_prop(numa);
    size_t gran = 0;
    r = api->cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
    if (r != CUDA_SUCCESS || !gran) {
        say(why, why_len, "host-NUMA allocations (cuMemGetAllocationGranularity)", r);
        return -1;
    }
    size_t n = (size_t)((bytes + gran - 1) / gran * gran);
    CUmemGenericAllocationHandle h = 0;
    r = api->cuMemCreate(&h, n, &prop, 0);
    if (r != CUDA_SUCCESS) {
        say(why, why_len, "allocating the pool (cuMemCreate on host NUMA node)", r);
        return -1;
    }
    int fd = -1;
    r = exp(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    api->cuMemRelease(h); /* the descriptor keeps the memory */
    if (r != CUDA_SUCCESS || fd < 0) {
        say(why, why_len, "exporting the pool (cuMemExportToShareableHandle)", r);
        return -1;
    }
    *len = n;
    return fd;
}

/* Maps [off, off+len) of the pool (offset and length on its 2 MiB granularity) for the session's devices to reach by
 * DMA. Only an extent, and only for the length of one step: mapping costs time in proportion to what is mapped, and
 * a worker that holds none of the pool can be taken into the driver's process checkpoint (the deeper level). */
CUresult fgs_hostpool_map(fgs_session *S, int fd, size_t off, size_t len, CUdeviceptr *va,
                          CUmemGenericAllocationHandle *h) {
    const fgs_api *api = S->api;
    import_fn imp = NULL;
    *(void **)&imp = dlsym(S->dl, "cuMemImportFromShareableHandle");
    if (!imp) return CUDA_ERROR_NOT_SUPPORTED;
    CUresult r = imp(h, (void *)(intptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    if (r != CUDA_SUCCESS) return r;
    r = api->cuMemAddressReserve(va, len, 0, 0, 0);
    if (r == CUDA_SUCCESS) {
        r = api->cuMemMap(*va, len, off, *h, 0);
        if (r != CUDA_SUCCESS) api->cuMemAddressFree(*va, len);
    }
    if (r != CUDA_SUCCESS) {
        api->cuMemRelease(*h);
        *h = 0;
        *va = 0;
        return r;
    }
    CUmemAccessDesc ad;
    memset(&ad, 0, sizeof ad);
    int ndev = 0;
    if (api->cuDeviceGetCount(&ndev) != CUDA_SUCCESS || ndev < 1) ndev = 1;
    for (int d = 0; d < ndev && r == CUDA_SUCCESS; d++) {
        ad.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        ad.location.id = d;
        ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = api->cuMemSetAccess(*va, len, &ad, 1);
    }
    if (r != CUDA_SUCCESS) {
        fgs_hostpool_unmap(S, *va, len, *h);
        *va = 0;
        *h = 0;
    }
    return r;
}

void fgs_hostpool_unmap(fgs_session *S, CUdeviceptr va, size_t len, CUmemGenericAllocationHandle h) {
    if (!va) return;
    S->api->cuMemUnmap(va, len);
    S->api->cuMemAddressFree(va, len);
    if (h) S->api->cuMemRelease(h);
}

/* Every allocation of the session to (out) or from the pool at `pool`, one DMA each, on `stream`. */
CUresult fgs_hostpool_copy(fgs_session *S, CUstream stream, CUdeviceptr pool, int out) {
    const fgs_api *api = S->api;
    uint64_t pos = 0;
    CUresult r = CUDA_SUCCESS;
    for (size_t i = 0; i < S->n_allocs && r == CUDA_SUCCESS; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (out) a->page_off = pos;
        pos += a->mapped;
        r = out ? api->cuMemcpyDtoDAsync_v2(pool + a->page_off, a->ptr, a->mapped, stream)
                : api->cuMemcpyDtoDAsync_v2(a->ptr, pool + a->page_off, a->mapped, stream);
    }
    CUresult rs = api->cuStreamSynchronize(stream);
    return r != CUDA_SUCCESS ? r : rs;
}
