/* sim_vaheap.c - an optional model of where the real driver puts address reservations, for the parking tests
 * (FARGPU_SIM_VA=heap; the default honours a free requested address, see sim_vmm.c).
 *
 * Probed on an H100 with driver 580 (bench/probe_va.c, bench/results/probe_va-*.json): cuMemAddressReserve ignored
 * every requested address it was given, and handed out addresses from one range per process, lowest free first,
 * whose place moves with address-space randomisation and repeats without it. This model does the same: at first
 * use it maps one PROT_NONE window where the kernel chooses (so its place depends on what the process mapped
 * before, and on randomisation), and each reservation takes the lowest free, aligned gap of the window. A
 * requested address is ignored. A restored session can therefore get its old addresses back only by the means the
 * real driver leaves: the same window place (workers without randomisation) and filling the gaps below each
 * address first (server/replay/park.c). Callers hold sim_lock. */
#include "sim.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define WINDOW ((size_t)256 << 30) /* reserved, never backed: the sim's device memory limit applies to mappings */

struct taken {
    uintptr_t base;
    size_t size;
};
static struct taken *g_taken; /* sorted by base */
static size_t g_n, g_cap;
static uintptr_t g_win;
static int g_mode = -1;

int sim_vaheap_on(void)
{
    if (g_mode < 0) {
        const char *e = getenv("FARGPU_SIM_VA");
        g_mode = e && strcmp(e, "heap") == 0;
    }
    return g_mode;
}

/* The lowest free range of size bytes at the given alignment in the window; 0 when none (or out of memory). */
uintptr_t sim_vaheap_take(size_t size, size_t alignment)
{
    if (!g_win) {
        void *p = mmap(NULL, WINDOW, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return 0;
        g_win = ((uintptr_t)p + SIM_GRANULARITY - 1) & ~(uintptr_t)(SIM_GRANULARITY - 1);
    }
    if (g_n == g_cap) {
        size_t ncap = g_cap ? g_cap * 2 : 64;
        struct taken *nt = realloc(g_taken, ncap * sizeof *nt);
        if (!nt)
            return 0;
        g_taken = nt;
        g_cap = ncap;
    }
    uintptr_t end = g_win + WINDOW - SIM_GRANULARITY, at = g_win;
    size_t i = 0;
    for (;; i++) {
        at = (at + alignment - 1) & ~(uintptr_t)(alignment - 1);
        uintptr_t limit = i < g_n ? g_taken[i].base : end;
        if (at <= limit && size <= limit - at)
            break;
        if (i == g_n)
            return 0;
        at = g_taken[i].base + g_taken[i].size;
    }
    memmove(&g_taken[i + 1], &g_taken[i], (g_n - i) * sizeof *g_taken);
    g_taken[i] = (struct taken){at, size};
    g_n++;
    return at;
}

/* 1 when [base, base+size) was handed out by sim_vaheap_take (it is now free again, still PROT_NONE). */
int sim_vaheap_give(uintptr_t base, size_t size)
{
    for (size_t i = 0; i < g_n; i++)
        if (g_taken[i].base == base && g_taken[i].size == size) {
            mmap((void *)base, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
            memmove(&g_taken[i], &g_taken[i + 1], (g_n - i - 1) * sizeof *g_taken);
            g_n--;
            return 1;
        }
    return 0;
}
