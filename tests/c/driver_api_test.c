/* driver_api_test.c - a CUDA driver API test program: `driver_api_test PTX CUBIN`.
 *
 * It covers what fargpu must forward faithfully: device queries and attributes; primary and created contexts;
 * allocation, mem-info and memsets; sync/async copies from pageable and pinned memory; streams and events;
 * modules from PTX and from a cubin; function attributes and parameter layouts; kernel launches with
 * kernelParams and with `extra`; occupancy; and the error paths (bad handles, over-allocation, bad launches).
 * It is compiled against cuda.h and linked with -lcuda, so it runs unchanged on a real driver, on the fargpu
 * stub and on the simulated device. Output lines are deterministic for one GPU and driver (no pointers,
 * timings or memory totals), so a native run and a remote run can be compared with diff.
 *
 * FARGPU_TEST_SKIP_GARBAGE_HANDLES=1 skips the two checks that pass a made-up handle value (a real driver is
 * not obliged to survive those); they then print "skipped" in every run alike. */
#include "common.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define N (1u << 20) /* elements per buffer: 4 MiB of floats */
#define BYTES ((size_t)N * sizeof(float))

static CUdevice g_dev;

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "out of host memory\n");
        exit(2);
    }
    return p;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = n >= 0 ? xmalloc((size_t)n + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = 0; /* PTX must be NUL-terminated */
        *len = (size_t)n;
    }
    return buf;
}

/* First index where two float arrays differ bitwise, or -1. */
static long first_diff_f(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
            return (long)i;
    return -1;
}

static int check_floats(const char *name, const float *got, const float *want, size_t n)
{
    long i = first_diff_f(got, want, n);
    return check(name, i < 0, "element %ld: got %g want %g", i, i < 0 ? 0.0 : (double)got[i], i < 0 ? 0.0 : (double)want[i]);
}

static int check_u32s(const char *name, const uint32_t *got, uint32_t want, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (got[i] != want)
            return check(name, 0, "element %zu: got 0x%08x want 0x%08x", i, got[i], want);
    return check(name, 1, "%s", "");
}

/* ---- device queries ---- */
static void test_device(void)
{
    CHECK_OK("cuInit", cuInit(0));
    int ver = 0;
    CHECK_OK("cuDriverGetVersion", cuDriverGetVersion(&ver));
    check("driver_version>=13000", ver >= 13000, "version %d", ver);
    int count = 0;
    CHECK_OK("cuDeviceGetCount", cuDeviceGetCount(&count));
    check("device_count>=1", count >= 1, "count %d", count);
    CHECK_OK("cuDeviceGet", cuDeviceGet(&g_dev, 0));
    CUdevice bad;
    check_rc("cuDeviceGet_bad_ordinal", cuDeviceGet(&bad, count), CUDA_ERROR_INVALID_DEVICE);
    char name[256] = { 0 };
    if (CHECK_OK("cuDeviceGetName", cuDeviceGetName(name, sizeof name, g_dev)))
        printf("device name: %s\n", name);
    CUuuid uuid;
    CHECK_OK("cuDeviceGetUuid", cuDeviceGetUuid(&uuid, g_dev));
    size_t total = 0;
    CHECK_OK("cuDeviceTotalMem", cuDeviceTotalMem(&total, g_dev));
    check("device_total_mem>0", total > 0, "total %zu", total);
    char bus[32] = { 0 };
    CHECK_OK("cuDeviceGetPCIBusId", cuDeviceGetPCIBusId(bus, sizeof bus, g_dev));
    check("pci_bus_id_format", strlen(bus) >= 12 && strchr(bus, ':') && strchr(bus, '.'), "'%s'", bus);

    static const struct {
        CUdevice_attribute a;
        const char *name;
    } attrs[] = {
        { CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "COMPUTE_CAPABILITY_MAJOR" },
        { CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "COMPUTE_CAPABILITY_MINOR" },
        { CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, "MULTIPROCESSOR_COUNT" },
        { CU_DEVICE_ATTRIBUTE_WARP_SIZE, "WARP_SIZE" },
        { CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK, "MAX_THREADS_PER_BLOCK" },
        { CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X, "MAX_BLOCK_DIM_X" },
        { CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z, "MAX_BLOCK_DIM_Z" },
        { CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X, "MAX_GRID_DIM_X" },
        { CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y, "MAX_GRID_DIM_Y" },
        { CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK, "MAX_SHARED_MEMORY_PER_BLOCK" },
        { CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, "MAX_SHARED_MEMORY_PER_BLOCK_OPTIN" },
        { CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK, "MAX_REGISTERS_PER_BLOCK" },
        { CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR, "MAX_THREADS_PER_MULTIPROCESSOR" },
        { CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE, "L2_CACHE_SIZE" },
        { CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, "UNIFIED_ADDRESSING" },
        { CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS, "CONCURRENT_KERNELS" },
        { CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, "VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED" },
    };
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        int v = 0;
        CUresult rc = cuDeviceGetAttribute(&v, attrs[i].a, g_dev);
        if (rc == CUDA_SUCCESS)
            printf("attr %s = %d\n", attrs[i].name, v);
        else
            check_rc(attrs[i].name, rc, CUDA_SUCCESS);
    }
    int warp = 0;
    cuDeviceGetAttribute(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, g_dev);
    check("warp_size==32", warp == 32, "warp %d", warp);
    int v = 0;
    check_rc("cuDeviceGetAttribute_bad_attribute", cuDeviceGetAttribute(&v, (CUdevice_attribute)100000, g_dev),
             CUDA_ERROR_INVALID_VALUE);
}

