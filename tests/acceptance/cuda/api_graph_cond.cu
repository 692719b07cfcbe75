// api_graph_cond.cu - acceptance: conditional graph nodes built by hand. An IF node with an else branch whose
// condition a kernel sets from a parameter the executable changes between launches; a WHILE node whose body
// doubles a buffer and counts a device counter down, its handle reset to its default at each launch; a SWITCH
// node with three bodies, one value past them (no body runs). Values are checked against the host exactly. The
// kernels that set conditions (fg_set_cond, fg_count_down) and the fill and scale kernels are named and laid out
// as the simulated device's (server/sim/sim_kernels.c), so it runs them too.
#include <cstdio>
#include <cstring>
#include <vector>

#include "acceptance.h"
#include "acceptance_check.h"
#include "graph_params.h"
#include "test_kernels.cuh"

extern "C" __global__ void fg_set_cond(cudaGraphConditionalHandle h, unsigned int v) { cudaGraphSetConditional(h, v); }

extern "C" __global__ void fg_count_down(unsigned int *counter, cudaGraphConditionalHandle h)
{
    unsigned int left = *counter - 1; // launched with one thread
    *counter = left;
    cudaGraphSetConditional(h, left != 0);
}

static const int N = 2048;

struct params_storage { // cudaGraphNodeParams has members without trivial constructors: zeroed storage instead
    alignas(cudaGraphNodeParams) unsigned char raw[sizeof(cudaGraphNodeParams)];
    cudaGraphNodeParams &p() { return *reinterpret_cast<cudaGraphNodeParams *>(raw); }
    params_storage() { std::memset(raw, 0, sizeof raw); }
};

// A conditional node after `dep` (may be null) with `size` bodies; the bodies come back in `bodies`.
static cudaGraphNode_t add_conditional(cudaGraph_t g, cudaGraphNode_t dep, cudaGraphConditionalHandle h,
                                       cudaGraphConditionalNodeType type, unsigned size,
                                       std::vector<cudaGraph_t> &bodies)
{
    params_storage ps;
    cudaGraphNodeParams &p = ps.p();
    p.type = cudaGraphNodeTypeConditional;
    p.conditional.handle = h;
    p.conditional.type = type;
    p.conditional.size = size;
    cudaGraphNode_t node;
    CHECK(cudaGraphAddNode(&node, g, dep ? &dep : nullptr, nullptr, dep ? 1 : 0, &p));
    bodies.assign(p.conditional.phGraph_out, p.conditional.phGraph_out + size);
    return node;
}

