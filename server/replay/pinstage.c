/* pinstage.c — the worker's page-locked staging for async device→host copies (memory.c stages each
 * cuMemcpyDtoHAsync record until a reply or a host function's RUN message delivers it).
 *
 * Into pageable memory the driver runs such a copy as if it were synchronous for the host thread (it bounces it
 * through its own pinned buffers and returns once the copy is done), so the replay thread would wait for the GPU to
 * reach the copy on its stream and every record after it (kernels on other streams too) would start late. Staged
 * in page-locked memory the DMA runs in stream order while the replay thread goes on.
 *
 * Buffers are page-aligned memory of the worker, registered with the driver (portable: pinned for every context of
 * the session), made at first use and kept for reuse up to FARGPU_WORKER_PINNED_STAGE_MB (default 256; 0: off).
 * Copies up to SMALL_MAX bytes are carved one after the other out of 2 MiB slabs, a slab reused once every copy in
 * it was delivered; larger ones take a buffer of their power-of-two size class. Beyond the cap (when no idle
 * buffer can be given back to make room), while the copy's stream is capturing (a captured copy's destination must
 * outlive the graph: it keeps the pageable buffer of before) or when registration fails, a copy is staged in
 * malloc'd memory as before. A buffer goes back to the pool only once its copy has completed: delivery waits for
 * the copy's stream (or runs after it in stream order, for a host function), and memory.c waits for the streams of
 * copies still staged before a context may go and at the session's end (fgs_later_settle). The memory is the
 * worker's own, so a registration that went with a destroyed context leaves the bytes in place; after such a point
 * (fgs_stage_drain) each buffer is registered again, under the context current then, at its next use. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define SLAB (2u << 20)         /* small copies share slabs of this size */
#define SMALL_MAX (64u << 10)   /* copies up to this size are carved out of slabs */
#define SMALL_ALIGN 256u
#define CLS_MIN_SHIFT 17        /* larger copies: classes of 128 KiB, 256 KiB, ... FG_CHUNK */
#define NCLS 12
#define EVICT_MAX 24            /* idle buffers one copy may give back to make room (FG_CHUNK / SLAB, and more) */

struct fgs_pinblk {
    struct fgs_pinstage *pool;
    uint8_t *base;
    size_t size;
    int cls;           /* -1: a slab for small copies */
    size_t off;        /* a slab: where the next small copy goes */
    uint32_t refs;     /* staged copies in it not yet given back */
    uint64_t gen;      /* the registration generation it was last registered in */
    int registered;    /* that registration succeeded */
    struct fgs_pinblk *next_free, *next_all;
};

struct fgs_pinstage {
    pthread_mutex_t mu; /* the lists and counts: trampolines give copies back from the driver's threads */
    struct fgs_pinblk *all, *cur, *free_small, *free_cls[NCLS];
    uint64_t bytes, cap, peak, gen, off_gen;
    int off;            /* registration failed in generation off_gen: pageable staging until the next one */
    int closed;
    uint64_t pinned, pageable, over_cap, captured; /* copies staged, by where */
};

static uint64_t cap_bytes(void) {
    const char *e = getenv("FARGPU_WORKER_PINNED_STAGE_MB");
    char *end = NULL;
    unsigned long long mb = e && *e ? strtoull(e, &end, 10) : 256;
    if (e && *e && (!end || *end)) mb = 256;
    if (mb > (1ull << 20)) mb = 1ull << 20;
    return (uint64_t)mb << 20;
}

static struct fgs_pinstage *pool_of(fgs_session *S) {
    if (!S->pinstage) {
        struct fgs_pinstage *P = (struct fgs_pinstage *)calloc(1, sizeof *P);
        if (!P) return NULL;
        pthread_mutex_init(&P->mu, NULL);
        P->cap = cap_bytes();
        S->pinstage = P;
    }
    return S->pinstage;
}

static int cls_of(size_t n) {
    int c = 0;
    while (((size_t)1 << (CLS_MIN_SHIFT + c)) < n) c++;
    return c;
}

/* Whether a copy on stream s may be staged in the pool: the stream is not capturing (asked of the driver; a
 * stream it cannot answer for, e.g. the legacy stream while another one captures, counts as capturing). */
static int not_capturing(fgs_session *S, CUstream s) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return S->api->cuStreamIsCapturing && S->api->cuStreamIsCapturing(s, &st) == CUDA_SUCCESS &&
           st == CU_STREAM_CAPTURE_STATUS_NONE;
}

static int do_register(fgs_session *S, struct fgs_pinblk *b) {
    if (!S->api->cuMemHostRegister_v2) return 0;
    CUstreamCaptureMode mode;
    int relaxed = fgs_relax(S, &mode); /* the worker's staging memory, not the application's call */
    CUresult r = S->api->cuMemHostRegister_v2(b->base, b->size, CU_MEMHOSTREGISTER_PORTABLE);
    fgs_unrelax(S, relaxed, mode);
    return r == CUDA_SUCCESS || r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
}