/* ---- contexts ---- */
static CUcontext test_contexts(void)
{
    unsigned int flags = 99;
    int active = -1;
    CHECK_OK("cuDevicePrimaryCtxGetState", cuDevicePrimaryCtxGetState(g_dev, &flags, &active));
    check("primary_inactive_before_retain", active == 0, "active %d", active);
    CUcontext prim = NULL, cur = NULL, c2 = NULL, popped = NULL;
    CHECK_OK("cuDevicePrimaryCtxRetain", cuDevicePrimaryCtxRetain(&prim, g_dev));
    CHECK_OK("cuDevicePrimaryCtxGetState_retained", cuDevicePrimaryCtxGetState(g_dev, &flags, &active));
    check("primary_active_after_retain", active == 1, "active %d", active);
    CHECK_OK("cuCtxSetCurrent", cuCtxSetCurrent(prim));
    CHECK_OK("cuCtxGetCurrent", cuCtxGetCurrent(&cur));
    check("current_is_primary", cur == prim, "%s", "current context differs");
    CUdevice d = -1;
    CHECK_OK("cuCtxGetDevice", cuCtxGetDevice(&d));
    check("ctx_device", d == g_dev, "device %d", d);
    unsigned int api = 0;
    CHECK_OK("cuCtxGetApiVersion", cuCtxGetApiVersion(prim, &api));
    CHECK_OK("cuCtxSynchronize", cuCtxSynchronize());

    CHECK_OK("cuCtxCreate", cuCtxCreate(&c2, NULL, CU_CTX_SCHED_AUTO, g_dev));
    cuCtxGetCurrent(&cur);
    check("created_ctx_is_current", cur == c2, "%s", "current context is not the created one");
    CUdeviceptr p = 0;
    if (CHECK_OK("created_ctx_alloc", cuMemAlloc(&p, 1 << 20))) {
        CHECK_OK("created_ctx_memset", cuMemsetD8(p, 1, 1 << 20));
        CHECK_OK("created_ctx_free", cuMemFree(p));
    }
    CHECK_OK("cuCtxPopCurrent", cuCtxPopCurrent(&popped));
    check("popped_is_created", popped == c2, "%s", "popped another context");
    cuCtxGetCurrent(&cur);
    check("current_back_to_primary", cur == prim, "%s", "current context differs");
    CHECK_OK("cuCtxPushCurrent", cuCtxPushCurrent(c2));
    cuCtxGetCurrent(&cur);
    check("pushed_is_current", cur == c2, "%s", "current context differs");
    CHECK_OK("cuCtxDestroy", cuCtxDestroy(c2));
    cuCtxGetCurrent(&cur);
    check("destroy_pops_current", cur == prim, "%s", "current context is not the primary one");

    CUcontext again = NULL;
    CHECK_OK("cuDevicePrimaryCtxRetain_twice", cuDevicePrimaryCtxRetain(&again, g_dev));
    check("primary_same_handle", again == prim, "%s", "retain returned another handle");
    CHECK_OK("cuDevicePrimaryCtxRelease_once", cuDevicePrimaryCtxRelease(g_dev));
    cuDevicePrimaryCtxGetState(g_dev, &flags, &active);
    check("primary_still_active", active == 1, "active %d", active);
    return prim;
}

