/* mirror.c — host mirrors of device memory, for managed memory and for mapped host memory over a transport that
 * cannot share pages with the GPU (TCP). Each mirror is a host range (page-aligned) and the device range that is
 * its truth on the node. The stub reports a device without concurrent managed access, so an application follows
 * CUDA's rules for one: the host does not touch the memory while device work that may use it runs. Within those
 * rules the mirror gives what the GPU would:
 *
 *   - Host writes are tracked with page protection, in blocks of 64 KiB: a clean block is read-only, the first
 *     write faults, the block becomes writable and dirty.
 *   - Before any record that may read device memory (launches, graph launches, copies, memsets, stream memory
 *     operations) is queued, dirty blocks are copied to the device (synchronously, so work on any stream sees
 *     them) and become clean (read-only) again.
 *   - After queueing a record that may write device memory, every mirror is stale (no access): the next host
 *     access faults, and the block's run of stale blocks (up to 2 MiB) is copied back from the device; by CUDA's
 *     rules the application has synchronised by then, so the copy sees the finished work.
 *   - Copies the application asks for with a mirrored host range are done on the device side (memory.c hooks),
 *     so the stub itself never touches protected pages.
 *
 * A mirror attached to the host (CU_MEM_ATTACH_HOST) is left alone by device work: kernels may not use it.
 * Host functions (cuLaunchHostFunc) must not touch a stale mirror: its fetch would wait for the connection the
 * submitting thread holds. The fault handler chains to the one installed before it for any other address. */
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fgc_impl.h"
#include "fgc_internal.h"
#include "fgc_mirror_impl.h"

#define BLK ((size_t)64 << 10)
#define FETCH_BLOCKS 32 /* 2 MiB per fetch */

enum { ST_STALE = 0, ST_CLEAN = 1, ST_DIRTY = 2 };

fgc_mirror g_mirrors[FGC_MIRROR_MAX];
static atomic_int g_high;    /* slots ever used */
static atomic_int g_live;    /* live mirrors */
static atomic_int g_dirty;   /* some block may be dirty */
pthread_mutex_t g_mirror_mu = PTHREAD_MUTEX_INITIALIZER;
static __thread int t_internal; /* this thread is moving mirror data: its own records change nothing */
static struct sigaction g_prev_segv;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static size_t blk_len(const fgc_mirror *m, size_t b) {
    size_t off = b * BLK;
    return m->span - off < BLK ? m->span - off : BLK;
}

static void chain(int sig, siginfo_t *si, void *uc) {
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction) {
            g_prev_segv.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        g_prev_segv.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL); /* the fault happens again on return and ends the process as it would have */
}

fgc_mirror *fgc_mirror_find_host(uintptr_t a) {
    int hi = atomic_load(&g_high);
    for (int i = 0; i < hi; i++) {
        fgc_mirror *m = &g_mirrors[i];
        if (atomic_load_explicit(&m->live, memory_order_acquire) && a >= m->host && a - m->host < m->span) return m;
    }
    return NULL;
}

/* Copy the run of stale blocks from b (at most FETCH_BLOCKS) back from the device; they become clean. */
static void fetch(fgc_mirror *m, size_t b) {
    size_t e = b;
    while (e < m->nblk && e - b < FETCH_BLOCKS && m->st[e] == ST_STALE) e++;
    size_t off = b * BLK, len = 0;
    for (size_t k = b; k < e; k++) len += blk_len(m, k);
    mprotect((void *)(m->host + off), len, PROT_READ | PROT_WRITE);
    t_internal = 1;
    CUresult r = fgc_cuMemcpyDtoH_v2((void *)(m->host + off), m->dev + off, len);
    t_internal = 0;
    if (r != CUDA_SUCCESS)
        fgc_log(FGC_LOG_ERROR, "could not bring device data back into host memory at %p (%zu bytes): CUresult %d; "
                "the host now sees stale bytes there", (void *)(m->host + off), len, (int)r);
    mprotect((void *)(m->host + off), len, PROT_READ);
    for (size_t k = b; k < e; k++) m->st[k] = ST_CLEAN;
    m->n_valid += e - b;
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
    int saved = errno;
    uintptr_t a = (uintptr_t)si->si_addr;
    fgc_mirror *m = si->si_code == SEGV_ACCERR ? fgc_mirror_find_host(a) : NULL;
    if (!m) {
        errno = saved;
        chain(sig, si, uc);
        return;
    }
    pthread_mutex_lock(&g_mirror_mu);
    if (atomic_load(&m->live) && a - m->host < m->span) {
        size_t b = (a - m->host) / BLK;
        if (m->st[b] == ST_STALE) {
            fetch(m, b); /* a write faults once more and makes the block dirty below */
        } else if (m->st[b] == ST_CLEAN) {
            mprotect((void *)(m->host + b * BLK), blk_len(m, b), PROT_READ | PROT_WRITE);
            m->st[b] = ST_DIRTY;
            m->n_dirty++;
            atomic_store(&g_dirty, 1);
        }
    }
    pthread_mutex_unlock(&g_mirror_mu);
    errno = saved;
}

