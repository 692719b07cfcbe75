/* micro.c — driver-API microbenchmarks, run natively and through fargpu in the same GPU-host run
 * (bench/gpu_run.sh). Prints one JSON object of medians: idle stream-sync round trip, async launch rate,
 * launch-then-sync, 64 B copy latency, 256 MiB bandwidth (pageable and pinned), and 1 MiB alloc+free.
 * Usage: micro KERNELS.ptx */
#include "bench_common.h"
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: micro KERNELS.ptx\n"); return 2; }
    enum { N = 2000, REPS = 5 };
    static double t[N];
    CHECK(cuInit(0));
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    CUcontext ctx;
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CUmodule mod;
    char *ptx = read_file(argv[1]);
    CHECK(cuModuleLoadData(&mod, ptx));
    CUfunction empty, four;
    CHECK(cuModuleGetFunction(&empty, mod, "fg_bench_empty"));
    CHECK(cuModuleGetFunction(&four, mod, "fg_bench_four"));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));

    /* idle stream sync round trip */
    for (int i = 0; i < 100; i++) CHECK(cuStreamSynchronize(s));
    for (int i = 0; i < N; i++) { double a = now_us(); CHECK(cuStreamSynchronize(s)); t[i] = now_us() - a; }
    double sync_us = median(t, N);

    /* async launch rate, empty and 4-param kernels */
    double rate_empty[REPS], rate_four[REPS];
    CUdeviceptr nullp = 0;
    int ia = 1; float fb = 2.0f; long long lc = 3;
    void *args4[] = {&nullp, &ia, &fb, &lc};
    enum { L = 20000 };
    for (int r = 0; r < REPS; r++) {
        double a = now_us();
        for (int i = 0; i < L; i++) CHECK(cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
        CHECK(cuStreamSynchronize(s));
        rate_empty[r] = L / ((now_us() - a) / 1e6);
        a = now_us();
        for (int i = 0; i < L; i++) CHECK(cuLaunchKernel(four, 1, 1, 1, 32, 1, 1, 0, s, args4, NULL));
        CHECK(cuStreamSynchronize(s));
        rate_four[r] = L / ((now_us() - a) / 1e6);
    }
    /* launch then sync */
    for (int i = 0; i < N; i++) {
        double a = now_us();
        CHECK(cuLaunchKernel(empty, 1, 1, 1, 32, 1, 1, 0, s, NULL, NULL));
        CHECK(cuStreamSynchronize(s));
        t[i] = now_us() - a;
    }
    double launch_sync_us = median(t, N);

    /* 64 B copies */
    CUdeviceptr d64;
    CHECK(cuMemAlloc(&d64, 64));
    char h64[64] = {1};
    for (int i = 0; i < N; i++) { double a = now_us(); CHECK(cuMemcpyHtoD(d64, h64, 64)); t[i] = now_us() - a; }
    double htod64 = median(t, N);
    for (int i = 0; i < N; i++) { double a = now_us(); CHECK(cuMemcpyDtoH(h64, d64, 64)); t[i] = now_us() - a; }
    double dtoh64 = median(t, N);

    /* 256 MiB bandwidth */
    size_t big = 256u << 20;
    CUdeviceptr dbig;
    CHECK(cuMemAlloc(&dbig, big));
    char *pageable = malloc(big);
    memset(pageable, 7, big);
    void *pinned;
    CHECK(cuMemAllocHost(&pinned, big));
    memset(pinned, 7, big);
    double bw[4][REPS];
    for (int r = 0; r < REPS; r++) {
        double a = now_us(); CHECK(cuMemcpyHtoD(dbig, pageable, big)); bw[0][r] = big / (now_us() - a) / 1e3;
        a = now_us(); CHECK(cuMemcpyDtoH(pageable, dbig, big)); bw[1][r] = big / (now_us() - a) / 1e3;
        a = now_us(); CHECK(cuMemcpyHtoD(dbig, pinned, big)); bw[2][r] = big / (now_us() - a) / 1e3;
        a = now_us(); CHECK(cuMemcpyDtoH(pinned, dbig, big)); bw[3][r] = big / (now_us() - a) / 1e3;
    }
    /* 1 MiB alloc + free */
    for (int i = 0; i < 200; i++) {
        CUdeviceptr p;
        double a = now_us();
        CHECK(cuMemAlloc(&p, 1u << 20));
        CHECK(cuMemFree(p));
        t[i] = now_us() - a;
    }
    double allocfree = median(t, 200);
    printf("{\"sync_rtt_us\": %.3f, \"launch_rate_empty_per_s\": %.0f, \"launch_rate_4param_per_s\": %.0f, "
           "\"launch_then_sync_us\": %.3f, \"htod_64b_us\": %.3f, \"dtoh_64b_us\": %.3f, "
           "\"htod_256mib_pageable_gbps\": %.3f, \"dtoh_256mib_pageable_gbps\": %.3f, "
           "\"htod_256mib_pinned_gbps\": %.3f, \"dtoh_256mib_pinned_gbps\": %.3f, \"alloc_free_1mib_us\": %.3f}\n",
           sync_us, median(rate_empty, REPS), median(rate_four, REPS), launch_sync_us, htod64, dtoh64,
           median(bw[0], REPS), median(bw[1], REPS), median(bw[2], REPS), median(bw[3], REPS), allocfree);
    CHECK(cuMemFreeHost(pinned));
    CHECK(cuMemFree(dbig));
    CHECK(cuMemFree(d64));
    free(pageable);
    free(ptx);
    return 0;
}
