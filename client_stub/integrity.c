/* integrity.c — the runtime's integrity check, computed in the stub: HMAC over MD2 (RFC 1319, 16-byte blocks)
 * with a fixed 16-byte key, over a 48-byte record of process values (driver and requested versions, pid,
 * thread id, the addresses of the CUDART_INTERFACE and INTEGRITY_CHECK tables and of the check function, the
 * runtime's timestamp) followed by each device's UUID and PCI domain/bus/device. Requested versions ending in
 * 0 or 1 have fixed answers. These are facts about the driver's behaviour (see
 * shared/reference/cuda-driver-private-tables.md and the public notes it cites); the code is ours. */
#include "integrity.h"

#include <string.h>

/* RFC 1319's substitution table (a permutation of 0..255 built from the digits of pi). */
static const uint8_t S[256] = {
    41,  46,  67,  201, 162, 216, 124, 1,   61,  54,  84,  161, 236, 240, 6,   19,  98,  167, 5,   243, 192, 199,
    115, 140, 152, 147, 43,  217, 188, 76,  130, 202, 30,  155, 87,  60,  253, 212, 224, 22,  103, 66,  111, 24,
    138, 23,  229, 18,  190, 78,  196, 214, 218, 158, 222, 73,  160, 251, 245, 142, 187, 47,  238, 122, 169, 104,
    121, 145, 21,  178, 7,   63,  148, 194, 16,  137, 11,  34,  95,  33,  128, 127, 93,  154, 90,  144, 50,  39,
    53,  62,  204, 231, 191, 247, 151, 3,   255, 25,  48,  179, 72,  165, 181, 209, 215, 94,  146, 42,  172, 86,
    170, 198, 79,  184, 56,  210, 150, 164, 125, 182, 118, 252, 107, 226, 156, 116, 4,   241, 69,  157, 112, 89,
    100, 113, 135, 32,  134, 91,  207, 101, 230, 45,  168, 2,   27,  96,  37,  173, 174, 176, 185, 246, 28,  70,
    97,  105, 52,  64,  126, 15,  85,  71,  163, 35,  221, 81,  175, 58,  195, 92,  249, 206, 186, 197, 234, 38,
    44,  83,  13,  110, 133, 40,  132, 9,   211, 223, 205, 244, 65,  129, 77,  82,  106, 220, 55,  200, 108, 193,
    171, 250, 36,  225, 123, 8,   12,  189, 177, 74,  120, 136, 149, 139, 227, 99,  232, 109, 233, 203, 213, 254,
    59,  0,   29,  57,  242, 239, 183, 14,  102, 88,  208, 228, 166, 119, 114, 248, 235, 117, 75,  10,  49,  68,
    80,  180, 143, 237, 31,  26,  219, 153, 141, 51,  159, 17,  131, 20,
};

typedef struct {
    uint8_t x[48];   /* state: x[0..16) digest so far, x[16..32) block, x[32..48) block ^ digest */
    uint8_t sum[16]; /* running checksum */
    uint8_t last;    /* checksum's last byte (L in RFC 1319) */
    size_t fill;     /* bytes of the current block */
} md2_ctx;

static void md2_init(md2_ctx *c) { memset(c, 0, sizeof *c); }

static void md2_block(md2_ctx *c) {
    uint8_t t = 0;
    for (int j = 0; j < 18; j++) {
        for (int k = 0; k < 48; k++) t = c->x[k] ^= S[t];
        t = (uint8_t)(t + j);
    }
}

static void md2_byte(md2_ctx *c, uint8_t b, int update_sum) {
    c->x[16 + c->fill] = b;
    c->x[32 + c->fill] = (uint8_t)(b ^ c->x[c->fill]);
    if (update_sum) c->last = c->sum[c->fill] ^= S[b ^ c->last];
    if (++c->fill == 16) {
        md2_block(c);
        c->fill = 0;
    }
}

static void md2_update(md2_ctx *c, const void *data, size_t n) {
    const uint8_t *p = data;
    for (size_t i = 0; i < n; i++) md2_byte(c, p[i], 1);
}

static void md2_final(md2_ctx *c, uint8_t out[16]) {
    uint8_t pad = (uint8_t)(16 - c->fill);
    for (uint8_t i = 0; i < pad; i++) md2_byte(c, pad, 1);
    uint8_t sum[16];
    memcpy(sum, c->sum, 16);
    for (int i = 0; i < 16; i++) md2_byte(c, sum[i], 0);
    memcpy(out, c->x, 16);
}

void fgc_md2(const void *data, size_t n, uint8_t out[16]) {
    md2_ctx c;
    md2_init(&c);
    md2_update(&c, data, n);
    md2_final(&c, out);
}

static const uint8_t KEY[16] = {0x14, 0x6A, 0xDD, 0xAE, 0x53, 0xA9, 0xA7, 0x52,
                                0xAA, 0x08, 0x41, 0x36, 0x0B, 0xF5, 0x5A, 0x9F};

static void keyed_start(md2_ctx *c, uint8_t pad) {
    uint8_t k[16];
    for (int i = 0; i < 16; i++) k[i] = KEY[i] ^ pad;
    md2_init(c);
    md2_update(c, k, sizeof k);
}

void fgc_integrity_digest(const fgc_integrity_input *in, const fgc_integrity_device *devs, int ndev,
                          uint64_t out[2]) {
    if (in->requested % 10 == 0) {
        out[0] = 0x3341181C03CB675CULL;
        out[1] = 0x8ED383AA1F4CD1E8ULL;
        return;
    }
    if (in->requested % 10 == 1) {
        out[0] = 0x1841181C03CB675CULL;
        out[1] = 0x8ED383AA1F4CD1E8ULL;
        return;
    }
    /* The record is hashed in its in-memory layout: 4 u32, 3 pointers, 1 u64 (48 bytes on LP64). */
    uint8_t rec[48];
    uint64_t ptrs[3] = {(uint64_t)(uintptr_t)in->cudart_table, (uint64_t)(uintptr_t)in->integrity_table,
                        (uint64_t)(uintptr_t)in->fn_address};
    memcpy(rec, &in->driver_version, 4);
    memcpy(rec + 4, &in->requested, 4);
    memcpy(rec + 8, &in->pid, 4);
    memcpy(rec + 12, &in->tid, 4);
    memcpy(rec + 16, ptrs, 24);
    memcpy(rec + 40, &in->unix_seconds, 8);

    md2_ctx c;
    uint8_t inner[16], outer[16];
    keyed_start(&c, 0x36);
    md2_update(&c, rec, sizeof rec);
    for (int d = 0; d < ndev; d++) {
        uint8_t dv[28];
        memcpy(dv, devs[d].uuid, 16);
        memcpy(dv + 16, &devs[d].pci_domain, 4);
        memcpy(dv + 20, &devs[d].pci_bus, 4);
        memcpy(dv + 24, &devs[d].pci_device, 4);
        md2_update(&c, dv, sizeof dv);
    }
    md2_final(&c, inner);
    keyed_start(&c, 0x5c);
    md2_update(&c, inner, sizeof inner);
    md2_final(&c, outer);
    memcpy(out, outer, 16);
}
