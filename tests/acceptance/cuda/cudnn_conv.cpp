// cudnn_conv.cpp - acceptance: cuDNN 9 convolution forward, backward data and backward filter through the
// legacy descriptor API (cudnnCreate, cudnnSetStream on a user stream, tensor/filter/convolution descriptors,
// cudnnGet*Algorithm_v7 heuristics, workspaces from cudnnGet*WorkspaceSize), against a CPU reference in double.
// Cases: fp32 NCHW 3x3 dilation 2 (CUDNN_FMA_MATH, alpha 1, beta 0); fp32 NCHW 3x3 stride 2, 2 groups
// (CUDNN_FMA_MATH, alpha 0.5, beta 0.25 onto prefilled outputs); fp16 NHWC 3x3 with CUDNN_TENSOR_OP_MATH and
// fp32 compute (alpha 1, beta 0). Each case runs all three passes (y = conv(x, w), dx = conv^T(dy, w),
// dw = x (*) dy). Algorithm: the first heuristic result that is supported, deterministic and a GEMM or direct
// algorithm (FFT and Winograd transform the data and have no elementwise bound of the form below); a
// supported non-deterministic one only when no deterministic one is.
// Inputs are k/64 in [-1, 1] (acc_q64): exact in fp16, every product exact, every partial sum a multiple of
// 2^-12 of at most 2^9 in magnitude, so exact in an fp32 accumulator whatever the summation order.
// Tolerance (CPU check), per element with n contributing products and mag = |alpha| sum |a*b| + |beta| |prior|:
//   fp32: |r - ref| <= (n + 2) * 2^-23 * mag, twice the standard fp32 dot-product bound (n * 2^-24), plus the
//         alpha and beta roundings; any summation order meets it.
//   fp16: the fp32 bound plus 2^-10 * |ref|, one unit in the last place of the fp16 output (the final rounding
//         of the fp32 accumulator to fp16 and one more rounding step), as cublas_gemmex.cpp.
// Each case prints its counts of elements outside the bound (zero expected). Native vs remote: the same cuDNN
// and the same heuristics pick the same algorithms, so outputs are expected bit-identical; the JSON sums and
// sample elements carry rtol 1e-6 / atol 1e-3 (sums) and 1e-6 (samples) for fp32, and rtol 2e-3 / atol 1
// (sums) and 1e-2 (samples) for fp16 (about two fp16 units in the last place).
// acceptance: pip=nvidia.cudnn:cudnn
#include <cuda_fp16.h>
#include <cudnn.h>

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <vector>

#include "acceptance.h"

