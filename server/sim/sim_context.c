/* sim_context.c - contexts: the per-device primary context (retain/release/reset/state/flags), created
 * contexts (cuCtxCreate_v4), the per-thread current-context stack, and the queries on a context (device, id,
 * flags, API version; the CUDA 12.5+ forms that name the context: cuCtxGetDevice_v2, cuCtxSynchronize_v2).
 *
 * The stack is thread-local and holds handle values only. Any handle taken from it is re-validated against the
 * registry before use, so a context destroyed on another thread makes later calls on this one fail with
 * CUDA_ERROR_INVALID_CONTEXT rather than touch freed memory. Destroying a context (or releasing the primary
 * context to zero, or resetting it) frees everything it owns, as the real driver does. Every context gets a
 * process-unique id (cuCtxGetId); a primary context gets a new one each time it becomes active again, since
 * the driver then creates it anew.
 * A context converted from a green context (sim_green.c) is one of its own on the stack and for streams and
 * queries, but what is made in it (memory, modules, events) belongs to its device's primary context, as green
 * contexts share the primary context's: sim_current_ctx gives that "home" context, sim_current_ctx_exact the
 * one on the stack. */
#include "sim.h"

#include <stdlib.h>

#define STACK_MAX 64

static _Thread_local CUcontext t_stack[STACK_MAX];
static _Thread_local int t_depth;

static struct sim_ctx *find_ctx(CUcontext c) { return sim_reg_find(c, SIM_KIND_CTX); }
static void unstack(CUcontext c);

static unsigned long long g_next_ctx_id;

unsigned long long sim_ctx_next_id(void) { return ++g_next_ctx_id; }

CUresult sim_current_ctx_exact(struct sim_ctx **out)
{
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    struct sim_ctx *c = t_depth > 0 ? find_ctx(t_stack[t_depth - 1]) : NULL;
    if (!c || !c->active)
        return CUDA_ERROR_INVALID_CONTEXT;
    if (out)
        *out = c;
    return CUDA_SUCCESS;
}

struct sim_ctx *sim_ctx_home(struct sim_ctx *c) { return c && c->green ? sim_g.dev[c->device].primary : c; }

CUresult sim_current_ctx(struct sim_ctx **out)
{
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx_exact(&c);
    if (rc == CUDA_SUCCESS && out)
        *out = sim_ctx_home(c);
    return rc;
}

void sim_ctx_unstack(CUcontext c) { unstack(c); }

static int valid_ctx_flags(unsigned int flags)
{
    if (flags & ~(unsigned int)CU_CTX_FLAGS_MASK)
        return 0;
    switch (flags & CU_CTX_SCHED_MASK) {
    case CU_CTX_SCHED_AUTO:
    case CU_CTX_SCHED_SPIN:
    case CU_CTX_SCHED_YIELD:
    case CU_CTX_SCHED_BLOCKING_SYNC:
        return 1;
    default:
        return 0;
    }
}

void sim_ctx_release_resources(struct sim_ctx *ctx)
{
    void *batch[64];
    size_t n;
    ctx->npeers = 0; /* its peer access ends with it (a primary context made active again starts without) */
    while ((n = sim_reg_collect(SIM_KIND_MODULE, ctx, batch, 64)) > 0)
        for (size_t i = 0; i < n; i++)
            sim_module_destroy_obj(batch[i]);
    while ((n = sim_reg_collect(SIM_KIND_STREAM, ctx, batch, 64)) > 0)
        for (size_t i = 0; i < n; i++)
            sim_stream_destroy_obj(batch[i]);
    while ((n = sim_reg_collect(SIM_KIND_EVENT, ctx, batch, 64)) > 0)
        for (size_t i = 0; i < n; i++)
            sim_event_destroy_obj(batch[i]);
    struct sim_seg *segs[64];
    while ((n = sim_seg_collect_owned(ctx, NULL, segs, 64)) > 0)
        for (size_t i = 0; i < n; i++)
            sim_seg_free(segs[i]);
}

/* Removes every occurrence of c from this thread's stack (other threads re-validate lazily). */
static void unstack(CUcontext c)
{
    int w = 0;
    for (int r = 0; r < t_depth; r++)
        if (t_stack[r] != c)
            t_stack[w++] = t_stack[r];
    t_depth = w;
}

/* ---- primary context ---- */

