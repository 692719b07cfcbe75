/* mempool.c — stream-ordered allocation (cuMemAllocAsync, cuMemAllocFromPoolAsync, cuMemFreeAsync) and memory
 * pools, emulated over the session's own allocations (memory.c), never the driver's pools: every byte stays a
 * VMM-backed session allocation, charged to the lease's quota, paged and parked with the rest.
 *
 * Allocation: the memory is allocated when the call runs on the node, so it is valid at once, for the stream and
 * for every other (stricter than the driver's promise, which makes it valid in stream order). Free: the
 * allocation stays until the work queued on its stream before the free has completed: an event is recorded on
 * the stream and the memory released once the event completes (checked after each batch), when a
 * synchronisation of its stream or context ends a batch, when an allocation would not fit without it, or before
 * its context goes. Never earlier. A free whose event cannot be recorded waits for its stream at once.
 *
 * Pools are objects of the worker, handed to the client as per-session virtual ids (FGH_MEMORYPOOL), never driver
 * pointers. Each device has a default pool, current until cuDeviceSetMemPool names another. cuMemPoolCreate
 * takes device pools only: host and host-NUMA locations and shareable handle types (pool IPC) are refused with
 * CUDA_ERROR_NOT_SUPPORTED and a log line. Nothing is cached for reuse: a pool holds exactly the allocations not
 * yet released, so RELEASE_THRESHOLD (stored, as the REUSE_* flags are) is always honoured, cuMemPoolTrimTo has
 * nothing cached to give back, and RESERVED_MEM_CURRENT counts the allocations a pool holds (freed ones whose
 * free has not completed included), USED_MEM_CURRENT those the application has not freed, both in mapped bytes
 * (the allocation granularity). The high watermarks can be reset to zero (then they restart from the current
 * value), as the driver allows. A pool's maxSize caps what it holds. Access: the pool's own device has read-write
 * access; cuMemPoolSetAccess gives a peer device read-write access (asked for read or read-write) to everything the
 * pool holds and will hand out, kept across paging and parking; taking it away (PROT_NONE) stops the grants, but
 * memory already mapped for the peer stays reachable until it is freed (more than the driver allows, never less).
 * A destroyed pool lives until its last allocation is released, as the driver's does.
 *
 * A stream under capture is refused (CUDA_ERROR_NOT_SUPPORTED, logged): the driver would make graph memory nodes
 * out of its own pool. Graphs built by hand have memory nodes emulated in the stub (client_stub/graph_mem.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_DEV 64
#define N_REUSE 3
#define ACCESS_LIMIT 64 /* access descriptors one cuMemPoolSetAccess may carry (one per device at most) */
#define POOLS_LIMIT (1u << 20) /* created pools a parked state may name */

typedef struct mpool {
    uint64_t id; /* the virtual id once handed out; 0: none yet */
    int dev;
    int is_default;
    int destroyed; /* the client destroyed it: it goes with its last allocation */
    uint64_t max_size; /* 0: no cap */
    int reuse[N_REUSE];
    uint64_t threshold;
    uint64_t used, reserved, used_high, reserved_high;
    size_t n_allocs; /* allocations it holds, pending frees included */
    uint8_t access[MAX_DEV]; /* CUmemAccess_flags of other devices (cuMemPoolSetAccess); its own: read-write */
} mpool;

typedef struct {
    CUdeviceptr ptr;
    size_t mapped;
    mpool *pool;   /* NULL: a cuMemAlloc allocation freed with cuMemFreeAsync */
    int pending;   /* freed with cuMemFreeAsync, not yet released */
    CUevent ev;    /* completes when the free is reached on its stream; NULL: nothing left to wait for */
    CUstream stream;
} palloc;

static mpool *g_defaults[MAX_DEV], *g_current[MAX_DEV];
static mpool **g_pools; /* created pools, destroyed ones included until they go */
static size_t g_n_pools, g_cap_pools;
static palloc *g_allocs;
static size_t g_n_allocs, g_cap_allocs, g_n_pending;

static int grow(void **v, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 32;
    void *nv = realloc(*v, c * size);
    if (!nv) return -1;
    *v = nv;
    *cap = c;
    return 0;
}

