// graph_replay.cu - acceptance: CUDA graphs by stream capture. Captures kernel -> device-to-device copy ->
// memset -> kernel on a stream, instantiates and uploads the graph, launches it five times in one stream and
// checks every element, the node count and a launch counter against a CPU model of the replays.
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "acceptance.h"

__global__ void axpy(float *y, const float *x, float a, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] += a * x[i];
}

__global__ void count_launch(int *counter, int *trace, int slot)
{
    if (threadIdx.x == 0 && blockIdx.x == 0) {
        trace[slot] = *counter;
        *counter += 1;
    }
}

int main()
{
    const int n = 1 << 16, replays = 5;
    std::vector<float> hx(n), hy(n), out(n), snap(n);
    for (int i = 0; i < n; i++) {
        hx[i] = (float)(i % 97) * 0.5f;
        hy[i] = (float)(i % 13);
    }
    float *dx, *dy, *dsnap;
    int *dcounter, *dtrace;
    CHECK(cudaMalloc(&dx, n * sizeof(float)));
    CHECK(cudaMalloc(&dy, n * sizeof(float)));
    CHECK(cudaMalloc(&dsnap, n * sizeof(float)));
    CHECK(cudaMalloc(&dcounter, sizeof(int)));
    CHECK(cudaMalloc(&dtrace, 64 * sizeof(int)));
    CHECK(cudaMemcpy(dx, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(dy, hy.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dcounter, 0, sizeof(int)));
    CHECK(cudaMemset(dtrace, 0xff, 64 * sizeof(int)));

    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaGraph_t graph;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CHECK(cudaStreamIsCapturing(s, &cap));
    axpy<<<n / 256, 256, 0, s>>>(dy, dx, 2.0f, n);                 // y += 2x
    CHECK(cudaMemcpyAsync(dsnap, dy, n * sizeof(float), cudaMemcpyDeviceToDevice, s));  // snapshot of y
    CHECK(cudaMemsetAsync(dx + n / 2, 0, (n / 2) * sizeof(float), s));                   // upper half of x = 0
    count_launch<<<1, 32, 0, s>>>(dcounter, dtrace, 0);            // slot argument is baked into the graph
    CHECK(cudaStreamEndCapture(s, &graph));
    size_t nodes = 0;
    CHECK(cudaGraphGetNodes(graph, nullptr, &nodes));
    std::printf("captured: capturing=%s nodes=%zu\n", cap == cudaStreamCaptureStatusActive ? "yes" : "no", nodes);

    cudaGraphExec_t exec;
    CHECK(cudaGraphInstantiate(&exec, graph, 0));
    CHECK(cudaGraphUpload(exec, s));
    for (int r = 0; r < replays; r++)
        CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaStreamSynchronize(s));
    int counter = 0, trace0 = 0;
    CHECK(cudaMemcpy(out.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(snap.data(), dsnap, n * sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(&counter, dcounter, sizeof(int), cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(&trace0, dtrace, sizeof(int), cudaMemcpyDeviceToHost));

    // CPU model of the replays: the first replay adds 2x with the full x, later ones with the upper half zeroed.
    int bad = 0;
    double sum = 0, snap_sum = 0;
    for (int i = 0; i < n; i++) {
        float y = hy[i];
        for (int r = 0; r < replays; r++)
            y += 2.0f * ((r > 0 && i >= n / 2) ? 0.0f : hx[i]);
        bad += out[i] != y || snap[i] != y;
        sum += out[i];
        snap_sum += snap[i];
    }
    std::printf("replays %d counter %d last trace %d\n", replays, counter, trace0);
    std::printf("y checksum %.2f snapshot checksum %.2f mismatches %d\n", sum, snap_sum, bad);
    bad += counter != replays || trace0 != replays - 1 || nodes != 4;
    CHECK(cudaGraphExecDestroy(exec));
    CHECK(cudaGraphDestroy(graph));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(dx));
    CHECK(cudaFree(dy));
    CHECK(cudaFree(dsnap));
    CHECK(cudaFree(dcounter));
    CHECK(cudaFree(dtrace));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
