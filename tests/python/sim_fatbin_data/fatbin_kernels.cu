// Test-only kernels for tests/python/test_sim_fatbin.py (compiled with -I tests/c/kernels): the fargpu test
// kernels, which the simulated device executes, plus one it does not (its launches must be recorded in the
// launch log and refused with CUDA_ERROR_NOT_SUPPORTED). Its parameters are laid out with padding:
// d at 0 (8 bytes), c at 8 (1), s at 10 (2), p at 16 (8).
#include "test_kernels.cu"

extern "C" __global__ void fg_not_simulated(double d, char c, short s, int *p)
{
    if (p)
        p[threadIdx.x] = (int)d + c + s;
}
