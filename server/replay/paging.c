/* paging.c — an idle session gives its GPU memory back and gets it again at the same addresses.
 *
 * Page-out (a "pageout" control line from the node agent, between batches): every context is synchronised
 * (streams drained, host functions run, staged async device→host copies complete and stay staged for the next
 * reply), every allocation is copied to the page store, and only when every copy succeeded is its physical memory
 * unmapped and released. The VA reservations stay, so every pointer the application holds stays valid. A failed
 * page-out releases nothing: the session stays resident and working.
 *
 * The page store is either an extent of the node's host page pool (a memfd the agent shares with every worker, its
 * pages allocated up front; or, on a GPU, slabs of host-NUMA driver memory: hostpool.c) or a spill file in the node's spill directory. Both go through the worker's two pinned
 * bounce buffers, so the device's copies run at DMA speed: to the pool, the DMA of one chunk overlaps the copy of
 * the one before into the pool by several threads (registering pool extents with the driver instead cost more
 * than the copy: 6.7 GB/s on an H100); to and from disk, spill.c streams the file with large aligned O_DIRECT I/O
 * that overlaps the device copies. The agent owns both: it frees a pool extent and deletes a spill file when the
 * session pages in or its worker exits, however it exits.
 *
 * Page-in (the session's next batch, or a "pagein" line): the memory must fit the node's resident ledger; if it
 * does not, the worker asks the agent ("need BYTES") to make room, and waits (bounded) for "grant" or "deny".
 * Then each allocation is created again, mapped at its old address and filled from the store; any failure undoes
 * what this attempt mapped and leaves the session paged, so it is never resumed with wrong memory. The batch that
 * needed the GPU then fails with CUDA_ERROR_OUT_OF_MEMORY and a later one tries again.
 *
 * Status lines to the agent: "paged host|disk BYTES NS UNPAGEABLE io_ns=.. copy_ns=.. map_ns=.. vmm_ns=..",
 * "pageout-failed REASON", "paging-in BYTES", "resident BYTES NS io_ns=.. copy_ns=.. vmm_ns=..", "pagein-failed REASON",
 * "need BYTES"; a disk step adds its phases (open_ns, first_ns, wait_ns, stream_ns, depth, chunk, direct: spill.c). */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fgs_public.h"
#include "fgs_session.h"
#include "fgs_spill.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older kernels answer EINVAL and the copy faults pages in */
#endif

#define BOUNCE FGS_BOUNCE           /* each of the two pinned bounce buffers */
#define NEED_WAIT_MS 60000          /* how long a page-in or allocation waits for the agent to make room */

enum { RESIDENT = 0, PAGED_HOST = 1, PAGED_DISK = 2 };

typedef struct fgs_pager {
    int status_fd, ctl_fd;
    fgs_ledger *node; /* what this node lets be resident at once; NULL: no node accounting */
    int pool_fd; /* the host page pool as a memfd (-1: none, or slabs of driver memory) */
    int pool_vmm; /* the pool is slabs of host-NUMA driver memory (hostpool.c), an extent's mapped at vmm_va */
    int *slab_fds; /* its slabs' descriptors, n_slabs of slab bytes each */
    size_t n_slabs, slab;
    CUdeviceptr vmm_va;
    size_t vmm_slabs; /* how many slabs are mapped at vmm_va */
    size_t pool_len;
    uint8_t *map; /* the extent of the pool this session is paged to, mapped while it is used */
    size_t map_len;
    int where;
    uint64_t off, len, bytes; /* host extent, and bytes paged */
    char spill_path[512];
    void *bounce[2];
    CUstream stream;
    struct fgs_copiers *copiers; /* threads for the bounce buffer <-> pool copies */
    char line[1024];
    size_t have;
    int close_pending;
    char close_why[256];
    int deep; /* the agent may hold this process's CUDA state in a driver checkpoint: no CUDA call before "wake" */
    unsigned test_delay_ms; /* FARGPU_PAGING_TEST_DELAY_MS: fault-injection tests stretch each step with it */
    uint64_t io_ns, copy_ns; /* where the last step's time went (reported with it): I/O or pool copies, DMA */
    uint64_t map_ns, vmm_ns;  /* mapping the pool extent; releasing or re-creating the device memory */
} fgs_pager;

