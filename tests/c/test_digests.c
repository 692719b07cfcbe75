/* test_digests.c — known-answer tests for the stub's digests: MD2 (RFC 1319's test suite), the integrity
 * check's fixed answers, and SHA-256 (FIPS 180-4 examples). Built and run by tests/python/test_digests.py. */
#include <stdio.h>
#include <string.h>

#include "fg_sha256.h"
#include "integrity.h"

static int fails;

static void check_hex(const char *what, const uint8_t *got, size_t n, const char *want) {
    char buf[130];
    for (size_t i = 0; i < n; i++) snprintf(buf + 2 * i, 3, "%02x", got[i]);
    if (strcmp(buf, want)) {
        printf("FAIL %s: %s != %s\n", what, buf, want);
        fails++;
    } else {
        printf("ok %s\n", what);
    }
}

int main(void) {
    static const struct {
        const char *in, *md2;
    } md2[] = {
        {"", "8350e5a3e24c153df2275c9f80692773"},
        {"a", "32ec01ec4a6dac72c0ab96fb34c0b5d1"},
        {"abc", "da853b0d3f88d99b30283a69e6ded6bb"},
        {"message digest", "ab4f496bfb2a530b219ff33031fe06b0"},
        {"abcdefghijklmnopqrstuvwxyz", "4e8ddff3650292ab5a4108c3aa47940b"},
        {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
         "d5976f79d83d3a0dc9806c3c66f3efd8"},
    };
    for (size_t i = 0; i < sizeof md2 / sizeof md2[0]; i++) {
        uint8_t d[16];
        fgc_md2(md2[i].in, strlen(md2[i].in), d);
        check_hex(md2[i].in[0] ? md2[i].in : "md2(empty)", d, 16, md2[i].md2);
    }
    uint8_t s[32];
    fg_sha256("abc", 3, s);
    check_hex("sha256(abc)", s, 32, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    fg_sha256(two, strlen(two), s);
    check_hex("sha256(448 bits)", s, 32, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    fg_sha256_ctx c;
    fg_sha256_init(&c);
    for (int i = 0; i < 1000000; i += 1000) {
        char a[1000];
        memset(a, 'a', sizeof a);
        fg_sha256_update(&c, a, sizeof a);
    }
    fg_sha256_final(&c, s);
    check_hex("sha256(million a)", s, 32, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

    /* Requested versions ending in 0 or 1 have fixed answers, whatever the other inputs. */
    fgc_integrity_input in = {13000, 13000, 1, 2, (void *)1, (void *)2, (void *)3, 4};
    uint64_t out[2];
    fgc_integrity_digest(&in, NULL, 0, out);
    if (out[0] != 0x3341181C03CB675CULL || out[1] != 0x8ED383AA1F4CD1E8ULL) { printf("FAIL fixed 0\n"); fails++; }
    in.requested = 12091;
    fgc_integrity_digest(&in, NULL, 0, out);
    if (out[0] != 0x1841181C03CB675CULL || out[1] != 0x8ED383AA1F4CD1E8ULL) { printf("FAIL fixed 1\n"); fails++; }
    /* Otherwise the digest depends on every input: change one byte of each, the answer changes. */
    in.requested = 13002;
    uint64_t base[2], v[2];
    fgc_integrity_digest(&in, NULL, 0, base);
    fgc_integrity_input m = in;
    m.unix_seconds++;
    fgc_integrity_digest(&m, NULL, 0, v);
    if (!memcmp(v, base, 16)) { printf("FAIL time not mixed in\n"); fails++; }
    fgc_integrity_device dev = {{0}, 0, 0x1b, 0};
    fgc_integrity_digest(&in, &dev, 1, v);
    if (!memcmp(v, base, 16)) { printf("FAIL device not mixed in\n"); fails++; }
    printf("%s\n", fails ? "FAILED" : "ALL OK");
    return fails != 0;
}
