// api_mempool.cu - acceptance: stream-ordered allocation and memory pools. cudaMallocAsync / cudaFreeAsync on
// three streams (each fills and copies back its own buffer, one buffer crosses streams through an event), the
// default pool (current until another is set), a created pool with attributes (release threshold, reuse flags,
// used / reserved amounts and high watermarks, a high watermark reset), access for its device,
// cudaMallocFromPoolAsync, the created pool made current for cudaMallocAsync, cudaMemPoolTrimTo, destroying a
// pool with an allocation outstanding, 300 small allocations on three streams, a kernel in a graph working on pool
// memory, a graph allocation node whose memory outlives the launch and is freed with cudaFreeAsync, and stream
// capture of cudaMallocAsync / cudaFreeAsync (graph allocation and free nodes, a graph freeing another's). Values are
// checked against the host exactly; pool amounts only as relations that hold for any pool (used >= what is
// allocated, reserved >= used, 0 when everything is freed and trimmed), since a driver rounds and caches as it
// likes. The pool each allocation came from is asked of the pointer (the driver's MEMPOOL_HANDLE attribute, inside
// an allocation too): the default pool for the very first allocation, the created pool for both ways into it,
// none for cudaMalloc memory. The kernel is test_kernels.cuh's (the test kernels' name and layout), so the
// simulated device runs it.
// acceptance: link=-lcuda
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>

#include "acceptance.h"
#include "acceptance_check.h"
#include "test_kernels.cuh"

static const unsigned long long N = 1 << 20; // 4 MiB of u32 per buffer
static const size_t BYTES = N * sizeof(unsigned int);

static bool all(const std::vector<unsigned int> &v, unsigned int want)
{
    for (unsigned int x : v)
        if (x != want)
            return false;
    return true;
}

static uint64_t attr64(cudaMemPool_t p, cudaMemPoolAttr a)
{
    uint64_t v = 0;
    CHECK(cudaMemPoolGetAttribute(p, a, &v));
    return v;
}

static int attr_int(cudaMemPool_t p, cudaMemPoolAttr a)
{
    int v = -1;
    CHECK(cudaMemPoolGetAttribute(p, a, &v));
    return v;
}

static CUmemoryPool pool_of(const void *p)
{
    CUmemoryPool h = (CUmemoryPool)(uintptr_t)1;
    CU_CHECK(cuPointerGetAttribute(&h, CU_POINTER_ATTRIBUTE_MEMPOOL_HANDLE, (CUdeviceptr)(uintptr_t)p));
    return h;
}

static void fill(unsigned int *p, unsigned int v, cudaStream_t s)
{
    fg_fill_u32<<<64, 256, 0, s>>>(p, v, N);
    CHECK(cudaGetLastError());
}

