// acceptance.h - shared checks for the acceptance programs: each failed call prints one "FAIL" line naming
// the call and its error, flushes stdout and exits 1 (so the runner sees a nonzero rc and a readable reason).
// Library checks are macros guarded by the library's own header: include this file after cuda.h, cublas_v2.h,
// cublasLt.h, cufft.h or nvrtc.h, so a program gets the checks for what it links.
//
// Output contract with bench/acceptance.py: ordinary lines are compared exactly between the native and the
// remote run; a line holding a JSON object with "values" (and optionally "tolerance": {name: {"rtol", "atol"}
// or {"max_mismatches"}}) is compared value by value; a JSON line with "throughput" is a measurement.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

#define ACC_FAIL(call, file, line, msg)                                     \
    do {                                                                    \
        std::printf("FAIL %s:%d %s: %s\n", file, line, call, msg);          \
        std::fflush(stdout);                                                \
        std::exit(1);                                                       \
    } while (0)

#define CHECK(x)                                                            \
    do {                                                                    \
        cudaError_t e_ = (x);                                               \
        if (e_ != cudaSuccess)                                              \
            ACC_FAIL(#x, __FILE__, __LINE__, cudaGetErrorString(e_));       \
    } while (0)

#ifdef __cuda_cuda_h__
#define CU_CHECK(x)                                                         \
    do {                                                                    \
        CUresult r_ = (x);                                                  \
        if (r_ != CUDA_SUCCESS) {                                           \
            const char *s_ = nullptr;                                       \
            cuGetErrorName(r_, &s_);                                        \
            ACC_FAIL(#x, __FILE__, __LINE__, s_ ? s_ : "unknown CUresult"); \
        }                                                                   \
    } while (0)
#endif

#ifdef CUBLAS_VER_MAJOR
#define CUBLAS_CHECK(x)                                                     \
    do {                                                                    \
        cublasStatus_t s_ = (x);                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                    \
            ACC_FAIL(#x, __FILE__, __LINE__, cublasGetStatusString(s_));    \
    } while (0)
#endif

#ifdef CUBLASLT_NUMERICAL_IMPL_FLAGS_FMA
#define CUBLASLT_CHECK(x)                                                   \
    do {                                                                    \
        cublasStatus_t s_ = (x);                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                    \
            ACC_FAIL(#x, __FILE__, __LINE__, cublasLtGetStatusString(s_));  \
    } while (0)
#endif

#ifdef CUFFT_VER_MAJOR
#define CUFFT_CHECK(x)                                                      \
    do {                                                                    \
        cufftResult r_ = (x);                                               \
        if (r_ != CUFFT_SUCCESS) {                                          \
            char m_[32];                                                    \
            std::snprintf(m_, sizeof m_, "cufftResult %d", (int)r_);        \
            ACC_FAIL(#x, __FILE__, __LINE__, m_);                           \
        }                                                                   \
    } while (0)
#endif

#ifdef __NVRTC_H__
#define NVRTC_CHECK(x)                                                      \
    do {                                                                    \
        nvrtcResult r_ = (x);                                               \
        if (r_ != NVRTC_SUCCESS)                                            \
            ACC_FAIL(#x, __FILE__, __LINE__, nvrtcGetErrorString(r_));      \
    } while (0)
#endif

// Deterministic inputs: a 32-bit LCG mapped to k/64 for k in [-64, 64], exactly representable in fp32, fp16
// and bf16, so sums of products are exact in fp32 accumulators and results can be checked bit for bit.
static inline float acc_q64(unsigned &state)
{
    state = state * 1664525u + 1013904223u;
    return (float)((int)((state >> 9) % 129u) - 64) / 64.0f;
}

// Deterministic inputs in [-1, 1) with 24 random bits (not exactly summable: for tolerance checks).
static inline float acc_unit(unsigned &state)
{
    state = state * 1664525u + 1013904223u;
    return (float)(state >> 8) / 8388608.0f - 1.0f;
}
