// vector_add.cu - acceptance: the CUDA runtime's basic path (malloc, copies, one kernel, free) on fargpu.
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define CHECK(x)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (x);                                                                 \
        if (e_ != cudaSuccess) {                                                              \
            std::printf("FAIL %s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
            return 1;                                                                         \
        }                                                                                     \
    } while (0)

__global__ void vector_add(const float *a, const float *b, float *c, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        c[i] = a[i] + b[i];
}

int main()
{
    const int n = 1 << 20;
    int count = 0;
    CHECK(cudaGetDeviceCount(&count));
    std::printf("devices %d\n", count);
    float *ha = (float *)std::malloc(n * sizeof(float)), *hb = (float *)std::malloc(n * sizeof(float)),
          *hc = (float *)std::malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) {
        ha[i] = (float)i * 0.5f;
        hb[i] = (float)(n - i) * 0.25f;
    }
    float *da, *db, *dc;
    CHECK(cudaMalloc(&da, n * sizeof(float)));
    CHECK(cudaMalloc(&db, n * sizeof(float)));
    CHECK(cudaMalloc(&dc, n * sizeof(float)));
    CHECK(cudaMemcpy(da, ha, n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, hb, n * sizeof(float), cudaMemcpyHostToDevice));
    vector_add<<<(n + 255) / 256, 256>>>(da, db, dc, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(hc, dc, n * sizeof(float), cudaMemcpyDeviceToHost));
    double sum = 0;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        sum += hc[i];
        if (hc[i] != ha[i] + hb[i])
            bad++;
    }
    std::printf("sum %.1f mismatches %d\n", sum, bad);
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