/* ---- memory: alloc, free, mem-info, memset ---- */
static void test_memory(void)
{
    size_t free0 = 0, total = 0, free1 = 0;
    CHECK_OK("cuMemGetInfo", cuMemGetInfo(&free0, &total));
    check("mem_info_sane", total > 0 && free0 <= total, "free %zu total %zu", free0, total);
    CUdeviceptr a = 0;
    CHECK_OK("cuMemAlloc", cuMemAlloc(&a, BYTES * 4));
    cuMemGetInfo(&free1, &total);
    check("mem_info_free_decreases", free1 < free0, "free before %zu after %zu", free0, free1);
    CUdeviceptr base = 0;
    size_t size = 0;
    CHECK_OK("cuMemGetAddressRange", cuMemGetAddressRange(&base, &size, a + 1000));
    check("address_range", base == a && size >= BYTES * 4, "size %zu", size);
    CUdeviceptr huge = 0;
    check_rc("alloc_1PiB_out_of_memory", cuMemAlloc(&huge, (size_t)1 << 50), CUDA_ERROR_OUT_OF_MEMORY);
    check_rc("alloc_zero_invalid", cuMemAlloc(&huge, 0), CUDA_ERROR_INVALID_VALUE);

    size_t nbytes = BYTES * 4;
    unsigned char *h = xmalloc(nbytes);
    CHECK_OK("cuMemsetD8", cuMemsetD8(a, 0xAB, nbytes));
    CHECK_OK("memsetD8_readback", cuMemcpyDtoH(h, a, nbytes));
    size_t bad = nbytes;
    for (size_t i = 0; i < nbytes && bad == nbytes; i++)
        if (h[i] != 0xAB)
            bad = i;
    check("memsetD8_values", bad == nbytes, "byte %zu is 0x%02x", bad, bad < nbytes ? h[bad] : 0);
    CHECK_OK("cuMemsetD32", cuMemsetD32(a, 0xDEADBEEFu, nbytes / 4));
    CHECK_OK("memsetD32_readback", cuMemcpyDtoH(h, a, nbytes));
    check_u32s("memsetD32_values", (const uint32_t *)h, 0xDEADBEEFu, nbytes / 4);
    CHECK_OK("cuMemsetD16", cuMemsetD16(a, 0x1234, 8));
    CHECK_OK("cuMemsetD8_offset", cuMemsetD8(a + 1, 0x00, 2));
    CHECK_OK("memset_mixed_readback", cuMemcpyDtoH(h, a, 20));
    static const unsigned char want[20] = { 0x34, 0x00, 0x00, 0x12, 0x34, 0x12, 0x34, 0x12, 0x34, 0x12,
                                            0x34, 0x12, 0x34, 0x12, 0x34, 0x12, 0xEF, 0xBE, 0xAD, 0xDE };
    check("memset_mixed_values", memcmp(h, want, 20) == 0, "%s", "bytes differ");
    CHECK_OK("cuMemFree", cuMemFree(a));
    free(h);
}

/* ---- copies: sync/async, pageable/pinned ---- */
static void fill_pattern(float *p, size_t n, float k)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(i % 65536) * k + 1.0f;
}

