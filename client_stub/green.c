/* green.c — green contexts (SM partitions of a device) as the stub forwards them: splitting an SM resource by count,
 * generating a descriptor, creating and destroying a green context. Resources (CUdevResource) are plain structs that
 * travel by value, the driver's internal bytes included; descriptors and green contexts are virtual ids of the node
 * (server/replay/green.c). The context cuCtxFromGreenCtx gives is an ordinary context id: it is set current, pushed
 * and named like any other (ctx.c), and when its green context is destroyed the node names it, so that it leaves the
 * thread's context stack as a destroyed context does. The other calls of the family are generic. */
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

/* As the node's bound: the most groups one split returns and resources one descriptor takes. */
#define GREEN_MAX_RESOURCES 1024u

CUresult fgc_cuDevSmResourceSplitByCount(CUdevResource *result, unsigned int *nbGroups, const CUdevResource *input,
                                         CUdevResource *remaining, unsigned int useFlags, unsigned int minCount) {
    FGC_REQUIRE_INIT();
    uint32_t nb = nbGroups ? *nbGroups : 0;
    if (result && nb > GREEN_MAX_RESOURCES) nb = GREEN_MAX_RESOURCES; /* a device has far fewer SMs */
    size_t cap = 4 + sizeof(CUdevResource) * (1 + (result ? nb : 0));
    uint8_t *rep = NULL;
    CUresult r = CUDA_SUCCESS;
    fg_writer *w = fgc_begin_var(FG_OP_cuDevSmResourceSplitByCount, cap, &rep, &r);
    if (!w) return r;
    uint8_t want_result = result != NULL, has_nb = nbGroups != NULL, has_input = input != NULL;
    uint8_t want_rem = remaining != NULL;
    fg_put(w, &want_result, 1);
    fg_put_u32(w, nb);
    fg_put(w, &has_nb, 1);
    fg_put(w, &has_input, 1);
    if (input) fg_put(w, input, sizeof *input);
    fg_put(w, &want_rem, 1);
    fg_put_u32(w, useFlags);
    fg_put_u32(w, minCount);
    fg_reader rd;
    if ((r = fgc_sync_var_reply(rep, cap, &rd)) != CUDA_SUCCESS) return r;
    uint32_t got = fg_get_u32(&rd);
    const uint8_t *rem = want_rem ? fg_take(&rd, sizeof(CUdevResource)) : NULL;
    const uint8_t *groups = NULL;
    if (result && got <= nb) groups = got ? fg_take(&rd, (size_t)got * sizeof(CUdevResource)) : rd.p;
    if (rd.failed || (want_rem && !rem) || (result && !groups) || rd.p != rd.end) {
        free(rep);
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (nbGroups) *nbGroups = got;
    if (remaining) memcpy(remaining, rem, sizeof *remaining);
    if (result && got) memcpy(result, groups, (size_t)got * sizeof *result);
    free(rep);
    return CUDA_SUCCESS;
}

CUresult fgc_cuDevResourceGenerateDesc(CUdevResourceDesc *phDesc, CUdevResource *resources, unsigned int nbResources) {
    FGC_REQUIRE_INIT();
    if (nbResources > GREEN_MAX_RESOURCES) {
        static int logged;
        if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
            fgc_log(FGC_LOG_WARN, "cuDevResourceGenerateDesc with more than %u resources: refused with "
                                  "CUDA_ERROR_INVALID_VALUE (a device has far fewer SM groups)", GREEN_MAX_RESOURCES);
        return CUDA_ERROR_INVALID_VALUE;
    }
    uint64_t id = 0;
    fg_writer *w = fgc_begin(FG_OP_cuDevResourceGenerateDesc);
    if (!w) return fgc_last_error();
    uint8_t want = phDesc != NULL, has = resources != NULL;
    fg_put(w, &want, 1);
    fg_put_u32(w, nbResources);
    fg_put(w, &has, 1);
    if (resources && nbResources) fg_put(w, resources, (size_t)nbResources * sizeof *resources);
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS && phDesc) *phDesc = (CUdevResourceDesc)(uintptr_t)id;
    return r;
}

CUresult fgc_cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev, unsigned int flags) {
    FGC_REQUIRE_INIT();
    if (!phCtx) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = 0;
    fg_writer *w = fgc_begin(FG_OP_cuGreenCtxCreate);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, desc);
    fg_put(w, &dev, sizeof dev);
    fg_put_u32(w, flags);
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *phCtx = (CUgreenCtx)(uintptr_t)id;
    return r;
}

CUresult fgc_cuGreenCtxDestroy(CUgreenCtx hCtx) {
    FGC_REQUIRE_INIT();
    uint64_t ctx = 0;
    fg_writer *w = fgc_begin(FG_OP_cuGreenCtxDestroy);
    if (!w) return fgc_last_error();
    fgc_memo_clear(); /* ids of its objects may be reused */
    fgc_put_handle(w, hCtx);
    fgc_expect(&ctx, sizeof ctx);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS && ctx) fgc_ctx_gone(ctx); /* the context converted from it went with it */
    return r;
}
