/* sim_stream.c - streams. The simulated device executes every piece of stream work synchronously when it is
 * enqueued (copies, memsets, kernels run inside the enqueueing call), so a stream is never busy:
 * cuStreamQuery always reports CUDA_SUCCESS, cuStreamSynchronize and cuStreamWaitEvent only validate their
 * arguments. This is a legal schedule of any CUDA program; it cannot expose races a GPU would.
 * The NULL stream, CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are accepted wherever a stream is. */
#include "sim.h"

#include <stdlib.h>

/* Stream priorities on sm_90: 0 (least) to -5 (greatest). */
#define PRIO_LEAST 0
#define PRIO_GREATEST (-5)

static long long g_next_id;

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

static CUresult create(CUstream *ph, unsigned int flags, int priority)
{
    if (!ph || (flags & ~(unsigned int)CU_STREAM_NON_BLOCKING))
        return CUDA_ERROR_INVALID_VALUE;
    if (priority > PRIO_LEAST)
        priority = PRIO_LEAST;
    if (priority < PRIO_GREATEST)
        priority = PRIO_GREATEST;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS) {
        struct sim_stream *s = calloc(1, sizeof *s);
        if (!s || sim_reg_add(s) != 0) {
            free(s);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            s->h.kind = SIM_KIND_STREAM;
            s->h.ctx = c;
            s->flags = flags;
            s->priority = priority;
            s->id = ++g_next_id;
            *ph = (CUstream)s;
        }
    }
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
    CUresult rc = sim_stream_check(hStream);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuStreamSynchronize(CUstream hStream)
{
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
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
    sim_lock();
    CUresult rc = sim_stream_check(hStream);
    if (rc == CUDA_SUCCESS)
        rc = sim_event_check(hEvent); /* the event's work is already complete */
    sim_unlock();
    return rc;
}
