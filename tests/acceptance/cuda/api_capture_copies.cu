// api_capture_copies.cu - acceptance: host-to-device and device-to-host copies of page-locked memory
// (cudaMallocHost) captured into a graph by stream capture, in global capture mode: a and b copied in (b on a second
// stream forked from the capturing one and joined back through events), c = a + b, c *= 2, c copied out. The graph
// is launched several times with new inputs written into the same host buffers between launches; after each
// synchronised launch the host output must be exactly 2 * (a + b) of that launch's inputs, and a host-side value
// written into the output buffer before the launch must be overwritten. Then a clone of the graph, an executable
// updated from a second capture (c *= 3), and a small copy (under 256 KiB) next to the large ones (4 MiB). Values
// are small integers in float, so every check is exact. Kernels are named and laid out as the test kernels, so the
// simulated device runs them too.
#include <cstdio>
#include <cstring>

#include "acceptance.h"
#include "acceptance_check.h"
#include "test_kernels.cuh"

static const int N = 1 << 20;    // 4 MiB of floats per buffer
static const int SMALL = 1 << 12; // 16 KiB

struct buffers {
    float *ha, *hb, *hc, *hs_in, *hs_out; // page-locked host memory
    float *da, *db, *dc, *ds;
};

// The captured work on s (b's copy and nothing else on s2, between the fork and the join events).
static cudaGraph_t capture(const buffers &m, cudaStream_t s, cudaStream_t s2, cudaEvent_t fork, cudaEvent_t join,
                           float factor)
{
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CHECK(cudaEventRecord(fork, s));
    CHECK(cudaStreamWaitEvent(s2, fork, 0));
    CHECK(cudaMemcpyAsync(m.db, m.hb, N * sizeof(float), cudaMemcpyHostToDevice, s2));
    CHECK(cudaEventRecord(join, s2));
    CHECK(cudaMemcpyAsync(m.da, m.ha, N * sizeof(float), cudaMemcpyHostToDevice, s));
    CHECK(cudaMemcpyAsync(m.ds, m.hs_in, SMALL * sizeof(float), cudaMemcpyHostToDevice, s));
    CHECK(cudaStreamWaitEvent(s, join, 0));
    fg_vadd<<<(N + 255) / 256, 256, 0, s>>>(m.da, m.db, m.dc, N);
    fg_scale<<<(N + 255) / 256, 256, 0, s>>>(m.dc, factor, N);
    fg_scale<<<(SMALL + 255) / 256, 256, 0, s>>>(m.ds, factor, SMALL);
    CHECK(cudaMemcpyAsync(m.hc, m.dc, N * sizeof(float), cudaMemcpyDeviceToHost, s));
    CHECK(cudaMemcpyAsync(m.hs_out, m.ds, SMALL * sizeof(float), cudaMemcpyDeviceToHost, s));
    cudaGraph_t g = nullptr;
    CHECK(cudaStreamEndCapture(s, &g));
    return g;
}

// One launch with inputs of round r: true when every output is factor * its inputs.
static bool launch(const buffers &m, cudaGraphExec_t e, cudaStream_t s, int r, float factor)
{
    for (int i = 0; i < N; i++) {
        m.ha[i] = (float)((i * 7 + r * 13) % 1000);
        m.hb[i] = (float)((i * 3 + r) % 500);
        m.hc[i] = -1.0f;
    }
    for (int i = 0; i < SMALL; i++) {
        m.hs_in[i] = (float)(i % 100 + r);
        m.hs_out[i] = -1.0f;
    }
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    bool ok = true;
    double sum = 0;
    for (int i = 0; i < N; i++) {
        ok = ok && m.hc[i] == factor * (m.ha[i] + m.hb[i]);
        sum += m.hc[i];
    }
    for (int i = 0; i < SMALL; i++)
        ok = ok && m.hs_out[i] == factor * m.hs_in[i];
    std::printf("launch %d x%.0f: c[0] %.0f c[N-1] %.0f sum %.0f small[5] %.0f\n", r, factor, m.hc[0], m.hc[N - 1], sum,
                m.hs_out[5]);
    return ok;
}

