/* probe_capture.c — which driver calls invalidate a global-mode stream capture on the real driver, natively. The
 * worker makes calls of its own while an application's capture is under way (server/replay/mempool_capture.c,
 * mempool_blocks.c, pinstage.c, capture_copies' shadows): each candidate runs in a fresh capture, on the capturing
 * thread (with the thread's mode as given) or on a second thread, and the capture's status is read after it.
 * Prints one JSON object: for each case, the call's result and whether the capture survived.
 * Build: gcc -std=gnu11 -O2 -I$CUDA_INC bench/probe_capture.c -o probe_capture -ldl -lpthread */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>

static void *lib;
/* A call through the loaded driver; 999 where it lacks the entry point (an older driver, or the simulated device). */
#define CALL(name, ...) (dlsym(lib, #name) ? ((__typeof__(&name))dlsym(lib, #name))(__VA_ARGS__) : (CUresult)999)

static CUcontext ctx;
static CUstream cap, other;
static CUevent before; /* recorded (and complete) before the capture */
static CUdeviceptr dptr;
static void *hostbuf;

typedef CUresult (*step_fn)(void);

static CUresult s_stream_get_device(void) {
    CUdevice d;
    return CALL(cuStreamGetDevice, cap, &d);
}
static CUresult s_stream_get_ctx(void) {
    CUcontext c;
    return CALL(cuStreamGetCtx, cap, &c);
}
static CUresult s_ctx_push_pop(void) {
    CUcontext c;
    CUresult r = CALL(cuCtxPushCurrent_v2, ctx);
    return r ? r : CALL(cuCtxPopCurrent_v2, &c);
}
static CUresult s_ctx_set_current(void) { return CALL(cuCtxSetCurrent, ctx); }
static CUresult s_ctx_get_device(void) {
    CUdevice d;
    return CALL(cuCtxGetDevice, &d);
}
static CUresult s_capture_info(void) {
    CUstreamCaptureStatus st;
    cuuint64_t id;
    CUgraph g;
    const CUgraphNode *d;
    size_t n;
    return CALL(cuStreamGetCaptureInfo_v3, cap, &st, &id, &g, &d, NULL, &n);
}
static CUresult s_mem_alloc(void) {
    CUdeviceptr p;
    CUresult r = CALL(cuMemAlloc_v2, &p, 2 << 20);
    if (!r) CALL(cuMemFree_v2, p);
    return r;
}
static CUresult s_vmm_alloc(void) {
    CUmemAllocationProp pr;
    memset(&pr, 0, sizeof pr);
    pr.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    pr.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    pr.location.id = 0;
    CUmemGenericAllocationHandle h;
    CUdeviceptr va = 0;
    size_t sz = 2 << 20;
    CUresult r = CALL(cuMemAddressReserve, &va, sz, 0, 0, 0);
    if (!r) r = CALL(cuMemCreate, &h, sz, &pr, 0);
    if (!r) r = CALL(cuMemMap, va, sz, 0, h, 0);
    CUmemAccessDesc a = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    if (!r) r = CALL(cuMemSetAccess, va, sz, &a, 1);
    return r;
}
static CUresult s_event_query_before(void) { return CALL(cuEventQuery, before); }
static CUresult s_event_sync_before(void) { return CALL(cuEventSynchronize, before); }
static CUresult s_event_create_destroy(void) {
    CUevent e;
    CUresult r = CALL(cuEventCreate, &e, CU_EVENT_DISABLE_TIMING);
    return r ? r : CALL(cuEventDestroy_v2, e);
}
static CUresult s_stream_query_other(void) { return CALL(cuStreamQuery, other); }
static CUresult s_stream_sync_other(void) { return CALL(cuStreamSynchronize, other); }
static CUresult s_host_register(void) {
    CUresult r = CALL(cuMemHostRegister_v2, hostbuf, 2 << 20, CU_MEMHOSTREGISTER_PORTABLE);
    return r ? r : CALL(cuMemHostUnregister, hostbuf);
}
static CUresult s_alloc_host(void) {
    void *p;
    CUresult r = CALL(cuMemAllocHost_v2, &p, 2 << 20);
    return r ? r : CALL(cuMemFreeHost, p);
}
static CUresult s_copy_other_async(void) { return CALL(cuMemcpyHtoDAsync_v2, dptr, hostbuf, 4096, other); }
static CUresult s_mem_get_info(void) {
    size_t f, t;
    return CALL(cuMemGetInfo_v2, &f, &t);
}
static CUresult s_pointer_attr(void) {
    CUcontext c;
    return CALL(cuPointerGetAttribute, &c, CU_POINTER_ATTRIBUTE_CONTEXT, dptr);
}