static void test_copies(CUstream s)
{
    CUdeviceptr d1 = 0, d2 = 0;
    CHECK_OK("copy_alloc_d1", cuMemAlloc(&d1, BYTES));
    CHECK_OK("copy_alloc_d2", cuMemAlloc(&d2, BYTES));
    float *src = xmalloc(BYTES), *dst = xmalloc(BYTES);
    fill_pattern(src, N, 0.5f);

    memset(dst, 0, BYTES);
    CHECK_OK("cuMemcpyHtoD_pageable", cuMemcpyHtoD(d1, src, BYTES));
    CHECK_OK("cuMemcpyDtoH_pageable", cuMemcpyDtoH(dst, d1, BYTES));
    check_floats("sync_h2d_d2h_pageable", dst, src, N);
    memset(dst, 0, BYTES);
    CHECK_OK("cuMemcpyDtoD", cuMemcpyDtoD(d2, d1, BYTES));
    CHECK_OK("cuMemcpyDtoH_after_d2d", cuMemcpyDtoH(dst, d2, BYTES));
    check_floats("sync_d2d", dst, src, N);

    float *pin1 = NULL, *pin2 = NULL;
    CHECK_OK("cuMemAllocHost", cuMemAllocHost((void **)&pin1, BYTES));
    CHECK_OK("cuMemHostAlloc", cuMemHostAlloc((void **)&pin2, BYTES, CU_MEMHOSTALLOC_PORTABLE));
    if (pin1 && pin2) {
        fill_pattern(pin1, N, 0.25f);
        memset(pin2, 0, BYTES);
        CHECK_OK("cuMemcpyHtoDAsync_pinned", cuMemcpyHtoDAsync(d1, pin1, BYTES, s));
        CHECK_OK("cuMemcpyDtoDAsync", cuMemcpyDtoDAsync(d2, d1, BYTES, s));
        CHECK_OK("cuMemcpyDtoHAsync_pinned", cuMemcpyDtoHAsync(pin2, d2, BYTES, s));
        CHECK_OK("copy_stream_sync", cuStreamSynchronize(s));
        check_floats("async_pinned_roundtrip", pin2, pin1, N);

        memset(pin2, 0, BYTES);
        CHECK_OK("cuMemcpy_d2d", cuMemcpy(d1, d2, BYTES));
        CHECK_OK("cuMemcpy_d2pinned", cuMemcpy((CUdeviceptr)(uintptr_t)pin2, d1, BYTES));
        check_floats("unified_memcpy", pin2, pin1, N);
    }
    fill_pattern(src, N, 3.0f);
    memset(dst, 0, BYTES);
    CHECK_OK("cuMemcpyHtoDAsync_pageable", cuMemcpyHtoDAsync(d1, src, BYTES, s));
    CHECK_OK("cuMemcpyDtoHAsync_pageable", cuMemcpyDtoHAsync(dst, d1, BYTES, s));
    CHECK_OK("copy_stream_sync_pageable", cuStreamSynchronize(s));
    check_floats("async_pageable_roundtrip", dst, src, N);

    CHECK_OK("cuMemsetD32Async", cuMemsetD32Async(d1, 0x01020304u, N, s));
    CHECK_OK("cuMemsetD8Async", cuMemsetD8Async(d1, 0x7F, 4, s));
    CHECK_OK("cuMemcpyDtoHAsync_memset", cuMemcpyDtoHAsync(dst, d1, BYTES, s));
    CHECK_OK("memset_async_sync", cuStreamSynchronize(s));
    check_u32s("memsetD8Async_values", (const uint32_t *)dst, 0x7F7F7F7Fu, 1);
    check_u32s("memsetD32Async_values", (const uint32_t *)dst + 1, 0x01020304u, N - 1);

    if (pin1)
        CHECK_OK("cuMemFreeHost_1", cuMemFreeHost(pin1));
    if (pin2)
        CHECK_OK("cuMemFreeHost_2", cuMemFreeHost(pin2));
    cuMemFree(d1);
    cuMemFree(d2);
    free(src);
    free(dst);
}