static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
}

/* Mirror mutex held. */
static void flush_one(fgc_mirror *m) {
    for (size_t b = 0; b < m->nblk && m->n_dirty;) {
        if (m->st[b] != ST_DIRTY) {
            b++;
            continue;
        }
        size_t e = b, len = 0;
        while (e < m->nblk && m->st[e] == ST_DIRTY) len += blk_len(m, e++);
        size_t off = b * BLK;
        CUresult r = fgc_cuMemcpyHtoD_v2(m->dev + off, (const void *)(m->host + off), len);
        if (r != CUDA_SUCCESS)
            fgc_log(FGC_LOG_ERROR, "could not send host writes at %p (%zu bytes) to the device: CUresult %d",
                    (void *)(m->host + off), len, (int)r);
        mprotect((void *)(m->host + off), len, PROT_READ);
        for (size_t k = b; k < e; k++) m->st[k] = ST_CLEAN;
        m->n_dirty -= e - b;
        b = e;
    }
}

static void stale_one(fgc_mirror *m) {
    if (!m->n_valid) return;
    mprotect((void *)m->host, m->span, PROT_NONE);
    memset(m->st, ST_STALE, m->nblk);
    m->n_valid = 0;
    m->n_dirty = 0;
}

/* Which records may read or write device memory: 1 read, 2 write (and read). */
static int op_effect(uint16_t op) {
    switch (op) {
    case FG_OP_cuMemcpyDtoH_v2:
    case FG_OP_cuMemcpyDtoHAsync_v2:
    case FG_OP_cuStreamWaitValue32_v2:
    case FG_OP_cuStreamWaitValue64_v2:
        return 1;
    case FG_OP_cuLaunchKernel:
    case FG_OP_cuLaunchKernelEx:
    case FG_OP_cuGraphLaunch:
    case FG_OP_cuMemcpyHtoD_v2:
    case FG_OP_cuMemcpyHtoDAsync_v2:
    case FG_OP_cuMemcpyDtoD_v2:
    case FG_OP_cuMemcpyDtoDAsync_v2:
    case FG_OP_cuMemcpy:
    case FG_OP_cuMemcpyAsync:
    case FG_OP_cuMemsetD8_v2:
    case FG_OP_cuMemsetD16_v2:
    case FG_OP_cuMemsetD32_v2:
    case FG_OP_cuMemsetD8Async:
    case FG_OP_cuMemsetD16Async:
    case FG_OP_cuMemsetD32Async:
    case FG_OP_cuMemsetD2D8_v2:
    case FG_OP_cuMemsetD2D16_v2:
    case FG_OP_cuMemsetD2D32_v2:
    case FG_OP_cuMemsetD2D8Async:
    case FG_OP_cuMemsetD2D16Async:
    case FG_OP_cuMemsetD2D32Async:
    case FG_OP_cuStreamWriteValue32_v2:
    case FG_OP_cuStreamWriteValue64_v2:
    case FG_OP_cuStreamBatchMemOp_v2:
    case FG_OP_cuMemBatchDecompressAsync:
    case FG_OP_cuMemcpy3D_v2:
    case FG_OP_cuMemcpy3DAsync_v2:
        return 2;
    default:
        return 0;
    }
}

void fgc_mirror_before_op(uint16_t op) {
    if (t_internal || !atomic_load_explicit(&g_live, memory_order_relaxed)) return;
    int eff = op_effect(op);
    if (!eff) return;
    fgc_mirror_sync_all(eff == 2);
}

void fgc_mirror_sync_all(int make_stale) {
    if (t_internal) return;
    pthread_mutex_lock(&g_mirror_mu);
    t_internal = 1;
    int hi = atomic_load(&g_high);
    if (atomic_exchange(&g_dirty, 0))
        for (int i = 0; i < hi; i++)
            if (atomic_load(&g_mirrors[i].live) && !g_mirrors[i].attach_host) flush_one(&g_mirrors[i]);
    if (make_stale)
        for (int i = 0; i < hi; i++)
            if (atomic_load(&g_mirrors[i].live) && !g_mirrors[i].attach_host) stale_one(&g_mirrors[i]);
    t_internal = 0;
    pthread_mutex_unlock(&g_mirror_mu);
}

/* Mirror mutex held: a mirror attached to the host becomes device-visible again, or the other way. */
void fgc_mirror_set_attach_host(fgc_mirror *m, int host) {
    /* Going to the host: stale blocks stay stale and come back on access (after the application synchronised,
     * as it must before touching them); device work no longer marks it. */
    if (!host && m->attach_host && m->n_dirty) {
        atomic_store(&g_dirty, 1);
    }
    m->attach_host = host;
}

