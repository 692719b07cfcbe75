// api_tensormap.cu - acceptance: tensor maps (TMA descriptors), as Triton and CUTLASS make them on Hopper. A tiled
// map of a 256 x 64 float tensor in device memory is encoded with cuTensorMapEncodeTiled and passed by value
// (__grid_constant__) to a kernel whose blocks each load one 32 x 16 tile with the tensor memory accelerator
// (cp.async.bulk.tensor) into shared memory and write it out; the copy must equal the tensor exactly. The map is
// then pointed at a second tensor with cuTensorMapReplaceAddress and the copy repeated. Encodings the driver must
// refuse (a misaligned address, a zero box, rank 6, an inner box that is not a multiple of 16 bytes), an im2col map
// and an im2col-wide map (a compute capability 10.0 feature: its answer is printed, whatever it is) are reported
// by name. `--no-kernels` encodes everything but launches nothing (the simulated device in CI runs no TMA kernel).
// acceptance: link=-lcuda
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>
#include <cuda/barrier>

#include "acceptance.h"
#include "acceptance_check.h"

using block_barrier = cuda::barrier<cuda::thread_scope_block>;
namespace cde = cuda::device::experimental;

constexpr int W = 256, H = 64, BX = 32, BY = 16;

__global__ void tma_copy(const __grid_constant__ CUtensorMap map, float *out)
{
    __shared__ alignas(128) float tile[BY][BX];
#pragma nv_diag_suppress static_var_with_dynamic_init
    __shared__ block_barrier bar;
    int x0 = blockIdx.x * BX, y0 = blockIdx.y * BY;
    if (threadIdx.x == 0) {
        init(&bar, blockDim.x);
        cde::fence_proxy_async_shared_cta();
    }
    __syncthreads();
    block_barrier::arrival_token token;
    if (threadIdx.x == 0) {
        cde::cp_async_bulk_tensor_2d_global_to_shared(&tile, &map, x0, y0, bar);
        token = cuda::device::barrier_arrive_tx(bar, 1, sizeof(tile));
    } else {
        token = bar.arrive();
    }
    bar.wait(std::move(token));
    for (int i = threadIdx.x; i < BX * BY; i += blockDim.x)
        out[(y0 + i / BX) * W + x0 + i % BX] = tile[i / BX][i % BX];
}

static CUresult tiled(CUtensorMap *m, void *addr, cuuint32_t rank = 2, cuuint32_t box0 = BX, cuuint32_t box1 = BY)
{
    cuuint64_t dims[6] = {W, H, 1, 1, 1, 1};
    cuuint64_t strides[5] = {W * sizeof(float), W * H * sizeof(float), W * H * sizeof(float),
                             W * H * sizeof(float), W * H * sizeof(float)};
    cuuint32_t box[6] = {box0, box1, 1, 1, 1, 1};
    cuuint32_t es[6] = {1, 1, 1, 1, 1, 1};
    return cuTensorMapEncodeTiled(m, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, rank, addr, dims, strides, box, es,
                                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                                  CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
}

static bool copy_matches(const CUtensorMap &map, float *out, const std::vector<float> &want, bool kernels)
{
    if (!kernels)
        return true;
    CHECK(cudaMemset(out, 0, W * H * sizeof(float)));
    tma_copy<<<dim3(W / BX, H / BY), 128>>>(map, out);
    CHECK(cudaGetLastError());
    std::vector<float> got(W * H);
    CHECK(cudaMemcpy(got.data(), out, W * H * sizeof(float), cudaMemcpyDeviceToHost));
    return got == want;
}

int main(int argc, char **argv)
{
    bool kernels = !(argc > 1 && std::strcmp(argv[1], "--no-kernels") == 0);
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));
    std::vector<float> a(W * H), b(W * H);
    for (int i = 0; i < W * H; i++) {
        a[i] = (float)((i / W) * 1000 + i % W);
        b[i] = -(float)i;
    }
    float *da, *db, *out;
    CHECK(cudaMalloc(&da, W * H * sizeof(float)));
    CHECK(cudaMalloc(&db, W * H * sizeof(float)));
    CHECK(cudaMalloc(&out, W * H * sizeof(float)));
    CHECK(cudaMemcpy(da, a.data(), W * H * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), W * H * sizeof(float), cudaMemcpyHostToDevice));

    alignas(64) CUtensorMap map;
    CU_CHECK(tiled(&map, da));
    check("TMA tiles of the first tensor", copy_matches(map, out, a, kernels));
    CU_CHECK(cuTensorMapReplaceAddress(&map, db));
    check("TMA tiles after cuTensorMapReplaceAddress", copy_matches(map, out, b, kernels));

    alignas(64) CUtensorMap bad;
    std::printf("misaligned address: %s\n", name_of(tiled(&bad, (char *)da + 4)));
    std::printf("zero box: %s\n", name_of(tiled(&bad, da, 2, 0, BY)));
    std::printf("rank 6: %s\n", name_of(tiled(&bad, da, 6)));
    std::printf("inner box of 12 bytes: %s\n", name_of(tiled(&bad, da, 2, 3, BY)));
    std::printf("replace with a misaligned address: %s\n", name_of(cuTensorMapReplaceAddress(&map, (char *)db + 8)));

    // im2col over an NHWC fp16 activation (C 16, W 8, H 8, N 2) for a 3x3 filter with padding 1.
    cuuint64_t dims[4] = {16, 8, 8, 2};
    cuuint64_t strides[3] = {16 * 2, 16 * 2 * 8, 16 * 2 * 8 * 8};
    int lower[2] = {-1, -1}, upper[2] = {-1, -1};
    cuuint32_t es[4] = {1, 1, 1, 1};
    alignas(64) CUtensorMap col;
    std::printf("im2col: %s\n", name_of(cuTensorMapEncodeIm2col(&col, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, da, dims,
                                                                strides, lower, upper, 16, 64, es,
                                                                CU_TENSOR_MAP_INTERLEAVE_NONE,
                                                                CU_TENSOR_MAP_SWIZZLE_NONE,
                                                                CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                                                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)));
    cuuint64_t wdims[3] = {16, 64, 2};
    cuuint64_t wstrides[2] = {16 * 2, 16 * 2 * 64};
    std::printf("im2col wide: %s\n",
                name_of(cuTensorMapEncodeIm2colWide(&col, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 3, da, wdims, wstrides, -1,
                                                    -1, 16, 32, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
                                                    CU_TENSOR_MAP_IM2COL_WIDE_MODE_W, CU_TENSOR_MAP_SWIZZLE_NONE,
                                                    CU_TENSOR_MAP_L2_PROMOTION_NONE,
                                                    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(out));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
