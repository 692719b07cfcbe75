/* handles.c — a session's handle tables: the virtual ids a client sees for the driver's objects (contexts,
 * streams, events, modules, functions, graphs, green contexts, resource descriptors, ...), handing them out,
 * looking them up, removing them, and putting them back at the ids they had when a parked session is restored
 * (park.c). */
#include <stdint.h>
#include <stdlib.h>

#include "fgs_session.h"

/* A virtual id looks like an ordinary 16-byte-aligned user-space pointer, since some callers (the CUDA runtime
 * among them) keep flags in a handle's low or high bits: bit 44 set, kind in bits 38..43, 14 bits of the
 * session's salt in bits 24..37, the table index + 1 in bits 4..23 (up to 2^20 - 1 live handles per kind). */
#define ID_MARK (1ull << 44)
#define ID_INDEX_LIMIT ((1u << 20) - 1)
#define ID_KIND(id) ((int)(((id) >> 38) & 0x3f))
#define ID_SALT(id) (((id) >> 24) & 0x3fff)
#define ID_INDEX(id) ((((id) >> 4) & 0xfffff) - 1)

static uint64_t make_id(fgs_session *S, int kind, uint32_t index) {
    return ID_MARK | ((uint64_t)kind << 38) | ((S->salt & 0x3fff) << 24) | (((uint64_t)index + 1) << 4);
}

int fgs_handle_get(fgs_session *S, int kind, uint64_t id, void **real) {
    if (id == 0 || (kind == FGH_STREAM && (id == (uint64_t)(uintptr_t)CU_STREAM_LEGACY ||
                                          id == (uint64_t)(uintptr_t)CU_STREAM_PER_THREAD))) {
        *real = (void *)(uintptr_t)id;
        return 0;
    }
    /* The driver accepts a library kernel wherever a function is expected. */
    if (kind == FGH_FUNCTION && ID_KIND(id) == FGH_KERNEL) kind = FGH_KERNEL;
    if ((id & ~((1ull << 45) - 1)) || !(id & ID_MARK) || (id & 0xf) || ID_KIND(id) != kind ||
        ID_SALT(id) != (S->salt & 0x3fff))
        return -1;
    uint64_t idx = ID_INDEX(id);
    fgs_table *t = &S->tables[kind];
    if (idx >= t->n || !t->real[idx]) return -1;
    *real = t->real[idx];
    return 0;
}

/* Functions and kernels are looked up by their real handle through a hash (a session may name thousands, and
 * names each one again and again); they are never removed one by one, so the index only grows. */
static uint32_t real_slot(const fgs_table *t, const void *real) {
    return (uint32_t)(((uint64_t)(uintptr_t)real * 0x9E3779B97F4A7C15ull) >> 32) & (t->by_real_cap - 1);
}

static int by_real_find(const fgs_table *t, const void *real, uint32_t *idx) {
    if (!t->by_real_cap) return 0;
    for (uint32_t i = real_slot(t, real);; i = (i + 1) & (t->by_real_cap - 1)) {
        uint32_t v = t->by_real[i];
        if (!v) return 0;
        if (t->real[v - 1] == real) {
            *idx = v - 1;
            return 1;
        }
    }
}

static void by_real_insert(fgs_table *t, uint32_t idx) {
    if ((t->by_real_n + 1) * 2 > t->by_real_cap) {
        uint32_t cap = t->by_real_cap ? t->by_real_cap * 2 : 256;
        uint32_t *nb = (uint32_t *)calloc(cap, sizeof *nb);
        if (!nb) return; /* only a cache: a later lookup adds a second id for the same object */
        uint32_t *old = t->by_real, ocap = t->by_real_cap;
        t->by_real = nb;
        t->by_real_cap = cap;
        for (uint32_t k = 0; k < ocap; k++) {
            if (!old[k]) continue;
            uint32_t i = real_slot(t, t->real[old[k] - 1]);
            while (nb[i]) i = (i + 1) & (cap - 1);
            nb[i] = old[k];
        }
        free(old);
    }
    uint32_t i = real_slot(t, t->real[idx]);
    while (t->by_real[i]) i = (i + 1) & (t->by_real_cap - 1);
    t->by_real[i] = idx + 1;
    t->by_real_n++;
}

/* Room for `need` slots in the table (capacity doubles from 64). -1: out of memory (the table is as it was, or
 * larger with nothing lost). */
static int reserve(fgs_table *t, uint32_t need) {
    if (need <= t->cap) return 0;
    uint32_t cap = t->cap ? t->cap : 64;
    while (cap < need) cap *= 2;
    void **nr = (void **)realloc(t->real, cap * sizeof *nr);
    if (!nr) return -1;
    t->real = nr;
    uint32_t *nf = (uint32_t *)realloc(t->free_list, cap * sizeof *nf);
    if (!nf) return -1;
    t->free_list = nf;
    t->cap = cap;
    return 0;
}

