/* memo.c — answers for calls whose result cannot change, kept in the stub so repeated queries cost no round
 * trip (libraries such as cuDNN and cuBLAS ask for device attributes, function attributes and occupancy on
 * every operation). Which calls are cached is declared in codegen/annotations.toml (`memo`); a call marked
 * `memo_clear` (one that changes attributes, destroys a handle whose id may be reused, ...) empties the
 * cache. The key is the record's bytes (op, arguments, output-wanted flags) plus the current context. Also
 * counts the calls sent, by op, for FARGPU_STATS=1 (printed at exit) and the proof file. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_internal.h"
#include "fgc_memo.h"

#define MEMO_MAX 65536

typedef struct {
    uint64_t hash;
    uint32_t klen, vlen;
    uint8_t *kv; /* key bytes, then value bytes */
} memo_entry;

static memo_entry *table;
static size_t cap, used;

static uint64_t fnv(const uint8_t *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* Called with the connection lock held. */
void fgc_memo_clear(void) {
    for (size_t i = 0; i < cap; i++) free(table[i].kv);
    free(table);
    table = NULL;
    cap = used = 0;
}

static memo_entry *find(uint64_t h, const uint8_t *key, size_t klen) {
    if (!cap) return NULL;
    for (size_t i = h & (cap - 1);; i = (i + 1) & (cap - 1)) {
        memo_entry *e = &table[i];
        if (!e->kv) return NULL;
        if (e->hash == h && e->klen == klen && !memcmp(e->kv, key, klen)) return e;
    }
}

static uint64_t key_hash(const uint8_t *key, size_t klen, uint64_t ctx) {
    return fnv(key, klen, fnv((const uint8_t *)&ctx, sizeof ctx, 0xcbf29ce484222325ULL));
}

int fgc_memo_lookup(const uint8_t *key, size_t klen, uint64_t ctx, const fgc_dest *outs, int n_outs) {
    memo_entry *e = find(key_hash(key, klen, ctx), key, klen);
    if (!e) return 0;
    size_t off = 0;
    for (int i = 0; i < n_outs; i++) {
        if (off + outs[i].n > e->vlen) return 0;
        memcpy(outs[i].dst, e->kv + e->klen + off, outs[i].n);
        off += outs[i].n;
    }
    return 1;
}

void fgc_memo_store(const uint8_t *key, size_t klen, uint64_t ctx, const fgc_dest *outs, int n_outs) {
    if (used >= MEMO_MAX) fgc_memo_clear();
    if ((used + 1) * 2 > cap) {
        size_t ncap = cap ? cap * 2 : 1024;
        memo_entry *nt = (memo_entry *)calloc(ncap, sizeof *nt);
        if (!nt) return;
        for (size_t i = 0; i < cap; i++) {
            if (!table[i].kv) continue;
            size_t j = table[i].hash & (ncap - 1);
            while (nt[j].kv) j = (j + 1) & (ncap - 1);
            nt[j] = table[i];
        }
        free(table);
        table = nt;
        cap = ncap;
    }
    uint64_t h = key_hash(key, klen, ctx);
    if (find(h, key, klen)) return;
    size_t vlen = 0;
    for (int i = 0; i < n_outs; i++) vlen += outs[i].n;
    uint8_t *kv = (uint8_t *)malloc(klen + vlen + 1);
    if (!kv) return;
    memcpy(kv, key, klen);
    size_t off = klen;
    for (int i = 0; i < n_outs; i++) {
        memcpy(kv + off, outs[i].dst, outs[i].n);
        off += outs[i].n;
    }
    size_t j = h & (cap - 1);
    while (table[j].kv) j = (j + 1) & (cap - 1);
    table[j] = (memo_entry){h, (uint32_t)klen, (uint32_t)vlen, kv};
    used++;
}

/* ---- statistics ---- */
static _Atomic uint64_t sent[FG_OP_LIMIT], hits[FG_OP_LIMIT];

void fgc_stats_sent(uint16_t op) {
    if (op < FG_OP_LIMIT) atomic_fetch_add_explicit(&sent[op], 1, memory_order_relaxed);
}

void fgc_stats_hit(uint16_t op) {
    if (op < FG_OP_LIMIT) atomic_fetch_add_explicit(&hits[op], 1, memory_order_relaxed);
}

uint64_t fgc_stats_sync_sent(void) {
    uint64_t n = 0;
    for (unsigned op = 0; op < FG_OP_LIMIT; op++)
        if (fg_op_class(op) == 1) n += atomic_load(&sent[op]);
    return n;
}

__attribute__((destructor)) static void fgc_stats_print(void) {
    const char *e = getenv("FARGPU_STATS");
    if (!e || strcmp(e, "1")) return;
    fprintf(stderr, "fargpu: calls sent to the server (sync ones wait a round trip) and answered from the stub:\n");
    for (unsigned op = 0; op < FG_OP_LIMIT; op++) {
        uint64_t s = atomic_load(&sent[op]), h = atomic_load(&hits[op]);
        if (s || h)
            fprintf(stderr, "  %-48s %-5s sent %10llu  cached %10llu\n", fg_op_name(op),
                    fg_op_class(op) == 1 ? "sync" : "async", (unsigned long long)s, (unsigned long long)h);
    }
}
