/* sim_green.c - green contexts: SM resources of a device, of a context and of a green context; splitting an SM
 * resource by count into equal groups and a remainder; descriptors; green contexts (each retains its device's
 * primary context and has a context of its own that cuCtxFromGreenCtx gives); streams made in a green context;
 * events recorded and waited by a green context; cuStreamGetGreenCtx and cuGreenCtxGetId; execution affinity
 * (cuDeviceGetExecAffinitySupport, cuCtxGetExecAffinity: no SM-count contexts without MPS).
 *
 * The device has 132 SMs (sim_attributes.c). As the header's guideline for compute capability 9.0 puts it, a group
 * has at least 8 SMs and a multiple of 8; SMs come in pairs (smCoscheduledAlignment 2: 132 is a multiple of it).
 * With CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING both are 2. A split makes as many groups of the rounded-up
 * minimum as fit (fewer when asked for fewer) and puts the rest in the remainder.
 * The driver keeps its own bookkeeping in a resource's internal bytes; so does the sim: a tag naming the device and
 * the split the resource came from (0: a whole device's, context's or green context's). A split's output cannot be
 * split again, and one descriptor takes resources of one device from one split only, else
 * CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION, as the header says. Green contexts have no SMs of their own here: a
 * kernel runs as it does anywhere (stream work runs at enqueue, sim_stream.c). */
#include "sim.h"

#include <stdlib.h>
#include <string.h>

#define SMS 132u
#define MIN_PART 8u
#define ALIGN 2u
#define TAG_MAGIC 0x5347u /* "GS" */

struct sim_green {
    struct sim_obj h;
    int device;
    unsigned int sm_count;
    unsigned long long id;
    struct sim_ctx *ctx; /* the context cuCtxFromGreenCtx gives */
};

struct sim_desc {
    struct sim_obj h;
    int device;
    unsigned int sm_count;
};

struct tag {
    uint32_t magic;
    int32_t device;
    uint64_t split;
};

static unsigned long long g_next_green_id, g_next_split;

static struct sim_green *find_green(CUgreenCtx g) { return sim_reg_find(g, SIM_KIND_GREEN); }

static void fill(CUdevResource *r, int device, unsigned int sms, unsigned int min_part, unsigned int align,
                 uint64_t split)
{
    memset(r, 0, sizeof *r);
    r->type = CU_DEV_RESOURCE_TYPE_SM;
    r->sm.smCount = sms;
    r->sm.minSmPartitionSize = min_part;
    r->sm.smCoscheduledAlignment = align;
    struct tag t = {TAG_MAGIC, device, split};
    memcpy(r->_internal_padding, &t, sizeof t);
}

static int tag_of(const CUdevResource *r, struct tag *t)
{
    memcpy(t, r->_internal_padding, sizeof *t);
    return t->magic == TAG_MAGIC && t->device >= 0 && t->device < sim_g.ndev;
}