int main()
{
    CHECK(cudaSetDevice(0));
    int supported = 0;
    CHECK(cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, 0));
    check("memory pools supported", supported == 1);

    // the first stream-ordered allocation, before the program asks for any pool
    unsigned int *first;
    CHECK(cudaMallocAsync((void **)&first, BYTES, 0));
    CUmemoryPool first_pool = pool_of(first + 100);
    CHECK(cudaFreeAsync(first, 0));
    CHECK(cudaStreamSynchronize(0));

    cudaMemPool_t dflt, cur;
    CHECK(cudaDeviceGetDefaultMemPool(&dflt, 0));
    check("the first allocation's pool is the default pool", first_pool == (CUmemoryPool)dflt);
    CHECK(cudaDeviceGetMemPool(&cur, 0));
    check("the default pool is current", dflt == cur);

    // three streams, each with its own stream-ordered buffer
    cudaStream_t s[3];
    for (auto &x : s)
        CHECK(cudaStreamCreateWithFlags(&x, cudaStreamNonBlocking));
    unsigned int *d[3];
    std::vector<std::vector<unsigned int>> h(3, std::vector<unsigned int>(N));
    for (int i = 0; i < 3; i++) {
        CHECK(cudaMallocAsync((void **)&d[i], BYTES, s[i]));
        fill(d[i], 100u + (unsigned)i, s[i]);
        CHECK(cudaMemcpyAsync(h[i].data(), d[i], BYTES, cudaMemcpyDeviceToHost, s[i]));
    }
    check("default pool holds at least what is allocated", attr64(dflt, cudaMemPoolAttrUsedMemCurrent) >= 3 * BYTES);
    check("reserved >= used", attr64(dflt, cudaMemPoolAttrReservedMemCurrent) >=
                                  attr64(dflt, cudaMemPoolAttrUsedMemCurrent));
    for (int i = 0; i < 3; i++)
        CHECK(cudaFreeAsync(d[i], s[i]));
    for (auto &x : s)
        CHECK(cudaStreamSynchronize(x));
    check("each stream's buffer", all(h[0], 100) && all(h[1], 101) && all(h[2], 102));

    // a buffer allocated on one stream, used on another after an event, freed there
    cudaEvent_t ev;
    CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    unsigned int *x;
    CHECK(cudaMallocAsync((void **)&x, BYTES, s[0]));
    fill(x, 7, s[0]);
    CHECK(cudaEventRecord(ev, s[0]));
    CHECK(cudaStreamWaitEvent(s[1], ev, 0));
    std::vector<unsigned int> hx(N);
    CHECK(cudaMemcpyAsync(hx.data(), x, BYTES, cudaMemcpyDeviceToHost, s[1]));
    CHECK(cudaFreeAsync(x, s[1]));
    CHECK(cudaStreamSynchronize(s[1]));
    check("a buffer handed from stream to stream", all(hx, 7));
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemPoolTrimTo(dflt, 0));
    check("default pool used 0 after every free", attr64(dflt, cudaMemPoolAttrUsedMemCurrent) == 0);
    check("default pool reserved 0 after trimming", attr64(dflt, cudaMemPoolAttrReservedMemCurrent) == 0);

    // a created pool with attributes
    cudaMemPoolProps props;
    std::memset(&props, 0, sizeof props);
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = 0;
    cudaMemPool_t pool;
    CHECK(cudaMemPoolCreate(&pool, &props));
    check("reuse flags enabled by default", attr_int(pool, cudaMemPoolReuseFollowEventDependencies) == 1 &&
                                                attr_int(pool, cudaMemPoolReuseAllowOpportunistic) == 1 &&
                                                attr_int(pool, cudaMemPoolReuseAllowInternalDependencies) == 1);
    check("release threshold 0 by default", attr64(pool, cudaMemPoolAttrReleaseThreshold) == 0);
    uint64_t keep = UINT64_MAX;
    CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
    int off = 0;
    CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolReuseAllowOpportunistic, &off));
    check("attributes set", attr64(pool, cudaMemPoolAttrReleaseThreshold) == UINT64_MAX &&
                                attr_int(pool, cudaMemPoolReuseAllowOpportunistic) == 0);
    uint64_t five = 5;
    check("a high watermark cannot be set to a nonzero value",
          cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &five) == cudaErrorInvalidValue);
    (void)cudaGetLastError();
    cudaMemAccessDesc own;
    std::memset(&own, 0, sizeof own);
    own.location.type = cudaMemLocationTypeDevice;
    own.location.id = 0;
    own.flags = cudaMemAccessFlagsProtReadWrite;
    CHECK(cudaMemPoolSetAccess(pool, &own, 1));
    cudaMemAccessFlags acc = cudaMemAccessFlagsProtNone;
    cudaMemLocation loc = own.location;
    CHECK(cudaMemPoolGetAccess(&acc, pool, &loc));
    check("the pool's device has read-write access", acc == cudaMemAccessFlagsProtReadWrite);

    unsigned int *p1, *p2;
    CHECK(cudaMallocFromPoolAsync((void **)&p1, BYTES, pool, s[2]));
    CHECK(cudaDeviceSetMemPool(0, pool));
    CHECK(cudaDeviceGetMemPool(&cur, 0));
    check("the created pool is current", cur == pool);
    CHECK(cudaMallocAsync((void **)&p2, BYTES, s[2])); // from the current pool: the created one
    unsigned int *plain;
    CHECK(cudaMalloc((void **)&plain, 4096));
    check("pointers name their pools", pool_of(p1) == (CUmemoryPool)pool &&
                                           pool_of(p2 + N - 1) == (CUmemoryPool)pool && pool_of(plain) == nullptr);
    CHECK(cudaFree(plain));
    check("cudaMallocAsync takes the current pool", attr64(pool, cudaMemPoolAttrUsedMemCurrent) >= 2 * BYTES);
    check("high >= used", attr64(pool, cudaMemPoolAttrUsedMemHigh) >= attr64(pool, cudaMemPoolAttrUsedMemCurrent) &&
                              attr64(pool, cudaMemPoolAttrReservedMemHigh) >= 2 * BYTES);
    fill(p1, 11, s[2]);
    fill(p2, 12, s[2]);

    // a graph whose kernel works on pool memory, launched twice
    cudaGraph_t g;
    CHECK(cudaGraphCreate(&g, 0));
    cudaKernelNodeParams kp;
    std::memset(&kp, 0, sizeof kp);
    unsigned int gv = 13;
    unsigned long long count = N;
    void *args[] = {&p1, &gv, &count};
    kp.func = (void *)fg_fill_u32;
    kp.gridDim = dim3(64);
    kp.blockDim = dim3(256);
    kp.kernelParams = args;
    cudaGraphNode_t kn;
    CHECK(cudaGraphAddKernelNode(&kn, g, nullptr, 0, &kp));
    cudaGraphExec_t ge;
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    CHECK(cudaGraphLaunch(ge, s[2]));
    CHECK(cudaGraphLaunch(ge, s[2]));
    std::vector<unsigned int> h1(N), h2(N);
    CHECK(cudaMemcpyAsync(h1.data(), p1, BYTES, cudaMemcpyDeviceToHost, s[2]));
    CHECK(cudaMemcpyAsync(h2.data(), p2, BYTES, cudaMemcpyDeviceToHost, s[2]));
    CHECK(cudaStreamSynchronize(s[2]));
    check("the graph's kernel on pool memory", all(h1, 13));
    check("pool memory from cudaMallocAsync", all(h2, 12));
    CHECK(cudaGraphExecDestroy(ge));
    CHECK(cudaGraphDestroy(g));

    // a graph allocation that outlives its launch, freed with cudaFreeAsync
    cudaGraph_t mg;
    CHECK(cudaGraphCreate(&mg, 0));
    cudaMemAllocNodeParams ap;
    std::memset(&ap, 0, sizeof ap);
    ap.poolProps.allocType = cudaMemAllocationTypePinned;
    ap.poolProps.location.type = cudaMemLocationTypeDevice;
    ap.poolProps.location.id = 0;
    ap.bytesize = BYTES;
    cudaGraphNode_t an, fn;
    CHECK(cudaGraphAddMemAllocNode(&an, mg, nullptr, 0, &ap));
    unsigned int *gm = (unsigned int *)ap.dptr;
    unsigned int gfill = 21;
    void *gargs[] = {&gm, &gfill, &count};
    kp.kernelParams = gargs;
    CHECK(cudaGraphAddKernelNode(&fn, mg, &an, 1, &kp));
    cudaGraphExec_t mge;
    CHECK(cudaGraphInstantiate(&mge, mg, 0));
    CHECK(cudaGraphLaunch(mge, s[0]));
    std::vector<unsigned int> hg(N);
    CHECK(cudaMemcpyAsync(hg.data(), gm, BYTES, cudaMemcpyDeviceToHost, s[0]));
    CHECK(cudaFreeAsync(gm, s[0]));
    CHECK(cudaStreamSynchronize(s[0]));
    check("a graph allocation freed with cudaFreeAsync", all(hg, 21));
    CHECK(cudaGraphExecDestroy(mge));
    CHECK(cudaGraphDestroy(mg));

    // stream capture of stream-ordered allocation: alloc -> kernel / memset -> copy out -> free, captured into a
    // graph with allocation and free nodes, launched twice; then a graph that frees another graph's allocation
    {
        cudaStream_t cs = s[0];
        const size_t SB = 4096;
        unsigned int *od, *os; // ordinary memory the captured graph copies into
        CHECK(cudaMalloc((void **)&od, BYTES));
        CHECK(cudaMalloc((void **)&os, SB));
        CHECK(cudaDeviceSynchronize()); // nothing else running: a global-mode capture may begin
        cudaGraph_t cg;
        unsigned int *ca, *cb;
        CHECK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
        CHECK(cudaMallocAsync((void **)&ca, BYTES, cs));
        CHECK(cudaMallocAsync((void **)&cb, SB, cs));
        fill(ca, 31, cs);
        CHECK(cudaMemsetAsync(cb, 0x5a, SB, cs));
        CHECK(cudaMemcpyAsync(od, ca, BYTES, cudaMemcpyDeviceToDevice, cs));
        CHECK(cudaMemcpyAsync(os, cb, SB, cudaMemcpyDeviceToDevice, cs));
        CHECK(cudaFreeAsync(ca, cs));
        CHECK(cudaFreeAsync(cb, cs));
        CHECK(cudaStreamEndCapture(cs, &cg));
        size_t nn = 0;
        CHECK(cudaGraphGetNodes(cg, nullptr, &nn));
        std::vector<cudaGraphNode_t> nodes(nn);
        CHECK(cudaGraphGetNodes(cg, nodes.data(), &nn));
        int n_alloc = 0, n_free = 0;
        for (size_t i = 0; i < nn; i++) {
            cudaGraphNodeType t;
            CHECK(cudaGraphNodeGetType(nodes[i], &t));
            n_alloc += t == cudaGraphNodeTypeMemAlloc;
            n_free += t == cudaGraphNodeTypeMemFree;
        }
        check("a captured graph has 2 allocation and 2 free nodes", nn == 8 && n_alloc == 2 && n_free == 2);
        cudaGraphExec_t ce;
        CHECK(cudaGraphInstantiate(&ce, cg, 0));
        bool runs_ok = true;
        for (int k = 0; k < 2; k++) {
            CHECK(cudaMemsetAsync(od, 0, BYTES, cs));
            CHECK(cudaMemsetAsync(os, 0, SB, cs));
            CHECK(cudaGraphLaunch(ce, cs));
            std::vector<unsigned int> ho(N), hs(SB / 4);
            CHECK(cudaMemcpyAsync(ho.data(), od, BYTES, cudaMemcpyDeviceToHost, cs));
            CHECK(cudaMemcpyAsync(hs.data(), os, SB, cudaMemcpyDeviceToHost, cs));
            CHECK(cudaStreamSynchronize(cs));
            runs_ok = runs_ok && all(ho, 31) && all(hs, 0x5a5a5a5au);
        }
        check("the captured allocation graph, launched twice", runs_ok);
        CHECK(cudaGraphExecDestroy(ce));
        CHECK(cudaGraphDestroy(cg));

        // graph A allocates and leaves the memory to the application; graph B frees it when it runs
        cudaGraph_t ga_, gb_;
        cudaGraphExec_t ea, eb;
        unsigned int *cc;
        CHECK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
        CHECK(cudaMallocAsync((void **)&cc, BYTES, cs));
        fill(cc, 41, cs);
        CHECK(cudaStreamEndCapture(cs, &ga_));
        CHECK(cudaGraphInstantiate(&ea, ga_, 0));
        CHECK(cudaGraphLaunch(ea, cs));
        std::vector<unsigned int> hc(N);
        CHECK(cudaMemcpyAsync(hc.data(), cc, BYTES, cudaMemcpyDeviceToHost, cs));
        CHECK(cudaStreamSynchronize(cs));
        check("a captured allocation left to the application after the launch", all(hc, 41));
        CHECK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
        CHECK(cudaFreeAsync(cc, cs));
        CHECK(cudaStreamEndCapture(cs, &gb_));
        CHECK(cudaGraphInstantiate(&eb, gb_, 0));
        CHECK(cudaGraphLaunch(eb, cs));
        CHECK(cudaStreamSynchronize(cs));
        check("another graph frees it when it runs", cudaGetLastError() == cudaSuccess);
        CHECK(cudaGraphExecDestroy(eb));
        CHECK(cudaGraphDestroy(gb_));
        CHECK(cudaGraphExecDestroy(ea));
        CHECK(cudaGraphDestroy(ga_));
        CHECK(cudaFree(od));
        CHECK(cudaFree(os));
    }

    // destroying the current pool with an allocation outstanding: the default pool is current again
    CHECK(cudaFreeAsync(p1, s[2]));
    CHECK(cudaMemPoolDestroy(pool));
    CHECK(cudaDeviceGetMemPool(&cur, 0));
    check("destroying the current pool makes the default current", cur == dflt);
    CHECK(cudaFreeAsync(p2, s[2])); // still valid after its pool was destroyed
    CHECK(cudaStreamSynchronize(s[2]));

    // many small allocations, each filled by a kernel and copied back, freed in stream order
    const int NS = 300;
    const unsigned long long SMALL = 250; // 1000 bytes
    std::vector<unsigned int *> sp(NS);
    std::vector<unsigned int> sh(NS * SMALL);
    for (int i = 0; i < NS; i++) {
        CHECK(cudaMallocAsync((void **)&sp[i], SMALL * sizeof(unsigned int), s[i % 3]));
        fg_fill_u32<<<1, 128, 0, s[i % 3]>>>(sp[i], 1000u + (unsigned)i, SMALL);
        CHECK(cudaGetLastError());
        CHECK(cudaMemcpyAsync(&sh[i * SMALL], sp[i], SMALL * sizeof(unsigned int), cudaMemcpyDeviceToHost, s[i % 3]));
        CHECK(cudaFreeAsync(sp[i], s[i % 3]));
    }
    for (auto &y : s)
        CHECK(cudaStreamSynchronize(y));
    bool small_ok = true;
    for (int i = 0; i < NS; i++)
        for (unsigned long long k = 0; k < SMALL; k++)
            small_ok = small_ok && sh[i * SMALL + k] == 1000u + (unsigned)i;
    check("300 small stream-ordered allocations on three streams", small_ok);

    // a second created pool: trimmed to nothing once everything is freed, high watermark reset when idle
    cudaMemPool_t pool2;
    CHECK(cudaMemPoolCreate(&pool2, &props));
    CHECK(cudaMemPoolSetAttribute(pool2, cudaMemPoolAttrReleaseThreshold, &keep));
    unsigned int *q[4];
    for (auto &y : q)
        CHECK(cudaMallocFromPoolAsync((void **)&y, BYTES, pool2, s[1]));
    for (auto &y : q)
        CHECK(cudaFreeAsync(y, s[1]));
    CHECK(cudaStreamSynchronize(s[1]));
    check("pool used 0 after its frees", attr64(pool2, cudaMemPoolAttrUsedMemCurrent) == 0);
    check("pool high watermark saw the allocations", attr64(pool2, cudaMemPoolAttrUsedMemHigh) >= 4 * BYTES);
    CHECK(cudaMemPoolTrimTo(pool2, 0));
    check("pool reserved 0 after cudaMemPoolTrimTo(0)", attr64(pool2, cudaMemPoolAttrReservedMemCurrent) == 0);
    uint64_t zero = 0;
    CHECK(cudaMemPoolSetAttribute(pool2, cudaMemPoolAttrUsedMemHigh, &zero));
    check("high watermark reset", attr64(pool2, cudaMemPoolAttrUsedMemHigh) == 0);
    CHECK(cudaMemPoolDestroy(pool2));

    for (auto &y : s)
        CHECK(cudaStreamDestroy(y));
    CHECK(cudaEventDestroy(ev));
    CHECK(cudaDeviceSynchronize());
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
