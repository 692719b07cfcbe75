// matmul_tiled.cu - acceptance: a classic shared-memory tiled matrix multiply (static __shared__ tiles,
// __syncthreads, a 2D grid with ragged edges) through the CUDA runtime. Inputs are multiples of 1/64 in
// [-1, 1], so every partial sum is exact in fp32 and the result must equal the CPU reference bit for bit.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "acceptance.h"

#define TILE 16

__global__ void matmul_tiled(const float *a, const float *b, float *c, int m, int n, int k)
{
    __shared__ float ta[TILE][TILE];
    __shared__ float tb[TILE][TILE];
    int row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x;
    float acc = 0.0f;
    for (int t = 0; t < (k + TILE - 1) / TILE; t++) {
        int ka = t * TILE + threadIdx.x, kb = t * TILE + threadIdx.y;
        ta[threadIdx.y][threadIdx.x] = (row < m && ka < k) ? a[row * k + ka] : 0.0f;
        tb[threadIdx.y][threadIdx.x] = (kb < k && col < n) ? b[kb * n + col] : 0.0f;
        __syncthreads();
        for (int i = 0; i < TILE; i++)
            acc += ta[threadIdx.y][i] * tb[i][threadIdx.x];
        __syncthreads();
    }
    if (row < m && col < n)
        c[row * n + col] = acc;
}

int main()
{
    const int m = 500, n = 300, k = 400;  // not multiples of TILE: the edge tiles are exercised
    std::vector<float> ha((size_t)m * k), hb((size_t)k * n), hc((size_t)m * n), ref((size_t)m * n);
    unsigned seed = 12345;
    for (auto &x : ha)
        x = acc_q64(seed);
    for (auto &x : hb)
        x = acc_q64(seed);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)ha[(size_t)i * k + p] * hb[(size_t)p * n + j];
            ref[(size_t)i * n + j] = (float)s;
        }
    float *da, *db, *dc;
    CHECK(cudaMalloc(&da, ha.size() * sizeof(float)));
    CHECK(cudaMalloc(&db, hb.size() * sizeof(float)));
    CHECK(cudaMalloc(&dc, hc.size() * sizeof(float)));
    CHECK(cudaMemcpy(da, ha.data(), ha.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, hb.data(), hb.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dc, 0xff, hc.size() * sizeof(float)));  // NaN everywhere: an unwritten element shows
    dim3 block(TILE, TILE), grid((n + TILE - 1) / TILE, (m + TILE - 1) / TILE);
    matmul_tiled<<<grid, block>>>(da, db, dc, m, n, k);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(hc.data(), dc, hc.size() * sizeof(float), cudaMemcpyDeviceToHost));
    int bad = 0;
    double sum = 0;
    for (size_t i = 0; i < hc.size(); i++) {
        sum += hc[i];
        if (std::memcmp(&hc[i], &ref[i], sizeof(float)) != 0)
            bad++;
    }
    std::printf("matmul %dx%dx%d tile %d grid %ux%u\n", m, n, k, TILE, grid.x, grid.y);
    std::printf("c[0][0] %.6f c[17][33] %.6f c[499][299] %.6f\n", hc[0], hc[17 * n + 33], hc[(size_t)m * n - 1]);
    std::printf("checksum %.6f mismatches vs CPU %d\n", sum, bad);
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