/* The SM resource of a whole device (sms: its count) into *r, checking the pointer and the type. */
static CUresult get_resource(CUdevResource *r, CUdevResourceType type, int device, unsigned int sms)
{
    if (!r)
        return CUDA_ERROR_INVALID_VALUE;
    if (type != CU_DEV_RESOURCE_TYPE_SM)
        return CUDA_ERROR_INVALID_RESOURCE_TYPE;
    fill(r, device, sms, MIN_PART, ALIGN, 0);
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDeviceGetDevResource(CUdevice device, CUdevResource *resource, CUdevResourceType type)
{
    sim_lock();
    CUresult rc = sim_check_device(device);
    if (rc == CUDA_SUCCESS)
        rc = get_resource(resource, type, device, SMS);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxGetDevResource(CUcontext hCtx, CUdevResource *resource, CUdevResourceType type)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_ctx *c = rc == CUDA_SUCCESS ? sim_reg_find(hCtx, SIM_KIND_CTX) : NULL;
    if (rc == CUDA_SUCCESS && (!c || !c->active))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        rc = get_resource(resource, type, c->device, c->green ? c->green->sm_count : SMS);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuGreenCtxGetDevResource(CUgreenCtx hCtx, CUdevResource *resource, CUdevResourceType type)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_green *g = rc == CUDA_SUCCESS ? find_green(hCtx) : NULL;
    if (rc == CUDA_SUCCESS && !g)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        rc = get_resource(resource, type, g->device, g->sm_count);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDevSmResourceSplitByCount(CUdevResource *result, unsigned int *nbGroups, const CUdevResource *input,
                                             CUdevResource *remaining, unsigned int useFlags, unsigned int minCount)
{
    const unsigned int known = CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING |
                               CU_DEV_SM_RESOURCE_SPLIT_MAX_POTENTIAL_CLUSTER_SIZE;
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!nbGroups || !input || (useFlags & ~known))
        return CUDA_ERROR_INVALID_VALUE;
    if (input->type != CU_DEV_RESOURCE_TYPE_SM)
        return CUDA_ERROR_INVALID_RESOURCE_TYPE;
    struct tag t;
    if (!tag_of(input, &t) || t.split != 0) /* not the driver's, or a split's output */
        return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION;
    unsigned int have = input->sm.smCount;
    if (minCount > have)
        return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION;
    unsigned int min_part = MIN_PART, align = ALIGN;
    if (useFlags & CU_DEV_SM_RESOURCE_SPLIT_IGNORE_SM_COSCHEDULING)
        min_part = align = 2;
    unsigned int size = minCount > min_part ? minCount : min_part;
    size = (size + align - 1) / align * align;
    unsigned int fit = size <= have ? have / size : 0;
    unsigned int n = result ? (*nbGroups < fit ? *nbGroups : fit) : fit;
    sim_lock();
    uint64_t split = ++g_next_split;
    sim_unlock();
    for (unsigned int i = 0; result && i < n; i++)
        fill(&result[i], t.device, size, min_part, align, split);
    if (remaining)
        fill(remaining, t.device, have - n * size, min_part, align, split);
    *nbGroups = n;
    return CUDA_SUCCESS;
}

SIM_API CUresult cuDevResourceGenerateDesc(CUdevResourceDesc *phDesc, CUdevResource *resources,
                                           unsigned int nbResources)
{
    CUresult rc = sim_check_init();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!phDesc || !resources || nbResources == 0)
        return CUDA_ERROR_INVALID_VALUE;
    struct tag first = {0, 0, 0};
    unsigned int sms = 0;
    for (unsigned int i = 0; i < nbResources; i++) {
        struct tag t;
        if (resources[i].type != CU_DEV_RESOURCE_TYPE_SM)
            return CUDA_ERROR_INVALID_RESOURCE_TYPE;
        if (!tag_of(&resources[i], &t))
            return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION;
        if (i == 0)
            first = t;
        else if (t.device != first.device || t.split != first.split || t.split == 0)
            return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION; /* several: one device, one split */
        sms += resources[i].sm.smCount;
    }
    if (sms == 0)
        return CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION;
    struct sim_desc *d = calloc(1, sizeof *d);
    sim_lock();
    if (!d || sim_reg_add(d) != 0) {
        sim_unlock();
        free(d);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    d->h.kind = SIM_KIND_DESC;
    d->device = first.device;
    d->sm_count = sms;
    *phDesc = (CUdevResourceDesc)d;
    sim_unlock();
    return CUDA_SUCCESS;
}

SIM_API CUresult cuGreenCtxCreate(CUgreenCtx *phCtx, CUdevResourceDesc desc, CUdevice dev, unsigned int flags)
{
    if (!phCtx || flags != CU_GREEN_CTX_DEFAULT_STREAM)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_device(dev);
    struct sim_desc *d = rc == CUDA_SUCCESS ? sim_reg_find(desc, SIM_KIND_DESC) : NULL;
    if (rc == CUDA_SUCCESS && (!d || d->device != dev))
        rc = CUDA_ERROR_INVALID_VALUE;
    struct sim_green *g = NULL;
    struct sim_ctx *c = NULL;
    if (rc == CUDA_SUCCESS) {
        g = calloc(1, sizeof *g);
        c = calloc(1, sizeof *c);
        if (!g || !c || sim_reg_add(g) != 0) {
            free(g);
            free(c);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else if (sim_reg_add(c) != 0) {
            sim_reg_remove(g);
            free(g);
            free(c);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    if (rc == CUDA_SUCCESS) {
        struct sim_ctx *p = sim_g.dev[dev].primary; /* retained, as cuDevicePrimaryCtxRetain does */
        if (!p->active)
            p->id = sim_ctx_next_id();
        p->refcount++;
        p->active = 1;
        g->h.kind = SIM_KIND_GREEN;
        g->device = dev;
        g->sm_count = d->sm_count;
        g->id = ++g_next_green_id;
        g->ctx = c;
        c->h.kind = SIM_KIND_CTX;
        c->device = dev;
        c->flags = p->flags;
        c->active = 1;
        c->id = sim_ctx_next_id();
        c->green = g;
        *phCtx = (CUgreenCtx)g;
    }
    sim_unlock();
    return rc;
}

/* Its streams go (the driver leaves them unusable); what was made in it belongs to the primary context and stays. */
SIM_API CUresult cuGreenCtxDestroy(CUgreenCtx hCtx)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_green *g = rc == CUDA_SUCCESS ? find_green(hCtx) : NULL;
    if (rc == CUDA_SUCCESS && !g)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS) {
        void *batch[64];
        size_t n;
        while ((n = sim_reg_collect(SIM_KIND_STREAM, g->ctx, batch, 64)) > 0)
            for (size_t i = 0; i < n; i++)
                sim_stream_destroy_obj(batch[i]);
        sim_ctx_unstack((CUcontext)g->ctx);
        sim_reg_remove(g->ctx);
        free(g->ctx);
        sim_reg_remove(g);
        struct sim_ctx *p = sim_g.dev[g->device].primary;
        if (p->refcount > 0 && --p->refcount == 0) {
            sim_ctx_release_resources(p);
            p->active = 0;
        }
        free(g);
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxFromGreenCtx(CUcontext *pContext, CUgreenCtx hCtx)
{
    if (!pContext)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_green *g = rc == CUDA_SUCCESS ? find_green(hCtx) : NULL;
    if (rc == CUDA_SUCCESS && !g)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        *pContext = (CUcontext)g->ctx;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuGreenCtxStreamCreate(CUstream *phStream, CUgreenCtx greenCtx, unsigned int flags, int priority)
{
    if (!phStream || flags != CU_STREAM_NON_BLOCKING) /* non-blocking must be given, nothing else may be */
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_green *g = rc == CUDA_SUCCESS ? find_green(greenCtx) : NULL;
    if (rc == CUDA_SUCCESS && !g)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        rc = sim_stream_create_in(g->ctx, phStream, flags, priority);
    sim_unlock();
    return rc;
}

static CUresult green_event(CUgreenCtx hCtx, CUevent hEvent, int record)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_green *g = rc == CUDA_SUCCESS ? find_green(hCtx) : NULL;
    if (rc == CUDA_SUCCESS && !g)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        rc = sim_event_green(hEvent, g->device, record);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuGreenCtxRecordEvent(CUgreenCtx hCtx, CUevent hEvent) { return green_event(hCtx, hEvent, 1); }
SIM_API CUresult cuGreenCtxWaitEvent(CUgreenCtx hCtx, CUevent hEvent) { return green_event(hCtx, hEvent, 0); }

SIM_API CUresult cuStreamGetGreenCtx(CUstream hStream, CUgreenCtx *phCtx)
{
    if (!phCtx)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_green *g = NULL;
    CUresult rc = sim_stream_green(hStream, &g);
    if (rc == CUDA_SUCCESS)
        *phCtx = (CUgreenCtx)g;
    sim_unlock();
    return rc;
}

/* NULL: the green context current on this thread (converted and set current), else CUDA_ERROR_INVALID_CONTEXT. */
SIM_API CUresult cuGreenCtxGetId(CUgreenCtx greenCtx, unsigned long long *greenCtxId)
{
    if (!greenCtxId)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_green *g = NULL;
    struct sim_ctx *c = NULL;
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && greenCtx)
        g = find_green(greenCtx);
    else if (rc == CUDA_SUCCESS && sim_current_ctx_exact(&c) == CUDA_SUCCESS)
        g = c->green;
    if (rc == CUDA_SUCCESS && !g)
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        *greenCtxId = g->id;
    sim_unlock();
    return rc;
}

/* Execution affinity. An SM-count limit is set at context creation and, as the header says, only under Volta+
 * MPS; the simulated device runs no MPS server (cuCtxCreate_v4 refuses affinity parameters), so SM_COUNT support
 * is 0, as a GPU's driver answers without MPS. Types past CU_EXEC_AFFINITY_TYPE_MAX: CUDA_ERROR_INVALID_VALUE. */
SIM_API CUresult cuDeviceGetExecAffinitySupport(int *pi, CUexecAffinityType type, CUdevice dev)
{
    sim_lock();
    CUresult rc = sim_check_device(dev);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!pi || (unsigned)type >= (unsigned)CU_EXEC_AFFINITY_TYPE_MAX) {
        sim_log_error("cuDeviceGetExecAffinitySupport", "%s", !pi ? "pi cannot be NULL" : "invalid affinity type");
        return CUDA_ERROR_INVALID_VALUE;
    }
    *pi = 0;
    return CUDA_SUCCESS;
}

/* The current context's SM limit: no context has one of its own here, so an ordinary context may use every SM of
 * its device, and a context converted from a green context the SMs of that green context's resource. */
SIM_API CUresult cuCtxGetExecAffinity(CUexecAffinityParam *pExecAffinity, CUexecAffinityType type)
{
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx_exact(&c);
    if (rc == CUDA_SUCCESS && (!pExecAffinity || (unsigned)type >= (unsigned)CU_EXEC_AFFINITY_TYPE_MAX))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        memset(pExecAffinity, 0, sizeof *pExecAffinity);
        pExecAffinity->type = type;
        pExecAffinity->param.smCount.val = c->green ? c->green->sm_count : SMS;
    }
    sim_unlock();
    return rc;
}
