/* link.c — JIT linking for one session: cuLinkCreate_v2, cuLinkAddData_v2 (cuLinkAddFile_v2 arrives as data: the
 * stub reads the file on the client), cuLinkComplete and cuLinkDestroy.
 *
 * A link state is a per-session virtual handle (FGH_LINKSTATE) naming a fgs_link that holds the driver's state,
 * its JIT option arrays and the log buffers this worker allocated for them, the input images (kept until the
 * link goes), and, once complete, the driver's cubin. JIT options arrive as (option, value) pairs: scalar values
 * as the application gave them, a log buffer as the capacity the application has. The worker refuses what would
 * hand the driver a client pointer (symbol name and address arrays) and clamps every log size to the buffer it
 * allocated, so the driver never writes outside worker memory. Because the driver keeps cuLinkCreate's arrays
 * and writes its logs, sizes and wall time into them during the link's life, every link call answers with those
 * outputs, and with the outputs of its own per-input options, even when the call failed (that is when an error
 * log matters): the record's result is then CUDA_SUCCESS and the driver's result is the first field of the reply.
 *
 * Replies: create "u32 result, u64 id, outputs"; add "u32 result, outputs(create), outputs(own)"; complete
 * "u32 result, outputs(create), u64 size, u64 offset, u32 n, n bytes of the cubin". A complete with a non-zero
 * offset calls no driver function: it sends the next piece of the cubin already made, so a cubin larger than one
 * reply comes back in pieces. outputs = "u32 count, count x (u32 index, u64 value slot, u32 n, n log bytes)". */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_jit.h"
#include "fgs_session.h"

#define MAX_LINKS 256

typedef struct {
    fgs_jit o; /* cuLinkCreate's options: the driver keeps and writes them until cuLinkDestroy */
    CUlinkState st;
    const void *cubin; /* owned by the driver's link state */
    size_t cubin_n;
    uint8_t **inputs;
    size_t n_inputs;
} fgs_link;

static size_t g_live; /* one worker process serves one session */

static void link_free(fgs_link *L) {
    fgs_jit_free(&L->o);
    for (size_t i = 0; i < L->n_inputs; i++) free(L->inputs[i]);
    free(L->inputs);
    free(L);
}

static fgs_link *link_get(fgs_session *S, uint64_t id) {
    void *p;
    return fgs_handle_get(S, FGH_LINKSTATE, id, &p) || !p ? NULL : (fgs_link *)p;
}

CUresult fgs_cuLinkCreate_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    fgs_link *L = (fgs_link *)calloc(1, sizeof *L);
    if (!L) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = fgs_jit_decode(S, r, &L->o);
    if (res == FGS_PROTOCOL_ERROR || (res == CUDA_SUCCESS && fg_reader_left(r))) {
        link_free(L);
        return FGS_PROTOCOL_ERROR;
    }
    if (res == CUDA_SUCCESS && !S->api->cuLinkCreate_v2) res = fgs_missing(S, "cuLinkCreate_v2");
    if (res == CUDA_SUCCESS && g_live >= MAX_LINKS) res = CUDA_ERROR_OUT_OF_MEMORY;
    if (res == CUDA_SUCCESS) res = S->api->cuLinkCreate_v2(L->o.n, L->o.opt, L->o.val, &L->st);
    uint64_t id = 0;
    if (res == CUDA_SUCCESS) {
        id = fgs_handle_add(S, FGH_LINKSTATE, L);
        g_live++;
    }
    fg_put_u32(out, (uint32_t)res);
    fg_put_u64(out, id);
    fgs_jit_outputs(&L->o, out);
    if (res != CUDA_SUCCESS) link_free(L);
    return CUDA_SUCCESS;
}

/* Record: the image as fgs_image_get reads it, its extra bytes "u64 link, u32 type, u32 has_name, [cstr name],
 * options". */
