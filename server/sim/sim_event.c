/* sim_event.c - events. Because stream work runs at enqueue (sim_stream.c), an event is complete as soon as it
 * is recorded: cuEventRecord stores the host monotonic clock, cuEventQuery/cuEventSynchronize succeed at once,
 * and cuEventElapsedTime returns the real host time between two records (so it is > 0 when work ran between
 * them). As with the driver, elapsed time needs both events recorded and created without
 * CU_EVENT_DISABLE_TIMING, else CUDA_ERROR_INVALID_HANDLE. cuCtxRecordEvent records like cuEventRecord (the
 * event must be the context's), cuCtxWaitEvent has nothing to wait for. Recorded on a capturing stream, an event
 * holds that capture's dependencies instead (cross-stream capture, sim_capture.c).
 * Test knob FARGPU_SIM_EVENT_QUERY_LAG=N: a recorded event answers CUDA_ERROR_NOT_READY to its first N
 * cuEventQuery calls (as a GPU still running the work before it would), and cuEventSynchronize completes it at
 * once; so tests can see what waits for an event (the worker's stream-ordered frees, server/replay/mempool.c). */
#include "sim.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct sim_event {
    struct sim_obj h;
    unsigned int flags;
    int recorded;
    uint64_t t_ns;
    long lag_left; /* queries still answered NOT_READY (FARGPU_SIM_EVENT_QUERY_LAG) */
};

static long query_lag(void)
{
    static long lag = -1;
    if (lag < 0) {
        const char *v = getenv("FARGPU_SIM_EVENT_QUERY_LAG");
        lag = v ? strtol(v, NULL, 10) : 0;
        if (lag < 0)
            lag = 0;
    }
    return lag;
}

static struct sim_event *find_event(CUevent e) { return sim_reg_find(e, SIM_KIND_EVENT); }

CUresult sim_event_check(CUevent e) { return find_event(e) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE; }

void sim_event_destroy_obj(void *ev)
{
    sim_capture_event_gone((CUevent)ev);
    sim_reg_remove(ev);
    free(ev);
}

SIM_API CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags)
{
    const unsigned int known = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS;
    if (!phEvent || (Flags & ~known))
        return CUDA_ERROR_INVALID_VALUE;
    if ((Flags & CU_EVENT_INTERPROCESS) && !(Flags & CU_EVENT_DISABLE_TIMING))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_ctx *c = NULL;
    CUresult rc = sim_current_ctx(&c);
    if (rc == CUDA_SUCCESS) {
        struct sim_event *e = calloc(1, sizeof *e);
        if (!e || sim_reg_add(e) != 0) {
            free(e);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            e->h.kind = SIM_KIND_EVENT;
            e->h.ctx = c;
            e->flags = Flags;
            *phEvent = (CUevent)e;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuEventRecord(CUevent hEvent, CUstream hStream)
{
    CUresult cap = CUDA_SUCCESS;
    if (sim_capture_event_record(hEvent, hStream, &cap))
        return cap; /* on a capturing stream: the capture's dependencies, for streams that wait on it */
    sim_lock();
    CUresult rc = sim_stream_check_op(hStream);
    struct sim_event *e = rc == CUDA_SUCCESS ? find_event(hEvent) : NULL;
    if (rc == CUDA_SUCCESS && !e)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS) {
        e->recorded = 1;
        e->t_ns = sim_now_ns();
        e->lag_left = query_lag();
    }
    sim_unlock();
    return rc;
}

/* cuCtxRecordEvent: the context's work so far, which has all run (stream work runs at enqueue); the event must
 * belong to that context. cuCtxWaitEvent: nothing to wait for, once the handles are checked. */
static CUresult ctx_event(CUcontext hCtx, CUevent hEvent, int record)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_ctx *c = rc == CUDA_SUCCESS ? sim_reg_find(hCtx, SIM_KIND_CTX) : NULL;
    struct sim_event *e = rc == CUDA_SUCCESS ? find_event(hEvent) : NULL;
    if (rc == CUDA_SUCCESS && (!c || (c->primary && !c->active)))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS && (!e || (record && e->h.ctx != sim_ctx_home(c))))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && record) {
        e->recorded = 1;
        e->t_ns = sim_now_ns();
        e->lag_left = query_lag();
    }
    sim_unlock();
    return rc;
}