/* ---- streams and events ---- */
static void test_streams_events(void)
{
    CUstream s1 = NULL, s2 = NULL;
    unsigned int flags = 0;
    int least = 0, greatest = 0;
    CHECK_OK("cuStreamCreate", cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CHECK_OK("cuStreamGetFlags", cuStreamGetFlags(s1, &flags));
    check("stream_flags_non_blocking", flags == CU_STREAM_NON_BLOCKING, "flags %u", flags);
    CHECK_OK("cuCtxGetStreamPriorityRange", cuCtxGetStreamPriorityRange(&least, &greatest));
    CHECK_OK("cuStreamCreateWithPriority", cuStreamCreateWithPriority(&s2, CU_STREAM_DEFAULT, greatest));

    CUevent start = NULL, stop = NULL, nt = NULL, unrec = NULL;
    CHECK_OK("cuEventCreate_start", cuEventCreate(&start, CU_EVENT_DEFAULT));
    CHECK_OK("cuEventCreate_stop", cuEventCreate(&stop, CU_EVENT_DEFAULT));
    CHECK_OK("cuEventCreate_disable_timing", cuEventCreate(&nt, CU_EVENT_DISABLE_TIMING));
    CHECK_OK("cuEventCreate_unrecorded", cuEventCreate(&unrec, CU_EVENT_DEFAULT));

    size_t big = (size_t)64 << 20;
    CUdeviceptr d = 0;
    CHECK_OK("event_alloc", cuMemAlloc(&d, big));
    CHECK_OK("cuEventRecord_start", cuEventRecord(start, s1));
    for (int i = 0; i < 8; i++)
        cuMemsetD32Async(d, 0x11111111u * (unsigned)(i + 1), big / 4, s1);
    CHECK_OK("cuEventRecord_stop", cuEventRecord(stop, s1));
    CHECK_OK("cuStreamWaitEvent", cuStreamWaitEvent(s2, stop, 0));
    uint32_t *h = xmalloc(big);
    CHECK_OK("d2h_after_wait_event", cuMemcpyDtoHAsync(h, d, big, s2));
    CHECK_OK("cuStreamSynchronize_s2", cuStreamSynchronize(s2));
    check_u32s("wait_event_orders_streams", h, 0x88888888u, big / 4);
    CHECK_OK("cuEventSynchronize", cuEventSynchronize(stop));
    check_rc("cuEventQuery_complete", cuEventQuery(stop), CUDA_SUCCESS);
    CHECK_OK("cuStreamSynchronize_s1", cuStreamSynchronize(s1));
    check_rc("cuStreamQuery_idle", cuStreamQuery(s1), CUDA_SUCCESS);
    float ms = -1.0f;
    CHECK_OK("cuEventElapsedTime", cuEventElapsedTime(&ms, start, stop));
    check("elapsed_time>0", ms > 0.0f, "elapsed %f ms", (double)ms);

    CHECK_OK("cuEventRecord_disable_timing", cuEventRecord(nt, NULL));
    check_rc("elapsed_time_disable_timing", cuEventElapsedTime(&ms, nt, nt), CUDA_ERROR_INVALID_HANDLE);
    check_rc("elapsed_time_unrecorded", cuEventElapsedTime(&ms, unrec, stop), CUDA_ERROR_INVALID_HANDLE);

    CHECK_OK("cuEventDestroy", cuEventDestroy(start));
    cuEventDestroy(stop);
    cuEventDestroy(nt);
    cuEventDestroy(unrec);
    CHECK_OK("cuStreamDestroy_s1", cuStreamDestroy(s1));
    CHECK_OK("cuStreamDestroy_s2", cuStreamDestroy(s2));
    cuMemFree(d);
    free(h);
}

/* ---- modules and launches ---- */
static void print_param_info(const char *kname, CUfunction f, unsigned int n)
{
    printf("param_info %s:", kname);
    for (unsigned int i = 0; i < n; i++) {
        size_t off = 0, size = 0;
        CUresult rc = cuFuncGetParamInfo(f, i, &off, &size);
        if (rc == CUDA_SUCCESS)
            printf(" %zu/%zu", off, size);
        else
            printf(" %s", errname(rc));
    }
    printf("\n");
}

static void test_module_functions(const char *tag, CUmodule m, CUfunction fns[4])
{
    static const char *names[4] = { "fg_vadd", "fg_scale", "fg_fill_u32", "fg_axpb" };
    static const unsigned int nparams[4] = { 4, 3, 3, 3 };
    char cname[96];
    for (int i = 0; i < 4; i++) {
        snprintf(cname, sizeof cname, "%s_get_function_%s", tag, names[i]);
        CHECK_OK(cname, cuModuleGetFunction(&fns[i], m, names[i]));
    }
    CUfunction nf;
    snprintf(cname, sizeof cname, "%s_get_function_missing", tag);
    check_rc(cname, cuModuleGetFunction(&nf, m, "fg_no_such_kernel"), CUDA_ERROR_NOT_FOUND);
    const char *fname = NULL;
    snprintf(cname, sizeof cname, "%s_cuFuncGetName", tag);
    if (CHECK_OK(cname, cuFuncGetName(&fname, fns[0])))
        printf("%s function name: %s\n", tag, fname);
    int maxt = 0, regs = 0;
    snprintf(cname, sizeof cname, "%s_func_max_threads", tag);
    if (CHECK_OK(cname, cuFuncGetAttribute(&maxt, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fns[0])))
        printf("%s fg_vadd MAX_THREADS_PER_BLOCK = %d\n", tag, maxt);
    snprintf(cname, sizeof cname, "%s_func_num_regs>0", tag);
    check(cname, cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, fns[0]) == CUDA_SUCCESS && regs > 0,
          "regs %d", regs);
    for (int i = 0; i < 4; i++) {
        char kn[64];
        snprintf(kn, sizeof kn, "%s %s", tag, names[i]);
        print_param_info(kn, fns[i], nparams[i]);
    }
    size_t off = 0, size = 0;
    cuFuncGetParamInfo(fns[3], 2, &off, &size);
    snprintf(cname, sizeof cname, "%s_axpb_param_layout", tag);
    check(cname, off == 16 && size == 8, "param 2 at %zu size %zu", off, size);
    snprintf(cname, sizeof cname, "%s_param_info_out_of_range", tag);
    check_rc(cname, cuFuncGetParamInfo(fns[3], 3, &off, &size), CUDA_ERROR_INVALID_VALUE);

    CUdeviceptr g = 0;
    size_t gsize = 0;
    uint32_t gval = 0;
    snprintf(cname, sizeof cname, "%s_cuModuleGetGlobal", tag);
    if (CHECK_OK(cname, cuModuleGetGlobal(&g, &gsize, m, "fg_magic"))) {
        cuMemcpyDtoH(&gval, g, sizeof gval);
        snprintf(cname, sizeof cname, "%s_global_value", tag);
        check(cname, gsize == 4 && gval == 0x12345678u, "size %zu value 0x%08x", gsize, gval);
    }
}