static CUresult refuse(fgs_session *S, const char *what) {
    static const char *told[16]; /* `what` is a literal: once per distinct one */
    for (size_t i = 0; i < 16; i++) {
        if (told[i] == what) return CUDA_ERROR_NOT_SUPPORTED;
        if (!told[i]) {
            told[i] = what;
            break;
        }
    }
    fgs_log(S, "not supported: %s (CUDA_ERROR_NOT_SUPPORTED)", what);
    return CUDA_ERROR_NOT_SUPPORTED;
}

static CUresult check_dev(fgs_session *S, int dev) {
    int count = 0;
    CUresult r = S->api->cuDeviceGetCount ? S->api->cuDeviceGetCount(&count) : CUDA_ERROR_NOT_SUPPORTED;
    if (r != CUDA_SUCCESS) return r;
    return dev < 0 || dev >= count || dev >= MAX_DEV ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

static mpool *new_pool(int dev, int is_default) {
    mpool *p = (mpool *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->dev = dev;
    p->is_default = is_default;
    for (int i = 0; i < N_REUSE; i++) p->reuse[i] = 1; /* the driver's defaults: all enabled */
    return p;
}

static mpool *default_pool(int dev) {
    if (!g_defaults[dev]) g_defaults[dev] = new_pool(dev, 1);
    return g_defaults[dev];
}

static mpool *current_pool(int dev) { return g_current[dev] ? g_current[dev] : default_pool(dev); }

/* The pool's virtual id, handed out once (and so kept in the creation journal by the op that asked). */
static uint64_t pool_id(fgs_session *S, mpool *p) {
    if (!p->id) p->id = fgs_handle_add(S, FGH_MEMORYPOOL, p);
    return p->id;
}

static mpool *pool_of(fgs_session *S, uint64_t id) {
    void *p = NULL;
    if (!id || fgs_handle_get(S, FGH_MEMORYPOOL, id, &p)) return NULL;
    return (mpool *)p;
}

static palloc *find(CUdeviceptr ptr) {
    for (size_t i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].ptr == ptr) return &g_allocs[i];
    return NULL;
}

static void pool_free(mpool *p) {
    for (size_t i = 0; i < g_n_pools; i++)
        if (g_pools[i] == p) g_pools[i] = g_pools[--g_n_pools];
    free(p);
}

/* The entry leaves the table (the pool's accounting follows); its memory is the caller's to release. */
static void drop(palloc *a) {
    mpool *p = a->pool;
    if (a->pending) g_n_pending--;
    if (p) {
        if (!a->pending) p->used -= a->mapped;
        p->reserved -= a->mapped;
        p->n_allocs--;
    }
    *a = g_allocs[--g_n_allocs];
    if (p && p->destroyed && !p->n_allocs) pool_free(p);
}

static void release(fgs_session *S, palloc *a) {
    CUdeviceptr ptr = a->ptr;
    if (a->ev) S->api->cuEventDestroy_v2(a->ev);
    drop(a);
    fgs_memory_free_now(S, ptr);
}

/* Releases the pending frees that are done: all of them (wait_all), those on `stream` (wait_stream: its
 * synchronisation just returned), or those whose event reports completion. */
static void reap(fgs_session *S, int wait_all, int wait_stream, CUstream stream) {
    if (!g_n_pending || fgs_is_paged(S)) return; /* paged: released after the next page-in */
    for (size_t i = g_n_allocs; i-- > 0;) {
        palloc *a = &g_allocs[i];
        if (!a->pending) continue;
        if (a->ev) {
            CUresult q;
            if (wait_all || (wait_stream && a->stream == stream)) q = S->api->cuEventSynchronize(a->ev);
            else q = S->api->cuEventQuery(a->ev);
            if (q == CUDA_ERROR_NOT_READY) continue;
        }
        release(S, a);
    }
}

void fgs_mempool_reap(fgs_session *S, unsigned last_op, const uint8_t *args, size_t len) {
    if (!g_n_pending) return;
    if (last_op == FG_OP_cuCtxSynchronize) {
        reap(S, 1, 0, NULL);
        return;
    }
    void *s = NULL;
    uint64_t sid = 0;
    if (last_op == FG_OP_cuStreamSynchronize && len >= 8) {
        memcpy(&sid, args, 8);
        if (fgs_handle_get(S, FGH_STREAM, sid, &s) == 0) {
            reap(S, 0, 1, (CUstream)s);
            return;
        }
    }
    reap(S, 0, 0, NULL);
}

void fgs_mempool_drain(fgs_session *S) { reap(S, 1, 0, NULL); }

int fgs_mempool_forget(fgs_session *S, CUdeviceptr p) {
    (void)S;
    palloc *a = find(p);
    if (!a) return 0;
    if (a->pending) return -1;
    drop(a);
    return 0;
}

void fgs_mempool_close(fgs_session *S) {
    for (size_t i = 0; i < g_n_allocs; i++)
        if (g_allocs[i].ev) S->api->cuEventDestroy_v2(g_allocs[i].ev);
    g_n_allocs = g_n_pending = 0; /* their memory goes with the session's allocations (fgs_memory_release_all) */
    for (size_t i = 0; i < g_n_pools; i++) free(g_pools[i]);
    g_n_pools = 0;
    for (int d = 0; d < MAX_DEV; d++) {
        free(g_defaults[d]);
        g_defaults[d] = g_current[d] = NULL;
    }
}

/* ---- allocation and free ---- */

/* An event recorded on s now, made in s's own context (NULL: none could be). */
static CUevent free_event(fgs_session *S, CUstream s) {
    CUcontext ctx = NULL, cur = NULL, popped;
    int pushed = 0;
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD && S->api->cuStreamGetCtx &&
        S->api->cuStreamGetCtx(s, &ctx) == CUDA_SUCCESS && ctx && S->api->cuCtxGetCurrent(&cur) == CUDA_SUCCESS &&
        ctx != cur)
        pushed = S->api->cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS;
    CUevent ev = NULL;
    if (S->api->cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING) != CUDA_SUCCESS) ev = NULL;
    if (ev && S->api->cuEventRecord(ev, s) != CUDA_SUCCESS) {
        S->api->cuEventDestroy_v2(ev);
        ev = NULL;
    }
    if (pushed) S->api->cuCtxPopCurrent_v2(&popped);
    return ev;
}