// cuDNN's status string, followed by its most recent detailed message (one line) when it has one.
#define CUDNN_CHECK(x)                                                                  \
    do {                                                                                \
        cudnnStatus_t s_ = (x);                                                         \
        if (s_ != CUDNN_STATUS_SUCCESS) {                                               \
            char d_[512] = {0}, m_[640];                                                \
            cudnnGetLastErrorString(d_, sizeof d_);                                     \
            for (char *p_ = d_; *p_; p_++)                                              \
                if (*p_ == '\n' || *p_ == '\r')                                         \
                    *p_ = ' ';                                                          \
            const char *e_ = cudnnGetErrorString(s_);                                   \
            std::snprintf(m_, sizeof m_, "%s%s%s", e_, d_[0] ? ": " : "", d_);          \
            ACC_FAIL(#x, __FILE__, __LINE__, m_);                                       \
        }                                                                               \
    } while (0)

struct Conv {
    const char *name; // also the JSON key prefix
    bool fp16;        // fp16 data, NHWC layout, tensor-op math; otherwise fp32, NCHW, FMA math
    int n, c, h, w;   // input
    int k, r, s;      // filters: k x (c / groups) x r x s
    int pad, stride, dil, groups;
    float alpha, beta;
    unsigned seed;
    int p() const { return (h + 2 * pad - (dil * (r - 1) + 1)) / stride + 1; }
    int q() const { return (w + 2 * pad - (dil * (s - 1) + 1)) / stride + 1; }
};

// Logical (d0, d1, d2, d3) in row-major order is NCHW / KCRS; the device order is that, or (d0, d2, d3, d1)
// (NHWC / KRSC) for the fp16 case.
static size_t dev_index(int i0, int i1, int i2, int i3, int d1, int d2, int d3, bool nhwc)
{
    if (nhwc)
        return (((size_t)i0 * d2 + i2) * d3 + i3) * d1 + i1;
    return (((size_t)i0 * d1 + i1) * d2 + i2) * d3 + i3;
}

// A device buffer holding a logical 4-d array in the case's type and layout.
struct Buf {
    void *ptr = nullptr;
    int d0, d1, d2, d3;
    bool fp16, nhwc;
    size_t count() const { return (size_t)d0 * d1 * d2 * d3; }
    size_t bytes() const { return count() * (fp16 ? sizeof(__half) : sizeof(float)); }
};

static Buf make_buf(int d0, int d1, int d2, int d3, bool fp16)
{
    Buf b{nullptr, d0, d1, d2, d3, fp16, fp16};
    CHECK(cudaMalloc(&b.ptr, b.bytes()));
    return b;
}

static void upload(const Buf &b, const std::vector<float> &v, cudaStream_t st)
{
    std::vector<unsigned char> host(b.bytes());
    size_t i = 0;
    for (int i0 = 0; i0 < b.d0; i0++)
        for (int i1 = 0; i1 < b.d1; i1++)
            for (int i2 = 0; i2 < b.d2; i2++)
                for (int i3 = 0; i3 < b.d3; i3++, i++) {
                    size_t j = dev_index(i0, i1, i2, i3, b.d1, b.d2, b.d3, b.nhwc);
                    if (b.fp16)
                        reinterpret_cast<__half *>(host.data())[j] = __float2half(v[i]);
                    else
                        reinterpret_cast<float *>(host.data())[j] = v[i];
                }
    CHECK(cudaMemcpyAsync(b.ptr, host.data(), host.size(), cudaMemcpyHostToDevice, st));
    CHECK(cudaStreamSynchronize(st)); // host is a local: the copy must finish before it goes away
}

static std::vector<float> download(const Buf &b, cudaStream_t st)
{
    std::vector<unsigned char> host(b.bytes());
    CHECK(cudaMemcpyAsync(host.data(), b.ptr, host.size(), cudaMemcpyDeviceToHost, st));
    CHECK(cudaStreamSynchronize(st));
    std::vector<float> v(b.count());
    size_t i = 0;
    for (int i0 = 0; i0 < b.d0; i0++)
        for (int i1 = 0; i1 < b.d1; i1++)
            for (int i2 = 0; i2 < b.d2; i2++)
                for (int i3 = 0; i3 < b.d3; i3++, i++) {
                    size_t j = dev_index(i0, i1, i2, i3, b.d1, b.d2, b.d3, b.nhwc);
                    v[i] = b.fp16 ? __half2float(reinterpret_cast<const __half *>(host.data())[j])
                                  : reinterpret_cast<const float *>(host.data())[j];
                }
    return v;
}

// A workspace that grows to the largest size asked for.
struct Workspace {
    void *ptr = nullptr;
    size_t cap = 0;
    void *get(size_t need)
    {
        if (need > cap) {
            if (ptr)
                CHECK(cudaFree(ptr));
            CHECK(cudaMalloc(&ptr, need));
            cap = need;
        }
        return need ? ptr : nullptr;
    }
};

// The first heuristic result that is supported, one of the allowed algorithms and deterministic; failing that,
// supported and allowed. -1 when none is.
template <typename Perf>
static int pick(const Perf *res, int count, std::initializer_list<int> allowed)
{
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < count; i++) {
            bool ok = res[i].status == CUDNN_STATUS_SUCCESS;
            bool listed = false;
            for (int a : allowed)
                listed |= (int)res[i].algo == a;
            if (ok && listed && (pass == 1 || res[i].determinism == CUDNN_DETERMINISTIC))
                return i;
        }
    return -1;
}

static void no_algorithm(const Conv &cv, const char *pass, int returned)
{
    std::printf("FAIL %s %s: no supported GEMM or direct algorithm among %d heuristic results\n", cv.name, pass,
                returned);
    std::fflush(stdout);
    std::exit(1);
}

// The three passes in double on the CPU, with per-element magnitudes and product counts, then the count of
// device results outside the bound. One scatter loop over (n, k, p, q, c', r, s) feeds all three.
struct Check {
    int bad_y = 0, bad_dx = 0, bad_dw = 0;
};