CUresult sim_event_green(CUevent hEvent, int device, int record)
{
    struct sim_event *e = find_event(hEvent);
    if (!e || (record && (!e->h.ctx || e->h.ctx != sim_g.dev[device].primary)))
        return CUDA_ERROR_INVALID_HANDLE;
    if (record) {
        e->recorded = 1;
        e->t_ns = sim_now_ns();
        e->lag_left = query_lag();
    }
    return CUDA_SUCCESS;
}

SIM_API CUresult cuCtxRecordEvent(CUcontext hCtx, CUevent hEvent) { return ctx_event(hCtx, hEvent, 1); }
SIM_API CUresult cuCtxWaitEvent(CUcontext hCtx, CUevent hEvent) { return ctx_event(hCtx, hEvent, 0); }

static CUresult query(CUevent hEvent, int wait)
{
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    struct sim_event *e = rc == CUDA_SUCCESS ? find_event(hEvent) : NULL;
    if (rc == CUDA_SUCCESS && !e)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && e->lag_left > 0) {
        if (wait)
            e->lag_left = 0;
        else {
            e->lag_left--;
            rc = CUDA_ERROR_NOT_READY;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuEventQuery(CUevent hEvent)
{
    return query(hEvent, 0);
}

SIM_API CUresult cuEventSynchronize(CUevent hEvent)
{
    return query(hEvent, 1);
}

SIM_API CUresult cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd)
{
    if (!pMilliseconds)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    struct sim_event *a = rc == CUDA_SUCCESS ? find_event(hStart) : NULL;
    struct sim_event *b = rc == CUDA_SUCCESS ? find_event(hEnd) : NULL;
    if (rc == CUDA_SUCCESS && (!a || !b))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && (!a->recorded || !b->recorded))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        *pMilliseconds = (float)(((double)b->t_ns - (double)a->t_ns) / 1e6);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuEventDestroy(CUevent hEvent)
{
    sim_lock();
    CUresult rc = sim_current_ctx(NULL);
    struct sim_event *e = rc == CUDA_SUCCESS ? find_event(hEvent) : NULL;
    if (rc == CUDA_SUCCESS && !e)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS)
        sim_event_destroy_obj(e);
    sim_unlock();
    return rc;
}

/* ---- IPC events ----
 * cuIpcGetEventHandle needs an event created with CU_EVENT_INTERPROCESS (and so DISABLE_TIMING), as with the driver.
 * The handle names the exporting process and the event; opening it in another process gives an event of that
 * process that is complete whenever queried or waited on: on the simulated device every recorded event is complete
 * at once (stream work runs at enqueue), so waiting on the exporter's event can never wait. */
#define SIM_IPC_EVENT_MAGIC "fgsimEVT"

SIM_API CUresult cuIpcGetEventHandle(CUipcEventHandle *pHandle, CUevent event)
{
    if (!pHandle)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_event *e = rc == CUDA_SUCCESS ? find_event(event) : NULL;
    if (rc == CUDA_SUCCESS && !e)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && !(e->flags & CU_EVENT_INTERPROCESS))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        memset(pHandle, 0, sizeof *pHandle);
        memcpy(pHandle->reserved, SIM_IPC_EVENT_MAGIC, 8);
        int pid = (int)getpid();
        memcpy(pHandle->reserved + 8, &pid, sizeof pid);
        uintptr_t id = (uintptr_t)e;
        memcpy(pHandle->reserved + 16, &id, sizeof id);
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuIpcOpenEventHandle(CUevent *phEvent, CUipcEventHandle handle)
{
    if (!phEvent || memcmp(handle.reserved, SIM_IPC_EVENT_MAGIC, 8) != 0)
        return CUDA_ERROR_INVALID_VALUE;
    return cuEventCreate(phEvent, CU_EVENT_INTERPROCESS | CU_EVENT_DISABLE_TIMING);
}
