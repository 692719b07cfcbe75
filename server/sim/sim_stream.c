/* sim_stream.c - streams. The simulated device executes every piece of stream work synchronously when it is
 * enqueued (copies, memsets, kernels run inside the enqueueing call), so a stream is never busy:
 * cuStreamQuery always reports CUDA_SUCCESS, cuStreamSynchronize and cuStreamWaitEvent only validate their
 * arguments. This is a legal schedule of any CUDA program; it cannot expose races a GPU would. Host functions
 * (cuLaunchHostFunc, cuStreamAddCallback) are stream work too: they run inside the enqueueing call, after all
 * work enqueued before them and before any enqueued after, without the sim's lock held.
 * The NULL stream, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are accepted wherever a stream is.
 *
 * Stream ids (cuStreamGetId): created streams count from 1 in creation order (the launch log uses the same
 * numbers); the legacy stream is 0; the per-thread stream of each thread gets an id from 2^62 upwards on
 * first use, so it never collides with a created stream. */
#include "sim.h"

#include <stdlib.h>

/* Stream priorities on sm_90: 0 (least) to -5 (greatest). */
#define PRIO_LEAST 0
#define PRIO_GREATEST (-5)

static long long g_next_id;
static unsigned long long g_next_ptds_id = 1ull << 62;
static _Thread_local unsigned long long t_ptds_id;

static struct sim_stream *find_stream(CUstream s) { return sim_reg_find(s, SIM_KIND_STREAM); }

long long sim_stream_id(CUstream s)
{
    if (s == NULL || s == CU_STREAM_LEGACY)
        return 0;
    if (s == CU_STREAM_PER_THREAD)
        return -1;
    struct sim_stream *st = find_stream(s);
    return st ? st->id : 0;
}

static int is_builtin(CUstream s) { return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD; }

