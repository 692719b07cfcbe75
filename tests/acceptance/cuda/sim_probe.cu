// sim_probe.cu - acceptance probe of everything the CUDA runtime does around a kernel, written so that CI can
// run it on the simulated device (which executes no user kernel) and the GPU host can run it natively and
// remotely. It prints the device's identity, checks copies (H2D, D2D, D2H, pageable and pinned, sync and
// async), memsets, streams and events byte for byte, then launches two kernels and reports each launch's
// outcome: on a GPU they run and their results are checked; on the simulated device a launch is recorded
// (func, grid, block, shared memory, parameter bytes) and fails with cudaErrorNotSupported, which the probe
// reports and tolerates. With --print-pointers it prints the device pointers it passed, so a test can find
// them in the simulated device's launch log. Exit status: 0 when every non-kernel check passed and each
// kernel either ran correctly or was refused as not supported.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "acceptance.h"

// Launch 1: default stream, grid (4,1,1), block (128,1,1), no dynamic shared memory. Parameters: two
// pointers, an int, a float: 8 + 8 + 4 + 4 = 24 bytes, no padding.
__global__ void probe_scale(float *out, const float *in, int n, float scale)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = in[i] * scale;
}

// Launch 2: a created stream, grid (2,3,1), block (8,4,2), 256 bytes of dynamic shared memory. Parameters
// with alignment padding: out @0 (8), c @8 (1, then 3 padding bytes), x @12 (4), d @16 (8), s @24 (2):
// 26 bytes.
__global__ void probe_mixed(int *out, char c, int x, double d, short s)
{
    extern __shared__ int scratch[];
    int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    int b = blockIdx.y * gridDim.x + blockIdx.x;
    scratch[t] = t;
    __syncthreads();
    out[b * 64 + t] = scratch[t] + c + x + (int)d + s + b * 1000;
}

static int g_bad = 0;

static void expect(bool ok, const char *what)
{
    std::printf("%-44s %s\n", what, ok ? "ok" : "MISMATCH");
    g_bad += !ok;
}

// Reports a launch's outcome; returns true when the kernel ran (its results should then be checked).
static bool launch_outcome(const char *name, cudaError_t launch, cudaError_t sync)
{
    std::printf("%s: launch %s, sync %s\n", name, cudaGetErrorString(launch), cudaGetErrorString(sync));
    if (launch == cudaSuccess && sync == cudaSuccess)
        return true;
    if (launch != cudaSuccess && launch != cudaErrorNotSupported)
        g_bad++;
    if (sync != cudaSuccess && sync != cudaErrorNotSupported)
        g_bad++;
    return false;
}

