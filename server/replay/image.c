/* image.c — module and library images, content-addressed. A load record names its image by SHA-256 and size;
 * the image comes from (1) this session's staging buffer, filled by FG_OP_IMAGE_CHUNK records and checked
 * against the name before use, or (2) the node's cache directory, shared by every session (files named by
 * hash, written only after the server itself verified the bytes, atomically by rename). Neither: the load
 * answers FG_RESULT_NEED_IMAGE and the stub sends the bytes. Loaded images stay in memory until the session
 * ends, since a lazily loading driver may read them later. Cache directory: FARGPU_MODULE_CACHE, default
 * $XDG_CACHE_HOME/fargpu/modules or ~/.cache/fargpu/modules; "off" disables it. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fg_sha256.h"
#include "fgs_impl.h"
#include "fgs_session.h"

static void hex(const uint8_t sha[32], char out[65]) {
    static const char d[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = d[sha[i] >> 4];
        out[2 * i + 1] = d[sha[i] & 15];
    }
    out[64] = 0;
}

static int cache_dir(char *buf, size_t n) {
    const char *e = getenv("FARGPU_MODULE_CACHE");
    if (e && !strcmp(e, "off")) return -1;
    int w;
    if (e && *e) w = snprintf(buf, n, "%s", e);
    else if (getenv("XDG_CACHE_HOME")) w = snprintf(buf, n, "%s/fargpu/modules", getenv("XDG_CACHE_HOME"));
    else if (getenv("HOME")) w = snprintf(buf, n, "%s/.cache/fargpu/modules", getenv("HOME"));
    else w = snprintf(buf, n, "/tmp/fargpu-modules-%d", (int)getuid());
    return w > 0 && (size_t)w < n ? 0 : -1;
}

static int mkdirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        int rc = mkdir(path, 0700);
        *p = '/';
        if (rc && errno != EEXIST) return -1;
    }
    return mkdir(path, 0700) && errno != EEXIST ? -1 : 0;
}

static uint8_t *cache_read(fgs_session *S, const uint8_t sha[32], uint64_t size) {
    char dir[900], path[1000], h[65];
    if (cache_dir(dir, sizeof dir)) return NULL;
    hex(sha, h);
    snprintf(path, sizeof path, "%s/%s", dir, h);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    struct stat st;
    uint8_t *buf = NULL;
    if (fstat(fd, &st) == 0 && (uint64_t)st.st_size == size && (buf = (uint8_t *)malloc(size + 1))) {
        uint64_t got = 0;
        while (got < size) {
            ssize_t k = read(fd, buf + got, size - got);
            if (k <= 0) break;
            got += (uint64_t)k;
        }
        if (got != size) {
            free(buf);
            buf = NULL;
        } else {
            buf[size] = 0;
        }
    }
    close(fd);
    if (buf) S->image_cache_hits++;
    return buf;
}

static void cache_write(fgs_session *S, const uint8_t sha[32], const uint8_t *data, uint64_t size) {
    char dir[900], path[1000], tmp[1100], h[65];
    if (cache_dir(dir, sizeof dir) || mkdirs(dir)) return;
    hex(sha, h);
    snprintf(path, sizeof path, "%s/%s", dir, h);
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return;
    uint64_t off = 0;
    while (off < size) {
        ssize_t k = write(fd, data + off, size - off);
        if (k <= 0) break;
        off += (uint64_t)k;
    }
    if (close(fd) == 0 && off == size && rename(tmp, path) == 0) return;
    unlink(tmp);
    fgs_log(S, "could not write the module cache entry %s", path);
}

CUresult fgs_image_chunk(fgs_session *S, fg_reader *r) {
    const uint8_t *sha = fg_take(r, 32);
    uint64_t total = fg_get_u64(r), off = fg_get_u64(r);
    uint32_t len = fg_get_u32(r);
    const uint8_t *data = fg_take(r, len);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (total == 0 || total > FG_MAX_IMAGE || off > total || len > total - off) return CUDA_ERROR_INVALID_VALUE;
    if (S->staging_data && (memcmp(S->staging_sha, sha, 32) || S->staging_size != total || off == 0)) {
        /* another image, or the same one sent again from the start: begin afresh */
        free(S->staging_data);
        S->staging_data = NULL;
    }
    if (!S->staging_data) {
        if (off != 0) return CUDA_ERROR_INVALID_VALUE;
        S->staging_data = (uint8_t *)malloc(total + 1);
        if (!S->staging_data) return CUDA_ERROR_OUT_OF_MEMORY;
        memcpy(S->staging_sha, sha, 32);
        S->staging_size = total;
        S->staging_have = 0;
    }
    if (off != S->staging_have) return CUDA_ERROR_INVALID_VALUE; /* chunks arrive in order */
    memcpy(S->staging_data + off, data, len);
    S->staging_have += len;
    return CUDA_SUCCESS;
}

/* Decode "sha[32] u64 size u32 extra_len extra" and produce the image bytes (NUL-terminated past the end),
 * owned by the session. NULL with *res set when it cannot. */
const uint8_t *fgs_image_get(fgs_session *S, fg_reader *r, uint64_t *size, CUresult *res) {
    const uint8_t *sha = fg_take(r, 32);
    uint64_t n = fg_get_u64(r);
    uint32_t extra = fg_get_u32(r);
    fg_take(r, extra);
    *size = n;
    if (r->failed) {
        *res = FGS_PROTOCOL_ERROR;
        return NULL;
    }
    if (n == 0 || n > FG_MAX_IMAGE) {
        *res = CUDA_ERROR_INVALID_IMAGE;
        return NULL;
    }
    uint8_t *img = NULL;
    if (S->staging_data && !memcmp(S->staging_sha, sha, 32) && S->staging_size == n && S->staging_have == n) {
        uint8_t got[32];
        fg_sha256(S->staging_data, n, got);
        img = S->staging_data;
        S->staging_data = NULL;
        if (memcmp(got, sha, 32)) {
            free(img);
            fgs_log(S, "an uploaded image does not match its SHA-256 name; refused");
            *res = CUDA_ERROR_INVALID_IMAGE;
            return NULL;
        }
        img[n] = 0;
        cache_write(S, sha, img, n);
    } else {
        img = cache_read(S, sha, n);
    }
    if (!img) {
        *res = (CUresult)FG_RESULT_NEED_IMAGE;
        return NULL;
    }
    if (S->n_images == S->cap_images) {
        size_t cap = S->cap_images ? S->cap_images * 2 : 16;
        uint8_t **ni = (uint8_t **)realloc(S->images, cap * sizeof *ni);
        if (!ni) {
            free(img);
            *res = CUDA_ERROR_OUT_OF_MEMORY;
            return NULL;
        }
        S->images = ni;
        S->cap_images = cap;
    }
    S->images[S->n_images++] = img;
    *res = CUDA_SUCCESS;
    return img;
}

void fgs_images_free_all(fgs_session *S) {
    for (size_t i = 0; i < S->n_images; i++) free(S->images[i]);
    free(S->images);
    free(S->staging_data);
    S->images = NULL;
    S->staging_data = NULL;
    S->n_images = S->cap_images = 0;
}