static int count_outside(const std::vector<float> &got, const std::vector<double> &sum, const std::vector<double> &mag,
                         const std::vector<int> &terms, const std::vector<float> &prior, const Conv &cv)
{
    int bad = 0;
    for (size_t i = 0; i < got.size(); i++) {
        double ref = (double)cv.alpha * sum[i] + (double)cv.beta * prior[i];
        double m = std::fabs((double)cv.alpha) * mag[i] + std::fabs((double)cv.beta * prior[i]);
        double bound = (terms[i] + 2) * std::ldexp(m, -23);
        if (cv.fp16)
            bound += std::ldexp(std::fabs(ref), -10);
        bad += !(std::fabs((double)got[i] - ref) <= bound);
    }
    return bad;
}

static Check reference(const Conv &cv, const std::vector<float> &x, const std::vector<float> &w,
                       const std::vector<float> &dy, const std::vector<float> &y0, const std::vector<float> &dx0,
                       const std::vector<float> &dw0, const std::vector<float> &y, const std::vector<float> &dx,
                       const std::vector<float> &dw)
{
    const int P = cv.p(), Q = cv.q(), cg = cv.c / cv.groups, kg = cv.k / cv.groups;
    std::vector<double> ys(y.size()), ym(y.size()), dxs(dx.size()), dxm(dx.size()), dws(dw.size()), dwm(dw.size());
    std::vector<int> yt(y.size()), dxt(dx.size()), dwt(dw.size());
    for (int n = 0; n < cv.n; n++)
        for (int k = 0; k < cv.k; k++)
            for (int p = 0; p < P; p++)
                for (int q = 0; q < Q; q++) {
                    size_t yi = (((size_t)n * cv.k + k) * P + p) * Q + q;
                    double dyv = dy[yi];
                    for (int ci = 0; ci < cg; ci++) {
                        int c = (k / kg) * cg + ci;
                        for (int r = 0; r < cv.r; r++) {
                            int hh = p * cv.stride - cv.pad + r * cv.dil;
                            if (hh < 0 || hh >= cv.h)
                                continue;
                            for (int s = 0; s < cv.s; s++) {
                                int ww = q * cv.stride - cv.pad + s * cv.dil;
                                if (ww < 0 || ww >= cv.w)
                                    continue;
                                size_t xi = (((size_t)n * cv.c + c) * cv.h + hh) * cv.w + ww;
                                size_t wi = (((size_t)k * cg + ci) * cv.r + r) * cv.s + s;
                                double xv = x[xi], wv = w[wi];
                                ys[yi] += xv * wv;
                                ym[yi] += std::fabs(xv * wv);
                                yt[yi]++;
                                dxs[xi] += dyv * wv;
                                dxm[xi] += std::fabs(dyv * wv);
                                dxt[xi]++;
                                dws[wi] += xv * dyv;
                                dwm[wi] += std::fabs(xv * dyv);
                                dwt[wi]++;
                            }
                        }
                    }
                }
    Check ck;
    ck.bad_y = count_outside(y, ys, ym, yt, y0, cv);
    ck.bad_dx = count_outside(dx, dxs, dxm, dxt, dx0, cv);
    ck.bad_dw = count_outside(dw, dws, dwm, dwt, dw0, cv);
    return ck;
}

static std::vector<float> q64_vector(size_t n, unsigned &seed)
{
    std::vector<float> v(n);
    for (auto &e : v)
        e = acc_q64(seed);
    return v;
}

static double sum_of(const std::vector<float> &v)
{
    double s = 0;
    for (float e : v)
        s += e;
    return s;
}

// 8 elements at fixed logical positions, as a JSON list.
static std::string samples(const std::vector<float> &v)
{
    std::string out = "[";
    char buf[32];
    for (int i = 0; i < 8; i++) {
        std::snprintf(buf, sizeof buf, "%s%.9g", i ? ", " : "", v[(v.size() - 1) * i / 7]);
        out += buf;
    }
    return out + "]";
}

