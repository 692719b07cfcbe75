/* paging_pool.c — the host-pool route of paging: a session's memory copied to and from its extent of the node's host
 * page pool, as paging.c's page-out and page-in steps call it. The pool is either a memfd the agent shares with
 * every worker (mapped for one step; the copies go through the worker's two pinned bounce buffers, one chunk's DMA
 * overlapping the copy of the one before into the pool by several threads, or, opted in, by one DMA per allocation
 * straight from the registered mapping) or slabs of host-NUMA driver memory (hostpool.c), whose extent the worker
 * maps only for the length of a step and copies by one DMA per allocation. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fgs_pager.h"
#include "fgs_public.h"
#include "fgs_session.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL and the copy faults pages in */
#endif

/* The pool as slabs of host-NUMA driver memory instead of a memfd (fgs_public.h says how it is called). */
FGS_EXPORT int fgs_pager_use_vmm_pool(fgs_session *S, const int *fds, unsigned int n, unsigned long long slab) {
    if (!S || !S->pager || S->pager->pool_vmm || !fds || !n || !slab || slab > SIZE_MAX / n) return -1;
    for (unsigned int i = 0; i < n; i++)
        if (fds[i] < 0 || fcntl(fds[i], F_GETFD) < 0) return -1;
    fgs_pager *P = S->pager;
    int *own = (int *)malloc(n * sizeof *own);
    if (!own) return -1;
    memcpy(own, fds, n * sizeof *own);
    if (P->pool_fd >= 0) close(P->pool_fd);
    P->pool_fd = -1;
    P->slab_fds = own;
    P->n_slabs = n;
    P->slab = (size_t)slab;
    P->pool_len = (size_t)slab * n;
    P->pool_vmm = 1;
    return 0;
}

/* The pool extent [off, off+len) as this process sees it: a mapping of the memfd, or (driver memory) the extent
 * mapped for the session's devices, until fgs_pool_unmap. NULL with errno or *r set on failure. */
static uint8_t *extent_map(fgs_session *S, uint64_t off, uint64_t len, CUresult *r) {
    fgs_pager *P = S->pager;
    *r = CUDA_SUCCESS;
    if (P->pool_vmm) { /* whole slabs only: the agent hands out extents on slab boundaries (server/pager.py) */
        if (off % P->slab || len % P->slab || !len || off / P->slab + len / P->slab > P->n_slabs) {
            *r = CUDA_ERROR_INVALID_VALUE;
            return NULL;
        }
        size_t n = (size_t)(len / P->slab);
        *r = fgs_hostpool_map(S, P->slab_fds + off / P->slab, n, P->slab, &P->vmm_va);
        P->vmm_slabs = *r == CUDA_SUCCESS ? n : 0;
        return *r == CUDA_SUCCESS ? (uint8_t *)(uintptr_t)P->vmm_va : NULL;
    }
    void *m = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, P->pool_fd, (off_t)off);
    if (m == MAP_FAILED) return NULL;
    /* Huge pages where the kernel gives them to shared memory: 512 times fewer page-table entries to fill. */
    (void)madvise(m, (size_t)len, MADV_HUGEPAGE);
    return (uint8_t *)m;
}

void fgs_pool_unmap(fgs_session *S) {
    fgs_pager *P = S->pager;
    if (P->map && !P->pool_vmm) munmap(P->map, P->map_len);
    if (P->pool_vmm && P->vmm_va) fgs_hostpool_unmap(S, P->vmm_va, P->vmm_slabs, P->slab);
    P->vmm_va = 0;
    P->vmm_slabs = 0;
    P->map = NULL;
}

/* ---- bounce buffers <-> the host pool: one chunk's DMA overlaps the pool I/O of the other, on several threads ---- */

#define COPIERS 8

typedef struct fgs_copiers {
    pthread_t th[COPIERS];
    int n;
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    uint64_t gen;
    int pending, quit;
    uint8_t *dst; /* each thread copies its slice of src to dst */
    const uint8_t *src;
    size_t len;
    int populate; /* fill in the page tables of its slice of dst first, in one call */
} fgs_copiers;