static void release_block(fgs_session *S, struct fgs_pinblk *b) {
    if (b->registered && S->api->cuMemHostUnregister) {
        CUstreamCaptureMode mode;
        int relaxed = fgs_relax(S, &mode);
        S->api->cuMemHostUnregister(b->base);
        fgs_unrelax(S, relaxed, mode);
    }
    free(b->base);
    free(b);
}

static void unlink_all(struct fgs_pinstage *P, struct fgs_pinblk *b) {
    for (struct fgs_pinblk **pp = &P->all; *pp; pp = &(*pp)->next_all)
        if (*pp == b) {
            *pp = b->next_all;
            return;
        }
}

/* Under P->mu: an idle buffer taken off its free list to make room (the largest class first), or NULL. */
static struct fgs_pinblk *evict_one(struct fgs_pinstage *P) {
    struct fgs_pinblk *b = NULL;
    for (int c = NCLS - 1; c >= 0 && !b; c--)
        if ((b = P->free_cls[c])) P->free_cls[c] = b->next_free;
    if (!b && (b = P->free_small)) P->free_small = b->next_free;
    if (b) {
        unlink_all(P, b);
        P->bytes -= b->size;
    }
    return b;
}

void *fgs_stage_get(fgs_session *S, size_t n, CUstream s, struct fgs_pinblk **pin) {
    *pin = NULL;
    struct fgs_pinstage *P = n ? pool_of(S) : NULL;
    if (P && P->cap && n <= FG_CHUNK && !not_capturing(S, s)) {
        pthread_mutex_lock(&P->mu);
        P->captured++;
        pthread_mutex_unlock(&P->mu);
        P = NULL;
    }
    if (!P || !P->cap || n > FG_CHUNK || (P->off && P->off_gen == P->gen)) return malloc(n ? n : 1);
    int small = n <= SMALL_MAX, cls = small ? -1 : cls_of(n);
    size_t size = small ? SLAB : (size_t)1 << (CLS_MIN_SHIFT + cls);
    struct fgs_pinblk *b = NULL, *evicted[EVICT_MAX];
    int ne = 0;
    pthread_mutex_lock(&P->mu);
    if (small && P->cur && P->cur->off + n <= P->cur->size) b = P->cur;
    else if (small && (b = P->free_small)) P->free_small = b->next_free;
    else if (!small && (b = P->free_cls[cls])) P->free_cls[cls] = b->next_free;
    uint64_t idle = 0; /* give idle buffers back only when that makes room */
    for (int c = 0; !b && P->bytes + size > P->cap && c <= NCLS; c++)
        for (struct fgs_pinblk *f = c < NCLS ? P->free_cls[c] : P->free_small; f; f = f->next_free) idle += f->size;
    while (!b && P->bytes + size > P->cap && P->bytes - idle + size <= P->cap && ne < EVICT_MAX) {
        struct fgs_pinblk *e = evict_one(P);
        if (!e) break;
        evicted[ne++] = e;
    }
    int grow = !b && P->bytes + size <= P->cap;
    if (grow) {
        P->bytes += size; /* reserved now; given back below if the buffer cannot be made */
        if (P->bytes > P->peak) P->peak = P->bytes;
    } else if (!b) {
        P->over_cap++;
    }
    uint64_t gen = P->gen;
    pthread_mutex_unlock(&P->mu);
    for (int i = 0; i < ne; i++) release_block(S, evicted[i]); /* driver calls without the lock */
    if (grow) {
        b = (struct fgs_pinblk *)calloc(1, sizeof *b);
        void *mem = NULL;
        if (b && posix_memalign(&mem, 4096, size) == 0) {
            *b = (struct fgs_pinblk){P, (uint8_t *)mem, size, cls, 0, 0, gen, 0, NULL, NULL};
            b->registered = do_register(S, b);
        }
        if (!b || !b->base || !b->registered) {
            if (b && b->base) free(b->base);
            free(b);
            b = NULL;
            pthread_mutex_lock(&P->mu);
            P->bytes -= size;
            if (!P->off || P->off_gen != gen) {
                P->off = 1;
                P->off_gen = gen;
                pthread_mutex_unlock(&P->mu);
                fgs_log(S, "async device-to-host copies are staged in pageable memory: a %zu-byte staging buffer could "
                           "not be %s", size, mem ? "registered with the driver" : "allocated");
            } else {
                pthread_mutex_unlock(&P->mu);
            }
            return malloc(n);
        }
        pthread_mutex_lock(&P->mu);
        b->next_all = P->all;
        P->all = b;
        pthread_mutex_unlock(&P->mu);
    }
    if (!b) return malloc(n);
    if (b->gen != gen) { /* a context may have gone since it was last registered: register again under this one */
        b->registered = do_register(S, b);
        b->gen = gen;
    }
    pthread_mutex_lock(&P->mu);
    void *at = b->base + b->off;
    if (small) {
        b->off += (n + SMALL_ALIGN - 1) / SMALL_ALIGN * SMALL_ALIGN;
        struct fgs_pinblk *old = P->cur;
        if (old && old != b && !old->refs) { /* emptied since it was found full: reusable */
            old->off = 0;
            old->next_free = P->free_small;
            P->free_small = old;
        }
        P->cur = b;
    }
    b->refs++;
    pthread_mutex_unlock(&P->mu);
    *pin = b;
    return at;
}

