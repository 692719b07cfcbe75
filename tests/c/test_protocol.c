/* test_protocol.c — the C protocol core (protocol/c/fg_wire.c, fg_msgpack.c) against the shared vectors in
 * protocol/vectors/, then a bounded mutation fuzz loop (fixed seed) over the header decoder, the record
 * iterator and the msgpack lookup, checked against small reference models written from protocol/SPEC.md.
 *
 * Build (scripts/sanitize.sh does this with ASan + UBSan):
 *   gcc -std=c11 -D_GNU_SOURCE -Iprotocol/c -Iprotocol/c/generated tests/c/test_protocol.c protocol/c/fg_*.c
 * Run:  ./test_protocol <protocol/vectors dir> [fuzz iterations, default 200000]
 * Every input lives in a heap block of exactly its size, so an out-of-bounds read is an ASan report. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fg_msgpack.h"
#include "fg_wire.h"

static int failures, checks;

static void fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL [%s]: ", name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    failures++;
}

#define EXPECT(name, cond, ...)                 \
    do {                                        \
        checks++;                               \
        if (!(cond)) fail(name, __VA_ARGS__);   \
    } while (0)

/* ---------------------------------------------------------------- vector files ---- */

static char *read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        exit(2);
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    size_t k;
    while (buf && (k = fread(buf + len, 1, cap - len, f)) > 0) {
        len += k;
        if (len == cap) buf = realloc(buf, (cap *= 2) + 1);
    }
    fclose(f);
    if (!buf) exit(2);
    buf[len] = 0;
    *n = len;
    return buf;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode hex into a heap block of exactly the decoded size (malloc(1) for zero bytes). */
static uint8_t *unhex(const char *hex, size_t hexlen, size_t *n) {
    if (hexlen % 2) {
        fprintf(stderr, "odd hex length\n");
        exit(2);
    }
    *n = hexlen / 2;
    uint8_t *b = malloc(*n ? *n : 1);
    for (size_t i = 0; i < *n; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "bad hex\n");
            exit(2);
        }
        b[i] = (uint8_t)(hi << 4 | lo);
    }
    return b;
}

typedef struct {
    char *name;
    uint8_t *data;
    size_t n;
    char *expect;
} vector;

static vector *load_vectors(const char *path, size_t *count) {
    size_t len;
    char *text = read_file(path, &len);
    size_t cap = 64, nv = 0;
    vector *v = malloc(cap * sizeof *v);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#' || line[0] == 0) continue;
        char *t1 = strchr(line, '\t');
        char *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t2) {
            fprintf(stderr, "%s: malformed line: %.60s\n", path, line);
            exit(2);
        }
        if (nv == cap) v = realloc(v, (cap *= 2) * sizeof *v);
        *t1 = *t2 = 0;
        v[nv].name = strdup(line);
        v[nv].data = unhex(t1 + 1, (size_t)(t2 - t1 - 1), &v[nv].n);
        v[nv].expect = strdup(t2 + 1);
        nv++;
    }
    free(text);
    *count = nv;
    return v;
}

static void free_vectors(vector *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].data);
        free(v[i].expect);
    }
    free(v);
}

/* ---------------------------------------------------------------- frames.txt ---- */

typedef struct {
    int ok;
    uint64_t type, flags, len, seq, max;
    int has_records;
    char *records; /* "op:len[:hex],..." */
    char *recerr;  /* NULL: the iterator ends cleanly */
    char *reason;  /* err: substring ("" = any) */
} frame_expect;