static void *copier_main(void *arg) {
    fgs_copiers *C = (fgs_copiers *)arg;
    pthread_mutex_lock(&C->mu);
    int me = C->n++;
    uint64_t seen = 0;
    for (;;) {
        while (C->gen == seen && !C->quit) pthread_cond_wait(&C->go, &C->mu);
        if (C->quit) break;
        seen = C->gen;
        size_t part = (C->len / COPIERS + 4095) & ~(size_t)4095, lo = part * (size_t)me;
        size_t n = lo < C->len ? (C->len - lo < part ? C->len - lo : part) : 0;
        uint8_t *dst = C->dst;
        const uint8_t *src = C->src;
        int populate = C->populate;
        pthread_mutex_unlock(&C->mu);
        /* Page tables in one call per slice, on every thread at once: one fault per 4 KiB page, or MAP_POPULATE on
         * one thread, cost more than the copy (2.9 s of a 4.3 s page-out of 32 GiB on an H100). Where the kernel
         * lacks MADV_POPULATE_WRITE the copy faults the pages in instead. */
        if (n && populate) (void)madvise(dst + lo, n, MADV_POPULATE_WRITE);
        if (n) memcpy(dst + lo, src + lo, n);
        pthread_mutex_lock(&C->mu);
        if (--C->pending == 0) pthread_cond_signal(&C->done);
    }
    pthread_mutex_unlock(&C->mu);
    return NULL;
}

static fgs_copiers *copiers_new(void) {
    fgs_copiers *C = (fgs_copiers *)calloc(1, sizeof *C);
    if (!C) return NULL;
    pthread_mutex_init(&C->mu, NULL);
    pthread_cond_init(&C->go, NULL);
    pthread_cond_init(&C->done, NULL);
    for (int i = 0; i < COPIERS; i++)
        if (pthread_create(&C->th[i], NULL, copier_main, C) != 0) {
            pthread_mutex_lock(&C->mu);
            C->quit = 1;
            pthread_cond_broadcast(&C->go);
            pthread_mutex_unlock(&C->mu);
            for (int k = 0; k < i; k++) pthread_join(C->th[k], NULL);
            free(C);
            return NULL;
        }
    return C;
}

void fgs_copiers_free(fgs_copiers *C) {
    if (!C) return;
    pthread_mutex_lock(&C->mu);
    C->quit = 1;
    pthread_cond_broadcast(&C->go);
    pthread_mutex_unlock(&C->mu);
    for (int i = 0; i < COPIERS; i++) pthread_join(C->th[i], NULL);
    free(C);
}

/* memcpy split over the copier threads (on this thread when there are none). Writing through a mapping: the pool
 * file's own write path serialises writers on the file (pwrite into the pool ran at 4-5 GB/s with 8 threads). */
static void par_copy(fgs_pager *P, void *dst, const void *src, size_t len, int populate) {
    fgs_copiers *C = P->copiers;
    uint64_t t = fgs_now_ns();
    if (!C) {
        memcpy(dst, src, len);
    } else {
        pthread_mutex_lock(&C->mu);
        C->dst = (uint8_t *)dst;
        C->src = (const uint8_t *)src;
        C->len = len;
        C->populate = populate;
        C->pending = COPIERS;
        C->gen++;
        pthread_cond_broadcast(&C->go);
        while (C->pending) pthread_cond_wait(&C->done, &C->mu);
        pthread_mutex_unlock(&C->mu);
    }
    P->io_ns += fgs_now_ns() - t;
}

/* The session's memory as a list of chunks (allocation, offset in it, length), at most FGS_BOUNCE each. */
typedef struct {
    size_t alloc;
    size_t off, n;
} chunk;

static int next_chunk(fgs_session *S, chunk *c) {
    c->off += c->n;
    while (c->alloc < S->n_allocs && c->off >= S->allocs[c->alloc].mapped) {
        c->alloc++;
        c->off = 0;
    }
    if (c->alloc >= S->n_allocs) return 0;
    size_t left = S->allocs[c->alloc].mapped - c->off;
    c->n = left < FGS_BOUNCE ? left : FGS_BOUNCE;
    return 1;
}

static CUresult pool_prepare(fgs_session *S) {
    CUresult r = fgs_pager_bounce(S);
    if (r == CUDA_SUCCESS && !S->pager->copiers) S->pager->copiers = copiers_new(); /* NULL: copy on this thread */
    return r;
}

/* The direct route, for a memfd pool: the worker registers its mapping of the pool extent with the driver for the
 * length of one step, and every allocation goes by one DMA straight between the device and the pool. Registering
 * fills in the extent's page tables and pins every page, and on an H100 that cost more than the bounce buffers'
 * memcpy saves (32 GiB out at 7.8 GB/s against 13.3; bench/results/paging_gpu-2026-12-06-h100-8cedb7d-*), so it is
 * opt-in: FARGPU_PAGING_DMA=direct ("bounce", the default, or "auto": direct where the driver registers). A pool of
 * driver memory (hostpool.c) needs neither. */
static int dma_route(void) {
    const char *e = getenv("FARGPU_PAGING_DMA");
    if (e && !strcmp(e, "direct")) return 2;
    if (e && !strcmp(e, "auto")) return 1;
    return 0;
}

