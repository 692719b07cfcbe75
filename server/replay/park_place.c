/* park_place.c — a restored session's allocations back at their old device addresses, in a worker where the driver
 * chooses the addresses.
 *
 * On a real GPU (driver 580, bench/probe_va.c) cuMemAddressReserve ignored every requested address it was given
 * and handed out the lowest free range of one range per process, whose place repeats across processes without
 * address-space randomisation (the node's workers run so: server/worker.py). So asking is only the first try. When
 * the driver hands out a range below the old address instead, the free space below it is filled with placeholder
 * reservations, largest first, until the driver's next answer is the old address itself; a range handed out above
 * it means the old address is taken (or below the driver's range here), and the restore fails: the session stays
 * parked, never resumed at other addresses. The placeholders hold address space only, and go once every allocation
 * is placed. Allocations are placed lowest first, right after the session's first context comes back and before
 * its modules load (park.c), so that the driver's own ranges for those cannot take their places.
 *
 * FARGPU_SIM_VA=heap makes the simulated device place ranges as the probed driver does (server/sim/sim_vaheap.c),
 * so CI runs this path. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

#define MAX_ROUNDS 512 /* answers below the old address filled per allocation, at most */

struct pads {
    CUdeviceptr *base;
    size_t *size;
    size_t n, cap;
};

static int pads_push(struct pads *P, CUdeviceptr base, size_t size) {
    if (P->n == P->cap) {
        size_t cap = P->cap ? P->cap * 2 : 32;
        CUdeviceptr *nb = (CUdeviceptr *)realloc(P->base, cap * sizeof *nb);
        if (!nb) return -1;
        P->base = nb;
        size_t *ns = (size_t *)realloc(P->size, cap * sizeof *ns);
        if (!ns) return -1;
        P->size = ns;
        P->cap = cap;
    }
    P->base[P->n] = base;
    P->size[P->n++] = size;
    return 0;
}

static void pads_release(fgs_session *S, struct pads *P) {
    for (size_t i = 0; i < P->n; i++) S->api->cuMemAddressFree(P->base[i], P->size[i]);
    free(P->base);
    free(P->size);
    memset(P, 0, sizeof *P);
}

/* Fill free address space below want, starting with the range the driver just offered at low: the largest
 * placeholder (halving from want - low) that the driver puts wholly below want. -1 when none fits. */
static int fill_below(fgs_session *S, CUdeviceptr want, CUdeviceptr low, size_t gran, struct pads *P) {
    for (size_t pad = (size_t)(want - low) / gran * gran; pad >= gran; pad = pad / 2 / gran * gran) {
        CUdeviceptr q = 0;
        if (S->api->cuMemAddressReserve(&q, pad, 0, low, 0) != CUDA_SUCCESS) continue;
        if (q < want && pad <= want - q) return pads_push(P, q, pad) ? (S->api->cuMemAddressFree(q, pad), -1) : 0;
        S->api->cuMemAddressFree(q, pad);
    }
    return -1;
}

/* Reserve exactly [want, want + size). *filled counts the placeholders it needed; *got is the driver's last answer. */
static CUresult reserve_exactly(fgs_session *S, CUdeviceptr want, size_t size, size_t gran, struct pads *P,
                                unsigned *filled, CUdeviceptr *got) {
    for (int round = 0; round < MAX_ROUNDS; round++) {
        CUdeviceptr p = 0;
        CUresult res = S->api->cuMemAddressReserve(&p, size, 0, want, 0);
        if (res != CUDA_SUCCESS) return res;
        *got = p;
        if (p == want) return CUDA_SUCCESS;
        S->api->cuMemAddressFree(p, size);
        if (p > want || fill_below(S, want, p, gran, P)) return CUDA_ERROR_ALREADY_MAPPED;
        (*filled)++;
    }
    return CUDA_ERROR_ALREADY_MAPPED;
}

static int by_address(const void *a, const void *b) {
    CUdeviceptr x = ((const fgs_alloc *)a)->ptr, y = ((const fgs_alloc *)b)->ptr;
    return x < y ? -1 : x > y;
}

