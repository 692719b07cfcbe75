/* va_block.c — one device address range per session, out of which the worker carves every cuMemAlloc (memory.c).
 *
 * Parking needs each allocation back at its old address in a new worker (park_place.c). When every allocation asks
 * the driver for its own range, the addresses are the driver's choice, spread over whatever ranges the driver took
 * from the kernel as the session grew, and a restoring worker cannot ask for them back. Here the session reserves
 * one large range once (FARGPU_SESSION_VA_GB, default 192 GiB of address space, no memory; asked at the session's
 * address arena, FARGPU_ARENA) and places allocations in it itself, lowest free first, so an allocation's address is
 * the block's base plus an offset the worker chose. A restoring worker then needs one range back, the block, and
 * places every allocation at its old offset without asking the driver. Frees give their space back to the block
 * (coalesced). Should the block be full, or the driver refuse it, allocations fall back to a range of their own. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

typedef struct {
    uint64_t off, len;
} span;

struct fgs_vablock {
    CUdeviceptr base;
    uint64_t size;
    span *free; /* sorted by offset, never adjacent */
    size_t n, cap;
    int failed; /* the driver refused the block: every allocation has its own range */
};

static struct fgs_vablock *block_of(fgs_session *S) {
    if (!S->vablock) S->vablock = (struct fgs_vablock *)calloc(1, sizeof *S->vablock);
    return S->vablock;
}

static int push_span(struct fgs_vablock *B, size_t at, uint64_t off, uint64_t len) {
    if (B->n == B->cap) {
        size_t cap = B->cap ? B->cap * 2 : 16;
        span *nf = (span *)realloc(B->free, cap * sizeof *nf);
        if (!nf) return -1;
        B->free = nf;
        B->cap = cap;
    }
    memmove(&B->free[at + 1], &B->free[at], (B->n - at) * sizeof *B->free);
    B->free[at] = (span){off, len};
    B->n++;
    return 0;
}

static void drop_span(struct fgs_vablock *B, size_t at) {
    memmove(&B->free[at], &B->free[at + 1], (B->n - at - 1) * sizeof *B->free);
    B->n--;
}

static uint64_t block_size(void) {
    const char *e = getenv("FARGPU_SESSION_VA_GB");
    long gb = e && *e ? strtol(e, NULL, 10) : 192;
    if (gb < 0 || gb > 65536) gb = 192;
    return (uint64_t)gb << 30;
}

/* The block as a whole range of free space: [base, base + size). */
static int block_take(struct fgs_vablock *B, CUdeviceptr base, uint64_t size) {
    B->base = base;
    B->size = size;
    B->n = 0;
    return push_span(B, 0, 0, size);
}

/* Reserve the block now, if it is not yet reserved and the driver has not refused it. 0: there is a block. */
static int block_open(fgs_session *S, uint64_t gran) {
    struct fgs_vablock *B = block_of(S);
    if (!B || B->failed) return -1;
    if (B->base) return 0;
    uint64_t size = block_size();
    if (S->arena_next && S->arena_end - S->arena_next < size) size = S->arena_end - S->arena_next; /* within it */
    size = size / gran * gran;
    if (!size || !S->api->cuMemAddressReserve) {
        B->failed = 1;
        return -1;
    }
    CUdeviceptr base = 0;
    CUdeviceptr hint = S->arena_next && size <= S->arena_end - S->arena_next ? S->arena_next : 0;
    if (S->api->cuMemAddressReserve(&base, size, gran, hint, 0) != CUDA_SUCCESS || !base) {
        B->failed = 1;
        fgs_log(S, "the driver refused the session's %llu GiB address block: each allocation gets its own range, "
                "and a parked session may not find its addresses again", (unsigned long long)(size >> 30));
        return -1;
    }
    if (block_take(B, base, size)) {
        S->api->cuMemAddressFree(base, size);
        B->failed = 1;
        return -1;
    }
    if (hint && base != hint)
        fgs_log(S, "the session's address block is at 0x%llx, not at its arena's 0x%llx", (unsigned long long)base,
                (unsigned long long)hint);
    return 0;
}

