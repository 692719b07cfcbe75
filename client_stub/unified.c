/* unified.c — device-to-device and unified-address copies. The stub remembers the device ranges the
 * server handed out, so a unified cuMemcpy can tell device from host addresses (as UVA does) and become
 * the right host↔device transfer; only device↔device copies are replayed as such on the server, which
 * checks both ranges belong to the session. A range of stream-ordered memory also remembers its pool (the
 * MEMPOOL_HANDLE pointer attribute); a range remembers whether it is the application's own VMM mapping and its
 * SYNC_MEMOPS pointer attribute (pointer.c), which goes with it when it is freed. */
#include <stdatomic.h>
#include <stdlib.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

typedef struct {
    uint64_t base, size;
    uint64_t ctx; /* the context current when it was allocated (cuPointerGetAttribute's CONTEXT) */
    int dev;      /* that context's device ordinal (DEVICE_ORDINAL; several GPUs per session) */
    int pooled;   /* stream-ordered memory of a pool (cuMemAllocAsync, cuMemAllocFromPoolAsync) */
    int pool_dev; /* then: the pool's device, and its id (0: the device's default pool, id not yet known) */
    uint64_t pool;
    int vmm;        /* mapped by the application with cuMemMap (vmm.c) */
    int sync_memops; /* CU_POINTER_ATTRIBUTE_SYNC_MEMOPS */
} range;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static range *ranges;
static size_t n_ranges, cap_ranges;
static _Atomic int n_sync_memops; /* ranges with SYNC_MEMOPS set */

void fgc_device_range_add(uint64_t base, uint64_t size) {
    uint64_t ctx = fgc_ctx_current();
    CUdevice dev = 0;
    if (ctx && cuCtxGetDevice(&dev) != CUDA_SUCCESS) dev = 0; /* memoized per context: no round trip after one */
    pthread_mutex_lock(&mu);
    if (n_ranges == cap_ranges) {
        size_t cap = cap_ranges ? cap_ranges * 2 : 64;
        range *nr = (range *)realloc(ranges, cap * sizeof *nr);
        if (!nr) { pthread_mutex_unlock(&mu); return; }
        ranges = nr;
        cap_ranges = cap;
    }
    ranges[n_ranges++] = (range){base, size, ctx, (int)dev, 0, 0, 0, 0, 0};
    pthread_mutex_unlock(&mu);
}

void fgc_note_global(uint64_t p, uint64_t size) {
    /* A module/library global: device memory for unified copies. Its size, when the caller did not ask for it,
     * comes from the server (which noted the global when it answered). */
    uint64_t base = p;
    if (fgc_device_range_find(p, NULL, NULL)) return; /* known already */
    if (!size) {
        CUdeviceptr b = 0;
        size_t n = 0;
        if (cuMemGetAddressRange_v2(&b, &n, (CUdeviceptr)p) != CUDA_SUCCESS) return;
        base = b;
        size = n;
    }
    if (!fgc_device_range_find(base, NULL, NULL)) fgc_device_range_add(base, size);
}

void fgc_device_range_remove(uint64_t base) {
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_ranges; i++)
        if (ranges[i].base == base) {
            if (ranges[i].sync_memops) atomic_fetch_sub(&n_sync_memops, 1);
            ranges[i] = ranges[--n_ranges];
            break;
        }
    pthread_mutex_unlock(&mu);
}

/* The range holding p: its index, or -1 (mu held). */
static long range_of(uint64_t p) {
    for (size_t i = 0; i < n_ranges; i++)
        if (p >= ranges[i].base && p - ranges[i].base < ranges[i].size) return (long)i;
    return -1;
}

void fgc_device_range_mark_vmm(uint64_t base) {
    pthread_mutex_lock(&mu);
    long i = range_of(base);
    if (i >= 0 && ranges[i].base == base) ranges[i].vmm = 1;
    pthread_mutex_unlock(&mu);
}