int main()
{
    CHECK(cudaSetDevice(0));
    unsigned int *du, *counter;
    float *dx;
    CHECK(cudaMalloc(&du, N * sizeof(unsigned int)));
    CHECK(cudaMalloc(&counter, sizeof(unsigned int)));
    CHECK(cudaMalloc(&dx, N * sizeof(float)));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    std::vector<unsigned int> u(N);
    unsigned long long n64 = N;
    int n = N;

    // ---- IF with an else branch: the condition comes from a kernel parameter set on the executable ----
    cudaGraph_t g;
    CHECK(cudaGraphCreate(&g, 0));
    cudaGraphConditionalHandle hif;
    CHECK(cudaGraphConditionalHandleCreate(&hif, g, 0, 0));
    unsigned int v = 1;
    void *set_args[] = {&hif, &v};
    cudaKernelNodeParams kset = kernel_node((void *)fg_set_cond, set_args, 1, 1);
    cudaGraphNode_t n_set;
    CHECK(cudaGraphAddKernelNode(&n_set, g, nullptr, 0, &kset));
    std::vector<cudaGraph_t> ifb;
    cudaGraphNode_t n_if = add_conditional(g, n_set, hif, cudaGraphCondTypeIf, 2, ifb);
    cudaGraphNodeType t;
    CHECK(cudaGraphNodeGetType(n_if, &t));
    check("conditional node type", t == cudaGraphNodeTypeConditional);
    unsigned int one = 1, two = 2;
    void *then_args[] = {&du, &one, &n64};
    void *else_args[] = {&du, &two, &n64};
    cudaKernelNodeParams kthen = kernel_node((void *)fg_fill_u32, then_args, 4, 128);
    cudaKernelNodeParams kelse = kernel_node((void *)fg_fill_u32, else_args, 4, 128);
    cudaGraphNode_t b0, b1;
    CHECK(cudaGraphAddKernelNode(&b0, ifb[0], nullptr, 0, &kthen));
    CHECK(cudaGraphAddKernelNode(&b1, ifb[1], nullptr, 0, &kelse));
    cudaGraphExec_t e;
    CHECK(cudaGraphInstantiate(&e, g, 0));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    check("if: condition 1 runs the first body", u[0] == 1u && u[N - 1] == 1u);
    v = 0;
    CHECK(cudaGraphExecKernelNodeSetParams(e, n_set, &kset));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    check("if: condition 0 runs the else body", u[0] == 2u && u[N - 1] == 2u);
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(g));

    // ---- WHILE: x *= 2 and count down, while the counter is non-zero; the default (1) enters the loop ----
    CHECK(cudaGraphCreate(&g, 0));
    cudaGraphConditionalHandle hw;
    CHECK(cudaGraphConditionalHandleCreate(&hw, g, 1, cudaGraphCondAssignDefault));
    std::vector<cudaGraph_t> wb;
    add_conditional(g, nullptr, hw, cudaGraphCondTypeWhile, 1, wb);
    float twof = 2.0f;
    void *scale_args[] = {&dx, &twof, &n};
    cudaKernelNodeParams kscale = kernel_node((void *)fg_scale, scale_args, (N + 255) / 256, 256);
    void *down_args[] = {&counter, &hw};
    cudaKernelNodeParams kdown = kernel_node((void *)fg_count_down, down_args, 1, 1);
    cudaGraphNode_t w0, w1;
    CHECK(cudaGraphAddKernelNode(&w0, wb[0], nullptr, 0, &kscale));
    CHECK(cudaGraphAddKernelNode(&w1, wb[0], &w0, 1, &kdown));
    CHECK(cudaGraphInstantiate(&e, g, 0));
    std::vector<float> x(N, 1.0f);
    CHECK(cudaMemcpy(dx, x.data(), N * sizeof(float), cudaMemcpyHostToDevice));
    unsigned int rounds = 5;
    CHECK(cudaMemcpy(counter, &rounds, sizeof rounds, cudaMemcpyHostToDevice));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(x.data(), dx, N * sizeof(float), cudaMemcpyDeviceToHost));
    unsigned int left = 99;
    CHECK(cudaMemcpy(&left, counter, sizeof left, cudaMemcpyDeviceToHost));
    check("while: five rounds", x[0] == 32.0f && x[N - 1] == 32.0f && left == 0u);
    rounds = 3;
    CHECK(cudaMemcpy(counter, &rounds, sizeof rounds, cudaMemcpyHostToDevice));
    CHECK(cudaGraphLaunch(e, s)); // the handle is 1 again at the launch: the loop is entered
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(x.data(), dx, N * sizeof(float), cudaMemcpyDeviceToHost));
    check("while: three more rounds after the default is assigned again", x[0] == 256.0f && x[N - 1] == 256.0f);
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(g));

    // ---- SWITCH over three bodies ----
    CHECK(cudaGraphCreate(&g, 0));
    cudaGraphConditionalHandle hs;
    CHECK(cudaGraphConditionalHandleCreate(&hs, g, 0, 0));
    unsigned int k = 2;
    void *sw_args[] = {&hs, &k};
    cudaKernelNodeParams ksw = kernel_node((void *)fg_set_cond, sw_args, 1, 1);
    cudaGraphNode_t n_sw;
    CHECK(cudaGraphAddKernelNode(&n_sw, g, nullptr, 0, &ksw));
    std::vector<cudaGraph_t> sb;
    add_conditional(g, n_sw, hs, cudaGraphCondTypeSwitch, 3, sb);
    unsigned int vals[3] = {10, 20, 30};
    void *fill_args[3][3] = {{&du, &vals[0], &n64}, {&du, &vals[1], &n64}, {&du, &vals[2], &n64}};
    for (int i = 0; i < 3; i++) {
        cudaKernelNodeParams kf = kernel_node((void *)fg_fill_u32, fill_args[i], 4, 128);
        cudaGraphNode_t bn;
        CHECK(cudaGraphAddKernelNode(&bn, sb[i], nullptr, 0, &kf));
    }
    CHECK(cudaGraphInstantiate(&e, g, 0));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    check("switch: value 2 runs the third body", u[0] == 30u && u[N - 1] == 30u);
    k = 7;
    CHECK(cudaGraphExecKernelNodeSetParams(e, n_sw, &ksw));
    CHECK(cudaMemset(du, 0, N * sizeof(unsigned int)));
    CHECK(cudaGraphLaunch(e, s));
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemcpy(u.data(), du, N * sizeof(unsigned int), cudaMemcpyDeviceToHost));
    check("switch: a value past the bodies runs none", u[0] == 0u && u[N - 1] == 0u);
    CHECK(cudaGraphExecDestroy(e));
    CHECK(cudaGraphDestroy(g));

    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(du));
    CHECK(cudaFree(counter));
    CHECK(cudaFree(dx));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
