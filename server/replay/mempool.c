/* mempool.c — memory pools for stream-ordered allocation, emulated in the worker: objects of the worker handed to
 * the client as per-session virtual ids (FGH_MEMORYPOOL), never driver pointers, whose memory is the session's own
 * allocations (mempool_blocks.c says how they hold it: quota-counted, paged and parked with the rest).
 *
 * Each device has a default pool, current until cuDeviceSetMemPool names another (cuDeviceGetDefaultMemPool,
 * cuDeviceGetMemPool and cuDeviceSetMemPool agree; destroying the current pool makes the default current again).
 * cuMemPoolCreate takes device pools of pinned memory: host and host-NUMA locations, managed pools, shareable
 * handle types (pool IPC) and usage flags are refused with CUDA_ERROR_NOT_SUPPORTED and a log line; maxSize caps
 * what a pool holds. Attributes: the REUSE_* flags are stored (reuse here never needs them: memory is reused only
 * once its free has completed); RELEASE_THRESHOLD is how much a pool keeps in empty chunks (mempool_blocks.c);
 * RESERVED_MEM_CURRENT is what the pool holds (whole allocations and chunks, in mapped bytes), USED_MEM_CURRENT what
 * of it the application has not freed; the high watermarks can be reset to zero only (they restart from the current
 * value), as the driver allows. cuMemPoolTrimTo gives back empty chunks down to the bytes asked to keep. Access:
 * the pool's own device has read-write access; cuMemPoolSetAccess gives a peer device of the session read-write
 * access (asked for read or read-write) to everything the pool holds and will hand out, kept across paging and
 * parking; taking it away (PROT_NONE) stops the grants, but memory already mapped for the peer stays reachable until
 * it is freed (more than the driver allows, never less). A destroyed pool lives until the last of its memory is
 * released, as the driver's does. The creating and setting calls are in the creation journal (journal.c), so a
 * parked session gets its pools back with the same ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_mempool.h"

#define ACCESS_LIMIT 64 /* access descriptors one cuMemPoolSetAccess may carry (one per device at most) */

mp_pool **mp_pools;
size_t mp_n_pools;
mp_pool *mp_defaults[MP_MAX_DEV];
static size_t cap_pools;
static mp_pool *g_current[MP_MAX_DEV];

int mp_grow(void **v, size_t *cap, size_t n, size_t size) {
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 32;
    void *nv = realloc(*v, c * size);
    if (!nv) return -1;
    *v = nv;
    *cap = c;
    return 0;
}

