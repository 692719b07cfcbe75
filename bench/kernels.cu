// Kernels for the driver-API microbenchmarks (bench/micro.c): an empty kernel and one with four params.
extern "C" __global__ void fg_bench_empty() {}
extern "C" __global__ void fg_bench_four(float *p, int a, float b, long long c) {
    if (p == nullptr && a == 12345 && b == 1.5f && c == 7) p[0] = 1.0f;
}