CUresult fgs_cuLinkAddData_v2(fgs_session *S, fg_reader *r, fg_writer *out) {
    fg_reader peek = *r;
    fg_take(&peek, 32 + 8);
    uint32_t extra_n = fg_get_u32(&peek);
    const uint8_t *extra = fg_take(&peek, extra_n);
    if (peek.failed) return FGS_PROTOCOL_ERROR;
    fg_reader x;
    fg_reader_init(&x, extra, extra_n);
    uint64_t lid = fg_get_u64(&x);
    uint32_t type = fg_get_u32(&x), has_name = fg_get_u32(&x);
    const char *name = has_name ? fgs_get_cstr(&x) : NULL;
    if (x.failed || has_name > 1) return FGS_PROTOCOL_ERROR;
    fgs_jit own;
    CUresult res = fgs_jit_decode(S, &x, &own);
    if (res == FGS_PROTOCOL_ERROR || (res == CUDA_SUCCESS && fg_reader_left(&x))) {
        fgs_jit_free(&own);
        return FGS_PROTOCOL_ERROR;
    }
    fgs_link *L = link_get(S, lid);
    if (!L) {
        fgs_jit_free(&own);
        return CUDA_ERROR_INVALID_HANDLE; /* no link state: nothing of it to report */
    }
    uint64_t n = 0;
    CUresult got;
    const uint8_t *img = fgs_image_get(S, r, &n, &got);
    if (!img && got == (CUresult)FG_RESULT_NEED_IMAGE) {
        fgs_jit_free(&own);
        return got; /* the stub sends the bytes and repeats the record */
    }
    if (img) {
        /* The image is the link's from now on (fgs_image_get appended it to the session's list). */
        S->n_images--;
        uint8_t **ni = (uint8_t **)realloc(L->inputs, (L->n_inputs + 1) * sizeof *ni);
        if (!ni) {
            free((void *)img);
            img = NULL;
            got = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            L->inputs = ni;
            L->inputs[L->n_inputs++] = (uint8_t *)img;
        }
    }
    if (res == CUDA_SUCCESS) res = img ? CUDA_SUCCESS : got;
    if (res == CUDA_SUCCESS && type > CU_JIT_INPUT_NVVM) res = CUDA_ERROR_INVALID_VALUE;
    if (res == CUDA_SUCCESS && !S->api->cuLinkAddData_v2) res = fgs_missing(S, "cuLinkAddData_v2");
    if (res == CUDA_SUCCESS)
        res = S->api->cuLinkAddData_v2(L->st, (CUjitInputType)type, (void *)img, (size_t)n, name, own.n, own.opt,
                                       own.val);
    fg_put_u32(out, (uint32_t)res);
    fgs_jit_outputs(&L->o, out);
    fgs_jit_outputs(&own, out);
    fgs_jit_free(&own);
    return CUDA_SUCCESS;
}

CUresult fgs_cuLinkComplete(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t lid = fg_get_u64(r), off = fg_get_u64(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    fgs_link *L = link_get(S, lid);
    if (!L) return CUDA_ERROR_INVALID_HANDLE;
    CUresult res = CUDA_SUCCESS;
    if (off == 0) {
        void *cubin = NULL;
        size_t size = 0;
        res = S->api->cuLinkComplete ? S->api->cuLinkComplete(L->st, &cubin, &size) : fgs_missing(S, "cuLinkComplete");
        if (res == CUDA_SUCCESS && (!cubin || !size || size > FG_MAX_IMAGE)) res = CUDA_ERROR_INVALID_IMAGE;
        if (res == CUDA_SUCCESS) {
            L->cubin = cubin;
            L->cubin_n = size;
        }
    } else if (!L->cubin || off >= L->cubin_n) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    fg_put_u32(out, (uint32_t)res);
    if (off == 0) fgs_jit_outputs(&L->o, out);
    else fg_put_u32(out, 0);
    size_t piece = S->max_frame > (24u << 20) ? S->max_frame - (16u << 20) : S->max_frame / 4;
    if (piece > FG_CHUNK) piece = FG_CHUNK;
    size_t len = 0;
    if (res == CUDA_SUCCESS) len = L->cubin_n - off < piece ? (size_t)(L->cubin_n - off) : piece;
    fg_put_u64(out, res == CUDA_SUCCESS ? L->cubin_n : 0);
    fg_put_u64(out, off);
    fg_put_u32(out, (uint32_t)len);
    if (len) fg_put(out, (const uint8_t *)L->cubin + off, len);
    return CUDA_SUCCESS;
}

CUresult fgs_cuLinkDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t lid = fg_get_u64(r);
    if (r->failed || fg_reader_left(r)) return FGS_PROTOCOL_ERROR;
    fgs_link *L = link_get(S, lid);
    if (!L) return CUDA_ERROR_INVALID_HANDLE;
    CUresult res = S->api->cuLinkDestroy ? S->api->cuLinkDestroy(L->st) : fgs_missing(S, "cuLinkDestroy");
    if (res != CUDA_SUCCESS) return res;
    fgs_handle_remove(S, FGH_LINKSTATE, lid);
    link_free(L);
    g_live--;
    return CUDA_SUCCESS;
}

void fgs_links_close(fgs_session *S) {
    fgs_table *t = &S->tables[FGH_LINKSTATE];
    for (uint32_t i = 0; i < t->n; i++) {
        fgs_link *L = (fgs_link *)t->real[i];
        if (!L) continue;
        if (S->api->cuLinkDestroy) S->api->cuLinkDestroy(L->st);
        link_free(L);
        t->real[i] = NULL;
    }
    g_live = 0;
}