fgc_mirror *fgc_mirror_add(uintptr_t host, uint64_t dev, size_t span, int kind) {
    pthread_once(&g_once, install);
    size_t nblk = (span + BLK - 1) / BLK;
    uint8_t *st = (uint8_t *)malloc(nblk);
    if (!st) return NULL;
    memset(st, ST_CLEAN, nblk);
    pthread_mutex_lock(&g_mirror_mu);
    fgc_mirror *m = NULL;
    for (int i = 0; i < FGC_MIRROR_MAX && !m; i++)
        if (!atomic_load(&g_mirrors[i].live)) {
            m = &g_mirrors[i];
            if (i >= atomic_load(&g_high)) atomic_store(&g_high, i + 1);
        }
    if (m) {
        free(m->st);
        m->kind = kind;
        m->host = host;
        m->dev = dev;
        m->span = span;
        m->nblk = nblk;
        m->st = st;
        m->n_valid = nblk;
        m->n_dirty = 0;
        m->attach_host = 0;
        m->read_mostly = 0;
        m->preferred = CU_DEVICE_INVALID;
        m->last_prefetch = CU_DEVICE_INVALID;
        m->accessed_by = 0;
        mprotect((void *)host, span, PROT_READ); /* host and device agree now: clean */
        atomic_store_explicit(&m->live, 1, memory_order_release);
        atomic_fetch_add(&g_live, 1);
    }
    pthread_mutex_unlock(&g_mirror_mu);
    if (!m) {
        free(st);
        fgc_log(FGC_LOG_WARN, "more than %d managed or mapped ranges at once: not supported", FGC_MIRROR_MAX);
    }
    return m;
}

/* The mirror ends: the host range gets its protection back (read-write) with the device's bytes when
 * keep_host (registered memory goes on being the application's), else it is left to the caller. */
void fgc_mirror_remove(fgc_mirror *m, int keep_host) {
    pthread_mutex_lock(&g_mirror_mu);
    if (keep_host) {
        t_internal = 1;
        for (size_t b = 0; b < m->nblk; b++)
            if (m->st[b] == ST_STALE) fetch(m, b);
        t_internal = 0;
        mprotect((void *)m->host, m->span, PROT_READ | PROT_WRITE);
    }
    atomic_store(&m->live, 0);
    atomic_fetch_sub(&g_live, 1);
    pthread_mutex_unlock(&g_mirror_mu);
}

fgc_mirror *fgc_mirror_find_dev(uint64_t d) {
    int hi = atomic_load(&g_high);
    for (int i = 0; i < hi; i++) {
        fgc_mirror *m = &g_mirrors[i];
        if (atomic_load(&m->live) && d >= m->dev && d - m->dev < m->span) return m;
    }
    return NULL;
}

/* ---- hooks for memory.c and pointer.c ---- */

int fgc_mirror_htod(CUdeviceptr dst, const void *src, size_t n, CUstream s, int async, CUresult *r) {
    if (t_internal || !atomic_load_explicit(&g_live, memory_order_relaxed) || !n) return 0;
    fgc_mirror *m = fgc_mirror_find_host((uintptr_t)src);
    if (!m || (uintptr_t)src - m->host > m->span - n) return 0;
    uint64_t from = m->dev + ((uintptr_t)src - m->host);
    *r = async ? cuMemcpyDtoDAsync_v2(dst, from, n, s) : cuMemcpyDtoD_v2(dst, from, n);
    return 1;
}

int fgc_mirror_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream s, int async, CUresult *r) {
    if (t_internal || !atomic_load_explicit(&g_live, memory_order_relaxed) || !n) return 0;
    fgc_mirror *m = fgc_mirror_find_host((uintptr_t)dst);
    if (!m || (uintptr_t)dst - m->host > m->span - n) return 0;
    uint64_t to = m->dev + ((uintptr_t)dst - m->host);
    if (m->attach_host) { /* device work leaves it alone; this copy writes it, so it follows device work again */
        pthread_mutex_lock(&g_mirror_mu);
        fgc_mirror_set_attach_host(m, 0);
        pthread_mutex_unlock(&g_mirror_mu);
    }
    *r = async ? cuMemcpyDtoDAsync_v2(to, src, n, s) : cuMemcpyDtoD_v2(to, src, n);
    return 1;
}

int fgc_mirror_is_managed(uint64_t p) {
    fgc_mirror *m = fgc_mirror_find_dev(p);
    return m && m->kind == FGC_MIRROR_MANAGED;
}

int fgc_mirror_device_of(const void *host, uint64_t *dev) {
    fgc_mirror *m = fgc_mirror_find_host((uintptr_t)host);
    if (!m || m->kind != FGC_MIRROR_MAPPED) return 0;
    *dev = m->dev + ((uintptr_t)host - m->host);
    return 1;
}