void fgs_copiers_free(struct fgs_copiers *C);

uint64_t fgs_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void status(fgs_pager *P, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void status(fgs_pager *P, const char *fmt, ...) {
    if (!P || P->status_fd < 0) return;
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n > sizeof buf - 2) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w;
    do w = write(P->status_fd, buf, (size_t)n); /* one write: lines under PIPE_BUF never interleave */
    while (w < 0 && errno == EINTR);
}

FGS_EXPORT int fgs_set_pager(fgs_session *S, int status_fd, int pool_fd, int node_fd, unsigned int node_slot) {
    if (!S || S->pager) return -1;
    fgs_pager *P = (fgs_pager *)calloc(1, sizeof *P);
    if (!P) return -1;
    P->status_fd = status_fd;
    P->ctl_fd = -1;
    if (node_fd >= 0 && !(P->node = fgs_ledger_open(node_fd, node_slot))) {
        free(P);
        return -1;
    }
    struct stat st;
    P->pool_fd = -1;
    if (pool_fd >= 0 && fstat(pool_fd, &st) == 0 && st.st_size > 0) {
        P->pool_fd = pool_fd;
        P->pool_len = (size_t)st.st_size;
    } else if (pool_fd >= 0) {
        close(pool_fd);
    }
    const char *delay = getenv("FARGPU_PAGING_TEST_DELAY_MS");
    if (delay) P->test_delay_ms = (unsigned)strtoul(delay, NULL, 10);
    S->pager = P;
    S->last_active_ns = fgs_now_ns();
    return 0;
}

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
 * mapped for the session's devices, until extent_unmap. NULL with errno or *r set on failure. */
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

static void extent_unmap(fgs_session *S) {
    fgs_pager *P = S->pager;
    if (P->map && !P->pool_vmm) munmap(P->map, P->map_len);
    if (P->pool_vmm && P->vmm_va) fgs_hostpool_unmap(S, P->vmm_va, P->vmm_slabs, P->slab);
    P->vmm_va = 0;
    P->vmm_slabs = 0;
    P->map = NULL;
}

void fgs_pager_attach_ctl(fgs_session *S, int ctl_fd) {
    if (S->pager) S->pager->ctl_fd = ctl_fd;
}

int fgs_is_paged(const fgs_session *S) { return S->pager && S->pager->where != RESIDENT; }

FGS_EXPORT int fgs_paging_state(fgs_session *S) { return S && S->pager ? S->pager->where : 0; }

FGS_EXPORT unsigned long long fgs_paged_bytes(fgs_session *S) {
    return S && S->pager && S->pager->where != RESIDENT ? S->pager->bytes : 0;
}

FGS_EXPORT unsigned long long fgs_idle_ms(fgs_session *S) {
    uint64_t t = fgs_now_ns();
    return S && S->last_active_ns && t > S->last_active_ns ? (t - S->last_active_ns) / 1000000ull : 0;
}

/* ---- the node's resident ledger ---- */

static int wait_for_room(fgs_session *S, uint64_t bytes);

