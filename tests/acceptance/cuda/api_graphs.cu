// api_graphs.cu - acceptance: a graph built by hand with every common node kind (memset, host-to-device and device-
// to-host memcpy with pageable host memory, kernel, host, event record and wait, child graph, empty), dependencies
// added after the nodes, launched several times with new host inputs; then parameter updates on the executable
// (kernel, memset, memcpy), a node disabled and enabled again, cloning with node lookup, cudaGraphExecUpdate from an
// edited clone, instantiation with parameters, a pitched 2D copy node whose host destination keeps its gaps, node
// destruction, and stream capture into an existing graph from a given node. Values are checked against the host
// exactly (small integers in float). Kernels are named and laid out as tests/c/kernels/test_kernels.cu, so the
// simulated device runs them too.
#include <atomic>
#include <cstdio>
#include <cstring>
#include <vector>

#include "acceptance.h"
#include "acceptance_check.h"
#include "graph_params.h"
#include "test_kernels.cuh"

static std::atomic<int> g_host_calls{0};
static void CUDART_CB count_host(void *p) { g_host_calls += *(int *)p; }

static const int N = 1 << 16;
static const size_t BYTES = N * sizeof(float);

static const char *type_name(cudaGraphNodeType t)
{
    switch (t) {
    case cudaGraphNodeTypeKernel: return "kernel";
    case cudaGraphNodeTypeMemcpy: return "memcpy";
    case cudaGraphNodeTypeMemset: return "memset";
    case cudaGraphNodeTypeHost: return "host";
    case cudaGraphNodeTypeGraph: return "graph";
    case cudaGraphNodeTypeEmpty: return "empty";
    case cudaGraphNodeTypeWaitEvent: return "wait";
    case cudaGraphNodeTypeEventRecord: return "record";
    default: return "other";
    }
}

