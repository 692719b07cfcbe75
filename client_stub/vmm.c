/* vmm.c — the application's virtual memory management calls (cuMemAddressReserve, cuMemCreate, cuMemMap, ...).
 * Every one goes to the node (server/replay/vmm.c), which replays it on the session's device, counts physical
 * memory against the lease's quota and keeps mapped handles pageable. Allocation handles the application holds
 * are the node's virtual ids. Mapped ranges are noted as device memory here, so unified copies see them as
 * device addresses; unmapping forgets them. What the node refuses (a handle mapped twice or in part, host or
 * compressible memory, shareable handles) comes back as CUDA_ERROR_NOT_SUPPORTED. */
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

typedef struct {
    uint64_t p, n;
} mapping;

static pthread_mutex_t map_mu = PTHREAD_MUTEX_INITIALIZER;
static mapping *maps;
static size_t n_maps, cap_maps;

static void note_map(uint64_t p, uint64_t n) {
    pthread_mutex_lock(&map_mu);
    if (n_maps == cap_maps) {
        size_t cap = cap_maps ? cap_maps * 2 : 32;
        mapping *nm = (mapping *)realloc(maps, cap * sizeof *nm);
        if (!nm) {
            pthread_mutex_unlock(&map_mu);
            return;
        }
        maps = nm;
        cap_maps = cap;
    }
    maps[n_maps++] = (mapping){p, n};
    pthread_mutex_unlock(&map_mu);
    fgc_device_range_add(p, n);
    fgc_device_range_mark_vmm(p);
}

static void forget_maps(uint64_t p, uint64_t n) {
    pthread_mutex_lock(&map_mu);
    for (size_t i = n_maps; i-- > 0;)
        if (maps[i].p >= p && maps[i].p - p < n) {
            fgc_device_range_remove(maps[i].p);
            maps[i] = maps[--n_maps];
        }
    pthread_mutex_unlock(&map_mu);
}

static CUresult call(uint16_t op, const uint64_t *args, int nargs, const void *blob, size_t blen, void *out,
                     size_t olen) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    for (int i = 0; i < nargs; i++) fg_put_u64(w, args[i]);
    if (blen) fg_put(w, blob, blen);
    if (olen) fgc_expect(out, olen);
    return fgc_sync();
}

CUresult fgc_cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                 unsigned long long flags) {
    if (!ptr) return CUDA_ERROR_INVALID_VALUE;
    uint64_t a[4] = {size, alignment, addr, flags}, p = 0;
    CUresult r = call(FG_OP_cuMemAddressReserve, a, 4, NULL, 0, &p, sizeof p);
    if (r == CUDA_SUCCESS) *ptr = (CUdeviceptr)p;
    return r;
}

CUresult fgc_cuMemAddressFree(CUdeviceptr ptr, size_t size) {
    uint64_t a[2] = {ptr, size};
    return call(FG_OP_cuMemAddressFree, a, 2, NULL, 0, NULL, 0);
}

CUresult fgc_cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                         unsigned long long flags) {
    if (!handle || !prop) return CUDA_ERROR_INVALID_VALUE;
    uint64_t a[2] = {size, flags}, h = 0;
    CUresult r = call(FG_OP_cuMemCreate, a, 2, prop, sizeof *prop, &h, sizeof h);
    if (r == CUDA_SUCCESS) *handle = h;
    return r;
}

CUresult fgc_cuMemRelease(CUmemGenericAllocationHandle handle) {
    uint64_t a[1] = {handle};
    return call(FG_OP_cuMemRelease, a, 1, NULL, 0, NULL, 0);
}

CUresult fgc_cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                      unsigned long long flags) {
    uint64_t a[5] = {ptr, size, offset, handle, flags};
    CUresult r = call(FG_OP_cuMemMap, a, 5, NULL, 0, NULL, 0);
    if (r == CUDA_SUCCESS) note_map(ptr, size);
    return r;
}

CUresult fgc_cuMemUnmap(CUdeviceptr ptr, size_t size) {
    uint64_t a[2] = {ptr, size};
    CUresult r = call(FG_OP_cuMemUnmap, a, 2, NULL, 0, NULL, 0);
    if (r == CUDA_SUCCESS) forget_maps(ptr, size);
    return r;
}

CUresult fgc_cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
    if (!desc || count == 0 || count > 64) return CUDA_ERROR_INVALID_VALUE;
    uint64_t a[3] = {ptr, size, count};
    return call(FG_OP_cuMemSetAccess, a, 3, desc, count * sizeof *desc, NULL, 0);
}

CUresult fgc_cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr) {
    if (!handle) return CUDA_ERROR_INVALID_VALUE;
    uint64_t a[1] = {(uint64_t)(uintptr_t)addr}, h = 0;
    CUresult r = call(FG_OP_cuMemRetainAllocationHandle, a, 1, NULL, 0, &h, sizeof h);
    if (r == CUDA_SUCCESS) *handle = h;
    return r;
}

CUresult fgc_cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop, CUmemGenericAllocationHandle handle) {
    if (!prop) return CUDA_ERROR_INVALID_VALUE;
    uint64_t a[1] = {handle};
    return call(FG_OP_cuMemGetAllocationPropertiesFromHandle, a, 1, NULL, 0, prop, sizeof *prop);
}