/* The parked session's address block (va_block.c) back at its old place, as one range: then the allocations in it
 * need nothing more from the driver. 0, or -1 with the reason in err. */
static int place_block(fgs_session *S, uint64_t base, uint64_t size, size_t gran, struct pads *P, char *err,
                       size_t errlen) {
    unsigned filled = 0;
    CUdeviceptr got = 0;
    CUresult res = (base | size) & (gran - 1) ? CUDA_ERROR_INVALID_VALUE
                                              : reserve_exactly(S, base, size, gran, P, &filled, &got);
    if (res != CUDA_SUCCESS) {
        snprintf(err, errlen, "the session's address block 0x%llx (%llu GiB) cannot be had on this node (CUDA error "
                 "%d; the driver offered 0x%llx, after %u filled ranges below it)", (unsigned long long)base,
                 (unsigned long long)(size >> 30), (int)res, (unsigned long long)got, filled);
        return -1;
    }
    if (fgs_va_adopt(S, base, size)) {
        S->api->cuMemAddressFree(base, size);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    fgs_log(S, "the session's address block is back at 0x%llx (%u free ranges filled below it)",
            (unsigned long long)base, filled);
    return 0;
}

int fgs_park_place(fgs_session *S, uint64_t block, uint64_t block_size, fgs_alloc *wants, uint32_t n, char *err,
                   size_t errlen) {
    if (!n) return 0;
    qsort(wants, n, sizeof *wants, by_address);
    size_t gran = 2u << 20;
    for (uint32_t i = 0; i < n; i++) /* every old range on the granularity the allocations were mapped with */
        if (!wants[i].mapped || (wants[i].ptr | wants[i].mapped) & (gran - 1)) {
            snprintf(err, errlen, "the parked state is malformed");
            return -1;
        }
    if (S->cap_allocs - S->n_allocs < n) {
        size_t cap = S->n_allocs + n;
        fgs_alloc *na = (fgs_alloc *)realloc(S->allocs, cap * sizeof *na);
        if (!na) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        S->allocs = na;
        S->cap_allocs = cap;
    }
    struct pads P;
    memset(&P, 0, sizeof P);
    unsigned asked = 0, filled_allocs = 0, pads_total = 0, in_block = 0;
    int rc = block ? place_block(S, block, block_size, gran, &P, err, errlen) : 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        fgs_alloc *a = &wants[i];
        unsigned filled = 0;
        CUdeviceptr got = 0;
        int inside = block && a->ptr >= block && a->ptr - block < block_size;
        if (inside && fgs_va_claim(S, a->ptr, a->mapped)) {
            snprintf(err, errlen, "the parked state is malformed (allocations overlap in the address block)");
            rc = -1;
            break;
        }
        CUresult res = inside ? CUDA_SUCCESS : reserve_exactly(S, a->ptr, a->mapped, gran, &P, &filled, &got);
        if (res != CUDA_SUCCESS) {
            snprintf(err, errlen, "the address range 0x%llx (%zu bytes) of an allocation cannot be had on this node "
                     "(CUDA error %d; the driver offered 0x%llx, after %u filled ranges below it)",
                     (unsigned long long)a->ptr, a->mapped, (int)res, (unsigned long long)got, filled);
            rc = -1;
            break;
        }
        if (fgs_charge_dev(S, a->dev, a->mapped) != CUDA_SUCCESS) {
            if (!fgs_va_give(S, a->ptr, a->mapped)) S->api->cuMemAddressFree(a->ptr, a->mapped);
            snprintf(err, errlen, "the session's memory is over its lease's quota on this node");
            rc = -1;
            break;
        }
        S->allocs[S->n_allocs++] = *a;
        if (inside) in_block++;
        else if (filled) filled_allocs++;
        else asked++;
        pads_total += filled;
    }
    pads_release(S, &P);
    if (!rc)
        fgs_log(S, "placed %u allocations at their old addresses: %u in the address block, %u as asked, %u after "
                "filling %u free ranges below them", n, in_block, asked, filled_allocs, pads_total);
    return rc;
}
