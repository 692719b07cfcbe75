/* fg_sha256.h — SHA-256 (FIPS 180-4), used to name module and library images in the server's
 * content-addressed cache: the stub hashes what it would send, the server re-hashes what it receives. */
#ifndef FG_SHA256_H
#define FG_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t fill;
} fg_sha256_ctx;

void fg_sha256_init(fg_sha256_ctx *c);
void fg_sha256_update(fg_sha256_ctx *c, const void *data, size_t n);
void fg_sha256_final(fg_sha256_ctx *c, uint8_t out[32]);
void fg_sha256(const void *data, size_t n, uint8_t out[32]);

#endif