int main(int argc, char **argv)
{
    bool print_pointers = argc > 1 && std::strcmp(argv[1], "--print-pointers") == 0;
    int count = 0, dev = -1, runtime = 0, driver = 0;
    CHECK(cudaGetDeviceCount(&count));
    CHECK(cudaSetDevice(0));
    CHECK(cudaGetDevice(&dev));
    CHECK(cudaRuntimeGetVersion(&runtime));
    CHECK(cudaDriverGetVersion(&driver));
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("devices %d current %d\n", count, dev);
    std::printf("name %s\n", prop.name);
    std::printf("compute capability %d.%d, %d SMs, warp %d, max threads/block %d\n", prop.major, prop.minor,
                prop.multiProcessorCount, prop.warpSize, prop.maxThreadsPerBlock);
    std::printf("driver supports this runtime: %s\n", driver >= runtime ? "yes" : "no");
    size_t free_b = 0, total_b = 0;
    CHECK(cudaMemGetInfo(&free_b, &total_b));
    expect(total_b > 0 && free_b <= total_b, "cudaMemGetInfo: 0 < free <= total");

    const int n = 4096;
    const size_t bytes = n * sizeof(float);
    std::vector<float> h(n), back(n, -1.0f);
    for (int i = 0; i < n; i++)
        h[i] = (float)i * 0.5f - 7.0f;
    float *a, *b, *c;
    int *m;
    CHECK(cudaMalloc(&a, bytes));
    CHECK(cudaMalloc(&b, bytes));
    CHECK(cudaMalloc(&c, bytes));
    CHECK(cudaMalloc(&m, 6 * 64 * sizeof(int)));
    if (print_pointers)
        std::printf("pointers a=%p b=%p c=%p m=%p\n", (void *)a, (void *)b, (void *)c, (void *)m);

    // Synchronous copies with pageable host memory.
    CHECK(cudaMemcpy(a, h.data(), bytes, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CHECK(cudaMemcpy(back.data(), b, bytes, cudaMemcpyDeviceToHost));
    expect(std::memcmp(back.data(), h.data(), bytes) == 0, "H2D -> D2D -> D2H round trip");
    CHECK(cudaMemcpy(back.data() + 10, a + 100, 50 * sizeof(float), cudaMemcpyDefault));
    expect(std::memcmp(back.data() + 10, h.data() + 100, 50 * sizeof(float)) == 0, "cudaMemcpyDefault at offsets");

    // Memsets.
    CHECK(cudaMemset(c, 0xAB, bytes));
    std::vector<unsigned char> raw(bytes);
    CHECK(cudaMemcpy(raw.data(), c, bytes, cudaMemcpyDeviceToHost));
    bool all_ab = true;
    for (unsigned char v : raw)
        all_ab &= v == 0xAB;
    expect(all_ab, "cudaMemset 0xAB");

    // Streams, pinned memory, async copies and events.
    cudaStream_t s;
    cudaEvent_t e0, e1;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    float *pin_in, *pin_out;
    CHECK(cudaMallocHost(&pin_in, bytes));
    CHECK(cudaMallocHost(&pin_out, bytes));
    for (int i = 0; i < n; i++)
        pin_in[i] = (float)(n - i);
    CHECK(cudaEventRecord(e0, s));
    CHECK(cudaMemcpyAsync(c, pin_in, bytes, cudaMemcpyHostToDevice, s));
    CHECK(cudaMemsetAsync(c, 0, 16 * sizeof(float), s));
    CHECK(cudaMemcpyAsync(pin_out, c, bytes, cudaMemcpyDeviceToHost, s));
    CHECK(cudaEventRecord(e1, s));
    CHECK(cudaEventSynchronize(e1));
    bool async_ok = true;
    for (int i = 0; i < n; i++)
        async_ok &= pin_out[i] == (i < 16 ? 0.0f : (float)(n - i));
    expect(async_ok, "pinned async H2D, memset, D2H on a stream");
    expect(cudaEventQuery(e1) == cudaSuccess, "event complete after cudaEventSynchronize");
    expect(cudaStreamQuery(s) == cudaSuccess, "stream idle after the event");
    float ms = -1.0f;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    expect(ms >= 0.0f, "cudaEventElapsedTime >= 0");

    // Launch 1 (default stream).
    probe_scale<<<4, 128>>>(b, a, n / 8, 2.5f);
    cudaError_t l1 = cudaGetLastError();
    cudaError_t s1 = cudaDeviceSynchronize();
    if (launch_outcome("launch 1 probe_scale", l1, s1)) {
        CHECK(cudaMemcpy(back.data(), b, bytes, cudaMemcpyDeviceToHost));
        bool ok = true;
        for (int i = 0; i < n; i++)
            ok &= back[i] == (i < n / 8 ? h[i] * 2.5f : h[i]);
        expect(ok, "launch 1 result");
    }

    // Launch 2 (created stream, 3D block, dynamic shared memory, padded parameters).
    CHECK(cudaMemsetAsync(m, 0, 6 * 64 * sizeof(int), s));
    probe_mixed<<<dim3(2, 3, 1), dim3(8, 4, 2), 256, s>>>(m, (char)5, -77, 1234.75, (short)-3);
    cudaError_t l2 = cudaGetLastError();
    cudaError_t s2 = cudaStreamSynchronize(s);
    if (launch_outcome("launch 2 probe_mixed", l2, s2)) {
        std::vector<int> hm(6 * 64);
        CHECK(cudaMemcpy(hm.data(), m, hm.size() * sizeof(int), cudaMemcpyDeviceToHost));
        bool ok = true;
        for (int blk = 0; blk < 6; blk++)
            for (int t = 0; t < 64; t++)
                ok &= hm[blk * 64 + t] == t + 5 - 77 + 1234 - 3 + blk * 1000;
        expect(ok, "launch 2 result");
    }

    // The device is still usable after a refused launch: memory is intact and copies work.
    CHECK(cudaMemcpy(back.data(), a, bytes, cudaMemcpyDeviceToHost));
    expect(std::memcmp(back.data(), h.data(), bytes) == 0, "memory intact after the launches");

    CHECK(cudaEventDestroy(e0));
    CHECK(cudaEventDestroy(e1));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFreeHost(pin_in));
    CHECK(cudaFreeHost(pin_out));
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
    CHECK(cudaFree(c));
    CHECK(cudaFree(m));
    std::printf("%s\n", g_bad ? "FAIL" : "PASS");
    return g_bad ? 1 : 0;
}