static void parse_frame_expect(char *s, frame_expect *e) {
    memset(e, 0, sizeof *e);
    e->max = FG_DEFAULT_MAX_FRAME;
    e->reason = "";
    if (strncmp(s, "err", 3) == 0) {
        char *p = s + 3;
        while (*p == ' ') p++;
        if (strncmp(p, "max=", 4) == 0) {
            e->max = strtoull(p + 4, &p, 10);
            while (*p == ' ') p++;
        }
        e->reason = p;
        return;
    }
    if (strncmp(s, "ok", 2) != 0) {
        fprintf(stderr, "bad expectation: %s\n", s);
        exit(2);
    }
    e->ok = 1;
    char *p = s + 2;
    while (*p) {
        while (*p == ' ') p++;
        if (!*p) break;
        if (strncmp(p, "recerr=", 7) == 0) { /* the rest of the line */
            e->recerr = p + 7;
            break;
        }
        char *end = strchr(p, ' ');
        if (end) *end = 0;
        if (strncmp(p, "type=", 5) == 0) e->type = strtoull(p + 5, NULL, 10);
        else if (strncmp(p, "flags=", 6) == 0) e->flags = strtoull(p + 6, NULL, 10);
        else if (strncmp(p, "len=", 4) == 0) e->len = strtoull(p + 4, NULL, 10);
        else if (strncmp(p, "seq=", 4) == 0) e->seq = strtoull(p + 4, NULL, 10);
        else if (strncmp(p, "max=", 4) == 0) e->max = strtoull(p + 4, NULL, 10);
        else if (strncmp(p, "records=", 8) == 0) {
            e->has_records = 1;
            e->records = p + 8;
        } else {
            fprintf(stderr, "bad expectation key: %s\n", p);
            exit(2);
        }
        if (!end) break;
        p = end + 1;
    }
}

static void check_records(const char *name, const uint8_t *frame, size_t n, const frame_expect *e) {
    size_t plen = n - FG_HEADER_SIZE;
    EXPECT(name, plen == e->len, "vector holds %zu payload bytes, header says %" PRIu64, plen, e->len);
    uint8_t *payload = malloc(plen ? plen : 1);
    memcpy(payload, frame + FG_HEADER_SIZE, plen);
    fg_reader r;
    fg_reader_init(&r, payload, plen);
    const char *spec = e->records;
    const char *reason = NULL;
    fg_record rec;
    int rc, idx = 0;
    while ((rc = fg_next_record(&r, &rec, &reason)) == 1) {
        EXPECT(name, rec.args >= payload && rec.args + rec.length <= payload + plen, "record %d args outside", idx);
        EXPECT(name, r.p <= r.end, "reader past its end");
        if (!*spec) {
            fail(name, "unexpected extra record %d (op %u len %u)", idx, rec.op, rec.length);
            break;
        }
        char *q;
        unsigned long op = strtoul(spec, &q, 10);
        unsigned long ln = strtoul(q + 1, &q, 10);
        EXPECT(name, rec.op == op && rec.length == ln, "record %d: got op %u len %u, want %lu:%lu", idx, rec.op,
               rec.length, op, ln);
        if (*q == ':') { /* argument bytes */
            q++;
            for (size_t i = 0; i < ln && i < rec.length; i++, q += 2) {
                int byte = hexval(q[0]) << 4 | hexval(q[1]);
                EXPECT(name, rec.args[i] == byte, "record %d arg byte %zu differs", idx, i);
            }
        }
        spec = *q == ',' ? q + 1 : q;
        idx++;
    }
    EXPECT(name, *spec == 0, "iterator stopped early at record %d (rc %d): missing %s", idx, rc, spec);
    if (e->recerr) {
        EXPECT(name, rc == -1 && reason && strstr(reason, e->recerr), "want record error '%s', got rc %d (%s)",
               e->recerr, rc, reason ? reason : "-");
    } else {
        EXPECT(name, rc == 0, "want a clean end, got rc %d (%s)", rc, reason ? reason : "-");
    }
    free(payload);
}

static void run_frame_vectors(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/frames.txt", dir);
    size_t nv;
    vector *v = load_vectors(path, &nv);
    for (size_t i = 0; i < nv; i++) {
        frame_expect e;
        parse_frame_expect(v[i].expect, &e);
        const char *name = v[i].name;
        if (v[i].n < FG_HEADER_SIZE) {
            /* The C decoder reads exactly 16 bytes; its callers (fgs_serve, the stub) read a full header first. */
            EXPECT(name, !e.ok && strstr(e.reason, "truncated frame header"), "short vector must be a truncated header");
            continue;
        }
        uint8_t *hb = malloc(FG_HEADER_SIZE);
        memcpy(hb, v[i].data, FG_HEADER_SIZE);
        fg_header h;
        const char *why = fg_header_decode(hb, &h, (uint32_t)e.max);
        free(hb);
        if (e.ok) {
            EXPECT(name, why == NULL, "header rejected: %s", why ? why : "");
            if (!why)
                EXPECT(name, h.magic == FG_MAGIC && h.type == e.type && h.flags == e.flags && h.length == e.len &&
                                 h.seq == e.seq,
                       "decoded type=%u flags=%u len=%u seq=%u", h.type, h.flags, h.length, h.seq);
            if (!why && e.has_records) check_records(name, v[i].data, v[i].n, &e);
        } else {
            EXPECT(name, why != NULL, "header accepted, want error '%s'", e.reason);
            if (why) EXPECT(name, strstr(why, e.reason) != NULL, "reason '%s' lacks '%s'", why, e.reason);
        }
    }
    printf("frames.txt: %zu vectors\n", nv);
    free_vectors(v, nv);
}