/* Returns CUDA_ERROR_NOT_SUPPORTED, with nothing copied, when the registration is refused and the route allows the
 * bounce buffers instead. */
static CUresult pool_direct(fgs_session *S, uint8_t *map, int out) {
    fgs_pager *P = S->pager;
    int route = dma_route();
    if (route == 0 || !S->api->cuMemHostRegister_v2 || !S->api->cuMemHostUnregister) return CUDA_ERROR_NOT_SUPPORTED;
    uint64_t total = 0;
    for (size_t i = 0; i < S->n_allocs; i++) total += S->allocs[i].mapped;
    size_t span = (size_t)((total + 4095) & ~(uint64_t)4095);
    if (span > P->map_len) span = P->map_len;
    if (!P->stream) {
        CUresult r = S->api->cuStreamCreate(&P->stream, CU_STREAM_NON_BLOCKING);
        if (r != CUDA_SUCCESS) return r;
    }
    uint64_t t = fgs_now_ns();
    CUresult r = S->api->cuMemHostRegister_v2(map, span, CU_MEMHOSTREGISTER_PORTABLE);
    P->map_ns += fgs_now_ns() - t;
    if (r != CUDA_SUCCESS) {
        fgs_pager_say(P, "note the driver refused to register the host pool extent (CUDA error %d)%s", (int)r,
               route == 1 ? ": paging through the bounce buffers" : "");
        return route == 1 ? CUDA_ERROR_NOT_SUPPORTED : r;
    }
    t = fgs_now_ns();
    uint64_t pos = 0;
    for (size_t i = 0; i < S->n_allocs && r == CUDA_SUCCESS; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (out) a->page_off = pos;
        pos += a->mapped;
        r = out ? S->api->cuMemcpyDtoHAsync_v2(map + a->page_off, a->ptr, a->mapped, P->stream)
                : S->api->cuMemcpyHtoDAsync_v2(a->ptr, map + a->page_off, a->mapped, P->stream);
        fgs_pager_test_delay(P);
    }
    CUresult rs = S->api->cuStreamSynchronize(P->stream);
    if (r == CUDA_SUCCESS) r = rs;
    P->copy_ns += fgs_now_ns() - t;
    t = fgs_now_ns();
    S->api->cuMemHostUnregister(map);
    P->map_ns += fgs_now_ns() - t;
    return r;
}

/* A pool of driver memory (hostpool.c): one DMA per allocation between the device and the mapped extent. */
static CUresult slab_copy(fgs_session *S, uint8_t *pool, int out) {
    fgs_pager *P = S->pager;
    uint64_t t = fgs_now_ns();
    CUresult r = P->stream ? CUDA_SUCCESS : S->api->cuStreamCreate(&P->stream, CU_STREAM_NON_BLOCKING);
    if (r == CUDA_SUCCESS) r = fgs_hostpool_copy(S, P->stream, (CUdeviceptr)(uintptr_t)pool, out);
    P->copy_ns += fgs_now_ns() - t;
    return r;
}

/* Device → pool: the DMA of chunk k+1 into one bounce buffer runs while chunk k is copied out of the other. */
static CUresult to_pool(fgs_session *S, uint8_t *dst) {
    fgs_pager *P = S->pager;
    if (P->pool_vmm) return slab_copy(S, dst, 1);
    CUresult r = pool_direct(S, dst, 1);
    if (r != CUDA_ERROR_NOT_SUPPORTED) return r;
    r = pool_prepare(S);
    chunk c = {0, 0, 0};
    if (r != CUDA_SUCCESS || !next_chunk(S, &c)) return r;
    uint64_t pos = 0;
    int cur = 0;
    for (size_t i = 0; i < S->n_allocs; i++) {
        S->allocs[i].page_off = pos;
        pos += S->allocs[i].mapped;
        fgs_pager_test_delay(P);
    }
    r = S->api->cuMemcpyDtoHAsync_v2(P->bounce[0], S->allocs[c.alloc].ptr + c.off, c.n, P->stream);
    uint64_t t = fgs_now_ns();
    if (r == CUDA_SUCCESS) r = S->api->cuStreamSynchronize(P->stream);
    P->copy_ns += fgs_now_ns() - t;
    while (r == CUDA_SUCCESS) {
        chunk d = c;
        int more = next_chunk(S, &d);
        if (more) r = S->api->cuMemcpyDtoHAsync_v2(P->bounce[cur ^ 1], S->allocs[d.alloc].ptr + d.off, d.n, P->stream);
        if (r != CUDA_SUCCESS) break;
        par_copy(P, dst + S->allocs[c.alloc].page_off + c.off, P->bounce[cur], c.n, 1);
        t = fgs_now_ns();
        r = S->api->cuStreamSynchronize(P->stream);
        P->copy_ns += fgs_now_ns() - t;
        if (!more) break;
        c = d;
        cur ^= 1;
    }
    return r;
}

