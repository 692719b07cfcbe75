// api_array_async.cu - acceptance: the driver's asynchronous 1D copies between host memory and a CUDA array
// (cuMemcpyHtoAAsync, cuMemcpyAtoHAsync) on a created stream, from pageable and from pinned host memory, whole and
// at offsets into a 1D float array, on the per-thread default stream too, with a copy past the array's end refused. Every value is checked exactly against the host after the stream
// synchronises.
// acceptance: link=-lcuda
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>

#include "acceptance.h"
#include "acceptance_check.h"

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));
    const int W = 256, N = 4 * W; /* the array holds N floats; W is a window of it */
    CUDA_ARRAY_DESCRIPTOR d;
    std::memset(&d, 0, sizeof d);
    d.Width = N;
    d.Height = 0; /* a 1D array */
    d.Format = CU_AD_FORMAT_FLOAT;
    d.NumChannels = 1;
    CUarray arr;
    CU_CHECK(cuArrayCreate(&arr, &d));
    CUstream s;
    CU_CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));

    std::vector<float> src(N), back(N, -1.0f);
    for (int i = 0; i < N; i++)
        src[i] = (float)(i * 3 + 1);
    CU_CHECK(cuMemcpyHtoAAsync(arr, 0, src.data(), N * sizeof(float), s));
    CU_CHECK(cuMemcpyAtoHAsync(back.data(), arr, 0, N * sizeof(float), s));
    CU_CHECK(cuStreamSynchronize(s));
    check("whole array, pageable host memory", back == src);

    // 100 floats at element W + 50, from pinned memory; read back the window [W, 2W) around them.
    float *pinned;
    CU_CHECK(cuMemAllocHost((void **)&pinned, 2 * W * sizeof(float)));
    for (int i = 0; i < 100; i++)
        pinned[i] = -(float)i;
    size_t off = (W + 50) * sizeof(float);
    CU_CHECK(cuMemcpyHtoAAsync(arr, off, pinned, 100 * sizeof(float), s));
    CU_CHECK(cuMemcpyAtoHAsync(pinned + W, arr, W * sizeof(float), W * sizeof(float), s));
    CU_CHECK(cuStreamSynchronize(s));
    bool ok = true;
    for (int x = 0; x < W; x++)
        ok = ok && pinned[W + x] == (x >= 50 && x < 150 ? -(float)(x - 50) : src[W + x]);
    check("offset copy, pinned host memory", ok);

    // The per-thread default stream: the last window.
    std::vector<float> row(W);
    CU_CHECK(cuMemcpyAtoHAsync(row.data(), arr, 3 * W * sizeof(float), W * sizeof(float), CU_STREAM_PER_THREAD));
    CU_CHECK(cuStreamSynchronize(CU_STREAM_PER_THREAD));
    check("last window on the per-thread stream", std::memcmp(row.data(), &src[3 * W], W * sizeof(float)) == 0);

    CUresult r = cuMemcpyAtoHAsync(row.data(), arr, (N - 10) * sizeof(float), 20 * sizeof(float), s);
    const char *name = nullptr;
    cuGetErrorName(r, &name);
    std::printf("copy past the end: %s\n", name ? name : "?");
    CU_CHECK(cuStreamDestroy(s));
    CU_CHECK(cuMemFreeHost(pinned));
    CU_CHECK(cuArrayDestroy(arr));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