/* [start, start + size) out of free span i, which holds it. */
static int carve(struct fgs_vablock *B, size_t i, uint64_t start, uint64_t size) {
    span *f = &B->free[i];
    uint64_t before = start - f->off, after = f->len - before - size;
    if (before && after) {
        if (push_span(B, i + 1, start + size, after)) return -1;
        B->free[i].len = before;
    } else if (before) {
        f->len = before;
    } else if (after) {
        f->off = start + size;
        f->len = after;
    } else {
        drop_span(B, i);
    }
    return 0;
}

/* The free span holding [off, off + size), or -1. */
static long span_holding(const struct fgs_vablock *B, uint64_t off, uint64_t size) {
    for (size_t i = 0; i < B->n; i++) {
        const span *f = &B->free[i];
        if (off >= f->off && off - f->off <= f->len && f->len - (off - f->off) >= size) return (long)i;
    }
    return -1;
}

int fgs_va_take(fgs_session *S, uint64_t size, uint64_t gran, CUdeviceptr *ptr) {
    if (!size || size % gran || block_open(S, gran)) return -1;
    struct fgs_vablock *B = S->vablock;
    for (size_t i = 0; i < B->n; i++) { /* lowest first: the block's base and every size are multiples of gran */
        if (B->free[i].len < size) continue;
        uint64_t off = B->free[i].off;
        if (carve(B, i, off, size)) return -1;
        *ptr = B->base + off;
        return 0;
    }
    return -1;
}

int fgs_va_give(fgs_session *S, CUdeviceptr ptr, uint64_t size) {
    struct fgs_vablock *B = S->vablock;
    if (!B || !B->base || ptr < B->base || ptr - B->base > B->size || size > B->size - (ptr - B->base)) return 0;
    uint64_t off = ptr - B->base;
    size_t i = 0;
    while (i < B->n && B->free[i].off < off) i++;
    int joins_prev = i > 0 && B->free[i - 1].off + B->free[i - 1].len == off;
    int joins_next = i < B->n && off + size == B->free[i].off;
    if (joins_prev && joins_next) {
        B->free[i - 1].len += size + B->free[i].len;
        drop_span(B, i);
    } else if (joins_prev) {
        B->free[i - 1].len += size;
    } else if (joins_next) {
        B->free[i].off = off;
        B->free[i].len += size;
    } else if (push_span(B, i, off, size)) {
        return 1; /* no room to note it: the space stays taken, never handed out twice */
    }
    return 1;
}

/* Restore: the block, reserved again at its old place by the caller (park_place.c), is the session's. */
int fgs_va_adopt(fgs_session *S, CUdeviceptr base, uint64_t size) {
    struct fgs_vablock *B = block_of(S);
    return B && !B->base ? block_take(B, base, size) : -1;
}

/* Restore: an allocation's range, at its old offset, out of the adopted block. */
int fgs_va_claim(fgs_session *S, CUdeviceptr ptr, uint64_t size) {
    struct fgs_vablock *B = S->vablock;
    if (!B || !B->base || ptr < B->base || ptr - B->base > B->size || size > B->size - (ptr - B->base)) return -1;
    long i = span_holding(B, ptr - B->base, size);
    return i < 0 ? -1 : carve(B, (size_t)i, ptr - B->base, size); /* not free: two old allocations overlap */
}

void fgs_va_where(const fgs_session *S, uint64_t *base, uint64_t *size) {
    const struct fgs_vablock *B = S->vablock;
    *base = B && B->base ? B->base : 0;
    *size = B && B->base ? B->size : 0;
}

void fgs_va_close(fgs_session *S) {
    struct fgs_vablock *B = S->vablock;
    if (!B) return;
    if (B->base) S->api->cuMemAddressFree(B->base, B->size);
    free(B->free);
    free(B);
    S->vablock = NULL;
}