static void count_nodes(const char *what, cudaGraph_t g)
{
    size_t count = 0;
    CHECK(cudaGraphGetNodes(g, nullptr, &count));
    cudaGraphNode_t nodes[64];
    if (count > 64)
        count = 64;
    CHECK(cudaGraphGetNodes(g, nodes, &count));
    int copies = 0, kernels = 0, other = 0;
    for (size_t i = 0; i < count; i++) {
        cudaGraphNodeType t;
        CHECK(cudaGraphNodeGetType(nodes[i], &t));
        copies += t == cudaGraphNodeTypeMemcpy;
        kernels += t == cudaGraphNodeTypeKernel;
        other += t != cudaGraphNodeTypeMemcpy && t != cudaGraphNodeTypeKernel;
    }
    std::printf("%s: %zu nodes, %d memcpy, %d kernel, %d other\n", what, count, copies, kernels, other);
}

int main()
{
    CHECK(cudaSetDevice(0));
    buffers m;
    CHECK(cudaMallocHost(&m.ha, N * sizeof(float)));
    CHECK(cudaMallocHost(&m.hb, N * sizeof(float)));
    CHECK(cudaMallocHost(&m.hc, N * sizeof(float)));
    CHECK(cudaMallocHost(&m.hs_in, SMALL * sizeof(float)));
    CHECK(cudaMallocHost(&m.hs_out, SMALL * sizeof(float)));
    CHECK(cudaMalloc(&m.da, N * sizeof(float)));
    CHECK(cudaMalloc(&m.db, N * sizeof(float)));
    CHECK(cudaMalloc(&m.dc, N * sizeof(float)));
    CHECK(cudaMalloc(&m.ds, SMALL * sizeof(float)));
    cudaStream_t s, s2;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    cudaEvent_t fork, join;
    CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
    CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
    CHECK(cudaDeviceSynchronize()); // nothing else running: a global-mode capture may begin

    cudaGraph_t g = capture(m, s, s2, fork, join, 2.0f);
    count_nodes("captured graph", g);
    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    bool ok = true;
    for (int r = 0; r < 4; r++)
        ok = launch(m, e, s, r, 2.0f) && ok;
    check("four launches read the new host inputs and write the host output", ok);

    cudaGraph_t gc;
    CHECK(cudaGraphClone(&gc, g));
    cudaGraphExec_t ec;
    CHECK(cudaGraphInstantiate(&ec, gc, 0));
    check("a clone's executable", launch(m, ec, s, 10, 2.0f));

    cudaGraph_t g3 = capture(m, s, s2, fork, join, 3.0f);
    cudaGraphExecUpdateResultInfo info;
    std::memset(&info, 0, sizeof info);
    CHECK(cudaGraphExecUpdate(e, g3, &info));
    std::printf("update result %d\n", (int)info.result);
    CHECK(cudaGraphDestroy(g3));
    ok = launch(m, e, s, 20, 3.0f);
    ok = launch(m, e, s, 21, 3.0f) && ok;
    check("an executable updated from another capture, its graph destroyed", ok);

    CHECK(cudaGraphExecDestroy(ec));
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(gc));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaEventDestroy(fork));
    CHECK(cudaEventDestroy(join));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaStreamDestroy(s2));
    CHECK(cudaFree(m.da));
    CHECK(cudaFree(m.db));
    CHECK(cudaFree(m.dc));
    CHECK(cudaFree(m.ds));
    CHECK(cudaFreeHost(m.ha));
    CHECK(cudaFreeHost(m.hb));
    CHECK(cudaFreeHost(m.hc));
    CHECK(cudaFreeHost(m.hs_in));
    CHECK(cudaFreeHost(m.hs_out));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
