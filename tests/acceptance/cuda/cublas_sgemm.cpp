// cublas_sgemm.cpp - acceptance: cuBLAS single-precision GEMM (cublasSgemm, and cublasSgemmStridedBatched) on a
// user stream, alpha/beta and transposes, against a CPU reference in double.
// Tolerance (CPU check): |C - ref| <= 4e-5 * (|alpha| * sum_k |a||b| + |beta| * |c0|) elementwise: the standard
// fp32 dot-product error bound (k * 2^-24 with k = 512) for any summation order. Native vs remote: the
// checksums and sample elements in the JSON line, rtol 1e-6 (bit-identical when cuBLAS picks the same kernel).
// acceptance: link=-lcublas -lcublasLt
#include <cublas_v2.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "acceptance.h"

// Column-major C = alpha * op(A) * op(B) + beta * C on the CPU; returns the number of elements outside the
// error bound. ta/tb: whether A (stored k x m) / B (stored n x k) are transposed.
static int check(const std::vector<float> &a, const std::vector<float> &b, const std::vector<float> &c0,
                 const std::vector<float> &c, int m, int n, int k, bool ta, bool tb, float alpha, float beta)
{
    int bad = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0, mag = 0;
            for (int p = 0; p < k; p++) {
                double av = ta ? a[(size_t)i * k + p] : a[(size_t)p * m + i];
                double bv = tb ? b[(size_t)p * n + j] : b[(size_t)j * k + p];
                s += av * bv;
                mag += std::fabs(av * bv);
            }
            double ref = alpha * s + beta * c0[(size_t)j * m + i];
            double bound = 4e-5 * (std::fabs(alpha) * mag + std::fabs(beta * c0[(size_t)j * m + i])) + 1e-30;
            bad += !(std::fabs(c[(size_t)j * m + i] - ref) <= bound);
        }
    return bad;
}

int main()
{
    const int m = 384, n = 256, k = 512, batch = 3;
    const float alpha = 1.5f, beta = 0.5f;
    unsigned seed = 2024;
    std::vector<float> a((size_t)m * k), b((size_t)k * n), c0((size_t)m * n), c((size_t)m * n);
    for (auto &x : a)
        x = acc_unit(seed);
    for (auto &x : b)
        x = acc_unit(seed);
    for (auto &x : c0)
        x = acc_unit(seed);
    float *da, *db, *dc;
    CHECK(cudaMalloc(&da, a.size() * sizeof(float)));
    CHECK(cudaMalloc(&db, b.size() * sizeof(float)));
    CHECK(cudaMalloc(&dc, c.size() * batch * sizeof(float)));
    CHECK(cudaMemcpy(da, a.data(), a.size() * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), b.size() * sizeof(float), cudaMemcpyHostToDevice));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    CUBLAS_CHECK(cublasSetStream(h, s));
    int version = 0;
    CUBLAS_CHECK(cublasGetVersion(h, &version));
    std::printf("cublas major version %d\n", version / 10000);

    // 1) C = alpha * A * B + beta * C, A m x k, B k x n.
    CHECK(cudaMemcpyAsync(dc, c0.data(), c0.size() * sizeof(float), cudaMemcpyHostToDevice, s));
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, da, m, db, k, &beta, dc, m));
    CHECK(cudaMemcpyAsync(c.data(), dc, c.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    int bad_nn = check(a, b, c0, c, m, n, k, false, false, alpha, beta);
    double sum_nn = 0;
    for (float x : c)
        sum_nn += x;
    float nn_first = c[0], nn_last = c.back();

    // 2) The same data read transposed: A^T (A stored k x m) times B^T (B stored n x k), beta = 0.
    const float zero = 0.0f;
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_T, m, n, k, &alpha, da, k, db, n, &zero, dc, m));
    CHECK(cudaMemcpyAsync(c.data(), dc, c.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    int bad_tt = check(a, b, c0, c, m, n, k, true, true, alpha, 0.0f);
    double sum_tt = 0;
    for (float x : c)
        sum_tt += x;

    // 3) Strided batched: the same A and B for every batch entry (stride 0), C entries side by side.
    for (int i = 0; i < batch; i++)
        CHECK(cudaMemcpyAsync(dc + (size_t)i * m * n, c0.data(), c0.size() * sizeof(float), cudaMemcpyHostToDevice,
                              s));
    CUBLAS_CHECK(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, da, m, 0, db, k, 0, &beta, dc,
                                           m, (long long)m * n, batch));
    std::vector<float> cb(c.size() * batch);
    CHECK(cudaMemcpyAsync(cb.data(), dc, cb.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    int bad_batched = 0;
    for (int i = 0; i < batch; i++) {
        std::vector<float> ci(cb.begin() + (size_t)i * m * n, cb.begin() + (size_t)(i + 1) * m * n);
        bad_batched += check(a, b, c0, ci, m, n, k, false, false, alpha, beta);
    }

    std::printf("sgemm NN %dx%dx%d: elements outside the fp32 error bound %d\n", m, n, k, bad_nn);
    std::printf("sgemm TT %dx%dx%d: elements outside the fp32 error bound %d\n", m, n, k, bad_tt);
    std::printf("sgemm strided batched x%d: elements outside the fp32 error bound %d\n", batch, bad_batched);
    std::printf("{\"values\": {\"sum_nn\": %.17g, \"sum_tt\": %.17g, \"nn_first\": %.9g, \"nn_last\": %.9g}, "
                "\"tolerance\": {\"sum_nn\": {\"rtol\": 1e-6}, \"sum_tt\": {\"rtol\": 1e-6}, "
                "\"nn_first\": {\"rtol\": 1e-6}, \"nn_last\": {\"rtol\": 1e-6}}}\n",
                sum_nn, sum_tt, nn_first, nn_last);
    CUBLAS_CHECK(cublasDestroy(h));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    int bad = bad_nn + bad_tt + bad_batched;
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