static void test_launches(CUfunction ptx_fns[4], CUfunction cubin_fns[4], CUstream s)
{
    CUdeviceptr a = 0, b = 0, c = 0;
    CHECK_OK("launch_alloc_a", cuMemAlloc(&a, BYTES));
    CHECK_OK("launch_alloc_b", cuMemAlloc(&b, BYTES));
    CHECK_OK("launch_alloc_c", cuMemAlloc(&c, BYTES));
    float *ha = xmalloc(BYTES), *hb = xmalloc(BYTES), *hc = xmalloc(BYTES), *want = xmalloc(BYTES);
    for (unsigned i = 0; i < N; i++) {
        ha[i] = (float)i * 0.5f;
        hb[i] = (float)(N - i) * 0.25f;
        want[i] = ha[i] + hb[i];
    }
    cuMemcpyHtoD(a, ha, BYTES);
    cuMemcpyHtoD(b, hb, BYTES);
    int n = (int)N;
    unsigned int grid = (N + 255) / 256;

    /* kernelParams with pointer and scalar parameters, PTX module, created stream */
    void *vadd_args[] = { &a, &b, &c, &n };
    CHECK_OK("launch_vadd_ptx", cuLaunchKernel(ptx_fns[0], grid, 1, 1, 256, 1, 1, 0, s, vadd_args, NULL));
    CHECK_OK("launch_vadd_ptx_sync", cuStreamSynchronize(s));
    cuMemcpyDtoH(hc, c, BYTES);
    check_floats("vadd_ptx_result", hc, want, N);

    /* the same from the cubin, on the NULL stream */
    cuMemsetD32(c, 0, N);
    CHECK_OK("launch_vadd_cubin", cuLaunchKernel(cubin_fns[0], grid, 1, 1, 256, 1, 1, 0, NULL, vadd_args, NULL));
    CHECK_OK("launch_vadd_cubin_sync", cuCtxSynchronize());
    cuMemcpyDtoH(hc, c, BYTES);
    check_floats("vadd_cubin_result", hc, want, N);

    /* float scalar */
    float sc = 2.0f;
    void *scale_args[] = { &c, &sc, &n };
    CHECK_OK("launch_scale", cuLaunchKernel(cubin_fns[1], grid, 1, 1, 256, 1, 1, 0, s, scale_args, NULL));
    cuStreamSynchronize(s);
    cuMemcpyDtoH(hc, c, BYTES);
    for (unsigned i = 0; i < N; i++)
        want[i] = want[i] * 2.0f;
    check_floats("scale_result", hc, want, N);

    /* `extra`: one packed buffer laid out at the offsets the driver reports; a grid smaller than N (grid-stride) */
    unsigned char buf[24];
    memset(buf, 0, sizeof buf);
    size_t o_p = 0, o_v = 0, o_n = 0;
    cuFuncGetParamInfo(ptx_fns[2], 0, &o_p, NULL);
    cuFuncGetParamInfo(ptx_fns[2], 1, &o_v, NULL);
    cuFuncGetParamInfo(ptx_fns[2], 2, &o_n, NULL);
    uint32_t fillv = 0xC0FFEEu;
    unsigned long long fn = N;
    if (check("fill_param_offsets", o_p == 0 && o_v == 8 && o_n == 16, "offsets %zu %zu %zu", o_p, o_v, o_n)) {
        memcpy(buf + o_p, &a, 8);
        memcpy(buf + o_v, &fillv, 4);
        memcpy(buf + o_n, &fn, 8);
        size_t bufsize = sizeof buf;
        void *extra[] = { CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &bufsize, CU_LAUNCH_PARAM_END };
        CHECK_OK("launch_fill_extra", cuLaunchKernel(ptx_fns[2], 120, 1, 1, 256, 1, 1, 0, s, NULL, extra));
        cuStreamSynchronize(s);
        cuMemcpyDtoH(hc, a, BYTES);
        check_u32s("fill_extra_result", (const uint32_t *)hc, fillv, N);
    }

    /* struct by value, then an int, then a pointer (padding between params 1 and 2) */
    struct {
        float a, b;
    } ab = { 2.0f, 1.0f };
    for (unsigned i = 0; i < N; i++) {
        ha[i] = (float)(i % 1000);
        want[i] = ha[i] * 2.0f + 1.0f;
    }
    cuMemcpyHtoD(b, ha, BYTES);
    void *axpb_args[] = { &ab, &n, &b };
    CHECK_OK("launch_axpb_struct", cuLaunchKernel(cubin_fns[3], grid, 1, 1, 256, 1, 1, 0, s, axpb_args, NULL));
    cuStreamSynchronize(s);
    cuMemcpyDtoH(hc, b, BYTES);
    check_floats("axpb_struct_result", hc, want, N);

    ab.a = 0.5f;
    ab.b = -1.0f;
    memset(buf, 0, sizeof buf);
    memcpy(buf + 0, &ab, 8);
    memcpy(buf + 8, &n, 4);
    memcpy(buf + 16, &b, 8);
    size_t bufsize = sizeof buf;
    void *extra2[] = { CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &bufsize, CU_LAUNCH_PARAM_END };
    CHECK_OK("launch_axpb_extra", cuLaunchKernel(ptx_fns[3], grid, 1, 1, 256, 1, 1, 0, s, NULL, extra2));
    cuStreamSynchronize(s);
    cuMemcpyDtoH(hc, b, BYTES);
    for (unsigned i = 0; i < N; i++)
        want[i] = want[i] * 0.5f - 1.0f;
    check_floats("axpb_extra_result", hc, want, N);

    /* invalid launches the driver rejects up front */
    check_rc("launch_params_and_extra", cuLaunchKernel(ptx_fns[3], 1, 1, 1, 32, 1, 1, 0, s, axpb_args, extra2),
             CUDA_ERROR_INVALID_VALUE);
    check_rc("launch_block_too_large", cuLaunchKernel(ptx_fns[0], 1, 1, 1, 2048, 1, 1, 0, s, vadd_args, NULL),
             CUDA_ERROR_INVALID_VALUE);

    int blocks = 0;
    if (CHECK_OK("cuOccupancyMaxActiveBlocksPerMultiprocessor",
                 cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, cubin_fns[0], 256, 0)))
        printf("occupancy fg_vadd block 256: %d blocks/SM\n", blocks);
    check("occupancy>0", blocks > 0, "blocks %d", blocks);

    cuMemFree(a);
    cuMemFree(b);
    cuMemFree(c);
    free(ha);
    free(hb);
    free(hc);
    free(want);
}

