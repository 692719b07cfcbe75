/* mempool.c — stream-ordered allocation and memory pools, as the application calls them. The worker emulates
 * them over the session's ordinary allocations (server/replay/mempool.c says how): cuMemAllocAsync and
 * cuMemAllocFromPoolAsync wait for the node's answer (the address), cuMemFreeAsync is an async record whose
 * memory the node releases once the stream reaches it. On a stream under capture they make graph memory nodes
 * (server/replay/mempool_capture.c, graph_mem.c). Pools are per-session virtual ids, like every handle.
 * The location-based calls of CUDA 12.5+ (cuMemGetDefaultMemPool, cuMemGetMemPool, cuMemSetMemPool) take device
 * locations with pinned memory and refuse host and managed pools. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

static CUresult alloc_async(uint16_t op, CUdeviceptr *dptr, size_t bytesize, const void *pool, int with_pool,
                            CUstream s) {
    FGC_REQUIRE_INIT();
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fg_put_u64(w, bytesize);
    if (with_pool) fgc_put_handle(w, pool);
    fgc_put_handle(w, s);
    /* address; under capture: allocation node, its graph; device; the pool's id (0: the device's default pool
     * while its id was never handed out, or a graph allocation) */
    uint64_t rep[5] = {0, 0, 0, 0, 0};
    fgc_expect(rep, sizeof rep);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr)rep[0];
        fgc_device_range_add(rep[0], bytesize);
        if (rep[1]) fgc_graph_mem_captured_alloc(s, rep[1], rep[2], (CUdeviceptr)rep[0], bytesize, (int)rep[3]);
        else fgc_device_range_set_pool(rep[0], rep[4], (int)rep[3]);
    }
    return r;
}

CUresult fgc_cuMemAllocAsync(CUdeviceptr *dptr, size_t bytesize, CUstream hStream) {
    return alloc_async(FG_OP_cuMemAllocAsync, dptr, bytesize, NULL, 0, hStream);
}

CUresult fgc_cuMemAllocFromPoolAsync(CUdeviceptr *dptr, size_t bytesize, CUmemoryPool pool, CUstream hStream) {
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    return alloc_async(FG_OP_cuMemAllocFromPoolAsync, dptr, bytesize, pool, 1, hStream);
}

CUresult fgc_cuMemFreeAsync(CUdeviceptr dptr, CUstream hStream) {
    FGC_REQUIRE_INIT();
    if (dptr == 0) return CUDA_SUCCESS;
    if (fgc_capture_active()) { /* under capture: a free node (graph_mem.c) */
        CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
        CUresult c = cuStreamIsCapturing(hStream, &st);
        if (c != CUDA_SUCCESS) return c;
        if (st == CU_STREAM_CAPTURE_STATUS_ACTIVE) return fgc_graph_mem_capture_free(dptr, hStream);
        if (st != CU_STREAM_CAPTURE_STATUS_NONE) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    if (fgc_graph_mem_user_free(dptr)) return CUDA_SUCCESS; /* a graph allocation its graphs still hold */
    fg_writer *w = fgc_begin(FG_OP_cuMemFreeAsync);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dptr);
    fgc_put_handle(w, hStream);
    CUresult r = fgc_async();
    if (r == CUDA_SUCCESS) fgc_device_range_remove(dptr); /* no later call may use it */
    return r;
}

static CUresult pool_of_device(uint16_t op, CUmemoryPool *out, CUdevice dev) {
    FGC_REQUIRE_INIT();
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fg_put_u32(w, (uint32_t)dev);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *out = (CUmemoryPool)(uintptr_t)id;
    return r;
}

CUresult fgc_cuDeviceGetDefaultMemPool(CUmemoryPool *pool_out, CUdevice dev) {
    return pool_of_device(FG_OP_cuDeviceGetDefaultMemPool, pool_out, dev);
}

CUresult fgc_cuDeviceGetMemPool(CUmemoryPool *pool, CUdevice dev) {
    return pool_of_device(FG_OP_cuDeviceGetMemPool, pool, dev);
}

CUresult fgc_cuDeviceSetMemPool(CUdevice dev, CUmemoryPool pool) {
    FGC_REQUIRE_INIT();
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuDeviceSetMemPool);
    if (!w) return fgc_last_error();
    fg_put_u32(w, (uint32_t)dev);
    fgc_put_handle(w, pool);
    return fgc_sync();
}

CUresult fgc_cuMemPoolCreate(CUmemoryPool *pool, const CUmemPoolProps *props) {
    FGC_REQUIRE_INIT();
    if (!pool || !props) return CUDA_ERROR_INVALID_VALUE;
    CUmemPoolProps p = *props;
    if (p.win32SecurityAttributes) return CUDA_ERROR_INVALID_VALUE; /* must be zero outside Windows handles */
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolCreate);
    if (!w) return fgc_last_error();
    fg_put(w, &p, sizeof p);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *pool = (CUmemoryPool)(uintptr_t)id;
    return r;
}