/* Pool → device: chunk k+1 is copied into one bounce buffer while chunk k goes to the device from the other. */
static CUresult from_pool(fgs_session *S, uint8_t *src) {
    fgs_pager *P = S->pager;
    if (P->pool_vmm) return slab_copy(S, src, 0);
    CUresult r = pool_direct(S, src, 0);
    if (r != CUDA_ERROR_NOT_SUPPORTED) return r;
    r = pool_prepare(S);
    chunk c = {0, 0, 0};
    if (r != CUDA_SUCCESS || !next_chunk(S, &c)) return r;
    int cur = 0;
    par_copy(P, P->bounce[0], src + S->allocs[c.alloc].page_off + c.off, c.n, 0);
    while (r == CUDA_SUCCESS) {
        r = S->api->cuMemcpyHtoDAsync_v2(S->allocs[c.alloc].ptr + c.off, P->bounce[cur], c.n, P->stream);
        if (r != CUDA_SUCCESS) break;
        chunk d = c;
        int more = next_chunk(S, &d);
        if (more) par_copy(P, P->bounce[cur ^ 1], src + S->allocs[d.alloc].page_off + d.off, d.n, 0);
        uint64_t t = fgs_now_ns();
        r = S->api->cuStreamSynchronize(P->stream);
        P->copy_ns += fgs_now_ns() - t;
        fgs_pager_test_delay(P);
        if (!more) break;
        c = d;
        cur ^= 1;
    }
    return r;
}

/* ---- the route, as paging.c's steps take it ---- */

int fgs_pool_out(fgs_session *S, uint64_t off, uint64_t len, uint64_t total) {
    fgs_pager *P = S->pager;
    P->off = off;
    P->len = len;
    /* Map just this extent; the copier threads fill in its page tables slice by slice (see copier_main). Huge
     * pages where the kernel gives them to shared memory: 512 times fewer page-table entries to fill. */
    uint64_t tm = fgs_now_ns();
    CUresult rm = CUDA_SUCCESS;
    uint8_t *m = total ? extent_map(S, off, len, &rm) : NULL;
    P->map_ns = fgs_now_ns() - tm;
    if (total && !m) {
        if (rm != CUDA_SUCCESS)
            fgs_pager_say(P, "pageout-failed cannot map the node's host page pool (CUDA error %d)", (int)rm);
        else
            fgs_pager_say(P, "pageout-failed cannot map the host pool extent: %s", strerror(errno));
        return -1;
    }
    P->map = m;
    P->map_len = total ? (size_t)len : 0;
    CUresult r = total ? to_pool(S, P->map) : CUDA_SUCCESS;
    if (r != CUDA_SUCCESS) { /* nothing was released: the session stays as it was */
        fgs_pool_unmap(S);
        fgs_pager_say(P, "pageout-failed copying out failed with CUDA error %d", (int)r);
        return -1;
    }
    return 0;
}

CUresult fgs_pool_in(fgs_session *S) {
    fgs_pager *P = S->pager;
    CUresult r = CUDA_SUCCESS;
    if (P->pool_vmm && !P->map && P->bytes) { /* driver memory: unmapped since the page-out (paging.c) */
        uint64_t tm = fgs_now_ns();
        P->map = extent_map(S, P->off, P->len, &r);
        P->map_len = (size_t)P->len;
        P->map_ns = fgs_now_ns() - tm;
    }
    if (r == CUDA_SUCCESS && P->map) r = from_pool(S, P->map);
    return r;
}

/* A restored session's memory in an extent of the node's host pool (the agent fetched it there): paged to host. */
int fgs_pager_adopt_host(fgs_session *S, uint64_t off, uint64_t len, uint64_t bytes) {
    fgs_pager *P = S->pager;
    if (!P || P->where != RESIDENT || P->pool_fd < 0 || P->pool_vmm || off > P->pool_len || len > P->pool_len - off ||
        len < bytes)
        return -1; /* the agent writes a restored session's memory only into a memfd pool */
    void *m = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, P->pool_fd, (off_t)off);
    if (m == MAP_FAILED) return -1;
    P->map = (uint8_t *)m;
    P->map_len = (size_t)len;
    P->off = off;
    P->len = len;
    P->where = PAGED_HOST;
    P->bytes = bytes;
    return 0;
}