// Runs one case on the GPU, checks it, prints its lines and appends its JSON values and tolerances.
static int run(cudnnHandle_t h, cudaStream_t st, Workspace &ws, const Conv &cv, std::string &values,
               std::string &tols)
{
    const int cg = cv.c / cv.groups, P = cv.p(), Q = cv.q();
    const cudnnDataType_t dt = cv.fp16 ? CUDNN_DATA_HALF : CUDNN_DATA_FLOAT;
    const cudnnTensorFormat_t fmt = cv.fp16 ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    unsigned seed = cv.seed;
    std::vector<float> x = q64_vector((size_t)cv.n * cv.c * cv.h * cv.w, seed);
    std::vector<float> w = q64_vector((size_t)cv.k * cg * cv.r * cv.s, seed);
    std::vector<float> dy = q64_vector((size_t)cv.n * cv.k * P * Q, seed);
    std::vector<float> y0 = q64_vector(dy.size(), seed), dx0 = q64_vector(x.size(), seed),
                       dw0 = q64_vector(w.size(), seed);

    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&xd));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&wd));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(xd, fmt, dt, cv.n, cv.c, cv.h, cv.w));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd, dt, fmt, cv.k, cg, cv.r, cv.s));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd, cv.pad, cv.pad, cv.stride, cv.stride, cv.dil, cv.dil,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(cd, cv.groups));
    CUDNN_CHECK(cudnnSetConvolutionMathType(cd, cv.fp16 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
    int on, oc, oh, ow;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(cd, xd, wd, &on, &oc, &oh, &ow));
    std::printf("%s %s %s: x %dx%dx%dx%d w %dx%dx%dx%d pad %d stride %d dilation %d groups %d alpha %g beta %g "
                "-> y %dx%dx%dx%d\n", cv.name, cv.fp16 ? "fp16" : "fp32", cv.fp16 ? "NHWC" : "NCHW", cv.n, cv.c,
                cv.h, cv.w, cv.k, cg, cv.r, cv.s, cv.pad, cv.stride, cv.dil, cv.groups, cv.alpha, cv.beta, on, oc, oh,
                ow);
    if (on != cv.n || oc != cv.k || oh != P || ow != Q) {
        std::printf("FAIL %s: cuDNN output dims %dx%dx%dx%d, expected %dx%dx%dx%d\n", cv.name, on, oc, oh, ow, cv.n,
                    cv.k, P, Q);
        std::fflush(stdout);
        std::exit(1);
    }
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(yd, fmt, dt, cv.n, cv.k, P, Q));

    Buf bx = make_buf(cv.n, cv.c, cv.h, cv.w, cv.fp16), bw = make_buf(cv.k, cg, cv.r, cv.s, cv.fp16);
    Buf by = make_buf(cv.n, cv.k, P, Q, cv.fp16), bdy = make_buf(cv.n, cv.k, P, Q, cv.fp16);
    Buf bdx = make_buf(cv.n, cv.c, cv.h, cv.w, cv.fp16), bdw = make_buf(cv.k, cg, cv.r, cv.s, cv.fp16);
    upload(bx, x, st);
    upload(bw, w, st);
    upload(bdy, dy, st);
    upload(by, y0, st); // beta blends onto these
    upload(bdx, dx0, st);
    upload(bdw, dw0, st);

    // Forward.
    cudnnConvolutionFwdAlgoPerf_t fr[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int nf = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, cd, yd, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &nf, fr));
    int fi = pick(fr, nf, {CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                           CUDNN_CONVOLUTION_FWD_ALGO_GEMM, CUDNN_CONVOLUTION_FWD_ALGO_DIRECT});
    if (fi < 0)
        no_algorithm(cv, "forward", nf);
    size_t fws = 0;
    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, xd, wd, cd, yd, fr[fi].algo, &fws));
    CUDNN_CHECK(cudnnConvolutionForward(h, &cv.alpha, xd, bx.ptr, wd, bw.ptr, cd, fr[fi].algo, ws.get(fws), fws,
                                        &cv.beta, yd, by.ptr));

    // Backward data.
    cudnnConvolutionBwdDataAlgoPerf_t dr[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    int nd = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd, yd, cd, xd, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                                                            &nd, dr));
    int di = pick(dr, nd, {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1});
    if (di < 0)
        no_algorithm(cv, "backward data", nd);
    size_t dws = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(h, wd, yd, cd, xd, dr[di].algo, &dws));
    CUDNN_CHECK(cudnnConvolutionBackwardData(h, &cv.alpha, wd, bw.ptr, yd, bdy.ptr, cd, dr[di].algo, ws.get(dws), dws,
                                             &cv.beta, xd, bdx.ptr));

    // Backward filter.
    cudnnConvolutionBwdFilterAlgoPerf_t wr[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    int nw = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, xd, yd, cd, wd,
                                                              CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &nw, wr));
    int wi = pick(wr, nw, {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                           CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3});
    if (wi < 0)
        no_algorithm(cv, "backward filter", nw);
    size_t wws = 0;
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(h, xd, yd, cd, wd, wr[wi].algo, &wws));
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &cv.alpha, xd, bx.ptr, yd, bdy.ptr, cd, wr[wi].algo, ws.get(wws),
                                               wws, &cv.beta, wd, bdw.ptr));
    CHECK(cudaGetLastError());

    // Algorithms and workspaces go to stderr (a log for people, not compared).
    std::fprintf(stderr, "%s: forward algo %d (det %d, math %d, ws %zu), backward data algo %d (det %d, math %d, "
                 "ws %zu), backward filter algo %d (det %d, math %d, ws %zu)\n", cv.name, (int)fr[fi].algo,
                 (int)fr[fi].determinism, (int)fr[fi].mathType, fws, (int)dr[di].algo, (int)dr[di].determinism,
                 (int)dr[di].mathType, dws, (int)wr[wi].algo, (int)wr[wi].determinism, (int)wr[wi].mathType, wws);

    std::vector<float> y = download(by, st), dx = download(bdx, st), dw = download(bdw, st);
    Check ck = reference(cv, x, w, dy, y0, dx0, dw0, y, dx, dw);
    const char *fmtname = cv.fp16 ? "fp16" : "fp32";
    std::printf("%s forward: elements outside the %s bound %d of %zu\n", cv.name, fmtname, ck.bad_y, y.size());
    std::printf("%s backward data: elements outside the %s bound %d of %zu\n", cv.name, fmtname, ck.bad_dx,
                dx.size());
    std::printf("%s backward filter: elements outside the %s bound %d of %zu\n", cv.name, fmtname, ck.bad_dw,
                dw.size());

    char buf[256];
    const char *sum_tol = cv.fp16 ? "{\"rtol\": 2e-3, \"atol\": 1}" : "{\"rtol\": 1e-6, \"atol\": 1e-3}";
    const char *sample_tol = cv.fp16 ? "{\"rtol\": 2e-3, \"atol\": 1e-2}" : "{\"rtol\": 1e-6, \"atol\": 1e-6}";
    const char *outs[3] = {"y", "dx", "dw"};
    const std::vector<float> *vecs[3] = {&y, &dx, &dw};
    for (int i = 0; i < 3; i++) {
        std::snprintf(buf, sizeof buf, "%s\"%s_%s_sum\": %.17g, \"%s_%s_samples\": ", values.empty() ? "" : ", ",
                      cv.name, outs[i], sum_of(*vecs[i]), cv.name, outs[i]);
        values += buf + samples(*vecs[i]);
        std::snprintf(buf, sizeof buf, "%s\"%s_%s_sum\": %s, \"%s_%s_samples\": %s", tols.empty() ? "" : ", ",
                      cv.name, outs[i], sum_tol, cv.name, outs[i], sample_tol);
        tols += buf;
    }

    for (Buf *b : {&bx, &bw, &by, &bdy, &bdx, &bdw})
        CHECK(cudaFree(b->ptr));
    CUDNN_CHECK(cudnnDestroyConvolutionDescriptor(cd));
    CUDNN_CHECK(cudnnDestroyFilterDescriptor(wd));
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(yd));
    CUDNN_CHECK(cudnnDestroyTensorDescriptor(xd));
    return ck.bad_y + ck.bad_dx + ck.bad_dw;
}

