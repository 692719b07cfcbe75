/* module.c — modules, functions and launches for a session. An image is copied to an aligned buffer
 * before the driver sees it; cuModuleGetFunction answers with the function's parameter layout; launches
 * pass the client's packed parameter buffer through CU_LAUNCH_PARAM_BUFFER_POINTER. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

/* cuModuleLoadData takes no length: the driver finds the end of an ELF from its section table, of a fatbin from
 * its header, of PTX from the NUL. Check that each lies inside the n bytes the client sent. */
static int image_fits(const uint8_t *p, uint64_t n) {
    if (n >= 4 && memcmp(p, "\x7f" "ELF", 4) == 0) {
        uint64_t shoff;
        uint16_t shentsize, shnum;
        if (n < 64 || p[4] != 2) return 0; /* ELF64 only */
        memcpy(&shoff, p + 40, 8);
        memcpy(&shentsize, p + 58, 2);
        memcpy(&shnum, p + 60, 2);
        if (shentsize != 64 || shoff < 64 || shoff > n || n - shoff < 64) return 0;
        if (shnum == 0) { /* the real count is in section 0's sh_size */
            uint64_t big;
            memcpy(&big, p + shoff + 32, 8);
            if (big > (n - shoff) / 64) return 0;
            shnum = (uint16_t)big; /* <= n/64: fits when it passes the check below */
            if (big != shnum) return 0;
        }
        if ((uint64_t)shnum * 64 > n - shoff) return 0;
        for (uint32_t i = 1; i < shnum; i++) {
            const uint8_t *sh = p + shoff + (uint64_t)i * 64;
            uint32_t type;
            uint64_t off, size;
            memcpy(&type, sh + 4, 4);
            memcpy(&off, sh + 24, 8);
            memcpy(&size, sh + 32, 8);
            if (type != 8 /* SHT_NOBITS */ && (off > n || size > n - off)) return 0;
        }
        return 1;
    }
    uint32_t magic = 0;
    if (n >= 4) memcpy(&magic, p, 4);
    if (magic == 0xBA55ED50u) { /* fatbin: u32 magic, u16 version, u16 header size, u64 payload size */
        uint16_t hsize;
        uint64_t fsize;
        if (n < 16) return 0;
        memcpy(&hsize, p + 6, 2);
        memcpy(&fsize, p + 8, 8);
        return hsize >= 16 && fsize <= n - hsize;
    }
    if (magic == 0x466243B1u) return 0; /* a fatbin wrapper holds a host pointer: never from a client */
    return 1; /* PTX: load() appends a NUL */
}

static CUresult load(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t n = fg_get_u64(r);
    const uint8_t *img = fg_take(r, (size_t)n);
    if (r->failed || n == 0) return FGS_PROTOCOL_ERROR;
    if (!image_fits(img, n)) return CUDA_ERROR_INVALID_IMAGE;
    /* One byte more than the image, zeroed: PTX text always ends inside the buffer. */
    size_t cap = (size_t)((n + 1 + 63) / 64 * 64);
    void *copy = aligned_alloc(64, cap);
    if (!copy) return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(copy, img, (size_t)n);
    memset((uint8_t *)copy + n, 0, cap - (size_t)n);
    CUmodule mod = NULL;
    CUresult res = S->api->cuModuleLoadData(&mod, copy);
    free(copy);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_MODULE, mod));
    return res;
}

CUresult fgs_cuModuleLoadData(fgs_session *S, fg_reader *r, fg_writer *out) { return load(S, r, out); }
CUresult fgs_cuModuleLoadDataEx(fgs_session *S, fg_reader *r, fg_writer *out) { return load(S, r, out); }

CUresult fgs_cuModuleGetFunction(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t mid = fg_get_u64(r);
    const char *name = fgs_get_cstr(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *mod;
    if (fgs_handle_get(S, FGH_MODULE, mid, &mod) || !mod) return CUDA_ERROR_INVALID_HANDLE;
    CUfunction f = NULL;
    CUresult res = S->api->cuModuleGetFunction(&f, (CUmodule)mod, name);
    if (res != CUDA_SUCCESS) return res;
    fg_put_u64(out, fgs_handle_add(S, FGH_FUNCTION, f));
    size_t count_at = out->len;
    fg_put_u32(out, 0);
    uint32_t n = 0;
    for (; n < 4096; n++) {
        size_t off = 0, size = 0;
        if (S->api->cuFuncGetParamInfo(f, n, &off, &size) != CUDA_SUCCESS) break;
        fg_put_u32(out, (uint32_t)off);
        fg_put_u32(out, (uint32_t)size);
    }
    if (!out->failed) memcpy(out->buf + count_at, &n, 4);
    return CUDA_SUCCESS;
}

CUresult fgs_cuLaunchKernel(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t fid = fg_get_u64(r);
    uint32_t d[7];
    fg_get(r, d, sizeof d);
    uint64_t sid = fg_get_u64(r);
    uint32_t n = fg_get_u32(r);
    const uint8_t *params = fg_take(r, n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *f, *s;
    if (fgs_handle_get(S, FGH_FUNCTION, fid, &f) || !f) return CUDA_ERROR_INVALID_HANDLE;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (n == 0)
        return S->api->cuLaunchKernel((CUfunction)f, d[0], d[1], d[2], d[3], d[4], d[5], d[6], (CUstream)s, NULL, NULL);
    void *buf = fgs_scratch(S, n);
    if (!buf) return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(buf, params, n);
    size_t size = n;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    return S->api->cuLaunchKernel((CUfunction)f, d[0], d[1], d[2], d[3], d[4], d[5], d[6], (CUstream)s, NULL, extra);
}
