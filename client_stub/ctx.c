/* ctx.c — contexts as the stub sees them. The current context is thread-local state in the stub (so
 * cuCtxGetCurrent costs no round trip); before a thread's next record the batch carries a SET_CTX record
 * whenever the server's current context differs. Creation and destruction go to the server. */
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define CTX_STACK_MAX 64

static __thread uint64_t t_stack[CTX_STACK_MAX];
static __thread int t_depth; /* t_stack[t_depth-1] is current; depth 0: none */

uint64_t fgc_ctx_current(void) { return t_depth ? t_stack[t_depth - 1] : 0; }

void fgc_ctx_set_current(uint64_t id) {
    if (t_depth == 0) {
        if (id == 0) return;
        t_depth = 1;
    }
    t_stack[t_depth - 1] = id;
}

void fgc_ctx_forget(uint64_t id) {
    /* Drop a destroyed context from this thread's stack; other threads find out from the server. */
    for (int i = 0; i < t_depth; i++)
        if (t_stack[i] == id) t_stack[i] = 0;
    if (g_fgc.ctx_sent == id) g_fgc.ctx_sent = UINT64_MAX;
}

CUresult fgc_cuCtxSetCurrent(CUcontext ctx) {
    FGC_REQUIRE_INIT();
    fgc_ctx_set_current(fgc_handle_id(ctx));
    return CUDA_SUCCESS;
}

CUresult fgc_cuCtxGetCurrent(CUcontext *pctx) {
    FGC_REQUIRE_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = (CUcontext)(uintptr_t)fgc_ctx_current();
    return CUDA_SUCCESS;
}

CUresult fgc_cuCtxPushCurrent_v2(CUcontext ctx) {
    FGC_REQUIRE_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_CONTEXT;
    if (t_depth >= CTX_STACK_MAX) return CUDA_ERROR_INVALID_VALUE;
    t_stack[t_depth++] = fgc_handle_id(ctx);
    return CUDA_SUCCESS;
}

CUresult fgc_cuCtxPopCurrent_v2(CUcontext *pctx) {
    FGC_REQUIRE_INIT();
    if (t_depth == 0) return CUDA_ERROR_INVALID_CONTEXT;
    uint64_t id = t_stack[--t_depth];
    if (pctx) *pctx = (CUcontext)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult fgc_cuCtxCreate_v4(CUcontext *pctx, CUctxCreateParams *params, unsigned int flags, CUdevice dev) {
    FGC_REQUIRE_INIT();
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    if (params && (params->execAffinityParams || params->cigParams)) {
        static int logged;
        return fgc_unsupported("cuCtxCreate_v4 with execution-affinity or CIG parameters", &logged);
    }
    uint64_t id = 0;
    fg_writer *w = fgc_begin(FG_OP_cuCtxCreate_v4);
    if (!w) return fgc_last_error();
    fg_put_u32(w, flags);
    fg_put(w, &dev, sizeof dev);
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) {
        /* The new context is current on the calling thread, here and on the server. */
        if (t_depth < CTX_STACK_MAX) t_stack[t_depth++] = id;
        pthread_mutex_lock(&g_fgc.mu);
        g_fgc.ctx_sent = id;
        pthread_mutex_unlock(&g_fgc.mu);
        *pctx = (CUcontext)(uintptr_t)id;
    }
    return r;
}

CUresult fgc_cuCtxDestroy_v2(CUcontext ctx) {
    FGC_REQUIRE_INIT();
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuCtxDestroy_v2);
    if (!w) return fgc_last_error();
    fgc_memo_clear(); /* ids of the context's objects may be reused */
    fgc_put_handle(w, ctx);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) fgc_ctx_gone(fgc_handle_id(ctx));
    return r;
}

void fgc_ctx_gone(uint64_t id) {
    pthread_mutex_lock(&g_fgc.mu);
    fgc_ctx_forget(id);
    pthread_mutex_unlock(&g_fgc.mu);
    while (t_depth > 0 && t_stack[t_depth - 1] == 0) t_depth--;
    fgc_cls_context_gone(id);
}
