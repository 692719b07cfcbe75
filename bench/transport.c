/* transport.c — the data-path benchmark of issue 13, run natively and through fargpu over each transport in the
 * same GPU-host run (bench/transport_gpu.sh). Prints one JSON object of medians:
 *   htod/dtoh of MB MiB (default 256) from pinned (cuMemAllocHost) and pageable (malloc) memory, GB/s;
 *   64-byte copies both ways and the idle stream-synchronize round trip, µs;
 *   async_htod_128k: 2000 async 128 KiB copies from pageable memory (inline in the batches, kept by the stub for a
 *   resume until a reply covers them) and one stream sync, GB/s;
 *   overlap: S streams each running iterations of {host→device copy, a kernel, device→host copy} from pinned
 *   memory, wall time in ms (the same work natively and remotely; run with --no-kernels where kernels cannot run).
 * Usage: transport KERNELS.ptx [--no-kernels | --small]; FARGPU_BENCH_MB sets the copy size. --small measures only the
 * small calls (bench/small_calls.sh: the sync round trip against the transport floors, run after run). */
#include "bench_common.h"
#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { N = 2000, REPS = 5, STREAMS = 4, ITERS = 16 };

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: transport KERNELS.ptx [--no-kernels | --small]\n"); return 2; }
    int small = argc > 2 && !strcmp(argv[2], "--small");
    int kernels = !small && !(argc > 2 && !strcmp(argv[2], "--no-kernels"));
    const char *mbs = getenv("FARGPU_BENCH_MB");
    size_t big = small ? 1u << 20 : (size_t)(mbs && *mbs ? atoi(mbs) : 256) << 20;
    static double t[N];
    CHECK(cuInit(0));
    CUdevice dev;
    CHECK(cuDeviceGet(&dev, 0));
    CUcontext ctx;
    CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CHECK(cuCtxSetCurrent(ctx));
    CUstream s;
    CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));

    /* bandwidth: one warm-up of each, then REPS */
    CUdeviceptr d;
    CHECK(cuMemAlloc(&d, big));
    char *pageable = malloc(big);
    memset(pageable, 7, big);
    void *pinned;
    CHECK(cuMemAllocHost(&pinned, big));
    memset(pinned, 7, big);
    double bw[4][REPS];
    for (int r = -1; r < (small ? -1 : REPS); r++) {
        double a = now_us(), g;
        CHECK(cuMemcpyHtoD(d, pinned, big)); g = big / (now_us() - a) / 1e3; if (r >= 0) bw[0][r] = g;
        a = now_us(); CHECK(cuMemcpyDtoH(pinned, d, big)); g = big / (now_us() - a) / 1e3; if (r >= 0) bw[1][r] = g;
        a = now_us(); CHECK(cuMemcpyHtoD(d, pageable, big)); g = big / (now_us() - a) / 1e3; if (r >= 0) bw[2][r] = g;
        a = now_us(); CHECK(cuMemcpyDtoH(pageable, d, big)); g = big / (now_us() - a) / 1e3; if (r >= 0) bw[3][r] = g;
    }
    /* small calls */
    for (int i = 0; i < 200; i++) CHECK(cuStreamSynchronize(s));
    for (int i = 0; i < N; i++) { double a = now_us(); CHECK(cuStreamSynchronize(s)); t[i] = now_us() - a; }
    double sync_us = median(t, N);
    char h64[64] = {1};
    for (int i = 0; i < N; i++) { double a = now_us(); CHECK(cuMemcpyHtoD(d, h64, 64)); t[i] = now_us() - a; }
    double htod64 = median(t, N);
    for (int i = 0; i < N; i++) { double a = now_us(); CHECK(cuMemcpyDtoH(h64, d, 64)); t[i] = now_us() - a; }
    double dtoh64 = median(t, N);
    double async128[REPS];
    for (int r = 0; r < REPS; r++) {
        size_t k = 128u << 10;
        double a = now_us();
        for (int i = 0; i < 2000; i++) CHECK(cuMemcpyHtoDAsync(d, pageable, k, s));
        CHECK(cuStreamSynchronize(s));
        async128[r] = 2000.0 * (double)k / (now_us() - a) / 1e3;
    }

    /* overlap: STREAMS streams x ITERS x {HtoD chunk, kernel, DtoH chunk}, pinned memory */
    double overlap_ms = -1;
    if (kernels) {
        char *ptx = read_file(argv[1]);
        CUmodule mod;
        CUfunction axpy;
        CHECK(cuModuleLoadData(&mod, ptx));
        CHECK(cuModuleGetFunction(&axpy, mod, "fg_bench_axpy"));
        size_t chunk = 16u << 20;
        int n = (int)(chunk / sizeof(float)), rounds = 200;
        float a = 0.999f;
        CUstream ss[STREAMS];
        CUdeviceptr x[STREAMS], y[STREAMS];
        void *hin[STREAMS], *hout[STREAMS];
        for (int k = 0; k < STREAMS; k++) {
            CHECK(cuStreamCreate(&ss[k], CU_STREAM_NON_BLOCKING));
            CHECK(cuMemAlloc(&x[k], chunk));
            CHECK(cuMemAlloc(&y[k], chunk));
            CHECK(cuMemAllocHost(&hin[k], chunk));
            CHECK(cuMemAllocHost(&hout[k], chunk));
            memset(hin[k], 0, chunk);
            CHECK(cuMemsetD8(y[k], 0, chunk));
        }
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            CHECK(cuCtxSynchronize());
            double t0 = now_us();
            for (int it = 0; it < ITERS; it++)
                for (int k = 0; k < STREAMS; k++) {
                    void *args[] = {&y[k], &x[k], &a, &n, &rounds};
                    CHECK(cuMemcpyHtoDAsync(x[k], hin[k], chunk, ss[k]));
                    CHECK(cuLaunchKernel(axpy, (unsigned)((n + 255) / 256), 1, 1, 256, 1, 1, 0, ss[k], args, NULL));
                    CHECK(cuMemcpyDtoHAsync(hout[k], y[k], chunk, ss[k]));
                }
            CHECK(cuCtxSynchronize());
            double ms = (now_us() - t0) / 1e3;
            if (ms < best) best = ms;
        }
        overlap_ms = best;
        free(ptx);
    }
    if (small) {
        printf("{\"sync_rtt_us\": %.3f, \"htod_64b_us\": %.3f, \"dtoh_64b_us\": %.3f, \"async_htod_128k_GBps\": %.3f}\n",
               sync_us, htod64, dtoh64, median(async128, REPS));
        return 0;
    }
    printf("{\"copy_mib\": %zu, \"htod_pinned_GBps\": %.3f, \"dtoh_pinned_GBps\": %.3f, \"htod_pageable_GBps\": %.3f, "
           "\"dtoh_pageable_GBps\": %.3f, \"sync_rtt_us\": %.3f, \"htod_64b_us\": %.3f, \"dtoh_64b_us\": %.3f",
           big >> 20, median(bw[0], REPS), median(bw[1], REPS), median(bw[2], REPS), median(bw[3], REPS), sync_us,
           htod64, dtoh64);
    printf(", \"async_htod_128k_GBps\": %.3f", median(async128, REPS));
    if (overlap_ms >= 0) printf(", \"overlap_streams_ms\": %.3f", overlap_ms);
    printf("}\n");
    CHECK(cuMemFreeHost(pinned));
    CHECK(cuMemFree(d));
    free(pageable);
    return 0;
}
