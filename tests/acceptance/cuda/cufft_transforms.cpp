// cufft_transforms.cpp - acceptance: cuFFT single-precision transforms against a CPU DFT in double:
//   1D C2C forward, N = 1024, batch 2 (cufftPlanMany), then the inverse (round trip, scaled by 1/N);
//   1D R2C forward, N = 1000 (not a power of two: 2^3 * 5^3);
//   2D C2C forward, 64 x 48 (cufftPlan2d), on a user stream (cufftSetStream).
// Tolerance (CPU check): relative L2 error ||X - ref|| / ||ref|| <= 2e-5 for every transform (fp32 FFTs reach
// about 1e-7 * log2 N). Native vs remote: checksums and X[1] in the JSON line, rtol 1e-5 with a small atol
// (sums of ~2000 outputs of magnitude ~30 can cancel); bit-identical when cuFFT runs the same kernels.
// acceptance: link=-lcufft
#include <cufft.h>

#include <cmath>
#include <complex>
#include <cstdio>
#include <vector>

#include "acceptance.h"

using cd = std::complex<double>;

static const double kTol = 2e-5;

// Forward DFT of x (length n, stride 1) in double, with exact twiddle indices (k * j mod n).
static std::vector<cd> dft(const std::vector<cd> &x)
{
    const size_t n = x.size();
    const double two_pi = 6.283185307179586476925286766559;
    std::vector<cd> tw(n), out(n);
    for (size_t j = 0; j < n; j++)
        tw[j] = std::polar(1.0, -two_pi * (double)j / (double)n);
    for (size_t k = 0; k < n; k++) {
        cd s = 0;
        for (size_t j = 0; j < n; j++)
            s += x[j] * tw[(k * j) % n];
        out[k] = s;
    }
    return out;
}

static double rel_l2(const cufftComplex *got, const std::vector<cd> &ref)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        cd g(got[i].x, got[i].y);
        num += std::norm(g - ref[i]);
        den += std::norm(ref[i]);
    }
    return std::sqrt(num / den);
}

static double checksum(const cufftComplex *x, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i].x + 0.5 * x[i].y;
    return s;
}