int main()
{
    cudaStream_t st;
    CHECK(cudaStreamCreate(&st));
    cudnnHandle_t h;
    CUDNN_CHECK(cudnnCreate(&h));
    CUDNN_CHECK(cudnnSetStream(h, st));
    std::printf("cudnn major version %d (header %d)\n", (int)(cudnnGetVersion() / 10000), CUDNN_MAJOR);

    //                 name            fp16  n   c   h   w   k   r  s  pad str dil grp alpha  beta  seed
    const Conv cases[] = {{"fp32_dilated", false, 2, 16, 20, 20, 32, 3, 3, 2, 1, 2, 1, 1.0f, 0.0f, 31},
                          {"fp32_grouped", false, 2, 16, 21, 21, 32, 3, 3, 1, 2, 1, 2, 0.5f, 0.25f, 32},
                          {"fp16_nhwc_tensor_op", true, 2, 32, 16, 16, 64, 3, 3, 1, 1, 1, 1, 1.0f, 0.0f, 33}};
    Workspace ws;
    std::string values, tols;
    int bad = 0;
    for (const Conv &cv : cases)
        bad += run(h, st, ws, cv, values, tols);
    std::printf("{\"values\": {%s}, \"tolerance\": {%s}}\n", values.c_str(), tols.c_str());

    if (ws.ptr)
        CHECK(cudaFree(ws.ptr));
    CUDNN_CHECK(cudnnDestroy(h));
    CHECK(cudaStreamDestroy(st));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
