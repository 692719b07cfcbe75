/* memo.c — answers for calls whose result cannot change, kept in the stub so repeated queries cost no round
 * trip (libraries such as cuDNN and cuBLAS ask for device attributes, function attributes and occupancy on
 * every operation). Which calls are cached is declared in codegen/annotations.toml (`memo`); a call marked
 * `memo_clear` (one that changes attributes, destroys a handle whose id may be reused, ...) empties the
 * cache — except the setters of one kernel's, function's or stream's attributes, which forget only the answers
 * that name that object (and, for a kernel, the functions it is linked with): libraries set kernel attributes
 * before launches, and emptying everything there would send every query again. The key is the record's bytes
 * (op, arguments, output-wanted flags) plus the current context. Also counts the calls sent, by op, for
 * FARGPU_STATS=1 (printed at exit) and the proof file. */
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

static uint16_t entry_op(const memo_entry *e) {
    uint16_t op;
    memcpy(&op, e->kv, sizeof op);
    return op;
}

static int names_any(const memo_entry *e, const uint64_t *h, int n) {
    for (size_t i = FG_RECORD_HEADER; i + 8 <= e->klen; i++)
        for (int j = 0; j < n; j++)
            if (!memcmp(e->kv + i, &h[j], 8)) return 1;
    return 0;
}

/* The object a scoped setter changes: its handle's offset in the record, or 0 for setters that empty the cache. */
static size_t subject_offset(uint16_t op) {
    switch (op) {
    case FG_OP_cuKernelSetAttribute: return FG_RECORD_HEADER + 8; /* attrib, val, kernel, dev */
    case FG_OP_cuKernelSetCacheConfig:
    case FG_OP_cuFuncSetAttribute:
    case FG_OP_cuFuncSetCacheConfig:
    case FG_OP_cuStreamSetAttribute: return FG_RECORD_HEADER;
    default: return 0;
    }
}

/* The attribute number an attribute setter's record sets (its offset differs by op); -1 for other records. */
static int64_t set_attribute(const uint8_t *rec, size_t len) {
    uint16_t op;
    memcpy(&op, rec, sizeof op);
    size_t off = op == FG_OP_cuKernelSetAttribute ? FG_RECORD_HEADER
                 : op == FG_OP_cuFuncSetAttribute ? FG_RECORD_HEADER + 8 : 0;
    if (!off || len < off + 4) return -1;
    uint32_t a;
    memcpy(&a, rec + off, sizeof a);
    return a;
}

/* Whether a cached entry stays true after the setter `key` changes its subject: another attribute's set of the same
 * kernel or function does (each attribute keeps its own value). Without this, a library that sets two attributes
 * of one kernel before each launch would make each set forget the other, and every set would cost a round trip. */
static int survives_set(const memo_entry *e, int64_t attr) {
    if (attr < 0) return 0;
    int64_t other = set_attribute(e->kv, e->klen);
    return other >= 0 && other != attr;
}

/* A setter whose answer was not cached is about to change something: forget what it may change. Called with the
 * connection lock held, with the setter's record as key. */
void fgc_memo_forget_for(const uint8_t *key, size_t klen) {
    uint16_t op;
    memcpy(&op, key, sizeof op);
    size_t off = subject_offset(op);
    if (!off || klen < off + 8) {
        fgc_memo_clear();
        return;
    }
    int64_t attr = set_attribute(key, klen);
    uint64_t subj[8];
    int ns = 0;
    memcpy(&subj[ns++], key + off, 8);
    /* A kernel and the function cuKernelGetFunction gave for it share their attributes. */
    for (size_t i = 0; i < cap; i++) {
        memo_entry *e = &table[i];
        if (!e->kv || entry_op(e) != FG_OP_cuKernelGetFunction || e->klen < FG_RECORD_HEADER + 8 || e->vlen != 8)
            continue;
        uint64_t k, f;
        memcpy(&k, e->kv + FG_RECORD_HEADER, 8);
        memcpy(&f, e->kv + e->klen, 8);
        uint64_t other = k == subj[0] ? f : f == subj[0] ? k : 0;
        if (!other) continue;
        if (ns == 8) { /* more links than expected: be safe */
            fgc_memo_clear();
            return;
        }
        subj[ns++] = other;
    }
    memo_entry *old = table;
    size_t ocap = cap;
    table = (memo_entry *)calloc(ocap ? ocap : 1, sizeof *table);
    if (!table) {
        table = old;
        fgc_memo_clear();
        return;
    }
    used = 0;
    for (size_t i = 0; i < ocap; i++) {
        memo_entry *e = &old[i];
        if (!e->kv) continue;
        if (entry_op(e) != FG_OP_cuKernelGetFunction && !survives_set(e, attr) && names_any(e, subj, ns)) {
            free(e->kv);
            continue;
        }
        size_t j = e->hash & (ocap - 1);
        while (table[j].kv) j = (j + 1) & (ocap - 1);
        table[j] = *e;
        used++;
    }
    free(old);
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