/* ---------------------------------------------------------------- msgpack.txt ---- */

static void run_msgpack_vectors(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/msgpack.txt", dir);
    size_t nv;
    vector *v = load_vectors(path, &nv);
    for (size_t i = 0; i < nv; i++) {
        const char *name = v[i].name;
        const uint8_t *buf = v[i].data;
        size_t n = v[i].n;
        fg_mp_value val;
        char *save = NULL;
        char *tok = strtok_r(v[i].expect, " ", &save);
        int ok = strcmp(tok, "ok") == 0;
        /* An absent key forces a walk over the whole map. */
        int rc = fg_mp_lookup(buf, n, "\x01no such key", &val);
        EXPECT(name, rc == (ok ? 1 : -1), "lookup of an absent key: rc %d, want %d", rc, ok ? 1 : -1);
        while ((tok = strtok_r(NULL, " ", &save))) {
            if (!ok) { /* err KEY: this key's lookup fails too */
                rc = fg_mp_lookup(buf, n, tok, &val);
                EXPECT(name, rc == -1, "lookup %s in a malformed map: rc %d, want -1", tok, rc);
                continue;
            }
            char *eq = strchr(tok, '=');
            *eq = 0;
            const char *key = tok, *want = eq + 1;
            rc = fg_mp_lookup(buf, n, key, &val);
            if (strcmp(want, "absent") == 0) {
                EXPECT(name, rc == 1, "%s: rc %d, want absent", key, rc);
                continue;
            }
            EXPECT(name, rc == 0, "%s: rc %d, want found (%s)", key, rc, want);
            if (rc != 0) continue;
            if (strncmp(want, "int:", 4) == 0) {
                long long w = strtoll(want + 4, NULL, 10);
                EXPECT(name, val.type == 2 && val.i == w, "%s: type %d i %" PRId64 ", want int %lld", key, val.type,
                       val.i, w);
            } else if (strncmp(want, "strlen:", 7) == 0) {
                unsigned long w = strtoul(want + 7, NULL, 10);
                EXPECT(name, val.type == 1 && val.str_len == w, "%s: type %d len %u, want strlen %lu", key, val.type,
                       val.str_len, w);
            } else if (strncmp(want, "str:", 4) == 0) {
                size_t w = strlen(want + 4);
                EXPECT(name, val.type == 1 && val.str_len == w && memcmp(val.str, want + 4, w) == 0,
                       "%s: type %d, want %s", key, val.type, want);
            } else if (strncmp(want, "bool:", 5) == 0) {
                EXPECT(name, val.type == 3 && val.i == atoi(want + 5), "%s: type %d, want %s", key, val.type, want);
            } else if (strcmp(want, "nil") == 0) {
                EXPECT(name, val.type == 4, "%s: type %d, want nil", key, val.type);
            } else if (strcmp(want, "other") == 0) {
                EXPECT(name, val.type == 5, "%s: type %d, want other", key, val.type);
            } else {
                fprintf(stderr, "bad msgpack expectation %s\n", want);
                exit(2);
            }
        }
    }
    printf("msgpack.txt: %zu vectors\n", nv);
    free_vectors(v, nv);
}

/* ---------------------------------------------------------------- reference models (from SPEC.md) ---- */

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static int model_header_ok(const uint8_t *p, uint32_t max) {
    uint32_t magic = rd32(p), len = rd32(p + 8);
    uint16_t type = rd16(p + 4), flags = rd16(p + 6);
    if (magic != 0x31504746u || type < 1 || type > 8 || (flags & ~1u) || len > max) return 0;
    if (type <= 3 && len > 65536) return 0;
    return 1;
}