CUresult mp_refuse(fgs_session *S, const char *what) {
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

CUresult mp_check_dev(fgs_session *S, int dev) {
    int count = 0;
    CUresult r = S->api->cuDeviceGetCount ? S->api->cuDeviceGetCount(&count) : CUDA_ERROR_NOT_SUPPORTED;
    if (r != CUDA_SUCCESS) return r;
    return dev < 0 || dev >= count || dev >= MP_MAX_DEV ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

mp_pool *mp_new_pool(int dev, int is_default) {
    mp_pool *p = (mp_pool *)calloc(1, sizeof *p);
    if (!p) return NULL;
    p->dev = dev;
    p->is_default = is_default;
    for (int i = 0; i < MP_N_REUSE; i++) p->reuse[i] = 1; /* the driver's defaults: all enabled */
    return p;
}

mp_pool *mp_default_pool(int dev) {
    if (!mp_defaults[dev]) mp_defaults[dev] = mp_new_pool(dev, 1);
    return mp_defaults[dev];
}

static mp_pool *current_pool(int dev) { return g_current[dev] ? g_current[dev] : mp_default_pool(dev); }

/* The pool's virtual id, handed out once (and so kept in the creation journal by the op that asked). */
static uint64_t pool_id(fgs_session *S, mp_pool *p) {
    if (!p->id) p->id = fgs_handle_add(S, FGH_MEMORYPOOL, p);
    return p->id;
}

mp_pool *mp_pool_of(fgs_session *S, uint64_t id) {
    void *p = NULL;
    if (!id || fgs_handle_get(S, FGH_MEMORYPOOL, id, &p)) return NULL;
    return (mp_pool *)p;
}

void mp_pool_free(mp_pool *p) {
    for (size_t i = 0; i < mp_n_pools; i++)
        if (mp_pools[i] == p) mp_pools[i] = mp_pools[--mp_n_pools];
    free(p);
}

void fgs_mempool_close(fgs_session *S) {
    mp_blocks_close(S); /* its events; the memory goes with the session's allocations (fgs_memory_release_all) */
    for (size_t i = 0; i < mp_n_pools; i++) free(mp_pools[i]);
    mp_n_pools = 0;
    for (int d = 0; d < MP_MAX_DEV; d++) {
        free(mp_defaults[d]);
        mp_defaults[d] = g_current[d] = NULL;
    }
}

mp_pool *mp_add_destroyed(int dev) {
    if (mp_grow((void **)&mp_pools, &cap_pools, mp_n_pools, sizeof *mp_pools)) return NULL;
    mp_pool *p = mp_new_pool(dev, 0);
    if (p) {
        p->destroyed = 1;
        mp_pools[mp_n_pools++] = p;
    }
    return p;
}

/* The current pool of the stream's device (cuMemAllocAsync). */
mp_pool *mp_current(int dev) { return current_pool(dev); }

CUresult fgs_cuMemPoolCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUmemPoolProps pr;
    fg_get(r, &pr, sizeof pr);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (pr.allocType != CU_MEM_ALLOCATION_TYPE_PINNED) {
        if (pr.allocType == CU_MEM_ALLOCATION_TYPE_MANAGED) return mp_refuse(S, "managed memory pools");
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (pr.location.type == CU_MEM_LOCATION_TYPE_HOST || pr.location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA ||
        pr.location.type == CU_MEM_LOCATION_TYPE_HOST_NUMA_CURRENT)
        return mp_refuse(S, "memory pools in host memory (only device pools are emulated)");
    if (pr.location.type != CU_MEM_LOCATION_TYPE_DEVICE) return CUDA_ERROR_INVALID_VALUE;
    CUresult res = mp_check_dev(S, pr.location.id);
    if (res != CUDA_SUCCESS) return res == CUDA_ERROR_INVALID_DEVICE ? CUDA_ERROR_INVALID_VALUE : res;
    if (pr.handleTypes != CU_MEM_HANDLE_TYPE_NONE)
        return mp_refuse(S, "memory pools with shareable handle types (pool IPC is not brokered between sessions)");
    if (pr.usage) return mp_refuse(S, "memory pool usage flags (hardware decompression)");
    if (mp_grow((void **)&mp_pools, &cap_pools, mp_n_pools, sizeof *mp_pools)) return CUDA_ERROR_OUT_OF_MEMORY;
    mp_pool *p = mp_new_pool(pr.location.id, 0);
    if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
    p->max_size = pr.maxSize;
    uint64_t id = pool_id(S, p);
    if (!id) {
        free(p);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    mp_pools[mp_n_pools++] = p;
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mp_pool *p = mp_pool_of(S, id);
    if (!p || p->is_default) return CUDA_ERROR_INVALID_VALUE; /* a default pool cannot be destroyed */
    if (g_current[p->dev] == p) g_current[p->dev] = NULL; /* the default pool is current again */
    fgs_handle_remove(S, FGH_MEMORYPOOL, id);
    p->id = 0;
    p->destroyed = 1;
    mp_destroyed(S, p); /* what it holds goes when freed; empty chunks now */
    return CUDA_SUCCESS;
}

CUresult fgs_cuDeviceGetDefaultMemPool(fgs_session *S, fg_reader *r, fg_writer *out) {
    int32_t dev = (int32_t)fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUresult res = mp_check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mp_pool *p = mp_default_pool(dev);
    uint64_t id = p ? pool_id(S, p) : 0;
    if (!id) return CUDA_ERROR_OUT_OF_MEMORY;
    fg_put_u64(out, id);
    return CUDA_SUCCESS;
}

CUresult fgs_cuDeviceGetMemPool(fgs_session *S, fg_reader *r, fg_writer *out) {
    int32_t dev = (int32_t)fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    CUresult res = mp_check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mp_pool *p = current_pool(dev);
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
    CUresult res = mp_check_dev(S, dev);
    if (res != CUDA_SUCCESS) return res;
    mp_pool *p = mp_pool_of(S, id);
    if (!p || p->dev != dev) return CUDA_ERROR_INVALID_VALUE; /* a pool of another device */
    g_current[dev] = p->is_default ? NULL : p;
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolTrimTo(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r), keep = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mp_pool *p = mp_pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    mp_reap(S, 0, 0, NULL); /* frees that completed meanwhile go first */
    mp_trim(S, p, keep);
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolSetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t id = fg_get_u64(r);
    uint32_t attr = fg_get_u32(r);
    uint64_t v = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mp_pool *p = mp_pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    switch ((CUmemPool_attribute)attr) {
    case CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_OPPORTUNISTIC:
    case CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES:
        p->reuse[attr - CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES] = (int)(uint32_t)v;
        return CUDA_SUCCESS;
    case CU_MEMPOOL_ATTR_RELEASE_THRESHOLD:
        p->threshold = v;
        mp_trim(S, p, v); /* empty chunks above it go now */
        return CUDA_SUCCESS;
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
    mp_pool *p = mp_pool_of(S, id);
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
    mp_pool *p = mp_pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    for (uint64_t i = 0; i < n; i++) { /* all checked before any is applied */
        CUmemAccessDesc x;
        memcpy(&x, &d[i], sizeof x);
        if (x.location.type != CU_MEM_LOCATION_TYPE_DEVICE || mp_check_dev(S, x.location.id) != CUDA_SUCCESS)
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
        mp_access_changed(S, p, dev); /* what the pool holds now; what it hands out later gets it too */
    }
    return CUDA_SUCCESS;
}

CUresult fgs_cuMemPoolGetAccess(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    CUmemLocation loc;
    fg_get(r, &loc, sizeof loc);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    mp_pool *p = mp_pool_of(S, id);
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    if (loc.type != CU_MEM_LOCATION_TYPE_DEVICE || mp_check_dev(S, loc.id) != CUDA_SUCCESS) return CUDA_ERROR_INVALID_VALUE;
    fg_put_u32(out, loc.id == p->dev ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE : p->access[loc.id]);
    return CUDA_SUCCESS;
}
