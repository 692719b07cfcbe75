/* memory.c — device memory and copies. Allocation happens on the server (VMM-backed, so the address
 * survives paging). Each copy takes the fastest path it may (fgc_transport.h):
 *   - host memory in the shared-memory region (co-located clients: cuMemAllocHost / cuMemHostAlloc blocks come
 *     from it): one record naming an offset; the worker's DMA reads or writes the application's pages in place,
 *     in stream order, as native pinned memory;
 *   - other host memory, co-located, from FGC_BULK_MIN bytes (synchronous copies): the region's staging ring;
 *   - from FGC_BULK_MIN bytes otherwise: a bulk copy, pipelined pieces striped over the session's connections
 *     (async device→host copies into page-locked memory excepted: they are staged on the server, and the reply
 *     that delivers them sends their bytes as bulk pieces right after it);
 *   - small copies: records with the bytes inline (FG_CHUNK pieces).
 * Async host→device copies take the bytes at the call, except in the region, where the DMA reads them in
 * stream order; from pinned memory outside it only once the host functions submitted before have run (the
 * driver reads a pinned source when the copy runs). Async device→host data lands in the caller's buffer with
 * the next sync reply, before that call returns, or earlier, before a host function after the copy on its
 * stream runs (callbacks.c). On a stream under capture, copies with host memory outside the region go through
 * device shadows that each launch of the graph fills and drains (capture_copies.c). Without a region, "pinned" host memory is ordinary page-aligned memory (there is no
 * local GPU to pin for); it is tracked (host blocks) so copies and queries can tell it from pageable. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fg_shm.h"
#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror.h"
#include "fgc_transport.h"

CUresult fgc_cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    FGC_REQUIRE_INIT();
    if (!dptr) return CUDA_ERROR_INVALID_VALUE;
    if (bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuMemAlloc_v2);
    if (!w) return fgc_last_error();
    fg_put_u64(w, bytesize);
    uint64_t p = 0;
    fgc_expect(&p, sizeof p);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        *dptr = (CUdeviceptr)p;
        fgc_device_range_add(p, bytesize);
    }
    return r;
}

CUresult fgc_cuMemFree_v2(CUdeviceptr dptr) {
    FGC_REQUIRE_INIT();
    if (dptr == 0) return CUDA_SUCCESS; /* as the driver: freeing NULL does nothing */
    if (fgc_graph_mem_user_free(dptr)) return CUDA_SUCCESS; /* a graph allocation its graphs still hold */
    fgc_mirror_managed_freed(dptr);
    fg_writer *w = fgc_begin(FG_OP_cuMemFree_v2);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dptr);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) fgc_device_range_remove(dptr);
    else fgc_log(FGC_LOG_DEBUG, "cuMemFree(0x%llx): known device range: %d", (unsigned long long)dptr,
                 fgc_device_range_find(dptr, NULL, NULL));
    return r;
}

CUresult fgc_cuMemGetInfo_v2(size_t *free_b, size_t *total_b) {
    FGC_REQUIRE_INIT();
    if (!free_b || !total_b) return CUDA_ERROR_INVALID_VALUE;
    uint64_t v[2] = {0, 0};
    fg_writer *w = fgc_begin(FG_OP_cuMemGetInfo_v2);
    if (!w) return fgc_last_error();
    fgc_expect(v, sizeof v);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        *free_b = (size_t)v[0];
        *total_b = (size_t)v[1];
    }
    return r;
}

CUresult fgc_cuMemGetAddressRange_v2(CUdeviceptr *pbase, size_t *psize, CUdeviceptr dptr) {
    FGC_REQUIRE_INIT();
    uint64_t v[2] = {0, 0};
    fg_writer *w = fgc_begin(FG_OP_cuMemGetAddressRange_v2);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dptr);
    fgc_expect(v, sizeof v);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        if (pbase) *pbase = (CUdeviceptr)v[0];
        if (psize) *psize = (size_t)v[1];
    }
    return r;
}

/* One record naming region bytes: an in-place DMA on the worker (sync: then a PING for its result). */
static CUresult shm_copy(uint16_t op, uint64_t dev, uint64_t off, size_t n, CUstream s, int sync) {
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    if (op == FG_OP_SHM_HTOD) {
        fg_put_u64(w, dev);
        fgc_put_handle(w, s);
        fg_put_u64(w, off);
    } else {
        fg_put_u64(w, off);
        fg_put_u64(w, dev);
        fgc_put_handle(w, s);
    }
    fg_put_u64(w, n);
    fg_put_u32(w, sync ? FG_SHM_F_SYNC : 0);
    fg_put_u64(w, 0);
    return sync ? fgc_sync_ping_locked(1) : fgc_async();
}