int main()
{
    unsigned seed = 99;
    int bad = 0;
    cudaStream_t s;
    CHECK(cudaStreamCreate(&s));

    // 1D C2C, batch 2, forward and inverse.
    const int n1 = 1024, batch = 2;
    std::vector<cufftComplex> h1((size_t)n1 * batch), f1(h1.size()), r1(h1.size());
    for (auto &c : h1)
        c = {acc_unit(seed), acc_unit(seed)};
    cufftComplex *d1;
    CHECK(cudaMalloc(&d1, h1.size() * sizeof(cufftComplex)));
    CHECK(cudaMemcpy(d1, h1.data(), h1.size() * sizeof(cufftComplex), cudaMemcpyHostToDevice));
    cufftHandle p1;
    int dims1[1] = {n1};
    CUFFT_CHECK(cufftPlanMany(&p1, 1, dims1, nullptr, 1, n1, nullptr, 1, n1, CUFFT_C2C, batch));
    CUFFT_CHECK(cufftExecC2C(p1, d1, d1, CUFFT_FORWARD));
    CHECK(cudaMemcpy(f1.data(), d1, f1.size() * sizeof(cufftComplex), cudaMemcpyDeviceToHost));
    CUFFT_CHECK(cufftExecC2C(p1, d1, d1, CUFFT_INVERSE));
    CHECK(cudaMemcpy(r1.data(), d1, r1.size() * sizeof(cufftComplex), cudaMemcpyDeviceToHost));
    double err1 = 0, err_rt = 0;
    for (int b = 0; b < batch; b++) {
        std::vector<cd> x(n1), xs(n1);
        for (int i = 0; i < n1; i++) {
            x[i] = cd(h1[(size_t)b * n1 + i].x, h1[(size_t)b * n1 + i].y);
            xs[i] = x[i] * (double)n1;  // the unnormalised inverse returns N * x
        }
        err1 = std::fmax(err1, rel_l2(&f1[(size_t)b * n1], dft(x)));
        err_rt = std::fmax(err_rt, rel_l2(&r1[(size_t)b * n1], xs));
    }
    std::printf("fft 1d c2c n=%d batch=%d forward: rel L2 error within %.0e: %s\n", n1, batch, kTol,
                err1 <= kTol ? "yes" : "no");
    std::printf("fft 1d c2c round trip: rel L2 error within %.0e: %s\n", kTol, err_rt <= kTol ? "yes" : "no");
    bad += !(err1 <= kTol) + !(err_rt <= kTol);

    // 1D R2C, N = 1000.
    const int n2 = 1000;
    std::vector<float> h2(n2);
    for (auto &v : h2)
        v = acc_unit(seed);
    std::vector<cufftComplex> f2(n2 / 2 + 1);
    float *d2in;
    cufftComplex *d2out;
    CHECK(cudaMalloc(&d2in, n2 * sizeof(float)));
    CHECK(cudaMalloc(&d2out, f2.size() * sizeof(cufftComplex)));
    CHECK(cudaMemcpy(d2in, h2.data(), n2 * sizeof(float), cudaMemcpyHostToDevice));
    cufftHandle p2;
    CUFFT_CHECK(cufftPlan1d(&p2, n2, CUFFT_R2C, 1));
    CUFFT_CHECK(cufftExecR2C(p2, d2in, d2out));
    CHECK(cudaMemcpy(f2.data(), d2out, f2.size() * sizeof(cufftComplex), cudaMemcpyDeviceToHost));
    std::vector<cd> x2(h2.begin(), h2.end());
    std::vector<cd> ref2 = dft(x2);
    ref2.resize(f2.size());
    double err2 = rel_l2(f2.data(), ref2);
    std::printf("fft 1d r2c n=%d: rel L2 error within %.0e: %s\n", n2, kTol, err2 <= kTol ? "yes" : "no");
    bad += !(err2 <= kTol);

    // 2D C2C, 64 x 48 (row-major: 64 rows of 48), on a user stream.
    const int rows = 64, cols = 48;
    std::vector<cufftComplex> h3((size_t)rows * cols), f3(h3.size());
    for (auto &c : h3)
        c = {acc_unit(seed), acc_unit(seed)};
    cufftComplex *d3;
    CHECK(cudaMalloc(&d3, h3.size() * sizeof(cufftComplex)));
    cufftHandle p3;
    CUFFT_CHECK(cufftPlan2d(&p3, rows, cols, CUFFT_C2C));
    CUFFT_CHECK(cufftSetStream(p3, s));
    CHECK(cudaMemcpyAsync(d3, h3.data(), h3.size() * sizeof(cufftComplex), cudaMemcpyHostToDevice, s));
    CUFFT_CHECK(cufftExecC2C(p3, d3, d3, CUFFT_FORWARD));
    CHECK(cudaMemcpyAsync(f3.data(), d3, f3.size() * sizeof(cufftComplex), cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    std::vector<cd> grid((size_t)rows * cols);  // separable: DFT each row, then each column
    for (int r = 0; r < rows; r++) {
        std::vector<cd> row(cols);
        for (int c = 0; c < cols; c++)
            row[c] = cd(h3[(size_t)r * cols + c].x, h3[(size_t)r * cols + c].y);
        row = dft(row);
        for (int c = 0; c < cols; c++)
            grid[(size_t)r * cols + c] = row[c];
    }
    for (int c = 0; c < cols; c++) {
        std::vector<cd> col(rows);
        for (int r = 0; r < rows; r++)
            col[r] = grid[(size_t)r * cols + c];
        col = dft(col);
        for (int r = 0; r < rows; r++)
            grid[(size_t)r * cols + c] = col[r];
    }
    double err3 = rel_l2(f3.data(), grid);
    std::printf("fft 2d c2c %dx%d: rel L2 error within %.0e: %s\n", rows, cols, kTol, err3 <= kTol ? "yes" : "no");
    bad += !(err3 <= kTol);

    std::printf("{\"values\": {\"c2c_sum\": %.17g, \"c2c_x1\": [%.9g, %.9g], \"roundtrip_sum\": %.17g, "
                "\"r2c_sum\": %.17g, \"c2c_2d_sum\": %.17g}, \"tolerance\": {\"c2c_sum\": {\"rtol\": 1e-5, \"atol\": 1e-2}, "
                "\"c2c_x1\": {\"rtol\": 1e-5, \"atol\": 1e-4}, \"roundtrip_sum\": {\"rtol\": 1e-5, \"atol\": 1e-2}, "
                "\"r2c_sum\": {\"rtol\": 1e-5, \"atol\": 1e-2}, \"c2c_2d_sum\": {\"rtol\": 1e-5, \"atol\": 1e-2}}}\n",
                checksum(f1.data(), f1.size()), f1[1].x, f1[1].y, checksum(r1.data(), r1.size()),
                checksum(f2.data(), f2.size()), checksum(f3.data(), f3.size()));
    CUFFT_CHECK(cufftDestroy(p1));
    CUFFT_CHECK(cufftDestroy(p2));
    CUFFT_CHECK(cufftDestroy(p3));
    CHECK(cudaFree(d1));
    CHECK(cudaFree(d2in));
    CHECK(cudaFree(d2out));
    CHECK(cudaFree(d3));
    CHECK(cudaStreamDestroy(s));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
