/* sim_vaspace.c - the simulated device's address space: the sorted map of segments (host ranges the device may
 * access) and the range check every device pointer goes through.
 *
 * Device pointers are host virtual addresses (the identity mapping makes unified addressing trivial and lets
 * the test kernels in sim_kernels.c read and write them directly). A segment is one of: a cuMemAlloc
 * allocation, a VMM mapping made by cuMemMap, a module global, or pinned host memory from cuMemAllocHost /
 * cuMemHostAlloc. Segments never overlap. A range check succeeds only if the whole range lies in segments that
 * are contiguous and allow the access; anything else is CUDA_ERROR_INVALID_VALUE. Callers hold sim_lock. */
#include "sim.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static struct sim_seg **g_segs; /* sorted by base */
static size_t g_n, g_cap;
static unsigned long long g_next_buffer_id;

unsigned long long sim_next_buffer_id(void) { return ++g_next_buffer_id; }

/* Index of the last segment with base <= addr, or SIZE_MAX. */
static size_t floor_index(uintptr_t addr)
{
    size_t lo = 0, hi = g_n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g_segs[mid]->base <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo == 0 ? SIZE_MAX : lo - 1;
}

int sim_seg_insert(struct sim_seg *seg)
{
    if (g_n == g_cap) {
        size_t ncap = g_cap ? g_cap * 2 : 64;
        struct sim_seg **ns = realloc(g_segs, ncap * sizeof *ns);
        if (!ns)
            return -1;
        g_segs = ns;
        g_cap = ncap;
    }
    size_t i = floor_index(seg->base);
    size_t pos = i == SIZE_MAX ? 0 : i + 1;
    memmove(&g_segs[pos + 1], &g_segs[pos], (g_n - pos) * sizeof *g_segs);
    g_segs[pos] = seg;
    g_n++;
    seg->id = sim_next_buffer_id();
    return 0;
}

void sim_seg_remove(struct sim_seg *seg)
{
    size_t i = floor_index(seg->base);
    if (i == SIZE_MAX || g_segs[i] != seg)
        return;
    memmove(&g_segs[i], &g_segs[i + 1], (g_n - i - 1) * sizeof *g_segs);
    g_n--;
}

struct sim_seg *sim_seg_find(uintptr_t addr)
{
    size_t i = floor_index(addr);
    if (i == SIZE_MAX)
        return NULL;
    struct sim_seg *s = g_segs[i];
    return addr - s->base < s->size ? s : NULL;
}

struct sim_seg *sim_seg_find_base(uintptr_t addr, int kind)
{
    struct sim_seg *s = sim_seg_find(addr);
    return s && s->base == addr && s->kind == kind ? s : NULL;
}

CUresult sim_range_check(CUdeviceptr p, size_t n, int prot)
{
    if (n == 0)
        return CUDA_SUCCESS;
    uintptr_t a = (uintptr_t)p;
    if (a + n < a)
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t end = a + n;
    size_t i = floor_index(a);
    if (i == SIZE_MAX)
        return CUDA_ERROR_INVALID_VALUE;
    uintptr_t cur = a;
    for (; i < g_n; i++) {
        struct sim_seg *s = g_segs[i];
        if (cur < s->base || cur - s->base >= s->size)
            return CUDA_ERROR_INVALID_VALUE; /* a hole */
        if ((s->prot & prot) != prot)
            return CUDA_ERROR_INVALID_VALUE;
        uintptr_t send = s->base + s->size;
        if (end <= send)
            return CUDA_SUCCESS;
        cur = send;
    }
    return CUDA_ERROR_INVALID_VALUE;
}

CUresult sim_seg_alloc(int kind, int device, size_t size, struct sim_ctx *owner, const void *module,
                       struct sim_seg **out)
{
    if (size == 0 || size > ((size_t)1 << 52))
        return size == 0 ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_OUT_OF_MEMORY;
    size_t len = (size + SIM_PAGE - 1) & ~(SIM_PAGE - 1);
    uint64_t charge = kind == SIM_SEG_HOST ? 0 : len;
    if (charge && sim_charge(device, charge) != CUDA_SUCCESS)
        return CUDA_ERROR_OUT_OF_MEMORY;
    struct sim_seg *s = calloc(1, sizeof *s);
    void *p = MAP_FAILED;
    if (s)
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (!s || p == MAP_FAILED) {
        free(s);
        if (charge)
            sim_uncharge(device, charge);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    s->base = (uintptr_t)p;
    s->size = size;
    s->kind = kind;
    s->prot = SIM_PROT_R | SIM_PROT_W;
    s->device = device;
    s->owner = owner;
    s->module = module;
    s->map_len = len;
    s->charged = charge;
    if (sim_seg_insert(s) != 0) {
        munmap(p, len);
        free(s);
        if (charge)
            sim_uncharge(device, charge);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = s;
    return CUDA_SUCCESS;
}

void sim_seg_free(struct sim_seg *seg)
{
    sim_seg_remove(seg);
    if (seg->map_len)
        munmap((void *)seg->base, seg->map_len);
    if (seg->charged)
        sim_uncharge(seg->device, seg->charged);
    free(seg);
}

size_t sim_seg_collect_owned(const struct sim_ctx *owner, const void *module, struct sim_seg **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < g_n && n < max; i++) {
        struct sim_seg *s = g_segs[i];
        if ((owner && s->owner == owner) || (module && s->module == module))
            out[n++] = s;
    }
    return n;
}

int sim_seg_overlaps(uintptr_t base, size_t size)
{
    if (size == 0)
        return 0;
    size_t i = floor_index(base + size - 1);
    if (i == SIZE_MAX)
        return 0;
    struct sim_seg *s = g_segs[i]; /* last segment starting before the range end */
    return s->base + s->size > base;
}