/* A small copy: records with the bytes inline, FG_CHUNK at a time ("u64 device address, [stream if async,] u64 n",
 * then to the device the bytes). To the device (htod) the bytes are referenced when sync (sent before the call
 * returns) and copied at the call when async (the caller may reuse a pageable buffer); from the device they come
 * with this call's reply (sync) or a later one (async). host is the source or the destination, by direction. */
static CUresult inline_copy(uint16_t op, CUdeviceptr dev, const void *host, size_t n, CUstream s, int htod, int async) {
    size_t off = 0;
    do {
        size_t k = n - off < FG_CHUNK ? n - off : FG_CHUNK;
        fg_writer *w = fgc_begin(op);
        if (!w) return fgc_last_error();
        fg_put_u64(w, dev + off);
        if (async) fgc_put_handle(w, s);
        fg_put_u64(w, k);
        char *at = (char *)host + off; /* a destination when !htod: the caller's writable buffer */
        if (htod && async) fg_put(w, at, k);
        else if (htod) fgc_put_external(at, k);
        else if (async) fgc_expect_later(at, k);
        else fgc_expect(at, k);
        CUresult r = async ? fgc_async() : fgc_sync();
        if (r != CUDA_SUCCESS) return r;
        off += k;
    } while (off < n);
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
    FGC_REQUIRE_INIT();
    if (n && !src) return CUDA_ERROR_INVALID_VALUE;
    uint64_t region_off;
    if (n && fgc_shm_find(src, n, &region_off)) return shm_copy(FG_OP_SHM_HTOD, dst, region_off, n, NULL, 1);
    CUresult mr;
    if (fgc_mirror_htod(dst, src, n, NULL, 0, &mr)) return mr; /* mirrored host memory: copied on the device */
    if (n >= FGC_BULK_MIN) { /* a session parked or moved since the last call resumes first (which path it has then) */
        CUresult h = fgc_hear_unasked();
        if (h != CUDA_SUCCESS) return h;
        return fgc_shm_on() ? fgc_shm_staged_htod(dst, src, n, NULL, 1) : fgc_bulk_htod(dst, src, n, NULL, 1);
    }
    return inline_copy(FG_OP_cuMemcpyHtoD_v2, dst, src, n, NULL, 1, 0);
}

CUresult fgc_cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
    FGC_REQUIRE_INIT();
    if (n && !dst) return CUDA_ERROR_INVALID_VALUE;
    uint64_t region_off;
    if (n && fgc_shm_find(dst, n, &region_off)) return shm_copy(FG_OP_SHM_DTOH, src, region_off, n, NULL, 1);
    CUresult mr;
    if (fgc_mirror_dtoh(dst, src, n, NULL, 0, &mr)) return mr;
    if (n >= FGC_BULK_MIN) {
        CUresult h = fgc_hear_unasked();
        if (h != CUDA_SUCCESS) return h;
        return fgc_shm_on() ? fgc_shm_staged_dtoh(dst, src, n, NULL, 1) : fgc_bulk_dtoh(dst, src, n, NULL);
    }
    return inline_copy(FG_OP_cuMemcpyDtoH_v2, src, dst, n, NULL, 0, 0);
}

CUresult fgc_cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
    FGC_REQUIRE_INIT();
    if (n && !src) return CUDA_ERROR_INVALID_VALUE;
    uint64_t region_off; /* the worker's DMA reads the region in stream order, after any host function before */
    if (n && fgc_shm_find(src, n, &region_off)) return shm_copy(FG_OP_SHM_HTOD, dst, region_off, n, s, 0);
    CUresult mr;
    if (fgc_mirror_htod(dst, src, n, s, 1, &mr)) return mr;
    if (fgc_capture_active() && fgc_capture_htod(dst, src, n, s, &mr)) return mr; /* a device shadow of the source */
    /* A pinned source is read in stream order: after the host functions before this copy, which may write it.
     * Waiting for every host function not yet run (whatever its stream) is never too early. */
    if (n && fgc_host_fns_outstanding() &&
        (fgc_host_block_find(src, NULL, NULL, NULL) ||
         fgc_host_block_find((const char *)src + n - 1, NULL, NULL, NULL))) {
        CUresult r = fgc_host_fns_wait();
        if (r != CUDA_SUCCESS) return r;
    }
    /* While a stream capture is under way a copy on a stream the node could not answer for (capture_copies.c) goes
     * inline, as before, not in a staging slot the next copy reuses. */
    if (n >= FGC_BULK_MIN && !fgc_capture_active()) {
        CUresult h = fgc_hear_unasked();
        if (h != CUDA_SUCCESS) return h;
        if (fgc_shm_on() && !fgc_host_block_find(src, NULL, NULL, NULL)) /* pageable, co-located */
            return fgc_shm_staged_htod(dst, src, n, s, 0);
        return fgc_bulk_htod(dst, src, n, s, 0);
    }
    return inline_copy(FG_OP_cuMemcpyHtoDAsync_v2, dst, src, n, s, 1, 1);
}

