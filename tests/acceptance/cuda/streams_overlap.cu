// streams_overlap.cu - acceptance: two non-blocking streams pipelining pinned-memory copies (cudaMallocHost)
// and kernels chunk by chunk, a cross-stream dependency through an event (cudaStreamWaitEvent), event queries
// and timing events. Only deterministic facts are printed (checksums, query results, "elapsed >= 0"), never
// times. The data path is checked element by element against the CPU.
#include <cstdio>
#include <cstdlib>

#include "acceptance.h"

__global__ void scale_add(float *x, int n, float scale, float add)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        x[i] = x[i] * scale + add;
}

__global__ void combine(const float *a, const float *b, float *out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        out[i] = a[i] - b[i];
}

int main()
{
    const int chunks = 8, chunk = 1 << 18, n = chunks * chunk;
    const size_t bytes = (size_t)n * sizeof(float);
    float *h_in[2], *h_out[2], *h_comb, *d_buf[2], *d_comb;
    cudaStream_t s[2];
    cudaEvent_t done[2], t0, t1;
    for (int k = 0; k < 2; k++) {
        CHECK(cudaMallocHost(&h_in[k], bytes));
        CHECK(cudaMallocHost(&h_out[k], bytes));
        CHECK(cudaMalloc(&d_buf[k], bytes));
        CHECK(cudaStreamCreateWithFlags(&s[k], cudaStreamNonBlocking));
        CHECK(cudaEventCreateWithFlags(&done[k], cudaEventDisableTiming));
        for (int i = 0; i < n; i++)
            h_in[k][i] = (float)((i * (k + 3)) % 1000) * 0.125f;
    }
    CHECK(cudaMallocHost(&h_comb, bytes));
    CHECK(cudaMalloc(&d_comb, bytes));
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));

    CHECK(cudaEventRecord(t0, s[0]));
    // Breadth-first issue order, so chunk c of one stream can copy while the other stream computes.
    for (int c = 0; c < chunks; c++)
        for (int k = 0; k < 2; k++) {
            size_t off = (size_t)c * chunk;
            CHECK(cudaMemcpyAsync(d_buf[k] + off, h_in[k] + off, chunk * sizeof(float), cudaMemcpyHostToDevice, s[k]));
            scale_add<<<chunk / 256, 256, 0, s[k]>>>(d_buf[k] + off, chunk, k ? 3.0f : 2.0f, k ? -1.0f : 0.5f);
            CHECK(cudaGetLastError());
            CHECK(cudaMemcpyAsync(h_out[k] + off, d_buf[k] + off, chunk * sizeof(float), cudaMemcpyDeviceToHost, s[k]));
        }
    CHECK(cudaEventRecord(done[1], s[1]));
    CHECK(cudaStreamWaitEvent(s[0], done[1], 0));  // stream 0 may read stream 1's buffer only after this
    combine<<<n / 256, 256, 0, s[0]>>>(d_buf[0], d_buf[1], d_comb, n);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpyAsync(h_comb, d_comb, bytes, cudaMemcpyDeviceToHost, s[0]));
    CHECK(cudaEventRecord(done[0], s[0]));
    CHECK(cudaEventRecord(t1, s[0]));
    CHECK(cudaEventSynchronize(done[0]));
    CHECK(cudaStreamSynchronize(s[1]));
    CHECK(cudaEventSynchronize(t1));

    std::printf("event query after sync: %s / %s\n", cudaGetErrorString(cudaEventQuery(done[0])),
                cudaGetErrorString(cudaEventQuery(done[1])));
    std::printf("stream query after sync: %s / %s\n", cudaGetErrorString(cudaStreamQuery(s[0])),
                cudaGetErrorString(cudaStreamQuery(s[1])));
    float ms = -1.0f;
    CHECK(cudaEventElapsedTime(&ms, t0, t1));
    std::printf("elapsed >= 0: %s\n", ms >= 0.0f ? "yes" : "no");
    int bad = 0;
    double sum[3] = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        float e0 = h_in[0][i] * 2.0f + 0.5f, e1 = h_in[1][i] * 3.0f - 1.0f;
        bad += h_out[0][i] != e0;
        bad += h_out[1][i] != e1;
        bad += h_comb[i] != e0 - e1;
        sum[0] += h_out[0][i];
        sum[1] += h_out[1][i];
        sum[2] += h_comb[i];
    }
    std::printf("streams 2 chunks %d elements %d\n", chunks, n);
    std::printf("checksums %.3f %.3f %.3f mismatches %d\n", sum[0], sum[1], sum[2], bad);
    for (int k = 0; k < 2; k++) {
        CHECK(cudaStreamDestroy(s[k]));
        CHECK(cudaEventDestroy(done[k]));
        CHECK(cudaFreeHost(h_in[k]));
        CHECK(cudaFreeHost(h_out[k]));
        CHECK(cudaFree(d_buf[k]));
    }
    CHECK(cudaEventDestroy(t0));
    CHECK(cudaEventDestroy(t1));
    CHECK(cudaFreeHost(h_comb));
    CHECK(cudaFree(d_comb));
    bad += ms < 0.0f;
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
