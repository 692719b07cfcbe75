/* hostpool.c — the node's host page pool as driver memory: equal slabs, each its own host-NUMA VMM allocation, made
 * once by a short-lived process (fgs_host_pool_make, one call per slab, run by server/host_pool_vmm.py) and exported
 * as a file descriptor that the node agent holds (a slab's memory lives as long as one descriptor does). A session's
 * extent of the pool is a run of whole slabs; for one page-out or page-in step its worker imports just those, maps
 * each whole (offset 0, its full size: an H100 on driver 580 refused a part of a host-NUMA allocation with
 * CUDA_ERROR_NOT_SUPPORTED, error 801, and the CUDA documentation says the offset "currently must be zero") at
 * consecutive addresses of one reserved range, and the step is then one DMA per allocation between the device and
 * that range, at the link's speed, with no registration, no CPU page tables to fill and no memcpy. Measured on an H100
 * (bench/probe_hostmem.c): 55 GB/s each way, against 13 GB/s out through bounce buffers into a shared memfd whose
 * 4 KiB page tables each worker must fill. Slabs rather than one allocation: mapping only the extent keeps each step's
 * mapping cost in proportion to the session (a 34 GiB pool mapped whole cost 0.9 s), and a worker that holds none of
 * the pool mapped between steps can be taken into the driver's process checkpoint (the deeper paging level). Neither
 * the agent nor the worker reads the pool with the CPU: a session paged here is parked or restored through a spill
 * file. */
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

/* Unmaps the first `n` slabs mapped at va (each whole) and frees the range of `total` slabs. */
static void unmap_slabs(const fgs_api *api, CUdeviceptr va, size_t n, size_t total, size_t slab) {
    for (size_t i = 0; i < n; i++) api->cuMemUnmap(va + i * slab, slab);
    api->cuMemAddressFree(va, total * slab);
}

/* Maps the `n` slabs whose descriptors are fds[0..n) at consecutive addresses of one reserved range (*va), each whole,
 * readable and writable by the session's devices; only for the length of one step (fgs_hostpool_unmap). Each imported
 * handle is released once mapped: the mapping keeps the memory, and the descriptor the agent holds keeps it after. */
CUresult fgs_hostpool_map(fgs_session *S, const int *fds, size_t n, size_t slab, CUdeviceptr *va) {
    const fgs_api *api = S->api;
    *va = 0;
    import_fn imp = NULL;
    *(void **)&imp = dlsym(S->dl, "cuMemImportFromShareableHandle");
    if (!imp) return CUDA_ERROR_NOT_SUPPORTED;
    if (!n || !slab || n > SIZE_MAX / slab) return CUDA_ERROR_INVALID_VALUE;
    CUdeviceptr base = 0;
    CUresult r = api->cuMemAddressReserve(&base, n * slab, 0, 0, 0);
    if (r != CUDA_SUCCESS) return r;
    size_t mapped = 0;
    for (; mapped < n && r == CUDA_SUCCESS; mapped++) {
        CUmemGenericAllocationHandle h = 0;
        r = imp(&h, (void *)(intptr_t)fds[mapped], CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
        if (r != CUDA_SUCCESS) break;
        r = api->cuMemMap(base + mapped * slab, slab, 0, h, 0);
        api->cuMemRelease(h);
        if (r != CUDA_SUCCESS) break;
    }
    CUmemAccessDesc ad;
    memset(&ad, 0, sizeof ad);
    int ndev = 0;
    if (r == CUDA_SUCCESS && (api->cuDeviceGetCount(&ndev) != CUDA_SUCCESS || ndev < 1)) ndev = 1;
    for (int d = 0; d < ndev && r == CUDA_SUCCESS; d++) {
        ad.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        ad.location.id = d;
        ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = api->cuMemSetAccess(base, n * slab, &ad, 1);
    }
    if (r != CUDA_SUCCESS) {
        unmap_slabs(api, base, mapped, n, slab);
        return r;
    }
    *va = base;
    return CUDA_SUCCESS;
}

void fgs_hostpool_unmap(fgs_session *S, CUdeviceptr va, size_t n, size_t slab) {
    if (va) unmap_slabs(S->api, va, n, n, slab);
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