int fgc_device_range_sync_memops(uint64_t p, int set, int value) {
    pthread_mutex_lock(&mu);
    long i = range_of(p);
    int r = i < 0 ? -1 : set && ranges[i].vmm ? -2 : ranges[i].sync_memops;
    if (r >= 0 && set && value != ranges[i].sync_memops) {
        ranges[i].sync_memops = value;
        atomic_fetch_add(&n_sync_memops, value ? 1 : -1);
        r = value;
    }
    pthread_mutex_unlock(&mu);
    return r;
}

int fgc_sync_memops_any(void) { return atomic_load(&n_sync_memops) > 0; }

int fgc_device_range_find(uint64_t p, uint64_t *base, uint64_t *size) {
    int hit = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_ranges && !hit; i++)
        if (p >= ranges[i].base && p - ranges[i].base < ranges[i].size) {
            hit = 1;
            if (base) *base = ranges[i].base;
            if (size) *size = ranges[i].size;
        }
    pthread_mutex_unlock(&mu);
    return hit;
}

int fgc_device_range_owner(uint64_t p, uint64_t *ctx, int *dev) {
    int hit = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_ranges && !hit; i++)
        if (p >= ranges[i].base && p - ranges[i].base < ranges[i].size) {
            hit = 1;
            *ctx = ranges[i].ctx;
            *dev = ranges[i].dev;
        }
    pthread_mutex_unlock(&mu);
    return hit;
}

void fgc_device_range_set_pool(uint64_t base, uint64_t pool, int dev) {
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_ranges; i++)
        if (ranges[i].base == base) {
            ranges[i].pooled = 1;
            ranges[i].pool = pool;
            ranges[i].pool_dev = dev;
            break;
        }
    pthread_mutex_unlock(&mu);
}

int fgc_device_range_pool(uint64_t p, uint64_t *pool, int *dev) {
    int hit = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_ranges && !hit; i++)
        if (p >= ranges[i].base && p - ranges[i].base < ranges[i].size && ranges[i].pooled) {
            hit = 1;
            *pool = ranges[i].pool;
            *dev = ranges[i].pool_dev;
        }
    pthread_mutex_unlock(&mu);
    return hit;
}

static int is_device(uint64_t p) {
    int hit = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_ranges && !hit; i++) hit = p >= ranges[i].base && p - ranges[i].base < ranges[i].size;
    pthread_mutex_unlock(&mu);
    return hit;
}

static CUresult dtod(uint16_t op, CUdeviceptr dst, CUdeviceptr src, size_t n, int async, CUstream s) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(op);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dst);
    fg_put_u64(w, src);
    fg_put_u64(w, n);
    if (async) fgc_put_handle(w, s);
    return fgc_async();
}

CUresult fgc_cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    return dtod(FG_OP_cuMemcpyDtoD_v2, dst, src, n, 0, NULL);
}

CUresult fgc_cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    return dtod(FG_OP_cuMemcpyDtoDAsync_v2, dst, src, n, 1, s);
}

CUresult fgc_cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    FGC_REQUIRE_INIT();
    int dd = is_device(dst), sd = is_device(src);
    if (dd && sd) return dtod(FG_OP_cuMemcpy, dst, src, n, 0, NULL);
    if (dd) return fgc_cuMemcpyHtoD_v2(dst, (const void *)(uintptr_t)src, n);
    if (sd) return fgc_cuMemcpyDtoH_v2((void *)(uintptr_t)dst, src, n);
    return CUDA_ERROR_INVALID_VALUE; /* host to host: not the driver's business remotely */
}

CUresult fgc_cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    FGC_REQUIRE_INIT();
    int dd = is_device(dst), sd = is_device(src);
    if (dd && sd) return dtod(FG_OP_cuMemcpyAsync, dst, src, n, 1, s);
    if (dd) return fgc_cuMemcpyHtoDAsync_v2(dst, (const void *)(uintptr_t)src, n, s);
    if (sd) return fgc_cuMemcpyDtoHAsync_v2((void *)(uintptr_t)dst, src, n, s);
    return CUDA_ERROR_INVALID_VALUE;
}
