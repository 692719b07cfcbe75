// api_graph_nodes.cu - acceptance: what a graph built by hand says about itself, and memory nodes. A graph of
// memset, host-to-device copies, a kernel, a child graph, a device-to-host copy, a host node and event nodes is
// asked for its root nodes, edges, each node's dependencies and dependents and type, and every node's
// parameters (kernel with its kernelParams values, memcpy with the application's host pointers, host function
// and data, events, the child graph); the child graph is changed through the handle its node hands out and the
// parent runs the change. Executable setters for host and event-record nodes; kernel node attributes. Then memory allocation and free
// nodes: a graph that allocates, fills, copies out and frees (launched three times, same address each time), a
// graph whose allocation outlives the launch and is freed by the application between launches, the generic
// node API for both kinds and the graph-memory attributes. Values are checked against the host
// exactly; kernels are named and laid out as tests/c/kernels/test_kernels.cu, so the simulated device runs them.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <vector>

#include "acceptance.h"
#include "acceptance_check.h"
#include "graph_params.h"
#include "test_kernels.cuh"

static std::atomic<int> g_a{0}, g_b{0};
static void CUDART_CB host_a(void *p) { g_a += *(int *)p; }
static void CUDART_CB host_b(void *p) { g_b += *(int *)p; }

static const int N = 4096;
static const size_t BYTES = N * sizeof(float);

static bool same_set(std::vector<cudaGraphNode_t> a, std::vector<cudaGraphNode_t> b)
{
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    return a == b;
}

static std::vector<cudaGraphNode_t> deps_of(cudaGraphNode_t n, bool dependents)
{
    size_t k = 0;
    if (dependents)
        CHECK(cudaGraphNodeGetDependentNodes(n, nullptr, nullptr, &k));
    else
        CHECK(cudaGraphNodeGetDependencies(n, nullptr, nullptr, &k));
    std::vector<cudaGraphNode_t> v(k);
    if (k && dependents)
        CHECK(cudaGraphNodeGetDependentNodes(n, v.data(), nullptr, &k));
    else if (k)
        CHECK(cudaGraphNodeGetDependencies(n, v.data(), nullptr, &k));
    v.resize(k);
    return v;
}

template <typename P> static P alloc_params(size_t bytes) // cudaMemAllocNodeParams or its V2
{
    P p;
    std::memset(&p, 0, sizeof p);
    p.poolProps.allocType = cudaMemAllocationTypePinned;
    p.poolProps.location.type = cudaMemLocationTypeDevice;
    p.poolProps.location.id = 0;
    p.bytesize = bytes;
    return p;
}