CUresult fgc_cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
    FGC_REQUIRE_INIT();
    if (n && !dst) return CUDA_ERROR_INVALID_VALUE;
    uint64_t region_off; /* the data lands in the region when the DMA runs: no delivery needed */
    if (n && fgc_shm_find(dst, n, &region_off)) return shm_copy(FG_OP_SHM_DTOH, src, region_off, n, s, 0);
    CUresult mr;
    if (fgc_mirror_dtoh(dst, src, n, s, 1, &mr)) return mr;
    if (fgc_capture_active() && fgc_capture_dtoh(dst, src, n, s, &mr)) return mr; /* a device shadow of dst */
    /* Into pageable memory the driver returns once the copy is done (it stages it): so may we, and then the bytes
     * move as a bulk copy (or through the shared-memory ring) instead of waiting on the server for a reply. Pinned
     * memory keeps async semantics (the data comes with the next reply). */
    if (n >= FGC_BULK_MIN && !fgc_capture_active() && !fgc_host_block_find(dst, NULL, NULL, NULL) &&
        !fgc_host_block_find((const char *)dst + n - 1, NULL, NULL, NULL)) {
        CUresult h = fgc_hear_unasked();
        if (h != CUDA_SUCCESS) return h;
        return fgc_shm_on() ? fgc_shm_staged_dtoh(dst, src, n, s, 0) : fgc_bulk_dtoh(dst, src, n, s);
    }
    /* Pinned memory: staged on the server in stream order; the reply that delivers it sends a large copy's bytes
     * over the bulk path, striped over the data connections (opened now, without the connection lock). */
    if (n >= FGC_BULK_MIN) fgc_bulk_open_lanes();
    return inline_copy(FG_OP_cuMemcpyDtoHAsync_v2, src, dst, n, s, 0, 1);
}

/* ---- page-locked host memory: local, tracked so cuMemFreeHost can validate ---- */

typedef struct {
    void *p;
    size_t n;
    unsigned flags;
    int registered; /* cuMemHostRegister'ed caller memory: never unmapped here */
    int sync_memops; /* CU_POINTER_ATTRIBUTE_SYNC_MEMOPS (pointer.c) */
} host_block;

static pthread_mutex_t host_mu = PTHREAD_MUTEX_INITIALIZER;
static host_block *host_blocks;
static size_t host_n, host_cap;

