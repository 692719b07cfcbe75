/* sim_kernels.c - C implementations of the fargpu test kernels (tests/c/kernels/test_kernels.cu), the only
 * kernels the simulated device executes. A function is bound to one of these only if both its name and its
 * parameter layout match, so a different kernel that happens to share a name is never misread.
 *
 * Semantics follow the CUDA source exactly: element i = blockIdx.x * blockDim.x + threadIdx.x for i < n
 * (fg_fill_u32 uses a grid-stride loop and so covers all n), float arithmetic rounded like the GPU (fg_axpb
 * uses __fmul_rn/__fadd_rn, reproduced here without contraction). Launches with several blocks/threads in y
 * or z run each x-thread more than once on a GPU; that is harmless for the idempotent fg_vadd and fg_fill_u32
 * and a data race for fg_scale and fg_axpb, which the sim then refuses (CUDA_ERROR_NOT_SUPPORTED).
 * Every pointer argument is range-checked for the elements the kernel touches, and must be 4-byte aligned;
 * a bad one gives CUDA_ERROR_INVALID_VALUE before anything is written. */
#include "sim.h"

#include <stdio.h>
#include <string.h>

static uint64_t rd_u64(const struct sim_launch *l, uint32_t off)
{
    uint64_t v;
    memcpy(&v, l->params + off, 8);
    return v;
}

static uint32_t rd_u32(const struct sim_launch *l, uint32_t off)
{
    uint32_t v;
    memcpy(&v, l->params + off, 4);
    return v;
}

static float rd_f32(const struct sim_launch *l, uint32_t off)
{
    float v;
    memcpy(&v, l->params + off, 4);
    return v;
}

/* Number of x-indices the launch covers: gridDim.x * blockDim.x. */
static uint64_t x_threads(const struct sim_launch *l) { return (uint64_t)l->grid[0] * l->block[0]; }
static uint64_t replicas(const struct sim_launch *l) { return (uint64_t)l->grid[1] * l->grid[2] * l->block[1] * l->block[2]; }

/* Elements touched by "if (i < n)" with a signed int n. */
static uint64_t covered(const struct sim_launch *l, int32_t n)
{
    if (n <= 0)
        return 0;
    uint64_t t = x_threads(l);
    return (uint64_t)n < t ? (uint64_t)n : t;
}

/* A buffer the kernel touches: mapped with the access it needs, and reachable from the device the kernel runs on
 * (its function's context: own memory, enabled peers, granted VMM mappings; sim_peer.c). */
static CUresult check_buf(const struct sim_launch *l, uint64_t ptr, uint64_t count, int prot)
{
    if (count == 0)
        return CUDA_SUCCESS;
    if (ptr % 4 || count > UINT64_MAX / 4)
        return CUDA_ERROR_INVALID_VALUE;
    return sim_range_check_from(l->f->h.ctx, (CUdeviceptr)ptr, (size_t)(count * 4), prot);
}

static CUresult refuse_racy(const struct sim_launch *l)
{
    if (replicas(l) == 1)
        return CUDA_SUCCESS;
    sim_log_once("racy launch of a test kernel", "fg_scale/fg_axpb with y/z extent > 1 would race on a GPU; the sim refuses it");
    return CUDA_ERROR_NOT_SUPPORTED;
}

static CUresult run_vadd(const struct sim_launch *l)
{
    uint64_t a = rd_u64(l, 0), b = rd_u64(l, 8), c = rd_u64(l, 16);
    uint64_t n = covered(l, (int32_t)rd_u32(l, 24));
    CUresult rc;
    if ((rc = check_buf(l, a, n, SIM_PROT_R)) || (rc = check_buf(l, b, n, SIM_PROT_R)) || (rc = check_buf(l, c, n, SIM_PROT_W)))
        return rc;
    const float *pa = (const float *)(uintptr_t)a, *pb = (const float *)(uintptr_t)b;
    float *pc = (float *)(uintptr_t)c;
    for (uint64_t i = 0; i < n; i++)
        pc[i] = pa[i] + pb[i];
    return CUDA_SUCCESS;
}

static CUresult run_scale(const struct sim_launch *l)
{
    uint64_t x = rd_u64(l, 0);
    float s = rd_f32(l, 8);
    uint64_t n = covered(l, (int32_t)rd_u32(l, 12));
    CUresult rc;
    if ((rc = refuse_racy(l)) || (rc = check_buf(l, x, n, SIM_PROT_R | SIM_PROT_W)))
        return rc;
    float *px = (float *)(uintptr_t)x;
    for (uint64_t i = 0; i < n; i++)
        px[i] = px[i] * s;
    return CUDA_SUCCESS;
}