SIM_API CUresult cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS) {
        struct sim_ctx *p = sim_g.dev[dev].primary;
        if (!p->active)
            p->id = sim_ctx_next_id(); /* a new context as far as the program can tell */
        p->refcount++;
        p->active = 1;
        *pctx = (CUcontext)p;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDevicePrimaryCtxRelease(CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS) {
        struct sim_ctx *p = sim_g.dev[dev].primary;
        if (p->refcount == 0) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else if (--p->refcount == 0) {
            sim_ctx_release_resources(p);
            p->active = 0;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDevicePrimaryCtxReset(CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS) {
        struct sim_ctx *p = sim_g.dev[dev].primary;
        sim_ctx_release_resources(p);
        p->refcount = 0;
        p->active = 0;
        p->flags = 0;
        p->limit_set = 0;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDevicePrimaryCtxGetState(CUdevice dev, unsigned int *flags, int *active)
{
    if (!flags || !active)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS) {
        *flags = sim_g.dev[dev].primary->flags;
        *active = sim_g.dev[dev].primary->active;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDevicePrimaryCtxSetFlags(CUdevice dev, unsigned int flags)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS) {
        if (!valid_ctx_flags(flags))
            rc = CUDA_ERROR_INVALID_VALUE;
        else
            sim_g.dev[dev].primary->flags = flags;
    }
    sim_unlock();
    return rc;
}

/* ---- created contexts ---- */

SIM_API CUresult cuCtxCreate(CUcontext *pctx, CUctxCreateParams *ctxCreateParams, unsigned int flags, CUdevice dev)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS && !valid_ctx_flags(flags))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS && ctxCreateParams &&
        (ctxCreateParams->numExecAffinityParams != 0 || ctxCreateParams->cigParams != NULL)) {
        sim_log_once("cuCtxCreate_v4 (execution affinity / CIG parameters)", "not supported by the simulated device");
        rc = CUDA_ERROR_NOT_SUPPORTED;
    }
    if (rc == CUDA_SUCCESS && t_depth >= STACK_MAX)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    struct sim_ctx *c = NULL;
    if (rc == CUDA_SUCCESS) {
        c = calloc(1, sizeof *c);
        if (!c || sim_reg_add(c) != 0) {
            free(c);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    if (rc == CUDA_SUCCESS) {
        c->h.kind = SIM_KIND_CTX;
        c->device = dev;
        c->flags = flags;
        c->active = 1;
        c->id = sim_ctx_next_id();
        t_stack[t_depth++] = (CUcontext)c;
        *pctx = (CUcontext)c;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxDestroy(CUcontext ctx)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_ctx *c = rc == CUDA_SUCCESS ? find_ctx(ctx) : NULL;
    if (rc == CUDA_SUCCESS && (!c || c->primary || c->green)) /* a green context's goes with cuGreenCtxDestroy */
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS) {
        sim_ctx_release_resources(c);
        sim_reg_remove(c);
        unstack(ctx);
        free(c);
    }
    sim_unlock();
    return rc;
}

/* ---- the current-context stack ---- */

SIM_API CUresult cuCtxSetCurrent(CUcontext ctx)
{
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS) {
        if (!ctx) {
            if (t_depth > 0)
                t_depth--;
        } else if (!find_ctx(ctx)) {
            rc = CUDA_ERROR_INVALID_CONTEXT;
        } else if (t_depth == 0) {
            t_stack[t_depth++] = ctx;
        } else {
            t_stack[t_depth - 1] = ctx;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxGetCurrent(CUcontext *pctx)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS)
        *pctx = t_depth > 0 ? t_stack[t_depth - 1] : NULL;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxPushCurrent(CUcontext ctx)
{
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && !find_ctx(ctx))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS && t_depth >= STACK_MAX)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS)
        t_stack[t_depth++] = ctx;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxPopCurrent(CUcontext *pctx)
{
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && t_depth == 0)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS) {
        CUcontext top = t_stack[--t_depth];
        if (pctx)
            *pctx = top;
    }
    sim_unlock();
    return rc;
}

/* For the calls taking an optional context (called with the lock held): ctx itself when given (live and
 * active), else the current context. */
static CUresult ctx_or_current(CUcontext ctx, struct sim_ctx **out)
{
    if (!ctx)
        return sim_current_ctx_exact(out);
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    *out = find_ctx(ctx);
    return *out && (*out)->active ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT;
}

/* CUDA 12.5+: the device of ctx, or of the current context when ctx is NULL. */
SIM_API CUresult cuCtxGetDevice_v2(CUdevice *device, CUcontext ctx)
{
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = ctx_or_current(ctx, &c);
    if (rc == CUDA_SUCCESS)
        *device = c->device;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxGetDevice(CUdevice *device) { return cuCtxGetDevice_v2(device, NULL); }

SIM_API CUresult cuCtxGetFlags(unsigned int *flags)
{
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS)
        *flags = c->flags;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxGetId(CUcontext ctx, unsigned long long *ctxId)
{
    if (!ctxId)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = ctx_or_current(ctx, &c);
    if (rc == CUDA_SUCCESS)
        *ctxId = c->id;
    sim_unlock();
    return rc;
}

/* CUDA 12.5+: synchronizes ctx (the current context when NULL); its work has completed at enqueue. */
SIM_API CUresult cuCtxSynchronize_v2(CUcontext ctx)
{
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = ctx_or_current(ctx, &c);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxSynchronize(void) { return cuCtxSynchronize_v2(NULL); }

SIM_API CUresult cuCtxGetApiVersion(CUcontext ctx, unsigned int *version)
{
    if (!version)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = ctx ? sim_check_init() : sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS && ctx) {
        c = find_ctx(ctx);
        if (!c)
            rc = CUDA_ERROR_INVALID_CONTEXT;
    }
    if (rc == CUDA_SUCCESS)
        *version = 13000;
    sim_unlock();
    return rc;
}

/* Context limits: the defaults of a real H100 context, each settable; a limit the simulated device does not know is
 * CUDA_ERROR_UNSUPPORTED_LIMIT. A primary context's reset restores the defaults. */
static const size_t limit_default[7] = {1024, 1048576, 8388608, 2, 2048, 64, 0};

SIM_API CUresult cuCtxGetLimit(size_t *pvalue, CUlimit limit)
{
    if (!pvalue)
        return CUDA_ERROR_INVALID_VALUE;
    if ((unsigned)limit >= 7)
        return CUDA_ERROR_UNSUPPORTED_LIMIT;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS)
        *pvalue = (c->limit_set >> limit) & 1u ? c->limit[limit] : limit_default[limit];
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxSetLimit(CUlimit limit, size_t value)
{
    if ((unsigned)limit >= 7)
        return CUDA_ERROR_UNSUPPORTED_LIMIT;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS) {
        c->limit[limit] = value;
        c->limit_set |= 1u << limit;
    }
    sim_unlock();
    return rc;
}