CUresult fgs_resident_charge(fgs_session *S, uint64_t bytes) {
    fgs_pager *P = S->pager;
    if (!P || !P->node) return CUDA_SUCCESS;
    uint64_t deadline = fgs_now_ns() + (uint64_t)NEED_WAIT_MS * 1000000ull;
    while (fgs_ledger_try_charge(P->node, bytes) != 0) {
        if (fgs_now_ns() >= deadline || wait_for_room(S, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

void fgs_resident_uncharge(fgs_session *S, uint64_t bytes) {
    if (S->pager && S->pager->node) fgs_ledger_uncharge(S->pager->node, bytes);
}

/* ---- control lines ---- */

static void page_out(fgs_session *S, const char *args);

/* Reads what the agent wrote; handles whole lines. Returns 1 when the session must close. */
FGS_EXPORT int fgs_control_read(fgs_session *S, int ctl_fd, char *why, unsigned long why_len) {
    fgs_pager tmp;
    fgs_pager *P = S->pager ? S->pager : &tmp;
    if (!S->pager) {
        memset(&tmp, 0, sizeof tmp);
        tmp.status_fd = -1;
    }
    P->ctl_fd = ctl_fd;
    ssize_t k = read(ctl_fd, P->line + P->have, sizeof P->line - 1 - P->have);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
    if (k <= 0) { /* the agent is gone */
        snprintf(why, why_len, "the session was ended by the node server");
        return 1;
    }
    P->have += (size_t)k;
    P->line[P->have] = 0;
    int closing = 0;
    char *nl;
    while ((nl = memchr(P->line, '\n', P->have)) != NULL) {
        /* Take the line out of the buffer before acting on it: a step it starts may wait for the agent's answer
         * (page-in: "wake", "need"), and that wait reads further lines into the same buffer. */
        char cmd[sizeof P->line];
        size_t used = (size_t)(nl - P->line) + 1;
        memcpy(cmd, P->line, used - 1);
        cmd[used - 1] = 0;
        memmove(P->line, nl + 1, P->have - used);
        P->have -= used;
        P->line[P->have] = 0;
        if (!closing && fgs_control_line(S, cmd, why, why_len)) closing = 1;
    }
    if (P->have == sizeof P->line - 1) P->have = 0; /* a line too long: drop it */
    return closing;
}

int fgs_control_line(fgs_session *S, const char *line, char *why, size_t why_len) {
    if (!strncmp(line, "close", 5)) {
        const char *r = line[5] == ' ' ? line + 6 : "the session was ended by the node server";
        snprintf(why, why_len, "%s", r);
        return 1;
    }
    if (!strncmp(line, "pageout ", 8)) {
        page_out(S, line + 8);
    } else if (!strncmp(line, "park", 4)) { /* park.c: write the session's state, then wait for the verdict */
        return fgs_park_control(S, line, why, why_len);
    } else if (!strcmp(line, "deep")) {
        /* The deeper level: the agent checkpoints this process with the driver's process checkpoint after this
         * answer, which frees what the VMM route cannot (context, module code, globals). From here on every CUDA
         * call waits for the agent to restore it (fgs_pager_wake). Only a paged session goes deeper. */
        if (S->pager && S->pager->where != RESIDENT) {
            S->pager->deep = 1;
            status(S->pager, "deep-ok");
        } else if (S->pager) {
            status(S->pager, "deep-failed the session is resident");
        }
    } else if (!strcmp(line, "pagein")) {
        if (fgs_is_paged(S)) fgs_page_in(S);
    } else if (!strncmp(line, "grant", 5) || !strncmp(line, "deny", 4)) {
        /* an answer that came after its wait gave up: nothing waits for it now */
    } else {
        fgs_log(S, "ignoring an unknown control line from the node agent");
    }
    return 0;
}

/* Sends the agent a request and waits for its answer ("grant" or "deny"). 0: granted, -1: denied, timed out or the
 * session is closing. */
static int ask_agent(fgs_session *S, const char *request) {
    fgs_pager *P = S->pager;
    if (P->ctl_fd < 0 || P->close_pending) return -1;
    status(P, "%s", request);
    uint64_t deadline = fgs_now_ns() + (uint64_t)NEED_WAIT_MS * 1000000ull;
    for (;;) {
        char *nl;
        while ((nl = memchr(P->line, '\n', P->have)) != NULL) {
            *nl = 0;
            int verdict = 0;
            if (!strncmp(P->line, "grant", 5)) verdict = 1;
            else if (!strncmp(P->line, "deny", 4)) verdict = -1;
            else if (!strncmp(P->line, "close", 5)) {
                P->close_pending = 1;
                snprintf(P->close_why, sizeof P->close_why, "%s", P->line[5] == ' ' ? P->line + 6 : "ended");
                verdict = -1;
            } else if (!strncmp(P->line, "pageout ", 8)) {
                status(P, "pageout-failed the session is busy");
            }
            size_t used = (size_t)(nl - P->line) + 1;
            memmove(P->line, nl + 1, P->have - used);
            P->have -= used;
            P->line[P->have] = 0;
            if (verdict) return verdict > 0 ? 0 : -1;
        }
        uint64_t t = fgs_now_ns();
        if (t >= deadline) return -1;
        struct pollfd pf = {P->ctl_fd, POLLIN, 0};
        int np = poll(&pf, 1, (int)((deadline - t) / 1000000ull) + 1);
        if (np < 0 && errno == EINTR) continue;
        if (np <= 0) return -1;
        ssize_t k = read(P->ctl_fd, P->line + P->have, sizeof P->line - 1 - P->have);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            P->close_pending = 1;
            snprintf(P->close_why, sizeof P->close_why, "the session was ended by the node server");
            return -1;
        }
        P->have += (size_t)k;
        P->line[P->have] = 0;
        if (P->have == sizeof P->line - 1) P->have = 0;
    }
}

/* Asks the agent for room on the GPU and waits for its answer. 0: granted (try again), -1: denied. */
static int wait_for_room(fgs_session *S, uint64_t bytes) {
    char req[64];
    snprintf(req, sizeof req, "need %llu", (unsigned long long)bytes);
    return ask_agent(S, req);
}

int fgs_pager_wake(fgs_session *S) {
    fgs_pager *P = S->pager;
    if (!P || !P->deep) return 0;
    int closing = P->close_pending;
    P->close_pending = 0; /* the restore is needed to close cleanly too */
    int r = ask_agent(S, "wake");
    P->close_pending = P->close_pending || closing;
    if (r == 0) P->deep = 0;
    return r;
}

FGS_EXPORT int fgs_close_pending(fgs_session *S, char *why, unsigned long why_len) {
    if (!S->pager || !S->pager->close_pending) return 0;
    snprintf(why, why_len, "%s", S->pager->close_why);
    return 1;
}

/* ---- copies to and from the store ---- */

static CUresult sync_all_contexts(fgs_session *S) {
    CUcontext cur = NULL;
    S->api->cuCtxGetCurrent(&cur);
    CUresult res = CUDA_SUCCESS;
    fgs_table *t = &S->tables[FGH_CONTEXT];
    for (uint32_t i = 0; i < t->n && res == CUDA_SUCCESS; i++) {
        if (!t->real[i]) continue;
        res = S->api->cuCtxSetCurrent((CUcontext)t->real[i]);
        if (res == CUDA_SUCCESS) res = S->api->cuCtxSynchronize();
    }
    S->api->cuCtxSetCurrent(cur);
    return res;
}

static CUresult ensure_bounce(fgs_session *S) {
    fgs_pager *P = S->pager;
    for (int i = 0; i < 2; i++) {
        if (P->bounce[i]) continue;
        CUresult r = S->api->cuMemHostAlloc(&P->bounce[i], BOUNCE, 0);
        if (r != CUDA_SUCCESS) return r;
    }
    if (!P->stream) return S->api->cuStreamCreate(&P->stream, CU_STREAM_NON_BLOCKING);
    return CUDA_SUCCESS;
}

static void spill_io_init(const fgs_pager *P, fgs_spill_io *io) {
    memset(io, 0, sizeof *io);
    io->test_delay_ms = P->test_delay_ms;
}

static void test_delay(const fgs_pager *P) {
    if (P->test_delay_ms) usleep(P->test_delay_ms * 1000u);
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

/* The session's memory as a list of chunks (allocation, offset in it, length), at most BOUNCE each. */
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
    c->n = left < BOUNCE ? left : BOUNCE;
    return 1;
}

static CUresult pool_prepare(fgs_session *S) {
    CUresult r = ensure_bounce(S);
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
        status(P, "note the driver refused to register the host pool extent (CUDA error %d)%s", (int)r,
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
        test_delay(P);
    }
    CUresult rs = S->api->cuStreamSynchronize(P->stream);
    if (r == CUDA_SUCCESS) r = rs;
    P->copy_ns += fgs_now_ns() - t;
    t = fgs_now_ns();
    S->api->cuMemHostUnregister(map);
    P->map_ns += fgs_now_ns() - t;
    return r;
}

/* Device → pool: the DMA of chunk k+1 into one bounce buffer runs while chunk k is copied out of the other. */
static CUresult to_pool(fgs_session *S, uint8_t *dst) {
    fgs_pager *P = S->pager;
    if (P->pool_vmm) {
        uint64_t t = fgs_now_ns();
        CUresult rv = P->stream ? CUDA_SUCCESS : S->api->cuStreamCreate(&P->stream, CU_STREAM_NON_BLOCKING);
        if (rv == CUDA_SUCCESS) rv = fgs_hostpool_copy(S, P->stream, (CUdeviceptr)(uintptr_t)dst, 1);
        P->copy_ns += fgs_now_ns() - t;
        return rv;
    }
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
        test_delay(P);
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
    if (P->pool_vmm) {
        uint64_t t = fgs_now_ns();
        CUresult rv = P->stream ? CUDA_SUCCESS : S->api->cuStreamCreate(&P->stream, CU_STREAM_NON_BLOCKING);
        if (rv == CUDA_SUCCESS) rv = fgs_hostpool_copy(S, P->stream, (CUdeviceptr)(uintptr_t)src, 0);
        P->copy_ns += fgs_now_ns() - t;
        return rv;
    }
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
        test_delay(P);
        if (!more) break;
        c = d;
        cur ^= 1;
    }
    return r;
}

static uint64_t unpageable_bytes(fgs_session *S) {
    uint64_t n = (uint64_t)S->n_created_ctx * S->ctx_charge;
    for (size_t i = 0; i < S->n_globals; i++) n += S->globals[i].size;
    return n;
}

static void page_out(fgs_session *S, const char *args) {
    fgs_pager *P = S->pager;
    if (!P) return;
    if (P->where != RESIDENT) {
        status(P, "pageout-failed the session is already paged out");
        return;
    }
    if (fgs_ipc_active(S)) { /* another process maps some of its memory, and would not follow it */
        status(P, "pageout-failed the session shares device memory with another process (CUDA IPC)");
        return;
    }
    uint64_t t0 = fgs_now_ns(), total = 0;
    for (size_t i = 0; i < S->n_allocs; i++) total += S->allocs[i].mapped;
    unsigned long long off = 0, len = 0;
    char path[512] = "";
    int host = sscanf(args, "host %llu %llu", &off, &len) == 2;
    int disk = !host && sscanf(args, "disk %511s", path) == 1;
    if (!host && !disk) {
        status(P, "pageout-failed malformed request");
        return;
    }
    if (host && ((P->pool_fd < 0 && !P->pool_vmm) || off > P->pool_len || len > P->pool_len - off || len < total)) {
        status(P, "pageout-failed the host pool extent does not hold %llu bytes", (unsigned long long)total);
        return;
    }
    P->io_ns = P->copy_ns = P->map_ns = P->vmm_ns = 0;
    CUresult r = sync_all_contexts(S);
    if (r != CUDA_SUCCESS) {
        status(P, "pageout-failed synchronising the session failed with CUDA error %d", (int)r);
        return;
    }
    char disk_note[160] = ""; /* a disk step's extra timings, for the status line */
    if (host) {
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
                status(P, "pageout-failed cannot map the node's host page pool (CUDA error %d)", (int)rm);
            else
                status(P, "pageout-failed cannot map the host pool extent: %s", strerror(errno));
            return;
        }
        P->map = m;
        P->map_len = total ? (size_t)len : 0;
        r = total ? to_pool(S, P->map) : CUDA_SUCCESS;
    } else {
        fgs_spill_io io;
        spill_io_init(P, &io);
        r = ensure_bounce(S);
        if (r == CUDA_SUCCESS) {
            io.buf[0] = P->bounce[0];
            io.buf[1] = P->bounce[1];
            io.stream = P->stream;
        }
        if (r == CUDA_SUCCESS && fgs_spill_out(S, path, &io) != 0) { /* spill.c removed the file */
            status(P, "pageout-failed %s", io.why);
            return;
        }
        P->io_ns = io.io_ns;
        P->copy_ns = io.copy_ns;
        snprintf(disk_note, sizeof disk_note, " open_ns=%llu stream_ns=%llu direct=%d", (unsigned long long)io.open_ns,
                 (unsigned long long)io.stream_ns, io.direct);
        snprintf(P->spill_path, sizeof P->spill_path, "%s", path);
    }
    if (r != CUDA_SUCCESS) { /* nothing was released: the session stays as it was */
        if (host) extent_unmap(S);
        status(P, "pageout-failed copying out failed with CUDA error %d", (int)r);
        return;
    }
    uint64_t tv = fgs_now_ns();
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        S->api->cuMemUnmap(a->ptr, a->mapped);
        S->api->cuMemRelease(a->handle);
        a->handle = 0;
        a->paged = 1;
    }
    P->vmm_ns = fgs_now_ns() - tv;
    if (P->node) fgs_ledger_uncharge(P->node, total);
    P->where = host ? PAGED_HOST : PAGED_DISK;
    P->bytes = total;
    if (host && P->pool_vmm) extent_unmap(S); /* mapped again by the page-in; meanwhile the worker holds none of it */
    status(P, "paged %s %llu %llu %llu io_ns=%llu copy_ns=%llu map_ns=%llu vmm_ns=%llu%s", host ? "host" : "disk",
           (unsigned long long)total, (unsigned long long)(fgs_now_ns() - t0), (unsigned long long)unpageable_bytes(S),
           (unsigned long long)P->io_ns, (unsigned long long)P->copy_ns, (unsigned long long)P->map_ns,
           (unsigned long long)P->vmm_ns, disk_note);
}