CUresult fgc_cuMemPoolDestroy(CUmemoryPool pool) {
    FGC_REQUIRE_INIT();
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolDestroy);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, pool);
    return fgc_sync();
}

CUresult fgc_cuMemPoolTrimTo(CUmemoryPool pool, size_t minBytesToKeep) {
    FGC_REQUIRE_INIT();
    if (!pool) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolTrimTo);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, pool);
    fg_put_u64(w, minBytesToKeep);
    return fgc_sync();
}

/* The REUSE_* attributes are ints, the others cuuint64_t. */
static int is_int_attr(CUmemPool_attribute a) {
    return a == CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES || a == CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC ||
           a == CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES;
}

CUresult fgc_cuMemPoolSetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    FGC_REQUIRE_INIT();
    if (!pool || !value) return CUDA_ERROR_INVALID_VALUE;
    uint64_t v = 0;
    if (is_int_attr(attr)) {
        int i;
        memcpy(&i, value, sizeof i);
        v = (uint64_t)(uint32_t)i;
    } else {
        memcpy(&v, value, sizeof v);
    }
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolSetAttribute);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, pool);
    fg_put_u32(w, (uint32_t)attr);
    fg_put_u64(w, v);
    return fgc_sync();
}

CUresult fgc_cuMemPoolGetAttribute(CUmemoryPool pool, CUmemPool_attribute attr, void *value) {
    FGC_REQUIRE_INIT();
    if (!pool || !value) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolGetAttribute);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, pool);
    fg_put_u32(w, (uint32_t)attr);
    uint64_t v = 0;
    fgc_expect(&v, sizeof v);
    CUresult r = fgc_sync();
    if (r != CUDA_SUCCESS) return r;
    if (is_int_attr(attr)) {
        int i = (int)(uint32_t)v;
        memcpy(value, &i, sizeof i);
    } else {
        memcpy(value, &v, sizeof v);
    }
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemPoolSetAccess(CUmemoryPool pool, const CUmemAccessDesc *map, size_t count) {
    FGC_REQUIRE_INIT();
    if (!pool || (count && !map) || count > 64) return CUDA_ERROR_INVALID_VALUE; /* the node's bound: one per device */
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolSetAccess);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, pool);
    fg_put_u64(w, count);
    if (count) fg_put(w, map, count * sizeof *map);
    return fgc_sync();
}

CUresult fgc_cuMemPoolGetAccess(CUmemAccess_flags *flags, CUmemoryPool memPool, CUmemLocation *location) {
    FGC_REQUIRE_INIT();
    if (!flags || !memPool || !location) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMemPoolGetAccess);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, memPool);
    fg_put(w, location, sizeof *location);
    uint32_t f = 0;
    fgc_expect(&f, sizeof f);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *flags = (CUmemAccess_flags)f;
    return r;
}

/* ---- the location-based calls: device pools of pinned memory only ---- */

static CUresult device_location(const char *name, const CUmemLocation *loc, CUmemAllocationType type, int *logged) {
    if (!loc) return CUDA_ERROR_INVALID_VALUE;
    if (type == CU_MEM_ALLOCATION_TYPE_MANAGED) return fgc_unsupported(name, logged); /* managed pools */
    if (type != CU_MEM_ALLOCATION_TYPE_PINNED) return CUDA_ERROR_INVALID_VALUE;
    if (loc->type == CU_MEM_LOCATION_TYPE_HOST || loc->type == CU_MEM_LOCATION_TYPE_HOST_NUMA)
        return fgc_unsupported(name, logged); /* host pools */
    return loc->type == CU_MEM_LOCATION_TYPE_DEVICE ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult fgc_cuMemGetDefaultMemPool(CUmemoryPool *pool_out, CUmemLocation *location, CUmemAllocationType type) {
    FGC_REQUIRE_INIT();
    static int logged;
    CUresult r = device_location("cuMemGetDefaultMemPool (a host or managed pool)", location, type, &logged);
    return r == CUDA_SUCCESS ? fgc_cuDeviceGetDefaultMemPool(pool_out, location->id) : r;
}

CUresult fgc_cuMemGetMemPool(CUmemoryPool *pool, CUmemLocation *location, CUmemAllocationType type) {
    FGC_REQUIRE_INIT();
    static int logged;
    CUresult r = device_location("cuMemGetMemPool (a host or managed pool)", location, type, &logged);
    return r == CUDA_SUCCESS ? fgc_cuDeviceGetMemPool(pool, location->id) : r;
}

CUresult fgc_cuMemSetMemPool(CUmemLocation *location, CUmemAllocationType type, CUmemoryPool pool) {
    FGC_REQUIRE_INIT();
    static int logged;
    CUresult r = device_location("cuMemSetMemPool (a host or managed pool)", location, type, &logged);
    return r == CUDA_SUCCESS ? fgc_cuDeviceSetMemPool(location->id, pool) : r;
}
