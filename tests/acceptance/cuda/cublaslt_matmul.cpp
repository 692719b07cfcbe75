// cublaslt_matmul.cpp - acceptance: cuBLASLt. D = relu(A * B + bias) in fp16 with an fp32 compute and scale
// type, A transposed (CUBLASLT_MATMUL_DESC_TRANSA), the RELU_BIAS epilogue, an algorithm chosen by
// cublasLtMatmulAlgoGetHeuristic under a 32 MiB workspace, on a user stream.
// Inputs and bias are k/64 in [-1, 1]: every partial sum is exact in fp32, so the only error is the final
// rounding to fp16. Tolerance (CPU check): |D - ref| <= 2^-10 * |ref| + 2^-24 elementwise (one fp16 ulp).
// Native vs remote: checksum rtol 1e-6, count of positive outputs exact.
// acceptance: link=-lcublasLt
#include <cublasLt.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "acceptance.h"

int main()
{
    const int m = 256, n = 128, k = 192;
    unsigned seed = 77;
    // A is stored k x m (column-major, lda = k) and used transposed; B is k x n (ldb = k); D is m x n.
    std::vector<float> af((size_t)k * m), bf((size_t)k * n), biasf(m);
    for (auto &x : af)
        x = acc_q64(seed);
    for (auto &x : bf)
        x = acc_q64(seed);
    for (auto &x : biasf)
        x = acc_q64(seed);
    std::vector<__half> a(af.size()), b(bf.size()), bias(m), d((size_t)m * n);
    for (size_t i = 0; i < af.size(); i++)
        a[i] = __float2half_rn(af[i]);
    for (size_t i = 0; i < bf.size(); i++)
        b[i] = __float2half_rn(bf[i]);
    for (int i = 0; i < m; i++)
        bias[i] = __float2half_rn(biasf[i]);
    __half *da, *db, *dbias, *dd;
    void *workspace;
    const size_t ws_size = 32u << 20;
    CHECK(cudaMalloc(&da, a.size() * sizeof(__half)));
    CHECK(cudaMalloc(&db, b.size() * sizeof(__half)));
    CHECK(cudaMalloc(&dbias, bias.size() * sizeof(__half)));
    CHECK(cudaMalloc(&dd, d.size() * sizeof(__half)));
    CHECK(cudaMalloc(&workspace, ws_size));
    CHECK(cudaMemcpy(da, a.data(), a.size() * sizeof(__half), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(db, b.data(), b.size() * sizeof(__half), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dbias, bias.data(), bias.size() * sizeof(__half), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dd, 0, d.size() * sizeof(__half)));
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));

    cublasLtHandle_t lt;
    CUBLASLT_CHECK(cublasLtCreate(&lt));
    cublasLtMatmulDesc_t op;
    CUBLASLT_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_RELU_BIAS;
    const void *bias_ptr = dbias;
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof bias_ptr));
    cublasLtMatrixLayout_t la, lb, ld;
    CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16F, k, m, k));
    CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16F, k, n, k));
    CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16F, m, n, m));
    cublasLtMatmulPreference_t pref;
    CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    CUBLASLT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_size,
                                                        sizeof ws_size));
    cublasLtMatmulHeuristicResult_t heur[4] = {};
    int found = 0;
    CUBLASLT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, ld, ld, pref, 4, heur, &found));
    std::printf("heuristic returned at least one algorithm: %s\n", found > 0 ? "yes" : "no");
    if (found == 0) {
        std::printf("FAIL\n");
        return 1;
    }
    const float alpha = 1.0f, beta = 0.0f;
    std::vector<__half> first(d.size());
    for (int rep = 0; rep < 2; rep++) {  // twice: the second run must reproduce the first bit for bit
        CUBLASLT_CHECK(cublasLtMatmul(lt, op, &alpha, da, la, db, lb, &beta, dd, ld, dd, ld, &heur[0].algo, workspace,
                                      ws_size, s));
        CHECK(cudaMemcpyAsync(rep ? d.data() : first.data(), dd, d.size() * sizeof(__half), cudaMemcpyDeviceToHost, s));
        CHECK(cudaStreamSynchronize(s));
    }
    bool repeat_identical = std::memcmp(first.data(), d.data(), d.size() * sizeof(__half)) == 0;
    std::printf("second run identical to the first: %s\n", repeat_identical ? "yes" : "no");

    int outside = 0, positive = 0;
    double sum = 0;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double acc = biasf[i];
            for (int p = 0; p < k; p++)
                acc += (double)af[(size_t)i * k + p] * bf[(size_t)j * k + p];
            double ref = acc > 0 ? acc : 0;
            float got = __half2float(d[(size_t)j * m + i]);
            outside += !(std::fabs(got - ref) <= 0x1p-10 * std::fabs(ref) + 0x1p-24);
            positive += got > 0;
            sum += got;
        }
    std::printf("lt matmul fp16 %dx%dx%d relu+bias: elements outside tolerance %d of %d\n", m, n, k, outside, m * n);
    std::printf("{\"values\": {\"sum\": %.17g, \"positive\": %d}, \"tolerance\": {\"sum\": {\"rtol\": 1e-6}}}\n", sum,
                positive);
    CUBLASLT_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUBLASLT_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLASLT_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLASLT_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLASLT_CHECK(cublasLtMatmulDescDestroy(op));
    CUBLASLT_CHECK(cublasLtDestroy(lt));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dbias));
    CHECK(cudaFree(dd));
    CHECK(cudaFree(workspace));
    int bad = outside + !repeat_identical;
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
