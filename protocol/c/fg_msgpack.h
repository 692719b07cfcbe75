/* fg_msgpack.h — the small msgpack subset the C side needs for the handshake: write a flat map of
 * string/integer/bool values, and look up one key of a flat map. Bounds-checked; no allocation. */
#ifndef FG_MSGPACK_H
#define FG_MSGPACK_H

#include <stddef.h>
#include <stdint.h>

#include "fg_wire.h"

void fg_mp_map(fg_writer *w, uint32_t n);
void fg_mp_str(fg_writer *w, const char *s);
void fg_mp_int(fg_writer *w, int64_t v);
void fg_mp_bool(fg_writer *w, int v);

typedef struct {
    int type; /* 0 missing, 1 str, 2 int, 3 bool, 4 nil, 5 other */
    const char *str;
    uint32_t str_len;
    int64_t i;
} fg_mp_value;

/* Find `key` in the top-level map of buf. Returns 0 when found, 1 when absent, -1 when malformed. */
int fg_mp_lookup(const uint8_t *buf, size_t n, const char *key, fg_mp_value *out);

#endif
