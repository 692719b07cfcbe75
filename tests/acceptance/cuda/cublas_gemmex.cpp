// cublas_gemmex.cpp - acceptance: cublasGemmEx in fp16 and bf16 (A, B, C of the same 16-bit type) with
// CUBLAS_COMPUTE_32F and CUBLAS_GEMM_DEFAULT, which runs on the tensor cores on sm_90.
// Inputs are k/64 in [-1, 1]: exact in fp16 and bf16, and every partial sum (k = 256) is exact in an fp32
// accumulator, so the only error is the final rounding to the 16-bit output.
// Tolerance (CPU check): |C - ref| <= 2^-10 * |ref| for fp16 and 2^-7 * |ref| for bf16 (one unit in the last place
// of the output format, i.e. at most one rounding step away from the exact value), plus 2^-24 absolute for
// values near zero. The count of exactly-rounded elements is reported too. Native vs remote: identical
// output expected; the JSON checksums carry rtol 1e-6 and the exactly-rounded counts +-200 (of 196608).
// acceptance: link=-lcublas -lcublasLt
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <vector>

#include "acceptance.h"

struct Result {
    int outside, exact;
    double sum;
};

template <typename T>
static Result run(cublasHandle_t h, cudaDataType_t type, double rel_tol, float (*to_f)(T), T (*from_f)(float))
{
    const int m = 512, n = 384, k = 256;
    unsigned seed = type == CUDA_R_16F ? 16u : 17u;
    std::vector<float> af((size_t)m * k), bf((size_t)k * n);
    for (auto &x : af)
        x = acc_q64(seed);
    for (auto &x : bf)
        x = acc_q64(seed);
    std::vector<T> a(af.size()), b(bf.size()), c((size_t)m * n);
    for (size_t i = 0; i < af.size(); i++)
        a[i] = from_f(af[i]);
    for (size_t i = 0; i < bf.size(); i++)
        b[i] = from_f(bf[i]);
    T *da, *db, *dc;
    CHECK(cudaMalloc(&da, a.size() * sizeof(T)));
    CHECK(cudaMalloc(&db, b.size() * sizeof(T)));
    CHECK(cudaMalloc(&dc, c.size() * sizeof(T)));
    CHECK(cudaMemcpy(da, a.data(), a.size() * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), b.size() * sizeof(T), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dc, 0, c.size() * sizeof(T)));
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &alpha, da, type, m, db, type, k, &beta, dc, type, m,
                              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(c.data(), dc, c.size() * sizeof(T), cudaMemcpyDeviceToHost));
    Result r{0, 0, 0.0};
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0;
            for (int p = 0; p < k; p++)
                s += (double)af[(size_t)p * m + i] * bf[(size_t)j * k + p];
            float got = to_f(c[(size_t)j * m + i]);
            float rounded = to_f(from_f((float)s));  // s is exact in float; from_f rounds to nearest even
            r.outside += !(std::fabs(got - s) <= rel_tol * std::fabs(s) + 0x1p-24);
            r.exact += got == rounded;
            r.sum += got;
        }
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    std::printf("gemmex %s %dx%dx%d compute 32F: elements outside tolerance %d of %d\n",
                type == CUDA_R_16F ? "fp16" : "bf16", m, n, k, r.outside, m * n);
    return r;
}

static float h2f(__half x) { return __half2float(x); }
static __half f2h(float x) { return __float2half_rn(x); }
static float b2f(__nv_bfloat16 x) { return __bfloat162float(x); }
static __nv_bfloat16 f2b(float x) { return __float2bfloat16_rn(x); }

int main()
{
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    Result f16 = run<__half>(h, CUDA_R_16F, 0x1p-10, h2f, f2h);
    Result b16 = run<__nv_bfloat16>(h, CUDA_R_16BF, 0x1p-7, b2f, f2b);
    std::printf("{\"values\": {\"fp16_sum\": %.17g, \"bf16_sum\": %.17g, \"fp16_exact\": %d, \"bf16_exact\": %d}, "
                "\"tolerance\": {\"fp16_sum\": {\"rtol\": 1e-6}, \"bf16_sum\": {\"rtol\": 1e-6}, "
                "\"fp16_exact\": {\"atol\": 200}, \"bf16_exact\": {\"atol\": 200}}}\n",
                f16.sum, b16.sum, f16.exact, b16.exact);
    CUBLAS_CHECK(cublasDestroy(h));
    int bad = f16.outside + b16.outside;
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
