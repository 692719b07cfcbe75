/* sim_registry.c - the set of live handles (contexts, streams, events, modules, functions, VMM handles).
 *
 * Handles given to callers are pointers to heap objects that start with struct sim_obj. Because callers are
 * untrusted, a handle is only ever dereferenced after it has been found in this set, so a made-up or stale value
 * yields CUDA_ERROR_INVALID_HANDLE instead of a crash. The set is an open-addressing hash table keyed by the
 * pointer value (linear probing, tombstones, grows at 50% load). Callers hold sim_lock. */
#include "sim.h"

#include <stdlib.h>

#define TOMBSTONE ((void *)1)

static void **g_slots;
static size_t g_cap;   /* power of two, or 0 */
static size_t g_used;  /* live + tombstones */
static size_t g_live;

static size_t hash_ptr(const void *p)
{
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return (size_t)x;
}

static int grow(void)
{
    size_t ncap = g_cap ? g_cap * 2 : 64;
    if (g_live * 4 < g_cap) /* mostly tombstones: rehash at the same size */
        ncap = g_cap;
    void **ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -1;
    for (size_t i = 0; i < g_cap; i++) {
        void *p = g_slots[i];
        if (!p || p == TOMBSTONE)
            continue;
        size_t j = hash_ptr(p) & (ncap - 1);
        while (ns[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = p;
    }
    free(g_slots);
    g_slots = ns;
    g_cap = ncap;
    g_used = g_live;
    return 0;
}

int sim_reg_add(void *obj)
{
    if (!obj || obj == TOMBSTONE)
        return -1;
    if ((g_used + 1) * 2 > g_cap && grow() != 0)
        return -1;
    size_t j = hash_ptr(obj) & (g_cap - 1);
    while (g_slots[j] && g_slots[j] != TOMBSTONE)
        j = (j + 1) & (g_cap - 1);
    if (!g_slots[j])
        g_used++;
    g_slots[j] = obj;
    g_live++;
    return 0;
}

static size_t find_slot(const void *handle)
{
    if (!g_cap || !handle || handle == TOMBSTONE)
        return SIZE_MAX;
    size_t j = hash_ptr(handle) & (g_cap - 1);
    for (size_t n = 0; n < g_cap && g_slots[j]; n++) {
        if (g_slots[j] == handle)
            return j;
        j = (j + 1) & (g_cap - 1);
    }
    return SIZE_MAX;
}

void sim_reg_remove(void *obj)
{
    size_t j = find_slot(obj);
    if (j == SIZE_MAX)
        return;
    g_slots[j] = TOMBSTONE;
    g_live--;
}

void *sim_reg_find(const void *handle, uint32_t kind)
{
    size_t j = find_slot(handle);
    if (j == SIZE_MAX)
        return NULL;
    struct sim_obj *o = g_slots[j];
    return o->kind == kind ? o : NULL;
}

size_t sim_reg_collect(uint32_t kind, const struct sim_ctx *ctx, void **out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < g_cap && n < max; i++) {
        struct sim_obj *o = g_slots[i];
        if (!o || (void *)o == TOMBSTONE || o->kind != kind)
            continue;
        if (ctx && o->ctx != ctx)
            continue;
        out[n++] = o;
    }
    return n;
}

size_t sim_reg_count(void) { return g_live; }