static const struct {
    const char *name;
    step_fn fn;
} steps[] = {
    {"cuStreamGetDevice", s_stream_get_device},   {"cuStreamGetCtx", s_stream_get_ctx},
    {"cuCtxPushCurrent+Pop", s_ctx_push_pop},      {"cuCtxSetCurrent", s_ctx_set_current},
    {"cuCtxGetDevice", s_ctx_get_device},          {"cuStreamGetCaptureInfo_v3", s_capture_info},
    {"cuMemAlloc+Free", s_mem_alloc},              {"VMM reserve+create+map+access", s_vmm_alloc},
    {"cuEventQuery(before)", s_event_query_before}, {"cuEventSynchronize(before)", s_event_sync_before},
    {"cuEventCreate+Destroy", s_event_create_destroy}, {"cuStreamQuery(other)", s_stream_query_other},
    {"cuStreamSynchronize(other)", s_stream_sync_other}, {"cuMemHostRegister+Unregister", s_host_register},
    {"cuMemAllocHost+FreeHost", s_alloc_host},     {"cuMemcpyHtoDAsync(other)", s_copy_other_async},
    {"cuMemGetInfo", s_mem_get_info},              {"cuPointerGetAttribute", s_pointer_attr},
};

static step_fn g_step;
static CUresult g_res;
static void *on_thread(void *mode_p) {
    CALL(cuCtxSetCurrent, ctx);
    CUstreamCaptureMode m = *(CUstreamCaptureMode *)mode_p;
    CALL(cuThreadExchangeStreamCaptureMode, &m);
    g_res = g_step();
    return NULL;
}

/* One case: a fresh global capture on `cap`, the step run where asked, then the capture's status. */
static void one(const char *name, step_fn fn, int thread, CUstreamCaptureMode mode, int *first) {
    CUstreamCaptureStatus st = CU_STREAM_CAPTURE_STATUS_NONE;
    if (CALL(cuStreamBeginCapture_v2, cap, CU_STREAM_CAPTURE_MODE_GLOBAL)) {
        printf("%s\"%s\": \"begin failed\"", *first ? "" : ", ", name);
        *first = 0;
        return;
    }
    CUresult r;
    if (thread) {
        pthread_t t;
        g_step = fn;
        pthread_create(&t, NULL, on_thread, &mode);
        pthread_join(t, NULL);
        r = g_res;
    } else {
        CUstreamCaptureMode m = mode;
        CALL(cuThreadExchangeStreamCaptureMode, &m);
        r = fn();
        CALL(cuThreadExchangeStreamCaptureMode, &m);
    }
    CALL(cuStreamIsCapturing, cap, &st);
    CUgraph g = NULL;
    CUresult e = CALL(cuStreamEndCapture, cap, &g);
    if (g) CALL(cuGraphDestroy, g);
    printf("%s\"%s%s%s\": {\"rc\": %d, \"survived\": %d, \"end_rc\": %d}", *first ? "" : ", ", name,
           thread ? " [other thread" : " [capturing thread",
           mode == CU_STREAM_CAPTURE_MODE_RELAXED ? ", relaxed]" : mode == CU_STREAM_CAPTURE_MODE_GLOBAL
                                                                      ? ", global]"
                                                                      : ", thread-local]",
           (int)r, st == CU_STREAM_CAPTURE_STATUS_ACTIVE, (int)e);
    *first = 0;
    CALL(cuCtxSynchronize);
}

int main(void) {
    lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) {
        printf("{\"error\": \"no libcuda.so.1\"}\n");
        return 1;
    }
    CUdevice dev;
    if (CALL(cuInit, 0) || CALL(cuDeviceGet, &dev, 0) || CALL(cuDevicePrimaryCtxRetain, &ctx, dev) ||
        CALL(cuCtxSetCurrent, ctx)) {
        printf("{\"error\": \"no context\"}\n");
        return 1;
    }
    CALL(cuStreamCreate, &cap, CU_STREAM_NON_BLOCKING);
    CALL(cuStreamCreate, &other, CU_STREAM_NON_BLOCKING);
    CALL(cuEventCreate, &before, CU_EVENT_DISABLE_TIMING);
    CALL(cuEventRecord, before, other);
    CALL(cuMemAlloc_v2, &dptr, 1 << 20);
    hostbuf = aligned_alloc(4096, 2 << 20);
    CALL(cuCtxSynchronize);
    int first = 1;
    printf("{");
    const CUstreamCaptureMode modes[2] = {CU_STREAM_CAPTURE_MODE_GLOBAL, CU_STREAM_CAPTURE_MODE_RELAXED};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        for (int thread = 0; thread < 2; thread++)
            for (int m = 0; m < 2; m++) one(steps[i].name, steps[i].fn, thread, modes[m], &first);
    printf("}\n");
    return 0;
}