static CUresult host_track(void *p, size_t n, unsigned flags, int registered) {
    pthread_mutex_lock(&host_mu);
    if (host_n == host_cap) {
        size_t cap = host_cap ? host_cap * 2 : 64;
        host_block *nb = (host_block *)realloc(host_blocks, cap * sizeof *nb);
        if (!nb) {
            pthread_mutex_unlock(&host_mu);
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        host_blocks = nb;
        host_cap = cap;
    }
    host_blocks[host_n++] = (host_block){p, n, flags, registered, 0};
    pthread_mutex_unlock(&host_mu);
    return CUDA_SUCCESS;
}

static void host_release(void *p, size_t n) {
    if (fgc_shm_free(p) != 0) munmap(p, n);
}

static CUresult host_alloc(void **pp, size_t n, unsigned flags) {
    if (!pp || n == 0) return CUDA_ERROR_INVALID_VALUE;
    void *p = fgc_shm_alloc(n); /* co-located: from the region the worker registered, so copies are DMA in place */
    if (!p && fgc_shm_on()) {
        static int logged;
        if (!logged++)
            fgc_log(FGC_LOG_WARN, "the shared-memory region is full: page-locked host memory now comes from plain "
                                  "memory (copies from it are slower); raise FARGPU_SHM_MB");
    }
    if (!p) p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult r = host_track(p, n, flags, 0);
    if (r != CUDA_SUCCESS) {
        host_release(p, n);
        return r;
    }
    *pp = p;
    return CUDA_SUCCESS;
}

int fgc_host_block_find(const void *p, void **base, size_t *size, unsigned *flags) {
    int hit = 0;
    pthread_mutex_lock(&host_mu);
    for (size_t i = 0; i < host_n && !hit; i++) {
        const char *b = (const char *)host_blocks[i].p;
        if ((const char *)p >= b && (size_t)((const char *)p - b) < host_blocks[i].n) {
            hit = 1;
            if (base) *base = host_blocks[i].p;
            if (size) *size = host_blocks[i].n;
            if (flags) *flags = host_blocks[i].flags;
        }
    }
    pthread_mutex_unlock(&host_mu);
    return hit;
}

int fgc_host_block_sync_memops(const void *p, int set, int value) {
    int r = -1;
    pthread_mutex_lock(&host_mu);
    for (size_t i = 0; i < host_n && r < 0; i++) {
        const char *b = (const char *)host_blocks[i].p;
        if ((const char *)p >= b && (size_t)((const char *)p - b) < host_blocks[i].n) {
            if (set) host_blocks[i].sync_memops = value;
            r = host_blocks[i].sync_memops;
        }
    }
    pthread_mutex_unlock(&host_mu);
    return r;
}

/* Registering caller memory pins nothing here (the client has no GPU); it is remembered so pointer queries
 * and cuMemHostGetFlags answer as for pinned memory. */
CUresult fgc_cuMemHostRegister_v2(void *p, size_t bytesize, unsigned int Flags) {
    FGC_REQUIRE_INIT();
    if (!p || bytesize == 0) return CUDA_ERROR_INVALID_VALUE;
    if (fgc_host_block_find(p, NULL, NULL, NULL)) return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
    return host_track(p, bytesize, Flags, 1);
}

CUresult fgc_cuMemHostUnregister(void *p) {
    FGC_REQUIRE_INIT();
    fgc_mirror_host_gone(p);
    void *base = NULL;
    size_t size = 0;
    CUresult c = CUDA_SUCCESS; /* copies into it still to deliver: collected first (fgc_later_collect_into) */
    if (fgc_host_block_find(p, &base, &size, NULL) && base == p) c = fgc_later_collect_into(p, size);
    pthread_mutex_lock(&host_mu);
    for (size_t i = 0; i < host_n; i++)
        if (host_blocks[i].p == p && host_blocks[i].registered) {
            host_blocks[i] = host_blocks[--host_n];
            pthread_mutex_unlock(&host_mu);
            return c;
        }
    pthread_mutex_unlock(&host_mu);
    return CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;
}

CUresult fgc_cuMemHostGetFlags(unsigned int *pFlags, void *p) {
    FGC_REQUIRE_INIT();
    if (!pFlags) return CUDA_ERROR_INVALID_VALUE;
    return fgc_host_block_find(p, NULL, NULL, pFlags) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult fgc_cuMemAllocHost_v2(void **pp, size_t bytesize) {
    FGC_REQUIRE_INIT();
    return host_alloc(pp, bytesize, 0);
}

CUresult fgc_cuMemHostAlloc(void **pp, size_t bytesize, unsigned int Flags) {
    FGC_REQUIRE_INIT();
    unsigned known = CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED;
    if (Flags & ~known) return CUDA_ERROR_INVALID_VALUE;
    /* DEVICEMAP (which the runtime sets under unified addressing) is accepted: co-located, the block is in the
     * region the worker registered as mapped memory, and cuMemHostGetDevicePointer gives kernels real zero-copy
     * access (shm.c); otherwise it gives the block a mirrored device shadow (managed.c). */
    return host_alloc(pp, bytesize, Flags);
}

CUresult fgc_cuMemFreeHost(void *p) {
    FGC_REQUIRE_INIT();
    fgc_mirror_host_gone(p);
    /* The driver synchronises here: copies into the block land before it goes (fgc_later_collect_into), and an
     * asynchronous error that synchronisation brings is returned, the block freed all the same. */
    void *base = NULL;
    size_t size = 0;
    CUresult c = CUDA_SUCCESS;
    if (fgc_host_block_find(p, &base, &size, NULL) && base == p) c = fgc_later_collect_into(p, size);
    pthread_mutex_lock(&host_mu);
    for (size_t i = 0; i < host_n; i++) {
        if (host_blocks[i].p == p && !host_blocks[i].registered) {
            host_block b = host_blocks[i];
            host_blocks[i] = host_blocks[--host_n];
            pthread_mutex_unlock(&host_mu);
            host_release(b.p, b.n);
            return c;
        }
    }
    pthread_mutex_unlock(&host_mu);
    return CUDA_ERROR_INVALID_VALUE;
}