static CUresult stream_of(fgs_session *S, uint64_t sid, CUstream *s) {
    void *real = NULL;
    if (fgs_handle_get(S, FGH_STREAM, sid, &real)) return CUDA_ERROR_INVALID_HANDLE;
    *s = (CUstream)real;
    CUstreamCaptureStatus cs = CU_STREAM_CAPTURE_STATUS_NONE;
    if (S->api->cuStreamIsCapturing && S->api->cuStreamIsCapturing(*s, &cs) == CUDA_SUCCESS &&
        cs != CU_STREAM_CAPTURE_STATUS_NONE)
        return refuse(S, "cuMemAllocAsync/cuMemFreeAsync on a stream under capture (graph memory nodes from a "
                         "capture are not emulated yet; add them to a graph by hand)");
    return CUDA_SUCCESS;
}

/* The device the stream's work runs on (the current context's for the NULL and per-thread streams). */
static CUresult stream_device(fgs_session *S, CUstream s, int *dev) {
    CUdevice d = 0;
    CUresult r;
    if (s && s != CU_STREAM_LEGACY && s != CU_STREAM_PER_THREAD) {
        if (S->api->cuStreamGetDevice && S->api->cuStreamGetDevice(s, &d) == CUDA_SUCCESS) {
            *dev = (int)d;
            return CUDA_SUCCESS;
        }
        CUcontext ctx = NULL;
        r = S->api->cuStreamGetCtx ? S->api->cuStreamGetCtx(s, &ctx) : CUDA_ERROR_NOT_SUPPORTED;
        if (r == CUDA_SUCCESS && ctx && S->api->cuCtxPushCurrent_v2(ctx) == CUDA_SUCCESS) {
            r = S->api->cuCtxGetDevice(&d);
            CUcontext popped;
            S->api->cuCtxPopCurrent_v2(&popped);
            if (r == CUDA_SUCCESS) *dev = (int)d;
            return r;
        }
    }
    r = S->api->cuCtxGetDevice(&d);
    if (r == CUDA_SUCCESS) *dev = (int)d;
    return r;
}