int main()
{
    CHECK(cudaSetDevice(0));
    std::vector<float> a(N), b(N), c(N);
    float *da, *db, *dc;
    unsigned int *du;
    CHECK(cudaMalloc(&da, BYTES));
    CHECK(cudaMalloc(&db, BYTES));
    CHECK(cudaMalloc(&dc, BYTES));
    CHECK(cudaMalloc(&du, N * sizeof(unsigned int)));
    cudaStream_t s, other;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking));
    cudaEvent_t done, gate;
    CHECK(cudaEventCreate(&done));
    CHECK(cudaEventCreate(&gate));

    // The child: c *= 2.
    cudaGraph_t child;
    CHECK(cudaGraphCreate(&child, 0));
    int n = N;
    float two = 2.0f;
    void *scale_args[] = {&dc, &two, &n};
    cudaKernelNodeParams kp = kernel_node((void *)fg_scale, scale_args, (N + 255) / 256, 256);
    cudaGraphNode_t child_scale;
    CHECK(cudaGraphAddKernelNode(&child_scale, child, nullptr, 0, &kp));

    // The graph: memset u, copy a and b in, c = a + b, child (c *= 2), copy c out, host count, record.
    cudaGraph_t g;
    CHECK(cudaGraphCreate(&g, 0));
    cudaMemsetParams ms = memset_u32(du, 7, N);
    cudaGraphNode_t n_memset, n_in_a, n_in_b, n_add, n_child, n_out, n_host, n_record, n_wait, n_join, n_spare;
    CHECK(cudaGraphAddMemsetNode(&n_memset, g, nullptr, 0, &ms));
    cudaMemcpy3DParms ca = copy_1d(da, a.data(), BYTES, cudaMemcpyHostToDevice);
    cudaMemcpy3DParms cb = copy_1d(db, b.data(), BYTES, cudaMemcpyHostToDevice);
    CHECK(cudaGraphAddMemcpyNode(&n_in_a, g, nullptr, 0, &ca));
    CHECK(cudaGraphAddMemcpyNode(&n_in_b, g, nullptr, 0, &cb));
    void *add_args[] = {&da, &db, &dc, &n};
    kp = kernel_node((void *)fg_vadd, add_args, (N + 255) / 256, 256);
    CHECK(cudaGraphAddKernelNode(&n_add, g, nullptr, 0, &kp));
    cudaGraphNode_t ins[] = {n_in_a, n_in_b};
    cudaGraphNode_t adds[] = {n_add, n_add};
    CHECK(cudaGraphAddDependencies(g, ins, adds, nullptr, 2)); // wired after the nodes were made
    CHECK(cudaGraphAddChildGraphNode(&n_child, g, &n_add, 1, child));
    cudaMemcpy3DParms cc = copy_1d(c.data(), dc, BYTES, cudaMemcpyDeviceToHost);
    CHECK(cudaGraphAddMemcpyNode(&n_out, g, &n_child, 1, &cc));
    int one = 1;
    cudaHostNodeParams hp = {count_host, &one};
    CHECK(cudaGraphAddHostNode(&n_host, g, &n_child, 1, &hp));
    CHECK(cudaGraphAddEventWaitNode(&n_wait, g, nullptr, 0, gate));
    cudaGraphNode_t before_join[] = {n_out, n_host, n_memset, n_wait};
    CHECK(cudaGraphAddEmptyNode(&n_join, g, before_join, 4));
    CHECK(cudaGraphAddEventRecordNode(&n_record, g, &n_join, 1, done));
    CHECK(cudaGraphAddEmptyNode(&n_spare, g, nullptr, 0));
    CHECK(cudaGraphDestroyNode(n_spare));

    size_t count = 0;
    CHECK(cudaGraphGetNodes(g, nullptr, &count));
    std::vector<cudaGraphNode_t> nodes(count);
    CHECK(cudaGraphGetNodes(g, nodes.data(), &count));
    std::printf("nodes %zu:", count);
    for (auto nd : nodes) {
        cudaGraphNodeType t;
        CHECK(cudaGraphNodeGetType(nd, &t));
        std::printf(" %s", type_name(t));
    }
    std::printf("\n");

    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    CHECK(cudaEventRecord(gate, other));
    bool ok = true;
    for (int it = 0; it < 3; it++) {
        for (int i = 0; i < N; i++) {
            a[i] = (float)(i + it);
            b[i] = (float)(2 * i);
        }
        CHECK(cudaGraphLaunch(e, s));
        CHECK(cudaStreamSynchronize(s));
        for (int i = 0; i < N; i++)
            ok = ok && c[i] == (float)(2 * (3 * i + it));
    }
    check("three launches with new host inputs", ok);
    check("host node ran once per launch", g_host_calls == 3);
    check("event record node", cudaEventQuery(done) == cudaSuccess);
    std::vector<unsigned int> u(N);
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    check("memset node", u[0] == 7u && u[N - 1] == 7u);

    // Executable node updates: the kernel becomes c = a + a, the memset writes 9, a's copy reads b.
    void *add2_args[] = {&da, &da, &dc, &n};
    kp.kernelParams = add2_args;
    CHECK(cudaGraphExecKernelNodeSetParams(e, n_add, &kp));
    ms.value = 9;
    CHECK(cudaGraphExecMemsetNodeSetParams(e, n_memset, &ms));
    cudaMemcpy3DParms ca2 = copy_1d(da, b.data(), BYTES, cudaMemcpyHostToDevice);
    CHECK(cudaGraphExecMemcpyNodeSetParams(e, n_in_a, &ca2));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    ok = u[5] == 9u;
    for (int i = 0; i < N; i++)
        ok = ok && c[i] == (float)(2 * (4 * i));
    check("executable node updates", ok);

    // A disabled node does nothing; enabled again, it works.
    CHECK(cudaMemset(du, 0, N * sizeof(unsigned int)));
    CHECK(cudaGraphNodeSetEnabled(e, n_memset, 0));
    unsigned int on = 1;
    CHECK(cudaGraphNodeGetEnabled(e, n_memset, &on));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, 16, cudaMemcpyDeviceToHost));
    check("disabled memset node", on == 0 && u[0] == 0u);
    CHECK(cudaGraphNodeSetEnabled(e, n_memset, 1));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, 16, cudaMemcpyDeviceToHost));
    check("enabled again", u[0] == 9u);

    // Clone, edit the clone's memset, update the executable from it (same topology).
    cudaGraph_t g2;
    CHECK(cudaGraphClone(&g2, g));
    cudaGraphNode_t m2;
    CHECK(cudaGraphNodeFindInClone(&m2, n_memset, g2));
    cudaMemsetParams got;
    CHECK(cudaGraphMemsetNodeGetParams(m2, &got));
    std::printf("cloned memset value %u width %zu\n", got.value, got.width);
    got.value = 11;
    CHECK(cudaGraphMemsetNodeSetParams(m2, &got));
    cudaGraphExecUpdateResultInfo info;
    CHECK(cudaGraphExecUpdate(e, g2, &info));
    std::printf("exec update result %d\n", (int)info.result);
    for (int i = 0; i < N; i++)
        a[i] = 1.0f;
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, 16, cudaMemcpyDeviceToHost));
    ok = u[0] == 11u;
    for (int i = 0; i < N; i++)
        ok = ok && c[i] == (float)(2 * (1 + 2 * i)); // the clone has the original nodes: c = 2 * (a + b)
    check("executable updated from an edited clone", ok);
    cudaGraph_t g3;
    CHECK(cudaGraphCreate(&g3, 0));
    cudaGraphNode_t lone;
    CHECK(cudaGraphAddEmptyNode(&lone, g3, nullptr, 0));
    cudaError_t bad = cudaGraphExecUpdate(e, g3, &info);
    std::printf("update from a different topology: %s, result %d\n", bad == cudaSuccess ? "accepted" : "refused",
                (int)info.result);
    (void)cudaGetLastError();

    // Instantiate with parameters, upload on a stream.
    cudaGraphInstantiateParams ip;
    std::memset(&ip, 0, sizeof ip);
    ip.flags = cudaGraphInstantiateFlagUpload;
    ip.uploadStream = s;
    cudaGraphExec_t e2;
    CHECK(cudaGraphInstantiateWithParams(&e2, child, &ip));
    std::printf("instantiate with params: result %d\n", (int)ip.result_out);
    CHECK(cudaGraphLaunch(e2, s));
    CHECK(cudaMemcpyAsync(c.data(), dc, BYTES, cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    check("child graph instantiated alone", c[3] == (float)(4 * 7));

    // A pitched 2D copy node: an 8x4 block of floats into a host image 16 wide; the gaps keep their bytes.
    std::vector<float> img(16 * 4, -1.0f);
    cudaGraph_t g4;
    CHECK(cudaGraphCreate(&g4, 0));
    cudaMemcpy3DParms p2;
    std::memset(&p2, 0, sizeof p2);
    p2.srcPtr = make_cudaPitchedPtr(dc, 8 * sizeof(float), 8, 4);
    p2.dstPtr = make_cudaPitchedPtr(img.data(), 16 * sizeof(float), 16, 4);
    p2.extent = make_cudaExtent(8 * sizeof(float), 4, 1);
    p2.kind = cudaMemcpyDeviceToHost;
    cudaGraphNode_t n2d;
    CHECK(cudaGraphAddMemcpyNode(&n2d, g4, nullptr, 0, &p2));
    cudaGraphExec_t e4;
    CHECK(cudaGraphInstantiate(&e4, g4, 0));
    CHECK(cudaGraphLaunch(e4, s));
    CHECK(cudaStreamSynchronize(s));
    ok = true;
    for (int r = 0; r < 4; r++)
        for (int x = 0; x < 16; x++)
            ok = ok && img[r * 16 + x] == (x < 8 ? (float)(4 * (1 + 2 * (r * 8 + x))) : -1.0f);
    check("pitched copy node keeps the host gaps", ok);

    // The generic node API: a memset node and a kernel node made with cudaGraphAddNode, the memset's value set
    // with cudaGraphNodeSetParams before instantiating.
    cudaGraph_t g5;
    CHECK(cudaGraphCreate(&g5, 0));
    // (its union has members without trivial constructors: zeroed storage stands in for value-initialisation)
    alignas(cudaGraphNodeParams) unsigned char np_raw[sizeof(cudaGraphNodeParams)] = {};
    cudaGraphNodeParams &np = *reinterpret_cast<cudaGraphNodeParams *>(np_raw);
    np.type = cudaGraphNodeTypeMemset;
    np.memset.dst = du;
    np.memset.value = 5;
    np.memset.elementSize = 4;
    np.memset.width = N;
    np.memset.height = 1;
    cudaGraphNode_t gm, gk;
    CHECK(cudaGraphAddNode(&gm, g5, nullptr, nullptr, 0, &np));
    np.memset.value = 6;
    CHECK(cudaGraphNodeSetParams(gm, &np));
    unsigned int fillv = 12;
    unsigned long long half = N / 2;
    void *fill_args[] = {&du, &fillv, &half};
    alignas(cudaGraphNodeParams) unsigned char kn_raw[sizeof(cudaGraphNodeParams)] = {};
    cudaGraphNodeParams &kn = *reinterpret_cast<cudaGraphNodeParams *>(kn_raw);
    kn.type = cudaGraphNodeTypeKernel;
    kn.kernel.func = (void *)fg_fill_u32;
    kn.kernel.gridDim = dim3(16);
    kn.kernel.blockDim = dim3(128);
    kn.kernel.kernelParams = fill_args;
    CHECK(cudaGraphAddNode(&gk, g5, &gm, nullptr, 1, &kn));
    cudaGraphExec_t e5;
    CHECK(cudaGraphInstantiate(&e5, g5, 0));
    CHECK(cudaGraphLaunch(e5, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    check("generic node API", u[0] == 12u && u[N / 2 - 1] == 12u && u[N / 2] == 6u && u[N - 1] == 6u);
    CHECK(cudaGraphExecDestroy(e5));
    CHECK(cudaGraphDestroy(g5));

    // Capture into an existing graph: a memset node made by hand (u = 3), then a stream capture into the same
    // graph that starts from it (with default edge data) and captures two kernels (u[0, N/4) = 21, then
    // u[N/2, N/2 + N/4) = 22). The capture's graph is the one given, the first captured kernel depends on the
    // memset node, the second on the first, and the launch writes both over the memset.
    cudaGraph_t g6, g6_out = nullptr, g6_cap = nullptr;
    CHECK(cudaGraphCreate(&g6, 0));
    cudaMemsetParams ms6 = memset_u32(du, 3, N);
    cudaGraphNode_t m6;
    CHECK(cudaGraphAddMemsetNode(&m6, g6, nullptr, 0, &ms6));
    cudaGraphEdgeData plain_edge = {};
    CHECK(cudaStreamBeginCaptureToGraph(s, g6, &m6, &plain_edge, 1, cudaStreamCaptureModeRelaxed));
    cudaStreamCaptureStatus st6 = cudaStreamCaptureStatusNone;
    const cudaGraphNode_t *cap_deps = nullptr;
    size_t n_cap_deps = 0;
    CHECK(cudaStreamGetCaptureInfo(s, &st6, nullptr, &g6_cap, &cap_deps, nullptr, &n_cap_deps));
    bool starts_at_memset = st6 == cudaStreamCaptureStatusActive && g6_cap == g6 && n_cap_deps == 1 &&
                            cap_deps[0] == m6;
    unsigned int v21 = 21, v22 = 22;
    unsigned long long quarter = N / 4;
    unsigned int *du_half = du + N / 2;
    fg_fill_u32<<<16, 128, 0, s>>>(du, v21, quarter);
    CHECK(cudaGetLastError());
    fg_fill_u32<<<16, 128, 0, s>>>(du_half, v22, quarter);
    CHECK(cudaGetLastError());
    CHECK(cudaStreamEndCapture(s, &g6_out));
    check("capture into an existing graph starts from the given node", starts_at_memset);
    size_t n6 = 0;
    CHECK(cudaGraphGetNodes(g6, nullptr, &n6));
    std::vector<cudaGraphNode_t> nodes6(n6);
    CHECK(cudaGraphGetNodes(g6, nodes6.data(), &n6));
    int kernels6 = 0, chained6 = 0;
    for (auto nd : nodes6) {
        cudaGraphNodeType t;
        CHECK(cudaGraphNodeGetType(nd, &t));
        if (t != cudaGraphNodeTypeKernel)
            continue;
        kernels6++;
        size_t k = 0;
        CHECK(cudaGraphNodeGetDependencies(nd, nullptr, nullptr, &k));
        std::vector<cudaGraphNode_t> d6(k);
        if (k)
            CHECK(cudaGraphNodeGetDependencies(nd, d6.data(), nullptr, &k));
        cudaGraphNodeType dt = cudaGraphNodeTypeEmpty;
        if (k == 1)
            CHECK(cudaGraphNodeGetType(d6[0], &dt));
        chained6 += k == 1 && ((d6[0] == m6) || dt == cudaGraphNodeTypeKernel);
    }
    check("captured into the given graph", g6_out == g6 && n6 == 3 && kernels6 == 2 && chained6 == 2);
    cudaGraphExec_t e6;
    CHECK(cudaGraphInstantiate(&e6, g6, 0));
    CHECK(cudaMemset(du, 0, N * sizeof(unsigned int)));
    CHECK(cudaGraphLaunch(e6, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    bool ok6 = true;
    for (int i = 0; i < N; i++) {
        unsigned int want = i < N / 4 ? 21u : (i >= N / 2 && i < N / 2 + N / 4) ? 22u : 3u;
        ok6 = ok6 && u[i] == want;
    }
    check("graph captured into runs after its memset node", ok6);
    CHECK(cudaGraphExecDestroy(e6));
    CHECK(cudaGraphDestroy(g6));

    CHECK(cudaGraphExecDestroy(e4));
    CHECK(cudaGraphExecDestroy(e2));
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(g4));
    CHECK(cudaGraphDestroy(g3));
    CHECK(cudaGraphDestroy(g2));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaGraphDestroy(child));
    CHECK(cudaEventDestroy(done));
    CHECK(cudaEventDestroy(gate));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaStreamDestroy(other));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    CHECK(cudaFree(du));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