/* ---------------------------------------------------------------- fuzzing ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static uint64_t rndn(uint64_t n) { return n ? rnd() % n : 0; }

static const uint32_t interesting32[] = {0, 1, 2, 7, 8, 9, 15, 16, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x10000,
                                         0x10001, 0x7fffffff, 0x80000000u, 0xfffffff8u, 0xfffffff9u, 0xffffffffu};

#define WORK_MAX 8192

static size_t mutate(uint8_t *w, size_t n, const vector *seeds, size_t nseeds) {
    int rounds = 1 + (int)rndn(4);
    for (int k = 0; k < rounds; k++) {
        switch (rndn(9)) {
        case 0: if (n) w[rndn(n)] ^= (uint8_t)(1u << rndn(8)); break;
        case 1: if (n) w[rndn(n)] = (uint8_t)rnd(); break;
        case 2: /* an interesting u32 at a length-ish offset (header length, or a record's length) */
            if (n >= 4) {
                size_t off = rndn(2) ? (n >= 12 ? 8 : 0) : (rndn(n - 3) & ~(size_t)3) + (rndn(2) ? 4 : 0);
                if (off + 4 > n) off = n - 4;
                uint32_t v = interesting32[rndn(sizeof interesting32 / sizeof *interesting32)];
                if (rndn(3) == 0) v = (uint32_t)(n - 16 + rndn(17) - 8);
                memcpy(w + off, &v, 4);
            }
            break;
        case 3: n = rndn(n + 1); break; /* truncate */
        case 4: { /* append random bytes */
            size_t add = rndn(24);
            if (n + add > WORK_MAX) add = WORK_MAX - n;
            for (size_t i = 0; i < add; i++) w[n + i] = (uint8_t)rnd();
            n += add;
            break;
        }
        case 5: /* delete a span */
            if (n) {
                size_t a = rndn(n), len = rndn(n - a + 1);
                memmove(w + a, w + a + len, n - a - len);
                n -= len;
            }
            break;
        case 6: { /* duplicate a span */
            if (!n) break;
            size_t a = rndn(n), len = rndn(n - a + 1);
            if (n + len > WORK_MAX) break;
            memmove(w + a + len, w + a, n - a);
            n += len;
            break;
        }
        case 7: { /* splice in the tail of another seed */
            const vector *s = &seeds[rndn(nseeds)];
            size_t at = rndn(n + 1), from = rndn(s->n + 1), len = s->n - from;
            if (at + len > WORK_MAX) len = WORK_MAX - at;
            memcpy(w + at, s->data + from, len);
            n = at + len;
            break;
        }
        default: /* an interesting byte (msgpack tags, flags) */
            if (n) {
                static const uint8_t tags[] = {0x00, 0x01, 0x7f, 0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xc0, 0xc1,
                                               0xc2, 0xc3, 0xc4, 0xc6, 0xc7, 0xc9, 0xca, 0xcb, 0xcf, 0xd3, 0xd4,
                                               0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff};
                w[rndn(n)] = tags[rndn(sizeof tags)];
            }
            break;
        }
    }
    return n;
}

static void fuzz_frame(const uint8_t *w, size_t n) {
    if (n >= FG_HEADER_SIZE) {
        uint8_t *hb = malloc(FG_HEADER_SIZE);
        memcpy(hb, w, FG_HEADER_SIZE);
        uint32_t max = rndn(2) ? FG_DEFAULT_MAX_FRAME : (uint32_t)rnd();
        fg_header h;
        const char *why = fg_header_decode(hb, &h, max);
        int model = model_header_ok(hb, max);
        EXPECT("fuzz-header", (why == NULL) == model, "decoder says %s, model says %s", why ? why : "ok",
               model ? "ok" : "reject");
        if (!why)
            EXPECT("fuzz-header", h.magic == rd32(hb) && h.type == rd16(hb + 4) && h.flags == rd16(hb + 6) &&
                                      h.length == rd32(hb + 8) && h.seq == rd32(hb + 12),
                   "decoded fields differ from the bytes");
        free(hb);
    }
    /* The record iterator over the bytes after the header (whatever the header says), checked record by record
     * against the model: 8-byte header, then the arguments padded to 8, all inside the payload. */
    size_t plen = n > FG_HEADER_SIZE ? n - FG_HEADER_SIZE : 0;
    uint8_t *p = malloc(plen ? plen : 1);
    if (plen) memcpy(p, w + FG_HEADER_SIZE, plen);
    fg_reader r;
    fg_reader_init(&r, p, plen);
    fg_record rec;
    const char *reason = NULL;
    size_t pos = 0, count = 0;
    int rc;
    for (;;) {
        rc = fg_next_record(&r, &rec, &reason);
        int model;
        if (pos == plen) model = 0;
        else if (plen - pos < 8) model = -1;
        else {
            uint64_t len = rd32(p + pos + 4), padded = (len + 7) & ~7ull;
            model = padded > plen - pos - 8 ? -1 : 1;
        }
        EXPECT("fuzz-records", rc == model, "iterator rc %d, model %d at offset %zu", rc, model, pos);
        if (rc != 1 || model != 1) break;
        EXPECT("fuzz-records", rec.op == rd16(p + pos) && rec.flags == rd16(p + pos + 2) &&
                                   rec.length == rd32(p + pos + 4) && rec.args == p + pos + 8,
               "record fields differ at offset %zu", pos);
        EXPECT("fuzz-records", rec.args + fg_pad8(rec.length) <= p + plen && r.p <= r.end,
               "record args run past the payload");
        pos += 8 + fg_pad8(rec.length);
        EXPECT("fuzz-records", ++count <= plen / 8 + 1, "iterator does not terminate");
        if (failures > 50) break;
    }
    if (rc == -1) EXPECT("fuzz-records", reason != NULL, "error without a reason");
    free(p);
}