static CUresult alloc_in(fgs_session *S, mpool *p, uint64_t size, fg_writer *out) {
    if (size == 0) return CUDA_ERROR_INVALID_VALUE;
    if (grow((void **)&g_allocs, &g_cap_allocs, g_n_allocs, sizeof *g_allocs)) return CUDA_ERROR_OUT_OF_MEMORY;
    if (p->max_size && (size > p->max_size || p->reserved > p->max_size - size)) {
        reap(S, 1, 0, NULL); /* what its pending frees give back first */
        if (size > p->max_size || p->reserved > p->max_size - size) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUdeviceptr ptr = 0;
    size_t mapped = 0;
    CUresult r = fgs_memory_alloc(S, p->dev, size, &ptr, &mapped);
    if (r == CUDA_ERROR_OUT_OF_MEMORY && g_n_pending) { /* the quota may fit once pending frees complete */
        reap(S, 1, 0, NULL);
        r = fgs_memory_alloc(S, p->dev, size, &ptr, &mapped);
    }
    if (r != CUDA_SUCCESS) return r;
    g_allocs[g_n_allocs++] = (palloc){ptr, mapped, p, 0, NULL, NULL};
    for (int d = 0; d < MAX_DEV; d++)
        if (p->access[d] != CU_MEM_ACCESS_FLAGS_PROT_NONE) fgs_memory_peer(S, ptr, d, 1);
    p->n_allocs++;
    p->used += mapped;
    p->reserved += mapped;
    if (p->used > p->used_high) p->used_high = p->used;
    if (p->reserved > p->reserved_high) p->reserved_high = p->reserved;
    fg_put_u64(out, ptr);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemAllocAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUstream s = NULL;
    int dev = 0;
    CUresult res = stream_of(S, sid, &s);
    if (res == CUDA_SUCCESS) res = stream_device(S, s, &dev);
    if (res == CUDA_SUCCESS) res = check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mpool *p = current_pool(dev);
    return p ? alloc_in(S, p, size, out) : CUDA_ERROR_OUT_OF_MEMORY;
}

CUresult fgs_cuMemAllocFromPoolAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t size = fg_get_u64(r), pid = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mpool *p = pool_of(S, pid);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUstream s = NULL;
    CUresult res = stream_of(S, sid, &s);
    return res == CUDA_SUCCESS ? alloc_in(S, p, size, out) : res;
}

CUresult fgs_cuMemFreeAsync(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t ptr = fg_get_u64(r), sid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUstream s = NULL;
    CUresult res = stream_of(S, sid, &s);
    if (res != CUDA_SUCCESS) return res;
    palloc *a = find(ptr);
    if (a && a->pending) return CUDA_ERROR_INVALID_VALUE; /* freed twice */
    if (!a) { /* a cuMemAlloc allocation: freed in stream order too */
        size_t mapped = fgs_memory_mapped_at(S, ptr);
        if (!mapped) return CUDA_ERROR_INVALID_VALUE;
        if (grow((void **)&g_allocs, &g_cap_allocs, g_n_allocs, sizeof *g_allocs)) return CUDA_ERROR_OUT_OF_MEMORY;
        g_allocs[g_n_allocs++] = (palloc){ptr, mapped, NULL, 0, NULL, NULL};
        a = &g_allocs[g_n_allocs - 1];
    }
    CUevent ev = free_event(S, s);
    a->pending = 1;
    g_n_pending++;
    if (a->pool) a->pool->used -= a->mapped;
    a->stream = s;
    a->ev = ev;
    if (!ev) { /* nothing marks the point on the stream: wait for the stream itself, then release */
        if (S->api->cuStreamSynchronize(s) != CUDA_SUCCESS) S->api->cuCtxSynchronize();
        release(S, a);
    }
    return CUDA_SUCCESS;
}

/* ---- pools ---- */