static CUresult run_fill(const struct sim_launch *l)
{
    uint64_t p = rd_u64(l, 0);
    uint32_t v = rd_u32(l, 8);
    uint64_t n = rd_u64(l, 16);
    CUresult rc = check_buf(l, p, n, SIM_PROT_W);
    if (rc)
        return rc;
    uint32_t *pp = (uint32_t *)(uintptr_t)p;
    for (uint64_t i = 0; i < n; i++)
        pp[i] = v;
    return CUDA_SUCCESS;
}

/* Kept out of line so the compiler cannot fuse the multiply and the add (the kernel rounds both). */
__attribute__((noinline)) static float mul_rn(float a, float b) { return a * b; }
__attribute__((noinline)) static float add_rn(float a, float b) { return a + b; }

static CUresult run_axpb(const struct sim_launch *l)
{
    float a = rd_f32(l, 0), b = rd_f32(l, 4);
    uint64_t n = covered(l, (int32_t)rd_u32(l, 8));
    uint64_t x = rd_u64(l, 16);
    CUresult rc;
    if ((rc = refuse_racy(l)) || (rc = check_buf(l, x, n, SIM_PROT_R | SIM_PROT_W)))
        return rc;
    float *px = (float *)(uintptr_t)x;
    for (uint64_t i = 0; i < n; i++)
        px[i] = add_rn(mul_rn(a, px[i]), b);
    return CUDA_SUCCESS;
}

/* Device printf: like the driver, the line goes to this process's stdout stream (flushed with it). */
static CUresult run_hello(const struct sim_launch *l)
{
    printf("fg_hello %d from %d block(s)\n", (int)rd_u32(l, 0), (int)l->grid[0]);
    return CUDA_SUCCESS;
}

/* fg_magic += add in the launched function's own module (a global the host never named). */
static CUresult run_bump_magic(const struct sim_launch *l)
{
    CUdeviceptr p = 0;
    size_t n = 0;
    if (!l->f->mod || sim_module_global(l->f->mod, "fg_magic", &p, &n) != CUDA_SUCCESS || n != 4)
        return CUDA_ERROR_NOT_SUPPORTED;
    CUresult rc = check_buf(l, (uint64_t)p, 1, SIM_PROT_R | SIM_PROT_W);
    if (rc)
        return rc;
    *(uint32_t *)(uintptr_t)p += rd_u32(l, 0);
    return CUDA_SUCCESS;
}

/* The conditional-node kernels of tests/acceptance/cuda/api_graph_cond.cu (not in test_kernels.cu: they call
 * cudaGraphSetConditional, which the driver links in at load). fg_set_cond(handle, v) sets the condition to v;
 * fg_count_down(counter, handle) decrements *counter and sets the condition to whether it is still non-zero
 * (one thread does it on a GPU: the program launches it with one thread). */
static CUresult run_set_cond(const struct sim_launch *l)
{
    return sim_graph_cond_set(rd_u64(l, 0), rd_u32(l, 8));
}

static CUresult run_count_down(const struct sim_launch *l)
{
    uint64_t p = rd_u64(l, 0);
    CUresult rc = check_buf(l, p, 1, SIM_PROT_R | SIM_PROT_W);
    if (rc)
        return rc;
    uint32_t *c = (uint32_t *)(uintptr_t)p;
    *c -= 1;
    return sim_graph_cond_set(rd_u64(l, 8), *c != 0);
}

static const struct sim_kernel_impl g_kernels[] = {
    { "fg_vadd", 4, { { 0, 8 }, { 8, 8 }, { 16, 8 }, { 24, 4 } }, run_vadd },
    { "fg_scale", 3, { { 0, 8 }, { 8, 4 }, { 12, 4 } }, run_scale },
    { "fg_fill_u32", 3, { { 0, 8 }, { 8, 4 }, { 16, 8 } }, run_fill },
    { "fg_axpb", 3, { { 0, 8 }, { 8, 4 }, { 16, 8 } }, run_axpb },
    { "fg_hello", 1, { { 0, 4 } }, run_hello },
    { "fg_bump_magic", 1, { { 0, 4 } }, run_bump_magic },
    { "fg_set_cond", 2, { { 0, 8 }, { 8, 4 } }, run_set_cond },
    { "fg_count_down", 2, { { 0, 8 }, { 8, 8 } }, run_count_down },
};

const struct sim_kernel_impl *sim_kernel_lookup(const char *name, const struct sim_param *params, uint32_t n)
{
    for (size_t k = 0; k < sizeof g_kernels / sizeof g_kernels[0]; k++) {
        const struct sim_kernel_impl *impl = &g_kernels[k];
        if (strcmp(impl->name, name) != 0 || impl->nparams != n)
            continue;
        if (memcmp(impl->params, params, n * sizeof *params) == 0)
            return impl;
    }
    return NULL;
}