static void fuzz_msgpack(const uint8_t *w, size_t n) {
    uint8_t *b = malloc(n ? n : 1);
    if (n) memcpy(b, w, n);
    static const char *keys[] = {"proto", "token", "pid", "d", "a", "k", "s16", "ts", "no such key"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        fg_mp_value v;
        int rc = fg_mp_lookup(b, n, keys[k], &v);
        EXPECT("fuzz-msgpack", rc >= -1 && rc <= 1, "rc %d", rc);
        if (rc == 0) {
            EXPECT("fuzz-msgpack", v.type >= 1 && v.type <= 5, "type %d", v.type);
            if (v.type == 1)
                EXPECT("fuzz-msgpack", (const uint8_t *)v.str >= b && (const uint8_t *)v.str + v.str_len <= b + n,
                       "string outside the buffer");
        }
    }
    free(b);
}

/* Encode random maps with the writer and read every key back. */
static void roundtrip_msgpack(void) {
    char keys[6][40];
    int64_t ints[6];
    char *strs[6];
    int kinds[6]; /* 0 int, 1 str, 2 bool */
    fg_writer w;
    fg_writer_init(&w, 0, 1u << 20);
    int nk = 1 + (int)rndn(6);
    fg_mp_map(&w, (uint32_t)nk);
    for (int k = 0; k < nk; k++) {
        snprintf(keys[k], sizeof keys[k], "key%d_%" PRIu64, k, rnd() % 1000);
        fg_mp_str(&w, keys[k]);
        strs[k] = NULL;
        kinds[k] = (int)rndn(3);
        if (kinds[k] == 0) {
            static const int64_t edge[] = {0, 1, 127, 128, -1, -32, -33, INT64_MIN, INT64_MAX, 65535, 1ll << 40};
            ints[k] = rndn(2) ? (int64_t)rnd() : edge[rndn(sizeof edge / sizeof *edge)];
            fg_mp_int(&w, ints[k]);
        } else if (kinds[k] == 1) {
            static const size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536, 70000};
            size_t len = lens[rndn(sizeof lens / sizeof *lens)];
            strs[k] = malloc(len + 1);
            for (size_t i = 0; i < len; i++) strs[k][i] = (char)('A' + rndn(26));
            strs[k][len] = 0;
            fg_mp_str(&w, strs[k]);
        } else {
            ints[k] = (int64_t)rndn(2);
            fg_mp_bool(&w, (int)ints[k]);
        }
    }
    EXPECT("roundtrip-msgpack", !w.failed, "writer failed");
    uint8_t *b = malloc(w.len);
    memcpy(b, w.buf, w.len);
    for (int k = 0; k < nk; k++) {
        fg_mp_value v;
        int rc = fg_mp_lookup(b, w.len, keys[k], &v);
        EXPECT("roundtrip-msgpack", rc == 0, "key %s not found (rc %d)", keys[k], rc);
        if (rc == 0 && kinds[k] == 1) {
            size_t len = strlen(strs[k]);
            EXPECT("roundtrip-msgpack", v.type == 1 && v.str_len == len && memcmp(v.str, strs[k], len) == 0,
                   "string value of %s differs", keys[k]);
        } else if (rc == 0) {
            int want_type = kinds[k] == 0 ? 2 : 3;
            EXPECT("roundtrip-msgpack", v.type == want_type && v.i == ints[k],
                   "value of %s: type %d %" PRId64 ", want type %d %" PRId64, keys[k], v.type, v.i, want_type,
                   ints[k]);
        }
        free(strs[k]);
    }
    fg_mp_value v;
    EXPECT("roundtrip-msgpack", fg_mp_lookup(b, w.len, "absent", &v) == 1, "absent key found");
    free(b);
    fg_writer_free(&w);
}

