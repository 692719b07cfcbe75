/* module.c — modules, functions and launches for a session. An image is copied to an aligned buffer
 * before the driver sees it; cuModuleGetFunction answers with the function's parameter layout; launches
 * pass the client's packed parameter buffer through CU_LAUNCH_PARAM_BUFFER_POINTER. */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

static CUresult load(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t n = fg_get_u64(r);
    const uint8_t *img = fg_take(r, (size_t)n);
    if (r->failed || n == 0) return FGS_PROTOCOL_ERROR;
    void *copy = aligned_alloc(64, (size_t)((n + 63) / 64 * 64));
    if (!copy) return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(copy, img, (size_t)n);
    /* PTX must be NUL-terminated; a client may not make the driver read past the image. */
    uint32_t magic;
    memcpy(&magic, copy, n >= 4 ? 4 : (size_t)n);
    if (n < 4 || (((uint8_t *)copy)[0] != 0x7f && magic != 0xBA55ED50u)) {
        if (((uint8_t *)copy)[n - 1] != 0) {
            free(copy);
            return CUDA_ERROR_INVALID_IMAGE;
        }
    }
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