int main()
{
    CHECK(cudaSetDevice(0));
    std::vector<float> a(N), b(N), c(N);
    for (int i = 0; i < N; i++) {
        a[i] = (float)i;
        b[i] = (float)(3 * i);
    }
    float *da, *db, *dc;
    unsigned int *du;
    CHECK(cudaMalloc(&da, BYTES));
    CHECK(cudaMalloc(&db, BYTES));
    CHECK(cudaMalloc(&dc, BYTES));
    CHECK(cudaMalloc(&du, N * sizeof(unsigned int)));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaEvent_t ev1, ev2, gate;
    CHECK(cudaEventCreate(&ev1));
    CHECK(cudaEventCreate(&ev2));
    CHECK(cudaEventCreate(&gate));
    CHECK(cudaEventRecord(gate, s));

    // ---- a graph, and what it says about itself ----
    int n = N;
    float two = 2.0f;
    cudaGraph_t child;
    CHECK(cudaGraphCreate(&child, 0));
    void *scale_args[] = {&dc, &two, &n};
    cudaKernelNodeParams kp = kernel_node((void *)fg_scale, scale_args, (N + 127) / 128, 128);
    cudaGraphNode_t c_scale;
    CHECK(cudaGraphAddKernelNode(&c_scale, child, nullptr, 0, &kp));

    cudaGraph_t g;
    CHECK(cudaGraphCreate(&g, 0));
    cudaMemsetParams ms = memset_u32(du, 5, N);
    cudaGraphNode_t n_set, n_a, n_b, n_add, n_child, n_out, n_host, n_wait, n_rec;
    CHECK(cudaGraphAddMemsetNode(&n_set, g, nullptr, 0, &ms));
    cudaMemcpy3DParms ca = copy_1d(da, a.data(), BYTES, cudaMemcpyHostToDevice);
    cudaMemcpy3DParms cb = copy_1d(db, b.data(), BYTES, cudaMemcpyHostToDevice);
    CHECK(cudaGraphAddMemcpyNode(&n_a, g, nullptr, 0, &ca));
    CHECK(cudaGraphAddMemcpyNode(&n_b, g, nullptr, 0, &cb));
    void *add_args[] = {&da, &db, &dc, &n};
    kp = kernel_node((void *)fg_vadd, add_args, (N + 255) / 256, 256);
    cudaGraphNode_t ins[] = {n_a, n_b};
    CHECK(cudaGraphAddKernelNode(&n_add, g, ins, 2, &kp));
    CHECK(cudaGraphAddChildGraphNode(&n_child, g, &n_add, 1, child));
    cudaMemcpy3DParms cc = copy_1d(c.data(), dc, BYTES, cudaMemcpyDeviceToHost);
    CHECK(cudaGraphAddMemcpyNode(&n_out, g, &n_child, 1, &cc));
    int one = 1;
    cudaHostNodeParams hp = {host_a, &one};
    CHECK(cudaGraphAddHostNode(&n_host, g, &n_out, 1, &hp));
    CHECK(cudaGraphAddEventWaitNode(&n_wait, g, nullptr, 0, gate));
    cudaGraphNode_t last[] = {n_host, n_set, n_wait};
    CHECK(cudaGraphAddEventRecordNode(&n_rec, g, last, 3, ev1));

    size_t k = 0;
    CHECK(cudaGraphGetRootNodes(g, nullptr, &k));
    std::vector<cudaGraphNode_t> roots(k);
    CHECK(cudaGraphGetRootNodes(g, roots.data(), &k));
    check("root nodes", k == 4 && same_set(roots, {n_set, n_a, n_b, n_wait}));
    size_t two_only = 2;
    std::vector<cudaGraphNode_t> few(2);
    CHECK(cudaGraphGetRootNodes(g, few.data(), &two_only));
    check("root nodes into a short array", two_only == 2);

    size_t ne = 0;
    CHECK(cudaGraphGetEdges(g, nullptr, nullptr, nullptr, &ne));
    std::vector<cudaGraphNode_t> from(ne), to(ne);
    CHECK(cudaGraphGetEdges(g, from.data(), to.data(), nullptr, &ne));
    std::vector<std::pair<cudaGraphNode_t, cudaGraphNode_t>> got, want = {
        {n_a, n_add}, {n_b, n_add}, {n_add, n_child}, {n_child, n_out}, {n_out, n_host},
        {n_host, n_rec}, {n_set, n_rec}, {n_wait, n_rec}};
    for (size_t i = 0; i < ne; i++)
        got.push_back({from[i], to[i]});
    std::sort(got.begin(), got.end());
    std::sort(want.begin(), want.end());
    std::printf("edges %zu\n", ne);
    check("edges", got == want);
    std::vector<cudaGraphEdgeData> ed(ne);
    CHECK(cudaGraphGetEdges(g, from.data(), to.data(), ed.data(), &ne));
    bool plain = true;
    for (auto &e : ed)
        plain = plain && e.type == cudaGraphDependencyTypeDefault && e.from_port == 0 && e.to_port == 0;
    check("edge data is the default", plain);

    check("dependencies of the kernel", same_set(deps_of(n_add, false), {n_a, n_b}));
    check("dependents of the kernel", same_set(deps_of(n_add, true), {n_child}));
    check("dependencies of the record node", same_set(deps_of(n_rec, false), {n_host, n_set, n_wait}));
    check("a root has no dependencies", deps_of(n_set, false).empty() && same_set(deps_of(n_set, true), {n_rec}));

    cudaGraphNodeType t[9];
    cudaGraphNode_t all[] = {n_set, n_a, n_b, n_add, n_child, n_out, n_host, n_wait, n_rec};
    std::printf("types:");
    for (int i = 0; i < 9; i++) {
        CHECK(cudaGraphNodeGetType(all[i], &t[i]));
        std::printf(" %d", (int)t[i]);
    }
    std::printf("\n");

    cudaKernelNodeParams gk;
    CHECK(cudaGraphKernelNodeGetParams(n_add, &gk));
    check("kernel node: function and shape", gk.func == (void *)fg_vadd && gk.gridDim.x == (N + 255) / 256 &&
                                                 gk.gridDim.y == 1 && gk.blockDim.x == 256 && gk.sharedMemBytes == 0);
    check("kernel node: parameter values", gk.kernelParams && *(float **)gk.kernelParams[0] == da &&
                                               *(float **)gk.kernelParams[1] == db &&
                                               *(float **)gk.kernelParams[2] == dc && *(int *)gk.kernelParams[3] == N);
    cudaMemcpy3DParms gm;
    CHECK(cudaGraphMemcpyNodeGetParams(n_a, &gm));
    check("memcpy node: the host source as given", gm.srcPtr.ptr == a.data() && gm.dstPtr.ptr == da &&
                                                        gm.extent.width == BYTES && gm.extent.height == 1);
    CHECK(cudaGraphMemcpyNodeGetParams(n_out, &gm));
    check("memcpy node: the host destination as given", gm.dstPtr.ptr == c.data() && gm.srcPtr.ptr == dc);
    cudaMemsetParams gs;
    CHECK(cudaGraphMemsetNodeGetParams(n_set, &gs));
    check("memset node", gs.dst == du && gs.value == 5 && gs.elementSize == 4 && gs.width == N);
    cudaHostNodeParams gh;
    CHECK(cudaGraphHostNodeGetParams(n_host, &gh));
    check("host node: function and data", gh.fn == host_a && gh.userData == &one);
    cudaEvent_t e1 = nullptr, e2 = nullptr;
    CHECK(cudaGraphEventRecordNodeGetEvent(n_rec, &e1));
    CHECK(cudaGraphEventWaitNodeGetEvent(n_wait, &e2));
    check("event nodes", e1 == ev1 && e2 == gate);

    // The child graph, through its node: its kernel now scales by 3, and the parent runs that.
    cudaGraph_t inner;
    CHECK(cudaGraphChildGraphNodeGetGraph(n_child, &inner));
    size_t nin = 0;
    CHECK(cudaGraphGetNodes(inner, nullptr, &nin));
    std::vector<cudaGraphNode_t> inner_nodes(nin);
    CHECK(cudaGraphGetNodes(inner, inner_nodes.data(), &nin));
    cudaGraphNodeType it;
    CHECK(cudaGraphNodeGetType(inner_nodes[0], &it));
    check("child graph: one kernel node", nin == 1 && it == cudaGraphNodeTypeKernel);
    cudaKernelNodeParams ck;
    CHECK(cudaGraphKernelNodeGetParams(inner_nodes[0], &ck));
    float three = 3.0f;
    void *scale3[] = {&dc, &three, &n};
    ck.kernelParams = scale3;
    CHECK(cudaGraphKernelNodeSetParams(inner_nodes[0], &ck));

    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    bool ok = true;
    for (int i = 0; i < N; i++)
        ok = ok && c[i] == (float)(3 * 4 * i);
    check("the child's change runs in the parent", ok);
    check("host node ran", g_a == 1 && g_b == 0);
    check("record node", cudaEventQuery(ev1) == cudaSuccess);

    // Executable setters: the host node calls host_b with 10, the record node records ev2.
    int ten = 10;
    cudaHostNodeParams hb = {host_b, &ten};
    CHECK(cudaGraphExecHostNodeSetParams(e, n_host, &hb));
    CHECK(cudaGraphExecEventRecordNodeSetEvent(e, n_rec, ev2));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    check("executable host node set", g_a == 1 && g_b == 10);
    check("executable record node set", cudaEventQuery(ev2) == cudaSuccess);
    CHECK(cudaGraphHostNodeGetParams(n_host, &gh));
    check("the graph's own host node is unchanged", gh.fn == host_a);
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(g));
    CHECK(cudaGraphDestroy(child));

    // ---- kernel node attributes: set on one node, read back, copied to another (this graph is not launched) ----
    cudaGraph_t ag;
    CHECK(cudaGraphCreate(&ag, 0));
    void *attr_args[] = {&da, &db, &dc, &n};
    cudaKernelNodeParams ak = kernel_node((void *)fg_vadd, attr_args, 16, 256);
    cudaGraphNode_t k1, k2;
    CHECK(cudaGraphAddKernelNode(&k1, ag, nullptr, 0, &ak));
    CHECK(cudaGraphAddKernelNode(&k2, ag, nullptr, 0, &ak));
    cudaKernelNodeAttrValue av;
    std::memset(&av, 0, sizeof av);
    av.cooperative = 1;
    CHECK(cudaGraphKernelNodeSetAttribute(k1, cudaLaunchAttributeCooperative, &av));
    cudaKernelNodeAttrValue got1, got2;
    std::memset(&got1, 0, sizeof got1);
    std::memset(&got2, 0, sizeof got2);
    CHECK(cudaGraphKernelNodeGetAttribute(k1, cudaLaunchAttributeCooperative, &got1));
    CHECK(cudaGraphKernelNodeGetAttribute(k2, cudaLaunchAttributeCooperative, &got2));
    check("kernel node attribute set on one node", got1.cooperative == 1 && got2.cooperative == 0);
    CHECK(cudaGraphKernelNodeCopyAttributes(k2, k1));
    CHECK(cudaGraphKernelNodeGetAttribute(k2, cudaLaunchAttributeCooperative, &got2));
    check("kernel node attributes copied", got2.cooperative == 1);
    CHECK(cudaGraphDestroy(ag));

    // ---- memory nodes: allocate, fill, copy out, free ----
    const size_t MB = N * sizeof(unsigned int);
    cudaGraph_t mg;
    CHECK(cudaGraphCreate(&mg, 0));
    cudaMemAllocNodeParams ap = alloc_params<cudaMemAllocNodeParams>(MB);
    cudaGraphNode_t m_alloc, m_fill, m_copy, m_free;
    CHECK(cudaGraphAddMemAllocNode(&m_alloc, mg, nullptr, 0, &ap));
    unsigned int *scratch = (unsigned int *)ap.dptr;
    check("allocation node gives an address", scratch != nullptr);
    unsigned int fillv = 41;
    unsigned long long count = N;
    void *fill_args[] = {&scratch, &fillv, &count};
    kp = kernel_node((void *)fg_fill_u32, fill_args, 8, 128);
    CHECK(cudaGraphAddKernelNode(&m_fill, mg, &m_alloc, 1, &kp));
    cudaMemcpy3DParms cd = copy_1d(du, scratch, MB, cudaMemcpyDeviceToDevice);
    CHECK(cudaGraphAddMemcpyNode(&m_copy, mg, &m_fill, 1, &cd));
    CHECK(cudaGraphAddMemFreeNode(&m_free, mg, &m_copy, 1, scratch));
    cudaGraphNodeType ta, tf;
    CHECK(cudaGraphNodeGetType(m_alloc, &ta));
    CHECK(cudaGraphNodeGetType(m_free, &tf));
    check("memory node types", ta == cudaGraphNodeTypeMemAlloc && tf == cudaGraphNodeTypeMemFree);
    cudaMemAllocNodeParams gap;
    CHECK(cudaGraphMemAllocNodeGetParams(m_alloc, &gap));
    check("allocation node parameters", gap.bytesize == MB && gap.dptr == scratch &&
                                            gap.poolProps.location.type == cudaMemLocationTypeDevice);
    void *freed = nullptr;
    CHECK(cudaGraphMemFreeNodeGetParams(m_free, &freed));
    check("free node parameters", freed == scratch);
    cudaGraphExec_t me;
    CHECK(cudaGraphInstantiate(&me, mg, 0));
    std::vector<unsigned int> u(N);
    ok = true;
    for (int it2 = 0; it2 < 3; it2++) {
        CHECK(cudaMemset(du, 0, MB));
        CHECK(cudaGraphLaunch(me, s));
        CHECK(cudaStreamSynchronize(s));
        CHECK(cudaMemcpy(u.data(), du, MB, cudaMemcpyDeviceToHost));
        ok = ok && u[0] == 41u && u[N - 1] == 41u;
    }
    check("allocate, fill, copy out, free: three launches", ok);
    unsigned long long reserved = 0;
    CHECK(cudaDeviceGetGraphMemAttribute(0, cudaGraphMemAttrReservedMemCurrent, &reserved));
    check("reserved graph memory covers the allocation", reserved >= MB);
    unsigned long long zero = 0;
    CHECK(cudaDeviceSetGraphMemAttribute(0, cudaGraphMemAttrUsedMemHigh, &zero));
    unsigned long long bad_value = 5;
    check("a high watermark is reset only to zero",
          cudaDeviceSetGraphMemAttribute(0, cudaGraphMemAttrUsedMemHigh, &bad_value) != cudaSuccess);
    (void)cudaGetLastError();

    CHECK(cudaGraphExecDestroy(me));
    CHECK(cudaGraphDestroy(mg));

    // ---- an allocation that outlives the launch: the application frees it, the next launch has it again ----
    cudaGraph_t og;
    CHECK(cudaGraphCreate(&og, 0));
    alignas(cudaGraphNodeParams) unsigned char raw[sizeof(cudaGraphNodeParams)] = {};
    cudaGraphNodeParams &np = *reinterpret_cast<cudaGraphNodeParams *>(raw);
    np.type = cudaGraphNodeTypeMemAlloc;
    np.alloc = alloc_params<cudaMemAllocNodeParamsV2>(MB);
    cudaGraphNode_t o_alloc, o_fill;
    CHECK(cudaGraphAddNode(&o_alloc, og, nullptr, nullptr, 0, &np));
    unsigned int *kept = (unsigned int *)np.alloc.dptr;
    unsigned int fill7 = 7;
    void *fill7_args[] = {&kept, &fill7, &count};
    kp.kernelParams = fill7_args;
    CHECK(cudaGraphAddKernelNode(&o_fill, og, &o_alloc, 1, &kp));
    cudaGraphExec_t oe;
    CHECK(cudaGraphInstantiate(&oe, og, 0));
    ok = true;
    for (int it2 = 0; it2 < 2; it2++) {
        CHECK(cudaGraphLaunch(oe, s));
        CHECK(cudaStreamSynchronize(s));
        std::fill(u.begin(), u.end(), 0u);
        CHECK(cudaMemcpy(u.data(), kept, MB, cudaMemcpyDeviceToHost));
        ok = ok && u[0] == 7u && u[N - 1] == 7u;
        CHECK(cudaFree(kept)); // the application owns it after the launch
    }
    check("an allocation freed by the application, launched again", ok);
    CHECK(cudaGraphExecDestroy(oe));
    CHECK(cudaGraphDestroy(og));

    // ---- the generic node API for both kinds, in one graph ----
    cudaGraph_t gg;
    CHECK(cudaGraphCreate(&gg, 0));
    std::memset(raw, 0, sizeof raw);
    np.type = cudaGraphNodeTypeMemAlloc;
    np.alloc = alloc_params<cudaMemAllocNodeParamsV2>(MB);
    cudaGraphNode_t g_alloc, g_free, g_fill;
    CHECK(cudaGraphAddNode(&g_alloc, gg, nullptr, nullptr, 0, &np));
    unsigned int *gp = (unsigned int *)np.alloc.dptr;
    unsigned int fill9 = 9;
    void *fill9_args[] = {&gp, &fill9, &count};
    kp.kernelParams = fill9_args;
    CHECK(cudaGraphAddKernelNode(&g_fill, gg, &g_alloc, 1, &kp));
    cudaGraphNode_t g_copy;
    cudaMemcpy3DParms gcp = copy_1d(du, gp, MB, cudaMemcpyDeviceToDevice);
    CHECK(cudaGraphAddMemcpyNode(&g_copy, gg, &g_fill, 1, &gcp));
    std::memset(raw, 0, sizeof raw);
    np.type = cudaGraphNodeTypeMemFree;
    np.free.dptr = gp;
    CHECK(cudaGraphAddNode(&g_free, gg, &g_copy, nullptr, 1, &np));
    cudaGraphExec_t ge;
    CHECK(cudaGraphInstantiate(&ge, gg, 0));
    CHECK(cudaGraphLaunch(ge, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, MB, cudaMemcpyDeviceToHost));
    check("generic allocation and free nodes", u[0] == 9u && u[N - 1] == 9u);
    CHECK(cudaGraphExecDestroy(ge));
    CHECK(cudaGraphDestroy(gg));
    CHECK(cudaDeviceGraphMemTrim(0));

    CHECK(cudaEventDestroy(ev1));
    CHECK(cudaEventDestroy(ev2));
    CHECK(cudaEventDestroy(gate));
    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    CHECK(cudaFree(du));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
