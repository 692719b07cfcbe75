// Kernels for the driver-API microbenchmarks (bench/micro.c): an empty kernel and one with four params.
extern "C" __global__ void fg_bench_empty() {}
extern "C" __global__ void fg_bench_four(float *p, int a, float b, long long c) {
    if (p == nullptr && a == 12345 && b == 1.5f && c == 7) p[0] = 1.0f;
}
// For the overlap program (bench/transport.c): y = a*y + x over n floats, `rounds` times (a kernel long enough to
// overlap with copies on other streams).
extern "C" __global__ void fg_bench_axpy(float *y, const float *x, float a, int n, int rounds) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = y[i], w = x[i];
    for (int r = 0; r < rounds; r++) v = a * v + w;
    y[i] = v;
}