/* Undoes what a failed page-in mapped; the contents stay in the store. */
static void unmap_again(fgs_session *S) {
    for (size_t i = 0; i < S->n_allocs; i++) {
        fgs_alloc *a = &S->allocs[i];
        if (!a->paged || !a->handle) continue;
        S->api->cuMemUnmap(a->ptr, a->mapped);
        S->api->cuMemRelease(a->handle);
        a->handle = 0;
    }
}

CUresult fgs_page_in(fgs_session *S) {
    fgs_pager *P = S->pager;
    uint64_t t0 = fgs_now_ns();
    if (fgs_pager_wake(S) != 0) {
        status(P, "pagein-failed the driver checkpoint of this session could not be restored");
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    status(P, "paging-in %llu", (unsigned long long)P->bytes);
    P->io_ns = P->copy_ns = P->vmm_ns = 0;
    if (P->node && fgs_resident_charge(S, P->bytes) != CUDA_SUCCESS) {
        status(P, "pagein-failed no room on the GPU for %llu bytes", (unsigned long long)P->bytes);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    CUresult r = CUDA_SUCCESS;
    uint64_t tv = fgs_now_ns();
    for (size_t i = 0; i < S->n_allocs && r == CUDA_SUCCESS; i++) {
        fgs_alloc *a = &S->allocs[i];
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = a->dev;
        prop.requestedHandleTypes = a->client_vmm ? CU_MEM_HANDLE_TYPE_NONE : CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        r = S->api->cuMemCreate(&a->handle, a->mapped, &prop, 0); /* shareable again, as memory.c made it (ipc.c) */
        if (r == CUDA_ERROR_NOT_SUPPORTED || r == CUDA_ERROR_INVALID_VALUE || r == CUDA_ERROR_NOT_PERMITTED) {
            prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_NONE;
            r = S->api->cuMemCreate(&a->handle, a->mapped, &prop, 0);
        }
        if (r != CUDA_SUCCESS) {
            a->handle = 0;
            break;
        }
        r = S->api->cuMemMap(a->ptr, a->mapped, 0, a->handle, 0);
        if (r != CUDA_SUCCESS) {
            S->api->cuMemRelease(a->handle);
            a->handle = 0;
            break;
        }
        CUmemAccessDesc ad;
        memset(&ad, 0, sizeof ad);
        ad.location = prop.location;
        ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
        r = S->api->cuMemSetAccess(a->ptr, a->mapped, &ad, 1);
        if (r == CUDA_SUCCESS && a->peers) fgs_peer_grant(S, a); /* the session's other GPUs that reached it */
    }
    P->vmm_ns = fgs_now_ns() - tv;
    if (r == CUDA_SUCCESS && P->where == PAGED_HOST && P->pool_vmm && !P->map && P->bytes) {
        uint64_t tm = fgs_now_ns();
        P->map = extent_map(S, P->off, P->len, &r);
        P->map_len = (size_t)P->len;
        P->map_ns = fgs_now_ns() - tm;
    }
    if (r == CUDA_SUCCESS && P->where == PAGED_HOST && P->map) r = from_pool(S, P->map);
    char disk_note[200] = "", disk_why[240] = "";
    if (r == CUDA_SUCCESS && P->where == PAGED_DISK) {
        /* The spill file stays: the node agent deletes it once it hears "resident", off this call's path (spill.c
         * says why). A failure leaves it as it was, and the session paged. */
        fgs_spill_io io;
        spill_io_init(P, &io);
        r = ensure_bounce(S);
        if (r == CUDA_SUCCESS) {
            io.buf[0] = P->bounce[0];
            io.buf[1] = P->bounce[1];
            io.stream = P->stream;
            if (fgs_spill_in(S, P->spill_path, &io) != 0) {
                snprintf(disk_why, sizeof disk_why, "%s", io.why);
                r = CUDA_ERROR_OPERATING_SYSTEM;
            }
        }
        P->io_ns = io.io_ns;
        P->copy_ns = io.copy_ns;
        snprintf(disk_note, sizeof disk_note,
                 " open_ns=%llu first_ns=%llu wait_ns=%llu stream_ns=%llu depth=%u chunk=%llu direct=%d",
                 (unsigned long long)io.open_ns, (unsigned long long)io.first_ns, (unsigned long long)io.wait_ns,
                 (unsigned long long)io.stream_ns, io.depth, (unsigned long long)io.chunk, io.direct);
    }
    if (r != CUDA_SUCCESS) {
        unmap_again(S);
        if (P->node) fgs_ledger_uncharge(P->node, P->bytes);
        if (disk_why[0])
            status(P, "pagein-failed %s", disk_why);
        else
            status(P, "pagein-failed restoring the memory failed with CUDA error %d", (int)r);
        return r == CUDA_ERROR_OUT_OF_MEMORY ? r : CUDA_ERROR_OUT_OF_MEMORY;
    }
    for (size_t i = 0; i < S->n_allocs; i++) S->allocs[i].paged = 0;
    extent_unmap(S);
    P->where = RESIDENT;
    status(P, "resident %llu %llu io_ns=%llu copy_ns=%llu vmm_ns=%llu%s", (unsigned long long)P->bytes,
           (unsigned long long)(fgs_now_ns() - t0), (unsigned long long)P->io_ns, (unsigned long long)P->copy_ns,
           (unsigned long long)P->vmm_ns, disk_note);
    P->bytes = 0;
    return CUDA_SUCCESS;
}

/* For park.c: the agent's control descriptor (a park waits on it for its verdict), and a restored session's
 * memory, which lies in a spill file until its first batch pages it in at the same addresses. */
int fgs_pager_ctl_fd(fgs_session *S) { return S->pager ? S->pager->ctl_fd : -1; }

void fgs_pager_status(fgs_session *S, const char *line) { status(S->pager, "%s", line); }

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

int fgs_pager_adopt_spill(fgs_session *S, const char *path, uint64_t bytes) {
    fgs_pager *P = S->pager;
    if (!P || P->where != RESIDENT || strlen(path) >= sizeof P->spill_path) return -1;
    snprintf(P->spill_path, sizeof P->spill_path, "%s", path);
    P->where = PAGED_DISK;
    P->bytes = bytes;
    return 0;
}

void fgs_pager_close(fgs_session *S) {
    fgs_pager *P = S->pager;
    if (!P) return;
    if (P->where == PAGED_DISK) unlink(P->spill_path);
    fgs_copiers_free(P->copiers);
    for (int i = 0; i < 2; i++)
        if (P->bounce[i]) S->api->cuMemFreeHost(P->bounce[i]);
    extent_unmap(S);
    if (P->pool_fd >= 0) close(P->pool_fd);
    for (size_t i = 0; i < P->n_slabs; i++) close(P->slab_fds[i]);
    free(P->slab_fds);
    fgs_ledger_free(P->node);
    free(P);
    S->pager = NULL;
}
