// test_kernels.cuh - the kernels the API acceptance programs share, named and laid out exactly as the test kernels
// of tests/c/kernels/test_kernels.cu (fg_vadd, fg_scale, fg_fill_u32), so the simulated device runs them by name
// (server/sim/sim_kernels.c). Include it once per program, after acceptance.h.
#pragma once

extern "C" __global__ void fg_vadd(const float *a, const float *b, float *c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = a[i] + b[i];
}

extern "C" __global__ void fg_scale(float *x, float s, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = x[i] * s;
}

extern "C" __global__ void fg_fill_u32(unsigned int *p, unsigned int v, unsigned long long n)
{
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        p[i] = v;
}