CUresult fgs_cuMemPoolCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUmemPoolProps pr;
    fg_get(r, &pr, sizeof pr);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (pr.allocType != CU_MEM_ALLOCATION_TYPE_PINNED) {
        if (pr.allocType == CU_MEM_ALLOCATION_TYPE_MANAGED) return refuse(S, "managed memory pools");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (pr.location.type == CU_MEM_LOCATION_TYPE_HOST || pr.location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA ||
        pr.location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT)
        return refuse(S, "memory pools in host memory (only device pools are emulated)");
    if (pr.location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    CUresult res = check_dev(S, pr.location.id);
    if (res != CUDA_SUCCESS) return res == CUDA_ERROR_INVALID_DEVICE ? CUDA_ERROR_INVALID_VALUE : res;
    if (pr.handleTypes != CU_MEM_HANDLE_TYPE_NONE)
        return refuse(S, "memory pools with shareable handle types (pool IPC is not brokered between sessions)");
    if (pr.usage) return refuse(S, "memory pool usage flags (hardware decompression)");
    if (grow((void **)&g_pools, &g_cap_pools, g_n_pools, sizeof *g_pools)) return CUDA_ERROR_OUT_OF_MEMORY;
    mpool *p = new_pool(pr.location.id, 0);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    p->max_size = pr.maxSize;
    uint64_t id = pool_id(S, p);
    if (!id) {
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    g_pools[g_n_pools++] = p;
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mpool *p = pool_of(S, id);
    if (!p || p->is_default) return CUDA_ERROR_INVALID_VALUE; /* a default pool cannot be destroyed */
    if (g_current[p->dev] == p) g_current[p->dev] = NULL; /* the default pool is current again */
    fgs_handle_remove(S, FGH_MEMORYPOOL, id);
    p->id = 0;
    p->destroyed = 1;
    if (!p->n_allocs) pool_free(p);
    return CUDA_SUCCESS;
}

CUresult fgs_cuDeviceGetDefaultMemPool(fgs_session *S, fg_reader *r, fg_writer *out) {
    int32_t dev = (int32_t)fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUresult res = check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mpool *p = default_pool(dev);
    uint64_t id = p ? pool_id(S, p) : 0;
    if (!id) return CUDA_ERROR_OUT_OF_MEMORY;
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

CUresult fgs_cuDeviceGetMemPool(fgs_session *S, fg_reader *r, fg_writer *out) {
    int32_t dev = (int32_t)fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUresult res = check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mpool *p = current_pool(dev);
    uint64_t id = p ? pool_id(S, p) : 0;
    if (!id) return CUDA_ERROR_OUT_OF_MEMORY;
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

CUresult fgs_cuDeviceSetMemPool(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    int32_t dev = (int32_t)fg_get_u32(r);
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUresult res = check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mpool *p = pool_of(S, id);
    if (!p || p->dev != dev) return CUDA_ERROR_INVALID_VALUE; /* a pool of another device */
    g_current[dev] = p->is_default ? NULL : p;
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolTrimTo(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r), keep = fg_get_u64(r);
    (void)keep; /* nothing is cached: released memory has gone back already */
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!pool_of(S, id)) return CUDA_ERROR_INVALID_VALUE;
    reap(S, 0, 0, NULL); /* frees that completed meanwhile go now */
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolSetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    uint32_t attr = fg_get_u32(r);
    uint64_t v = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mpool *p = pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    switch ((CUmemPool_attribute)attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES] = (int)(uint32_t)v;
        return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: p->threshold = v; return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH:
        if (v) return CUDA_ERROR_INVALID_VALUE; /* only back to zero */
        p->reserved_high = p->reserved;
        return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH:
        if (v) return CUDA_ERROR_INVALID_VALUE;
        p->used_high = p->used;
        return CUDA_SUCCESS;
    default: return CUDA_ERROR_INVALID_VALUE; /* the current amounts are read-only */
    }
}

CUresult fgs_cuMemPoolGetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    uint32_t attr = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mpool *p = pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    uint64_t v;
    switch ((CUmemPool_attribute)attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        v = (uint64_t)(uint32_t)p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES];
        break;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: v = p->threshold; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: v = p->reserved; break;
    case CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: v = p->reserved_high; break;
    case CU_MEMPOOL_ATTR_USED_MEM_CURRENT: v = p->used; break;
    case CU_MEMPOOL_ATTR_USED_MEM_HIGH: v = p->used_high; break;
    default: return CUDA_ERROR_INVALID_VALUE;
    }
    fg_put_u64(out, v);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolSetAccess(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    uint64_t n = fg_get_u64(r);
    if (r->failed || n > ACCESS_LIMIT) return FGS_PROTOCOL_ERROR;
    const CUmemAccessDesc *d = (const CUmemAccessDesc *)fg_take(r, n * sizeof *d);
    if (r->failed || (n && !d)) return FGS_PROTOCOL_ERROR;
    mpool *p = pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    for (uint64_t i = 0; i < n; i++) { /* all checked before any is applied */
        CUmemAccessDesc x;
        memcpy(&x, &d[i], sizeof x);
        if (x.location.type != CU_MEM_LOCATION_TYPE_DEVICE || check_dev(S, x.location.id) != CUDA_SUCCESS)
            return CUDA_ERROR_INVALID_VALUE;
        if (x.flags != CU_MEM_ACCESS_FLAGS_PROT_NONE && x.flags != CU_MEM_ACCESS_FLAGS_PROT_READ &&
            x.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            return CUDA_ERROR_INVALID_VALUE;
        if (x.location.id == p->dev) { /* the owning device keeps read-write access */
            if (x.flags != CU_MEM_ACCESS_FLAGS_PROT_READWRITE) return CUDA_ERROR_INVALID_VALUE;
            continue;
        }
        int can = 1;
        if (x.flags != CU_MEM_ACCESS_FLAGS_PROT_NONE && S->api->cuDeviceCanAccessPeer &&
            S->api->cuDeviceCanAccessPeer(&can, x.location.id, p->dev) == CUDA_SUCCESS && !can)
            return CUDA_ERROR_INVALID_DEVICE; /* that device cannot reach this one's memory */
    }
    for (uint64_t i = 0; i < n; i++) {
        CUmemAccessDesc x;
        memcpy(&x, &d[i], sizeof x);
        int dev = x.location.id;
        if (dev == p->dev) continue;
        p->access[dev] = (uint8_t)x.flags;
        for (size_t k = 0; k < g_n_allocs; k++) /* what the pool holds now, and (alloc_in) what it gives out later */
            if (g_allocs[k].pool == p) fgs_memory_peer(S, g_allocs[k].ptr, dev, x.flags != CU_MEM_ACCESS_FLAGS_PROT_NONE);
    }
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolGetAccess(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    CUmemLocation loc;
    fg_get(r, &loc, sizeof loc);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mpool *p = pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    if (loc.type != CU_MEM_LOCATION_TYPE_DEVICE || check_dev(S, loc.id) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_VALUE;
    fg_put_u32(out, loc.id == p->dev ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : p->access[loc.id]);
    return CUDA_SUCCESS;
}

/* ---- parking ----
 * u32 pools, each: u64 id (0: none handed out, or destroyed), u32 dev, u32 flags (1 default, 2 destroyed),
 *   u64 used_high, u64 reserved_high, u64 devices given read access, u64 devices given read-write access;
 * u32 allocations, each: u64 ptr, u32 pool index (UINT32_MAX: none), u32 pending.
 * A pending free is released after the restored session's first batch (its stream's work was done before the
 * session was paged out). */

static uint32_t pool_index(mpool *p, mpool **v, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        if (v[i] == p) return i;
    return UINT32_MAX;
}

void fgs_mempool_put(fgs_session *S, fg_writer *w) {
    (void)S;
    mpool **v = (mpool **)malloc((MAX_DEV + g_n_pools + 1) * sizeof *v);
    if (!v || g_n_pools > POOLS_LIMIT) {
        w->failed = 1; /* the park fails (the state cannot be written); the session goes on */
        free(v);
        return;
    }
    uint32_t n = 0;
    for (int d = 0; d < MAX_DEV; d++)
        if (g_defaults[d]) v[n++] = g_defaults[d];
    for (size_t i = 0; i < g_n_pools; i++) v[n++] = g_pools[i];
    fg_put_u32(w, n);
    for (uint32_t i = 0; i < n; i++) {
        fg_put_u64(w, v[i]->id);
        fg_put_u32(w, (uint32_t)v[i]->dev);
        fg_put_u32(w, (uint32_t)(v[i]->is_default | (v[i]->destroyed << 1)));
        fg_put_u64(w, v[i]->used_high);
        fg_put_u64(w, v[i]->reserved_high);
        uint64_t rd = 0, rw = 0;
        for (int d = 0; d < MAX_DEV; d++) {
            if (v[i]->access[d] == CU_MEM_ACCESS_FLAGS_PROT_READ) rd |= 1ull << d;
            if (v[i]->access[d] == CU_MEM_ACCESS_FLAGS_PROT_READWRITE) rw |= 1ull << d;
        }
        fg_put_u64(w, rd);
        fg_put_u64(w, rw);
    }
    fg_put_u32(w, (uint32_t)g_n_allocs);
    for (size_t i = 0; i < g_n_allocs; i++) {
        fg_put_u64(w, g_allocs[i].ptr);
        fg_put_u32(w, g_allocs[i].pool ? pool_index(g_allocs[i].pool, v, n) : UINT32_MAX);
        fg_put_u32(w, (uint32_t)g_allocs[i].pending);
    }
    free(v);
}

int fgs_mempool_get(fgs_session *S, fg_reader *r, char *err, size_t errlen) {
    uint32_t n = fg_get_u32(r);
    if (r->failed || n > MAX_DEV + POOLS_LIMIT) goto bad;
    mpool **v = n ? (mpool **)calloc(n, sizeof *v) : NULL;
    if (n && !v) goto bad;
    for (uint32_t i = 0; i < n && !r->failed; i++) {
        uint64_t id = fg_get_u64(r);
        uint32_t dev = fg_get_u32(r), flags = fg_get_u32(r);
        uint64_t uh = fg_get_u64(r), rh = fg_get_u64(r), rd = fg_get_u64(r), rw = fg_get_u64(r);
        if (r->failed || dev >= MAX_DEV) break;
        mpool *p = NULL;
        if (id) p = pool_of(S, id); /* the journal made it again, with its id */
        else if (flags & 1) p = default_pool((int)dev);
        else if ((flags & 2) && !grow((void **)&g_pools, &g_cap_pools, g_n_pools, sizeof *g_pools) &&
                 (p = new_pool((int)dev, 0))) {
            p->destroyed = 1;
            g_pools[g_n_pools++] = p;
        }
        if (!p || p->dev != (int)dev) {
            snprintf(err, errlen, "a memory pool of the session did not come back");
            free(v);
            return -1;
        }
        p->used_high = uh;
        p->reserved_high = rh;
        for (int d = 0; d < MAX_DEV; d++)
            p->access[d] = (rw >> d & 1u)   ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                           : (rd >> d & 1u) ? CU_MEM_ACCESS_FLAGS_PROT_READ
                                            : CU_MEM_ACCESS_FLAGS_PROT_NONE;
        v[i] = p;
    }
    uint32_t na = fg_get_u32(r);
    for (uint32_t i = 0; i < na && !r->failed; i++) {
        uint64_t ptr = fg_get_u64(r);
        uint32_t pi = fg_get_u32(r), pending = fg_get_u32(r);
        size_t mapped = r->failed ? 0 : fgs_memory_mapped_at(S, ptr);
        if (r->failed || !mapped || (pi != UINT32_MAX && pi >= n) ||
            grow((void **)&g_allocs, &g_cap_allocs, g_n_allocs, sizeof *g_allocs)) {
            snprintf(err, errlen, "a stream-ordered allocation of the session did not come back");
            free(v);
            return -1;
        }
        mpool *p = pi == UINT32_MAX ? NULL : v[pi];
        g_allocs[g_n_allocs++] = (palloc){ptr, mapped, p, pending ? 1 : 0, NULL, NULL};
        g_n_pending += pending ? 1 : 0;
        for (int d = 0; p && d < MAX_DEV; d++) /* granted again by the page-in that maps it */
            if (p->access[d] != CU_MEM_ACCESS_FLAGS_PROT_NONE) fgs_memory_peer(S, ptr, d, 1);
        if (p) {
            p->n_allocs++;
            p->reserved += mapped;
            if (!pending) p->used += mapped;
        }
    }
    free(v);
    if (r->failed) goto bad;
    return 0;
bad:
    snprintf(err, errlen, "the parked state is malformed (memory pools)");
    return -1;
}
