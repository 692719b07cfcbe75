// graph_params.h - node parameter builders the graph acceptance programs share: copy_1d (a 1D memcpy node between
// any two kinds of memory), kernel_node (a kernel node on a 1D grid, no shared memory) and memset_u32 (a memset node
// filling n 32-bit words). Include it after acceptance.h.
#pragma once
#include <cstring>

static inline cudaMemcpy3DParms copy_1d(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    cudaMemcpy3DParms p;
    std::memset(&p, 0, sizeof p);
    p.srcPtr = make_cudaPitchedPtr((void *)src, bytes, bytes, 1);
    p.dstPtr = make_cudaPitchedPtr(dst, bytes, bytes, 1);
    p.extent = make_cudaExtent(bytes, 1, 1);
    p.kind = kind;
    return p;
}

static inline cudaKernelNodeParams kernel_node(void *fn, void **args, unsigned grid, unsigned block)
{
    cudaKernelNodeParams k;
    std::memset(&k, 0, sizeof k);
    k.func = fn;
    k.gridDim = dim3(grid);
    k.blockDim = dim3(block);
    k.kernelParams = args;
    return k;
}

static inline cudaMemsetParams memset_u32(void *dst, unsigned int value, size_t n)
{
    cudaMemsetParams m;
    std::memset(&m, 0, sizeof m);
    m.dst = dst;
    m.value = value;
    m.elementSize = 4;
    m.width = n;
    m.height = 1;
    return m;
}