static void test_modules(const char *ptx_path, const char *cubin_path, CUstream s)
{
    size_t ptx_len = 0, cubin_len = 0;
    char *ptx = read_file(ptx_path, &ptx_len);
    char *cubin = read_file(cubin_path, &cubin_len);
    if (!check("read_ptx", ptx != NULL, "cannot read %s", ptx_path) ||
        !check("read_cubin", cubin != NULL, "cannot read %s", cubin_path)) {
        free(ptx);
        free(cubin);
        return;
    }
    CUmodule mp = NULL, mc = NULL;
    CHECK_OK("cuModuleLoadData_ptx", cuModuleLoadData(&mp, ptx));
    char log[1024];
    log[0] = 1;
    CUjit_option opts[2] = { CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES };
    void *vals[2] = { log, (void *)(uintptr_t)sizeof log };
    CHECK_OK("cuModuleLoadDataEx_cubin", cuModuleLoadDataEx(&mc, cubin, 2, opts, vals));
    if (mp && mc) {
        CUfunction pf[4], cf[4];
        test_module_functions("ptx", mp, pf);
        test_module_functions("cubin", mc, cf);
        test_launches(pf, cf, s);
    }
    if (mp)
        CHECK_OK("cuModuleUnload_ptx", cuModuleUnload(mp));
    if (mc)
        CHECK_OK("cuModuleUnload_cubin", cuModuleUnload(mc));
    free(ptx);
    free(cubin);
}

