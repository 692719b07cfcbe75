/* image.c — shipping module and library images to the server, content-addressed. An image is named by its
 * SHA-256; the load record carries only the name and size. When the server's cache (shared by every session on
 * the node) lacks it, the server answers FG_RESULT_NEED_IMAGE and the stub streams the bytes in chunks
 * (FG_OP_IMAGE_CHUNK), then repeats the load. A second session loading the same image sends 40 bytes, not the
 * image. Bytes sent per process are counted for the results (fgc_bytes_sent). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fg_sha256.h"
#include "fgc_internal.h"
#include "fgc_image.h"

static _Atomic uint64_t image_bytes_sent;

uint64_t fgc_image_bytes_sent(void) { return atomic_load(&image_bytes_sent); }

static CUresult send_chunks(const uint8_t sha[32], const uint8_t *p, uint64_t n) {
    for (uint64_t off = 0; off < n;) {
        uint32_t len = (uint32_t)(n - off < FG_CHUNK ? n - off : FG_CHUNK);
        fg_writer *w = fgc_begin(FG_OP_IMAGE_CHUNK);
        if (!w) return fgc_last_error();
        fg_put(w, sha, 32);
        fg_put_u64(w, n);
        fg_put_u64(w, off);
        fg_put_u32(w, len);
        fg_put(w, p + off, len);
        CUresult r = fgc_async();
        if (r != CUDA_SUCCESS) return r;
        off += len;
        atomic_fetch_add(&image_bytes_sent, len);
    }
    return CUDA_SUCCESS;
}

CUresult fgc_image_load(uint16_t op, const void *image, size_t n, const void *extra, size_t extra_n, uint64_t *id) {
    uint8_t sha[32];
    fg_sha256(image, n, sha);
    for (int attempt = 0; attempt < 2; attempt++) {
        fg_writer *w = fgc_begin(op);
        if (!w) return fgc_last_error();
        fg_put(w, sha, 32);
        fg_put_u64(w, n);
        fg_put_u32(w, (uint32_t)extra_n);
        if (extra_n) fg_put(w, extra, extra_n);
        fgc_expect(id, sizeof *id);
        CUresult r = fgc_sync();
        if (r != (CUresult)FG_RESULT_NEED_IMAGE) return r;
        if (attempt == 0 && (r = send_chunks(sha, (const uint8_t *)image, n)) != CUDA_SUCCESS) return r;
    }
    fgc_log(FGC_LOG_ERROR, "the server asked for a module image twice; giving up");
    return CUDA_ERROR_INVALID_IMAGE;
}

CUresult fgc_image_call(uint16_t op, const void *image, size_t n, const void *extra, size_t extra_n, void *reply,
                        size_t cap, size_t *got) {
    uint8_t sha[32];
    fg_sha256(image, n, sha);
    for (int attempt = 0; attempt < 2; attempt++) {
        fg_writer *w = fgc_begin(op);
        if (!w) return fgc_last_error();
        fg_put(w, sha, 32);
        fg_put_u64(w, n);
        fg_put_u32(w, (uint32_t)extra_n);
        if (extra_n) fg_put(w, extra, extra_n);
        fgc_expect(reply, cap);
        CUresult r = fgc_sync_var(got);
        if (r != (CUresult)FG_RESULT_NEED_IMAGE) return r;
        if (attempt == 0 && (r = send_chunks(sha, (const uint8_t *)image, n)) != CUDA_SUCCESS) return r;
    }
    fgc_log(FGC_LOG_ERROR, "the server asked for an image twice; giving up");
    return CUDA_ERROR_INVALID_IMAGE;
}

void *fgc_read_image_file(const char *path, CUresult *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *err = CUDA_ERROR_FILE_NOT_FOUND;
        return NULL;
    }
    void *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (uint64_t)size < FG_MAX_IMAGE) {
        buf = calloc(1, (size_t)size + 1); /* a NUL after PTX text */
        if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    *err = buf ? CUDA_SUCCESS : size < 0 ? CUDA_ERROR_FILE_NOT_FOUND : CUDA_ERROR_INVALID_IMAGE;
    return buf;
}
