/* green.c — green contexts (SM partitions of a device) on the node's driver: splitting an SM resource by count,
 * descriptors, creating and destroying green contexts, and their clean-up when the session ends.
 *
 * Resources (CUdevResource) are plain structs whose bytes, the driver's internal ones included, travel by value in
 * both directions, so a resource the client got from one call is the driver's own when it comes back. Descriptors
 * and green contexts get virtual ids (FGH_DEVRESOURCEDESC, FGH_GREENCTX); the context cuCtxFromGreenCtx converts a
 * green context into is an ordinary context id (FGH_CONTEXT), which green.c drops when its green context goes.
 *
 * A green context is a context of its own in the driver (it holds its own scheduling state and retains the
 * device's primary context): it is charged ctx_charge on its device like a created context, so that partitions
 * are no way around the lease's quota, and uncharged when destroyed. The driver has no call that destroys a
 * descriptor: it lives as long as the worker. The other green-context calls are generic (dispatch.c). */
#include <string.h>

#include "fgs_session.h"

/* The most groups one split returns, and resources one descriptor takes: a device has far fewer SMs. */
#define GREEN_MAX_RESOURCES 1024

/* Record: u8 want result, u32 nbGroups (its value), u8 nbGroups given, u8 input given [+ CUdevResource], u8 want
 * remaining, u32 useFlags, u32 minCount. Reply: u32 groups made [+ CUdevResource remaining] [+ that many groups]. */
CUresult fgs_cuDevSmResourceSplitByCount(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint8_t want_result = 0, has_nb = 0, has_input = 0, want_rem = 0;
    fg_get(r, &want_result, 1);
    uint32_t nb = fg_get_u32(r);
    fg_get(r, &has_nb, 1);
    fg_get(r, &has_input, 1);
    CUdevResource input;
    memset(&input, 0, sizeof input);
    if (has_input) fg_get(r, &input, sizeof input);
    fg_get(r, &want_rem, 1);
    unsigned use_flags = fg_get_u32(r), min_count = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuDevSmResourceSplitByCount) return fgs_missing(S, "cuDevSmResourceSplitByCount");
    /* The driver writes at most nb groups, and never more than the input has SMs: a larger array changes nothing. */
    if (want_result && nb > GREEN_MAX_RESOURCES) nb = GREEN_MAX_RESOURCES;
    CUdevResource *res = NULL;
    if (want_result) {
        res = (CUdevResource *)fgs_scratch(S, (nb ? nb : 1) * sizeof *res);
        if (!res) return CUDA_ERROR_OUT_OF_MEMORY;
        memset(res, 0, (nb ? nb : 1) * sizeof *res);
    }
    CUdevResource rem;
    memset(&rem, 0, sizeof rem);
    CUresult rc = S->api->cuDevSmResourceSplitByCount(res, has_nb ? &nb : NULL, has_input ? &input : NULL,
                                                      want_rem ? &rem : NULL, use_flags, min_count);
    if (rc != CUDA_SUCCESS) return rc;
    if (want_result && nb > GREEN_MAX_RESOURCES) nb = GREEN_MAX_RESOURCES;
    fg_put_u32(out, nb);
    if (want_rem) fg_put(out, &rem, sizeof rem);
    if (want_result) fg_put(out, res, (size_t)nb * sizeof *res);
    return rc;
}

/* Record: u8 want descriptor, u32 nbResources (at most 1024), u8 resources given [+ that many CUdevResource].
 * Reply: u64 descriptor id. */
CUresult fgs_cuDevResourceGenerateDesc(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint8_t want_desc = 0, has_res = 0;
    fg_get(r, &want_desc, 1);
    uint32_t nb = fg_get_u32(r);
    fg_get(r, &has_res, 1);
    if (r->failed || nb > GREEN_MAX_RESOURCES) return FGS_PROTOCOL_ERROR;
    const uint8_t *bytes = has_res ? fg_take(r, (size_t)nb * sizeof(CUdevResource)) : NULL;
    if (r->failed || (has_res && nb && !bytes)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuDevResourceGenerateDesc) return fgs_missing(S, "cuDevResourceGenerateDesc");
    CUdevResource *res = NULL;
    if (has_res) { /* aligned, and writable as the driver's prototype wants */
        res = (CUdevResource *)fgs_scratch(S, (nb ? nb : 1) * sizeof *res);
        if (!res) return CUDA_ERROR_OUT_OF_MEMORY;
        if (nb) memcpy(res, bytes, (size_t)nb * sizeof *res);
    }
    CUdevResourceDesc desc = NULL;
    CUresult rc = S->api->cuDevResourceGenerateDesc(want_desc ? &desc : NULL, res, nb);
    if (rc != CUDA_SUCCESS) return rc;
    uint64_t id = desc ? fgs_handle_add(S, FGH_DEVRESOURCEDESC, desc) : 0;
    if (desc && !id) return CUDA_ERROR_OUT_OF_MEMORY;
    fg_put_u64(out, id);
    return rc;
}