static uint64_t handle_add(fgs_session *S, int kind, void *real);

/* Every id handed out is told to the creation journal (journal.c); while a parked session is restored, the
 * journal names the id each handle must get again. */
uint64_t fgs_handle_add(fgs_session *S, int kind, void *real) {
    uint64_t want = S->journal ? fgs_journal_forced(S, kind) : 0;
    uint64_t id = want ? fgs_handle_put_at(S, kind, want, real) : handle_add(S, kind, real);
    if (S->journal) fgs_journal_created(S, id);
    return id;
}

static uint64_t handle_add(fgs_session *S, int kind, void *real) {
    fgs_table *t = &S->tables[kind];
    /* One id per real object for kinds the driver hands out repeatedly (a primary context retained twice, a
     * capture's graph, a library's module), so destroying it at the session's end happens once; and for
     * functions and kernels, so that naming one twice gives the same handle, as the driver does. */
    if (kind == FGH_CONTEXT || kind == FGH_GRAPH || kind == FGH_GRAPHNODE || kind == FGH_MODULE ||
        kind == FGH_LIBRARY || kind == FGH_GREENCTX)
        for (uint32_t i = 0; i < t->n; i++)
            if (t->real[i] == real) return make_id(S, kind, i);
    int hashed = kind == FGH_FUNCTION || kind == FGH_KERNEL;
    uint32_t found;
    if (hashed && by_real_find(t, real, &found)) return make_id(S, kind, found);
    uint32_t idx;
    if (t->n_free) {
        idx = t->free_list[--t->n_free];
    } else {
        if (reserve(t, t->n + 1)) return 0;
        if (t->n >= ID_INDEX_LIMIT) return 0;
        idx = t->n++;
    }
    t->real[idx] = real;
    if (hashed) by_real_insert(t, idx);
    return make_id(S, kind, idx);
}

void fgs_handle_remove(fgs_session *S, int kind, uint64_t id) {
    void *real;
    if (id == 0 || fgs_handle_get(S, kind, id, &real)) return;
    uint32_t idx = (uint32_t)ID_INDEX(id);
    fgs_table *t = &S->tables[kind];
    t->real[idx] = NULL;
    t->free_list[t->n_free++] = idx;
    if (S->journal) fgs_journal_forget(S, id);
}

int fgs_handle_kind_of(fgs_session *S, uint64_t id) {
    void *real;
    int kind = ID_KIND(id);
    if (kind <= 0 || kind >= FGH_LIMIT || !(id & ID_MARK) || fgs_handle_get(S, kind, id, &real)) return 0;
    return kind;
}

uint64_t fgs_handle_id_of(fgs_session *S, int kind, const void *real) {
    fgs_table *t = &S->tables[kind];
    for (uint32_t i = 0; real && i < t->n; i++)
        if (t->real[i] == real) return make_id(S, kind, i);
    return 0;
}

/* Restoring (park.c): the handle goes to the slot its id names. A kind the driver hands out repeatedly keeps the
 * id it has (the caller checks it is the one wanted). 0: the slot is taken or out of memory. */
uint64_t fgs_handle_put_at(fgs_session *S, int kind, uint64_t want, void *real) {
    fgs_table *t = &S->tables[kind];
    uint64_t have = kind == FGH_CONTEXT || kind == FGH_GRAPH || kind == FGH_GRAPHNODE || kind == FGH_MODULE ||
                            kind == FGH_LIBRARY || kind == FGH_GREENCTX
                        ? fgs_handle_id_of(S, kind, real) : 0;
    if (!have && (kind == FGH_FUNCTION || kind == FGH_KERNEL)) {
        uint32_t found;
        if (by_real_find(t, real, &found)) have = make_id(S, kind, found);
    }
    if (have) return have;
    if (ID_KIND(want) != kind || ID_SALT(want) != (S->salt & 0x3fff) || ID_INDEX(want) >= ID_INDEX_LIMIT) return 0;
    uint32_t idx = (uint32_t)ID_INDEX(want);
    if (reserve(t, idx + 1)) return 0;
    while (t->n <= idx) t->real[t->n++] = NULL;
    if (t->real[idx]) return 0;
    t->real[idx] = real;
    if (kind == FGH_FUNCTION || kind == FGH_KERNEL) by_real_insert(t, idx);
    return make_id(S, kind, idx);
}

/* After a restore: every empty slot below each table's top is free again. */
void fgs_handles_reindex(fgs_session *S) {
    for (int k = 0; k < FGH_LIMIT; k++) {
        fgs_table *t = &S->tables[k];
        t->n_free = 0;
        for (uint32_t i = t->n; i-- > 0;)
            if (!t->real[i]) t->free_list[t->n_free++] = i;
    }
}
