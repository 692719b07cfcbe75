/* fg_msgpack.c — see fg_msgpack.h. Values other than str/int/bool/nil are skipped structurally
 * (nested maps and arrays included, depth-limited) so a newer server can add fields. */
#include "fg_msgpack.h"

#include <string.h>

static void put_be(fg_writer *w, uint8_t tag, uint64_t v, int bytes) {
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < bytes; i++) b[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    fg_put(w, b, (size_t)bytes + 1);
}

void fg_mp_map(fg_writer *w, uint32_t n) {
    if (n < 16) {
        uint8_t t = (uint8_t)(0x80 | n);
        fg_put(w, &t, 1);
    } else {
        put_be(w, 0xdf, n, 4);
    }
}

void fg_mp_str(fg_writer *w, const char *s) {
    size_t n = strlen(s);
    if (n < 32) {
        uint8_t t = (uint8_t)(0xa0 | n);
        fg_put(w, &t, 1);
    } else if (n < 65536) {
        put_be(w, 0xda, n, 2);
    } else {
        put_be(w, 0xdb, n, 4);
    }
    fg_put(w, s, n);
}

void fg_mp_int(fg_writer *w, int64_t v) {
    if (v >= 0 && v < 128) {
        uint8_t t = (uint8_t)v;
        fg_put(w, &t, 1);
    } else {
        put_be(w, 0xd3, (uint64_t)v, 8);
    }
}

void fg_mp_bool(fg_writer *w, int v) {
    uint8_t t = v ? 0xc3 : 0xc2;
    fg_put(w, &t, 1);
}

static uint64_t get_be(fg_reader *r, int bytes) {
    const uint8_t *p = fg_take(r, (size_t)bytes);
    uint64_t v = 0;
    if (!p) return 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | p[i];
    return v;
}

/* Parse one value; fills *out for scalars; skips containers. Returns 0 ok, -1 malformed. */
static int parse_value(fg_reader *r, fg_mp_value *out, int depth) {
    if (depth > 8) return -1;
    uint8_t t;
    if (fg_get(r, &t, 1)) return -1;
    out->type = 5;
    uint64_t len = 0;
    int is_str = 0, is_bin = 0, is_map = 0, is_arr = 0;
    if (t <= 0x7f) { out->type = 2; out->i = t; return 0; }
    if (t >= 0xe0) { out->type = 2; out->i = (int8_t)t; return 0; }
    if ((t & 0xe0) == 0xa0) { is_str = 1; len = t & 0x1f; }
    else if ((t & 0xf0) == 0x80) { is_map = 1; len = t & 0x0f; }
    else if ((t & 0xf0) == 0x90) { is_arr = 1; len = t & 0x0f; }
    else switch (t) {
        case 0xc0: out->type = 4; return 0;
        case 0xc2: out->type = 3; out->i = 0; return 0;
        case 0xc3: out->type = 3; out->i = 1; return 0;
        case 0xcc: out->type = 2; out->i = (int64_t)get_be(r, 1); return r->failed ? -1 : 0;
        case 0xcd: out->type = 2; out->i = (int64_t)get_be(r, 2); return r->failed ? -1 : 0;
        case 0xce: out->type = 2; out->i = (int64_t)get_be(r, 4); return r->failed ? -1 : 0;
        case 0xcf: out->type = 2; out->i = (int64_t)get_be(r, 8); return r->failed ? -1 : 0;
        case 0xd0: out->type = 2; out->i = (int8_t)get_be(r, 1); return r->failed ? -1 : 0;
        case 0xd1: out->type = 2; out->i = (int16_t)get_be(r, 2); return r->failed ? -1 : 0;
        case 0xd2: out->type = 2; out->i = (int32_t)get_be(r, 4); return r->failed ? -1 : 0;
        case 0xd3: out->type = 2; out->i = (int64_t)get_be(r, 8); return r->failed ? -1 : 0;
        case 0xca: fg_take(r, 4); return r->failed ? -1 : 0;
        case 0xcb: fg_take(r, 8); return r->failed ? -1 : 0;
        case 0xd9: is_str = 1; len = get_be(r, 1); break;
        case 0xda: is_str = 1; len = get_be(r, 2); break;
        case 0xdb: is_str = 1; len = get_be(r, 4); break;
        case 0xc4: is_bin = 1; len = get_be(r, 1); break;
        case 0xc5: is_bin = 1; len = get_be(r, 2); break;
        case 0xc6: is_bin = 1; len = get_be(r, 4); break;
        case 0xd4: fg_take(r, 2); return r->failed ? -1 : 0;  /* fixext 1..16: type byte + data */
        case 0xd5: fg_take(r, 3); return r->failed ? -1 : 0;
        case 0xd6: fg_take(r, 5); return r->failed ? -1 : 0;
        case 0xd7: fg_take(r, 9); return r->failed ? -1 : 0;
        case 0xd8: fg_take(r, 17); return r->failed ? -1 : 0;
        case 0xc7: is_bin = 1; len = get_be(r, 1) + 1; break; /* ext 8/16/32: length, type byte, data */
        case 0xc8: is_bin = 1; len = get_be(r, 2) + 1; break;
        case 0xc9: is_bin = 1; len = get_be(r, 4) + 1; break;
        case 0xdc: is_arr = 1; len = get_be(r, 2); break;
        case 0xdd: is_arr = 1; len = get_be(r, 4); break;
        case 0xde: is_map = 1; len = get_be(r, 2); break;
        case 0xdf: is_map = 1; len = get_be(r, 4); break;
        default: return -1;
    }
    if (r->failed) return -1;
    if (is_str || is_bin) {
        const uint8_t *p = fg_take(r, (size_t)len);
        if (!p) return -1;
        if (is_str) { out->type = 1; out->str = (const char *)p; out->str_len = (uint32_t)len; }
        return 0;
    }
    uint64_t items = is_map ? len * 2 : len;
    if (!is_arr && !is_map) return -1;
    if (items > fg_reader_left(r)) return -1; /* each item takes at least one byte */
    for (uint64_t k = 0; k < items; k++) {
        fg_mp_value skip;
        if (parse_value(r, &skip, depth + 1)) return -1;
    }
    out->type = 5;
    return 0;
}

int fg_mp_lookup(const uint8_t *buf, size_t n, const char *key, fg_mp_value *out) {
    fg_reader r;
    fg_reader_init(&r, buf, n);
    memset(out, 0, sizeof *out);
    uint8_t t;
    if (fg_get(&r, &t, 1)) return -1;
    uint64_t len;
    if ((t & 0xf0) == 0x80) len = t & 0x0f;
    else if (t == 0xde) len = get_be(&r, 2);
    else if (t == 0xdf) len = get_be(&r, 4);
    else return -1;
    if (r.failed || len > fg_reader_left(&r)) return -1;
    size_t klen = strlen(key);
    int found = 0;
    /* Walk the whole map, so that a truncated or malformed one (or trailing bytes) is refused whichever key
     * is asked for. The first occurrence of a key wins. */
    for (uint64_t i = 0; i < len; i++) {
        fg_mp_value k, v;
        if (parse_value(&r, &k, 1) || parse_value(&r, &v, 1)) {
            memset(out, 0, sizeof *out);
            return -1;
        }
        if (!found && k.type == 1 && k.str_len == klen && memcmp(k.str, key, klen) == 0) {
            *out = v;
            found = 1;
        }
    }
    if (fg_reader_left(&r) != 0) {
        memset(out, 0, sizeof *out);
        return -1;
    }
    return found ? 0 : 1;
}