/* Record: u64 descriptor id, CUdevice, u32 flags. Reply: u64 green context id. */
CUresult fgs_cuGreenCtxCreate(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t desc_id = fg_get_u64(r);
    CUdevice dev;
    fg_get(r, &dev, sizeof dev);
    unsigned flags = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *desc = NULL;
    if (fgs_handle_get(S, FGH_DEVRESOURCEDESC, desc_id, &desc)) return CUDA_ERROR_INVALID_VALUE;
    if (!S->api->cuGreenCtxCreate) return fgs_missing(S, "cuGreenCtxCreate");
    if (S->n_green == sizeof S->green / sizeof S->green[0]) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult rc = fgs_charge_dev(S, (int)dev, S->ctx_charge);
    if (rc != CUDA_SUCCESS) return rc;
    CUgreenCtx g = NULL;
    rc = S->api->cuGreenCtxCreate(&g, (CUdevResourceDesc)desc, dev, flags);
    uint64_t id = rc == CUDA_SUCCESS ? fgs_handle_add(S, FGH_GREENCTX, g) : 0;
    if (rc == CUDA_SUCCESS && !id) {
        S->api->cuGreenCtxDestroy(g);
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (rc != CUDA_SUCCESS) {
        fgs_uncharge_dev(S, (int)dev, S->ctx_charge);
        return rc;
    }
    S->green[S->n_green++] = (struct fgs_green){g, (int)dev};
    fg_put_u64(out, id);
    return rc;
}

/* The id of the context green context g converts into, when the session handed one out (0: none). */
static uint64_t converted_id(fgs_session *S, CUgreenCtx g) {
    CUcontext c = NULL;
    if (!S->api->cuCtxFromGreenCtx || S->api->cuCtxFromGreenCtx(&c, g) != CUDA_SUCCESS || !c) return 0;
    return fgs_handle_id_of(S, FGH_CONTEXT, c);
}

static void forget(fgs_session *S, CUgreenCtx g) {
    for (size_t i = 0; i < S->n_green; i++)
        if (S->green[i].green == (void *)g) {
            fgs_uncharge_dev(S, S->green[i].dev, S->ctx_charge);
            S->green[i] = S->green[--S->n_green];
            return;
        }
}

/* Record: u64 green context id. Reply: u64 the id of the converted context that went with it (0: none), so the stub
 * drops it too. */
CUresult fgs_cuGreenCtxDestroy(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t id = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *g = NULL;
    if (fgs_handle_get(S, FGH_GREENCTX, id, &g)) return CUDA_ERROR_INVALID_CONTEXT;
    if (!S->api->cuGreenCtxDestroy) return fgs_missing(S, "cuGreenCtxDestroy");
    uint64_t ctx_id = g ? converted_id(S, (CUgreenCtx)g) : 0;
    CUresult rc = S->api->cuGreenCtxDestroy((CUgreenCtx)g);
    if (rc != CUDA_SUCCESS) return rc;
    fgs_handle_remove(S, FGH_GREENCTX, id);
    if (ctx_id) fgs_handle_remove(S, FGH_CONTEXT, ctx_id);
    forget(S, (CUgreenCtx)g);
    fg_put_u64(out, ctx_id);
    return rc;
}

/* Session end, after its streams and events went: every green context is destroyed (the primary context each
 * retained is released with it), and the contexts converted from them leave the context table, which holds only
 * primary and created contexts for the clean-up that follows. */
void fgs_green_close(fgs_session *S) {
    fgs_table *t = &S->tables[FGH_GREENCTX];
    for (uint32_t i = 0; i < t->n; i++) {
        CUgreenCtx g = (CUgreenCtx)t->real[i];
        if (!g) continue;
        uint64_t ctx_id = converted_id(S, g);
        if (ctx_id) fgs_handle_remove(S, FGH_CONTEXT, ctx_id);
        if (S->api->cuGreenCtxDestroy) S->api->cuGreenCtxDestroy(g);
        forget(S, g);
        t->real[i] = NULL;
    }
}