void fgs_stage_put(struct fgs_pinblk *b, void *data) {
    if (!b) {
        free(data);
        return;
    }
    struct fgs_pinstage *P = b->pool;
    pthread_mutex_lock(&P->mu);
    if (b->refs && !--b->refs && !P->closed) { /* after the pool closed it stays out (the worker is ending) */
        b->off = 0;
        if (b->cls >= 0) {
            b->next_free = P->free_cls[b->cls];
            P->free_cls[b->cls] = b;
        } else if (b != P->cur) {
            b->next_free = P->free_small;
            P->free_small = b;
        }
    }
    pthread_mutex_unlock(&P->mu);
}

void fgs_stage_count(fgs_session *S, struct fgs_pinblk *b) {
    struct fgs_pinstage *P = pool_of(S);
    if (!P) return;
    pthread_mutex_lock(&P->mu);
    if (b && b->registered) P->pinned++;
    else P->pageable++;
    pthread_mutex_unlock(&P->mu);
}

void fgs_stage_drain(fgs_session *S) {
    struct fgs_pinstage *P = S->pinstage;
    /* Staged copies complete while their streams exist (send_reply then waits for none of those streams). */
    fgs_later_settle(S, 0, NULL, 1);
    if (!P) return;
    pthread_mutex_lock(&P->mu);
    P->gen++;
    pthread_mutex_unlock(&P->mu);
}

/* Under P->mu: every idle buffer taken out of the pool (linked by next_all), its bytes off the count. */
static struct fgs_pinblk *take_idle(struct fgs_pinstage *P, size_t *n_idle, uint64_t *idle_bytes, size_t *n_out) {
    struct fgs_pinblk *idle = NULL, **pp = &P->all;
    while (*pp) {
        struct fgs_pinblk *b = *pp;
        if (b->refs) {
            (*n_out)++;
            pp = &b->next_all;
            continue;
        }
        *pp = b->next_all;
        b->next_all = idle;
        idle = b;
        (*n_idle)++;
        *idle_bytes += b->size;
        P->bytes -= b->size;
    }
    memset(P->free_cls, 0, sizeof P->free_cls); /* every buffer on a free list was idle */
    P->free_small = NULL;
    if (P->cur && !P->cur->refs) P->cur = NULL;
    return idle;
}

static void release_list(fgs_session *S, struct fgs_pinblk *b) {
    while (b) {
        struct fgs_pinblk *next = b->next_all;
        release_block(S, b);
        b = next;
    }
}

void fgs_stage_trim(fgs_session *S) {
    struct fgs_pinstage *P = S->pinstage;
    if (!P) return;
    size_t n_idle = 0, n_out = 0;
    uint64_t idle_bytes = 0;
    pthread_mutex_lock(&P->mu);
    struct fgs_pinblk *idle = take_idle(P, &n_idle, &idle_bytes, &n_out);
    pthread_mutex_unlock(&P->mu);
    release_list(S, idle);
    if (n_idle)
        fgs_log(S, "paged out: %zu idle page-locked staging buffers (%llu bytes) given back", n_idle,
                (unsigned long long)idle_bytes);
}

void fgs_stage_close(fgs_session *S) {
    struct fgs_pinstage *P = S->pinstage;
    if (!P) return;
    size_t n_idle = 0, n_out = 0; /* idle buffers are released; one a copy still holds stays (the worker exits) */
    uint64_t idle_bytes = 0;
    pthread_mutex_lock(&P->mu);
    P->closed = 1;
    struct fgs_pinblk *idle = take_idle(P, &n_idle, &idle_bytes, &n_out);
    pthread_mutex_unlock(&P->mu);
    if (P->pinned || P->pageable)
        fgs_log(S, "%llu async device-to-host copies staged in page-locked memory, %llu in pageable memory (%llu "
                   "beyond the %llu MiB cap, %llu under stream capture); %zu staging buffers (%llu bytes, %llu at "
                   "most) released, %zu still held",
                (unsigned long long)P->pinned, (unsigned long long)P->pageable, (unsigned long long)P->over_cap,
                (unsigned long long)(P->cap >> 20), (unsigned long long)P->captured, n_idle,
                (unsigned long long)idle_bytes, (unsigned long long)P->peak, n_out);
    release_list(S, idle);
    S->pinstage = NULL;
    if (!n_out) {
        pthread_mutex_destroy(&P->mu);
        free(P);
    } /* else a trampoline may still give a copy back into it: left to the process's exit */
}
