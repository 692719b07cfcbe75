// Test kernels for driver_api_test.c. The simulated device (server/sim/sim_kernels.c) knows these by name and
// parameter layout and executes them in C; on a real GPU they run as compiled. Keep them simple and exact:
// no float contraction (the axpb kernel uses __fmul_rn/__fadd_rn so host and device round the same way).

struct fg_ab {
    float a;
    float b;
};

extern "C" __device__ unsigned int fg_magic = 0x12345678u;

// c[i] = a[i] + b[i] for i < n, one element per thread.
extern "C" __global__ void fg_vadd(const float *a, const float *b, float *c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = a[i] + b[i];
}

// x[i] *= s for i < n, one element per thread.
extern "C" __global__ void fg_scale(float *x, float s, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = x[i] * s;
}

// p[i] = v for all i < n, grid-stride loop (any grid covers all n).
extern "C" __global__ void fg_fill_u32(unsigned int *p, unsigned int v, unsigned long long n)
{
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        p[i] = v;
}

// x[i] = ab.a * x[i] + ab.b for i < n: a struct passed by value, then an int, then a pointer, so the
// parameter buffer has padding (offsets 0, 8, 16; size 24).
extern "C" __global__ void fg_axpb(struct fg_ab ab, int n, float *x)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = __fadd_rn(__fmul_rn(ab.a, x[i]), ab.b);
}

// Prints one line from thread 0 of block 0 (device printf reaches the client's stdout through fargpu).
extern "C" __global__ void fg_hello(int v)
{
    if (blockIdx.x == 0 && threadIdx.x == 0)
        printf("fg_hello %d from %d block(s)\n", v, (int)gridDim.x);
}

// fg_magic += add, from thread 0 of block 0: a module global a kernel changes without the host ever naming it
// (parking must save it all the same).
extern "C" __global__ void fg_bump_magic(unsigned int add)
{
    if (blockIdx.x == 0 && threadIdx.x == 0)
        fg_magic += add;
}