CUresult sim_stream_check(CUstream s)
{
    CUresult rc = sim_current_ctx(NULL);
    if (rc != CUDA_SUCCESS)
        return rc;
    return is_builtin(s) || find_stream(s) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

void sim_stream_destroy_obj(struct sim_stream *s)
{
    sim_reg_remove(s);
    free(s);
}

CUresult sim_stream_create_in(struct sim_ctx *c, CUstream *ph, unsigned int flags, int priority)
{
    if (priority > PRIO_LEAST)
        priority = PRIO_LEAST;
    if (priority < PRIO_GREATEST)
        priority = PRIO_GREATEST;
    struct sim_stream *s = calloc(1, sizeof *s);
    if (!s || sim_reg_add(s) != 0) {
        free(s);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    s->h.kind = SIM_KIND_STREAM;
    s->h.ctx = c;
    s->flags = flags;
    s->priority = priority;
    s->id = ++g_next_id;
    *ph = (CUstream)s;
    return CUDA_SUCCESS;
}

static CUresult create(CUstream *ph, unsigned int flags, int priority)
{
    if (!ph || (flags & ~(unsigned int)CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx_exact(&c); /* a green context's stream when one is current (sim_green.c) */
    if (rc == CUDA_SUCCESS)
        rc = sim_stream_create_in(c, ph, flags, priority);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamCreate(CUstream *phStream, unsigned int Flags) { return create(phStream, Flags, 0); }

SIM_API CUresult cuStreamCreateWithPriority(CUstream *phStream, unsigned int flags, int priority)
{
    return create(phStream, flags, priority);
}

SIM_API CUresult cuCtxGetStreamPriorityRange(int *leastPriority, int *greatestPriority)
{
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    sim_unlock();
    if (rc == CUDA_SUCCESS) {
        if (leastPriority)
            *leastPriority = PRIO_LEAST;
        if (greatestPriority)
            *greatestPriority = PRIO_GREATEST;
    }
    return rc;
}

SIM_API CUresult cuStreamDestroy(CUstream hStream)
{
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    struct sim_stream *s = rc == CUDA_SUCCESS ? find_stream(hStream) : NULL;
    if (rc == CUDA_SUCCESS && !s)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        sim_stream_destroy_obj(s);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamQuery(CUstream hStream)
{
    sim_lock();
    CUresult rc = sim_stream_check_op(hStream);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamSynchronize(CUstream hStream)
{
    sim_lock();
    CUresult rc = sim_stream_check_op(hStream);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamGetFlags(CUstream hStream, unsigned int *flags)
{
    if (!flags)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
    if (rc == CUDA_SUCCESS) {
        struct sim_stream *s = is_builtin(hStream) ? NULL : find_stream(hStream);
        *flags = s ? s->flags : 0;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamGetPriority(CUstream hStream, int *priority)
{
    if (!priority)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
    if (rc == CUDA_SUCCESS) {
        struct sim_stream *s = is_builtin(hStream) ? NULL : find_stream(hStream);
        *priority = s ? s->priority : 0;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags)
{
    if (Flags & ~(unsigned int)CU_EVENT_WAIT_EXTERNAL)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult cap = CUDA_SUCCESS;
    if (sim_capture_event_wait(hStream, hEvent, &cap))
        return cap; /* an event recorded in a capture: the stream joins it (sim_capture.c) */
    sim_lock();
    CUresult rc = sim_stream_check_op(hStream);
    if (rc == CUDA_SUCCESS)
        rc = sim_event_check(hEvent); /* the event's work is already complete */
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamGetId(CUstream hStream, unsigned long long *streamId)
{
    if (!streamId)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
    if (rc == CUDA_SUCCESS) {
        if (hStream == CU_STREAM_PER_THREAD) {
            if (!t_ptds_id)
                t_ptds_id = g_next_ptds_id++;
            *streamId = t_ptds_id;
        } else {
            *streamId = (unsigned long long)sim_stream_id(hStream);
        }
    }
    sim_unlock();
    return rc;
}

/* The context a stream was made in (lock held): the current one for the built-in streams. */
static CUresult stream_ctx_locked(CUstream hStream, struct sim_ctx **out)
{
    CUresult rc = sim_check_init();
    struct sim_stream *s = NULL;
    if (rc == CUDA_SUCCESS && is_builtin(hStream))
        return sim_current_ctx_exact(out); /* the built-in streams are those of the current context */
    if (rc == CUDA_SUCCESS && !(s = find_stream(hStream)))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        *out = s->h.ctx;
    return rc;
}

CUresult sim_stream_green(CUstream s, struct sim_green **out)
{
    struct sim_ctx *c = NULL;
    CUresult rc = stream_ctx_locked(s, &c);
    if (rc == CUDA_SUCCESS)
        *out = c->green;
    return rc;
}

SIM_API CUresult cuStreamGetCtx(CUstream hStream, CUcontext *pctx)
{
    if (!pctx)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = stream_ctx_locked(hStream, &c);
    if (rc == CUDA_SUCCESS)
        *pctx = (CUcontext)c; /* a green context's stream: the context converted from it */
    sim_unlock();
    return rc;
}

/* The stream's device. On a stream under capture the H100 (driver 580) refuses it with
 * CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates that capture, in every capture mode and from any thread
 * (bench/probe_capture.sh); sim_stream_check_op does the same here. */
SIM_API CUresult cuStreamGetDevice(CUstream hStream, CUdevice *device)
{
    if (!device)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_stream_check_op(hStream);
    if (rc == CUDA_SUCCESS)
        rc = stream_ctx_locked(hStream, &c);
    if (rc == CUDA_SUCCESS)
        *device = c->device;
    sim_unlock();
    return rc;
}

/* A green context's stream answers its device's primary context and the green context; per-thread streams are
 * refused while a green context is current, as the driver documents. pGreenCtx may be NULL (the header lists no
 * CUDA_ERROR_INVALID_VALUE for the call). */
SIM_API CUresult cuStreamGetCtx_v2(CUstream hStream, CUcontext *pCtx, CUgreenCtx *pGreenCtx)
{
    if (!pCtx)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = stream_ctx_locked(hStream, &c);
    if (rc == CUDA_SUCCESS && c->green && hStream == CU_STREAM_PER_THREAD)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS) {
        *pCtx = (CUcontext)sim_ctx_home(c);
        if (pGreenCtx)
            *pGreenCtx = (CUgreenCtx)c->green;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData)
{
    if (!fn)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult cap = CUDA_SUCCESS;
    if (sim_capture_host(hStream, fn, userData, &cap))
        return cap; /* a host node of the capture's graph */
    sim_lock();
    CUresult rc = sim_stream_check_op(hStream);
    sim_unlock();
    if (rc == CUDA_SUCCESS)
        fn(userData); /* everything enqueued before has completed */
    return rc;
}

SIM_API CUresult cuStreamAddCallback(CUstream hStream, CUstreamCallback callback, void *userData, unsigned int flags)
{
    if (!callback || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check_op(hStream);
    sim_unlock();
    if (rc == CUDA_SUCCESS)
        callback(hStream, CUDA_SUCCESS, userData); /* no asynchronous errors can have happened */
    return rc;
}