/* ---- error paths ---- */
static void test_error_paths(void)
{
    static const CUresult bad_handle[] = { CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_INVALID_CONTEXT,
                                           CUDA_ERROR_CONTEXT_IS_DESTROYED };
    const char *skip = getenv("FARGPU_TEST_SKIP_GARBAGE_HANDLES");
    if (skip && *skip && strcmp(skip, "0") != 0) {
        printf("check bad_stream_handle: skipped\n");
        printf("check bad_event_handle: skipped\n");
    } else {
        check_one_of("bad_stream_handle", cuStreamSynchronize((CUstream)(uintptr_t)0xdeadbeef000ull), bad_handle, 3);
        check_one_of("bad_event_handle", cuEventQuery((CUevent)(uintptr_t)0xdeadbeef000ull), bad_handle, 3);
    }
    CUdeviceptr p = 0;
    check_rc("over_allocation", cuMemAlloc(&p, (size_t)1 << 50), CUDA_ERROR_OUT_OF_MEMORY);
    CUdeviceptr ok = 0;
    check_rc("alloc_after_oom", cuMemAlloc(&ok, 4096), CUDA_SUCCESS);
    if (ok)
        cuMemFree(ok);
    const char *s = NULL;
    check("error_string", cuGetErrorString(CUDA_ERROR_OUT_OF_MEMORY, &s) == CUDA_SUCCESS && s && *s, "%s", "no string");
    check_rc("error_name_unknown_code", cuGetErrorName((CUresult)123456, &s), CUDA_ERROR_INVALID_VALUE);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s KERNELS.ptx KERNELS.cubin\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_device();
    CUcontext prim = test_contexts();
    test_memory();
    CUstream s = NULL;
    CHECK_OK("main_stream_create", cuStreamCreate(&s, CU_STREAM_DEFAULT));
    test_copies(s);
    test_streams_events();
    test_modules(argv[1], argv[2], s);
    test_error_paths();
    if (s)
        CHECK_OK("main_stream_destroy", cuStreamDestroy(s));
    (void)prim;
    CHECK_OK("cuDevicePrimaryCtxRelease", cuDevicePrimaryCtxRelease(g_dev));
    unsigned int flags = 0;
    int active = -1;
    cuDevicePrimaryCtxGetState(g_dev, &flags, &active);
    check("primary_inactive_after_release", active == 0, "active %d", active);
    return finish("driver_api_test");
}