static void roundtrip_header(void) {
    fg_header h = {FG_MAGIC, (uint16_t)(1 + rndn(6)), (uint16_t)(rndn(2) ? FG_F_WANT_REPLY : 0), 0, (uint32_t)rnd()};
    h.length = (uint32_t)rndn(h.type <= 3 ? FG_MAX_HELLO + 1 : (uint64_t)FG_DEFAULT_MAX_FRAME + 1);
    uint8_t *b = malloc(FG_HEADER_SIZE);
    fg_header_encode(&h, b);
    fg_header d;
    const char *why = fg_header_decode(b, &d, FG_DEFAULT_MAX_FRAME);
    EXPECT("roundtrip-header", !why && !memcmp(&d, &h, sizeof h), "encode/decode differ (%s)", why ? why : "ok");
    free(b);
}

static void writer_limits(void) {
    fg_writer w;
    fg_writer_init(&w, 0, 100);
    fg_put_u64(&w, 1);
    EXPECT("writer", !w.failed && w.len == 8, "small write failed");
    EXPECT("writer", fg_put_space(&w, 93) == NULL && w.failed, "write past the limit accepted");
    EXPECT("writer", fg_put_space(&w, 1) == NULL, "writer not sticky-failed");
    fg_writer_reset(&w);
    EXPECT("writer", fg_put_space(&w, 100) != NULL && w.len == 100, "write up to the limit refused");
    EXPECT("writer", fg_put_space(&w, SIZE_MAX) == NULL, "SIZE_MAX write accepted");
    fg_writer_free(&w);
    /* reader: short reads zero-fill and fail */
    uint8_t *b = malloc(3);
    memcpy(b, "\x01\x02\x03", 3);
    fg_reader r;
    fg_reader_init(&r, b, 3);
    EXPECT("reader", fg_get_u16(&r) == 0x0201 && !r.failed, "u16");
    EXPECT("reader", fg_get_u32(&r) == 0 && r.failed, "short u32 must fail with 0");
    EXPECT("reader", fg_take(&r, 0) == NULL, "take after failure");
    free(b);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <protocol/vectors dir> [iterations]\n", argv[0]);
        return 2;
    }
    long iters = argc > 2 ? atol(argv[2]) : 200000;
    run_frame_vectors(argv[1]);
    run_msgpack_vectors(argv[1]);
    int vector_failures = failures;

    writer_limits();
    char path[4096];
    size_t nf, nm;
    snprintf(path, sizeof path, "%s/frames.txt", argv[1]);
    vector *fs = load_vectors(path, &nf);
    snprintf(path, sizeof path, "%s/msgpack.txt", argv[1]);
    vector *ms = load_vectors(path, &nm);
    uint8_t *work = malloc(WORK_MAX);
    for (long it = 0; it < iters && failures < 50 + vector_failures; it++) {
        int mp = it % 3 == 2;
        const vector *seeds = mp ? ms : fs;
        size_t nseeds = mp ? nm : nf;
        const vector *s = &seeds[rndn(nseeds)];
        size_t n = s->n > WORK_MAX ? WORK_MAX : s->n;
        memcpy(work, s->data, n);
        n = mutate(work, n, seeds, nseeds);
        if (mp) fuzz_msgpack(work, n);
        else fuzz_frame(work, n);
        if (it % 64 == 0) {
            roundtrip_header();
            roundtrip_msgpack();
        }
    }
    free(work);
    free_vectors(fs, nf);
    free_vectors(ms, nm);
    printf("test_protocol: %d checks, %d failures (%d in the vectors), %ld fuzz iterations\n", checks, failures,
           vector_failures, iters);
    return failures ? 1 : 0;
}
