// api_green.cu - acceptance: green contexts as an application partitions a GPU with them. The device's SM resource (the
// SM count the device reports) and the primary context's (the same); a split queried for its group count, then split
// into two equal groups of at least a quarter of the SMs with the rest in the remainder; a descriptor per group; two
// green contexts made from them, whose resources and ids read back; a non-blocking stream on each, whose green and
// ordinary contexts read back (and none for an ordinary stream); inputs uploaded and added on the first green context's
// stream, an event recorded by the first green context and waited by the second, whose stream scales the sum and copies
// it back; the second green context converted into a context, pushed current, and used as one (memory, a launch on its
// default stream, a stream made in it that belongs to the green context, the current green context's id, its execution
// affinity: printed, with whether its SM limit is the green context's SMs); the streams
// and green contexts destroyed with the primary context still current. Then the refusals the driver documents for NULL
// outputs, NULL handles, the wrong resource type, a device that does not exist, impossible splits, a descriptor mixing
// two splits and missing flags: printed by name, so the native and the remote run compare them.
// acceptance: link=-lcuda
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>

#include "acceptance.h"
#include "acceptance_check.h"
#include "test_kernels.cuh"

static const int N = 1 << 16;

static unsigned blocks(int n) { return (unsigned)((n + 255) / 256); }

// Two green contexts on one half each, work across them, and the second used as the current context.
static void partitions(CUdevice dev, const CUdevResource &whole, CUcontext primary)
{
    unsigned min_count = whole.sm.smCount / 4;
    CUdevResource groups[2], rem;
    unsigned n = 2;
    CU_CHECK(cuDevSmResourceSplitByCount(groups, &n, &whole, &rem, 0, min_count));
    std::printf("split into %u groups of %u SMs, %u left\n", n, groups[0].sm.smCount, rem.sm.smCount);
    check("both groups hold the same SMs, at least the minimum asked, in whole aligned units",
          n == 2 && groups[0].type == CU_DEV_RESOURCE_TYPE_SM && groups[0].sm.smCount == groups[1].sm.smCount &&
              groups[0].sm.smCount >= min_count && groups[0].sm.smCount >= whole.sm.minSmPartitionSize &&
              groups[0].sm.smCount % whole.sm.smCoscheduledAlignment == 0);
    check("the remainder holds the SMs the groups do not",
          rem.sm.smCount == whole.sm.smCount - groups[0].sm.smCount - groups[1].sm.smCount);

    CUdevResourceDesc d0, d1;
    CU_CHECK(cuDevResourceGenerateDesc(&d0, &groups[0], 1));
    CU_CHECK(cuDevResourceGenerateDesc(&d1, &groups[1], 1));
    CUgreenCtx g0, g1;
    CU_CHECK(cuGreenCtxCreate(&g0, d0, dev, CU_GREEN_CTX_DEFAULT_STREAM));
    CU_CHECK(cuGreenCtxCreate(&g1, d1, dev, CU_GREEN_CTX_DEFAULT_STREAM));
    CUdevResource r0, r1;
    CU_CHECK(cuGreenCtxGetDevResource(g0, &r0, CU_DEV_RESOURCE_TYPE_SM));
    CU_CHECK(cuGreenCtxGetDevResource(g1, &r1, CU_DEV_RESOURCE_TYPE_SM));
    check("each green context has its group's SMs",
          r0.sm.smCount == groups[0].sm.smCount && r1.sm.smCount == groups[1].sm.smCount);
    unsigned long long id0 = 0, id1 = 0;
    CU_CHECK(cuGreenCtxGetId(g0, &id0));
    CU_CHECK(cuGreenCtxGetId(g1, &id1));
    check("green context ids are distinct", id0 != id1);
    CUcontext now = nullptr;
    CU_CHECK(cuCtxGetCurrent(&now));
    check("creating green contexts leaves the current context alone", now == primary);

    CUstream s0, s1, plain;
    CU_CHECK(cuGreenCtxStreamCreate(&s0, g0, CU_STREAM_NON_BLOCKING, 0));
    CU_CHECK(cuGreenCtxStreamCreate(&s1, g1, CU_STREAM_NON_BLOCKING, 0));
    CU_CHECK(cuStreamCreate(&plain, CU_STREAM_NON_BLOCKING));
    CUgreenCtx q0 = nullptr, q1 = nullptr, qp = g0, qn = g0;
    CU_CHECK(cuStreamGetGreenCtx(s0, &q0));
    CU_CHECK(cuStreamGetGreenCtx(s1, &q1));
    CU_CHECK(cuStreamGetGreenCtx(plain, &qp));
    CU_CHECK(cuStreamGetGreenCtx(nullptr, &qn));
    check("a green context's streams name it", q0 == g0 && q1 == g1);
    check("an ordinary stream and the primary context's NULL stream name none", qp == nullptr && qn == nullptr);
    CUcontext c0 = nullptr, via = nullptr, v2ctx = nullptr;
    CUgreenCtx v2green = nullptr;
    CU_CHECK(cuCtxFromGreenCtx(&c0, g0));
    CU_CHECK(cuStreamGetCtx(s0, &via));
    CU_CHECK(cuStreamGetCtx_v2(s0, &v2ctx, &v2green));
    check("a green stream's context is its green context's converted one", via == c0 && c0 != primary);
    check("cuStreamGetCtx_v2 of a green stream: the primary context and the green context",
          v2ctx == primary && v2green == g0);
    CU_CHECK(cuStreamGetCtx_v2(plain, &v2ctx, &v2green));
    check("cuStreamGetCtx_v2 of an ordinary stream: its context and no green context",
          v2ctx == primary && v2green == nullptr);

    // a + b on the first partition, then * 2 on the second after an event between the green contexts
    std::vector<float> a(N), b(N), out(N, 0.0f);
    for (int i = 0; i < N; i++) {
        a[i] = (float)(i % 97);
        b[i] = (float)(i % 13) * 0.5f;
    }
    float *da, *db, *dc;
    CHECK(cudaMalloc(&da, N * sizeof(float)));
    CHECK(cudaMalloc(&db, N * sizeof(float)));
    CHECK(cudaMalloc(&dc, N * sizeof(float)));
    CHECK(cudaMemcpyAsync(da, a.data(), N * sizeof(float), cudaMemcpyHostToDevice, s0));
    CHECK(cudaMemcpyAsync(db, b.data(), N * sizeof(float), cudaMemcpyHostToDevice, s0));
    fg_vadd<<<blocks(N), 256, 0, s0>>>(da, db, dc, N);
    CHECK(cudaGetLastError());
    CUevent ev;
    CU_CHECK(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING));
    CU_CHECK(cuGreenCtxRecordEvent(g0, ev));
    CU_CHECK(cuGreenCtxWaitEvent(g1, ev));
    fg_scale<<<blocks(N), 256, 0, s1>>>(dc, 2.0f, N);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpyAsync(out.data(), dc, N * sizeof(float), cudaMemcpyDeviceToHost, s1));
    CHECK(cudaStreamSynchronize(s1));
    bool sum_ok = true;
    for (int i = 0; i < N; i++)
        sum_ok = sum_ok && out[i] == 2.0f * (a[i] + b[i]);
    check("added on one green context, scaled on the other after its event", sum_ok);
    std::printf("event after the wait: %s\n", name_of(cuEventQuery(ev)));

    // the second green context as the current context
    CUcontext c1 = nullptr;
    CU_CHECK(cuCtxFromGreenCtx(&c1, g1));
    CU_CHECK(cuCtxPushCurrent(c1));
    CU_CHECK(cuCtxGetCurrent(&now));
    check("the converted context is current", now == c1);
    unsigned long long cur_id = 0;
    CU_CHECK(cuGreenCtxGetId(nullptr, &cur_id));
    check("the current green context's id is the second's", cur_id == id1);
    CUgreenCtx qnull = nullptr;
    CU_CHECK(cuStreamGetGreenCtx(nullptr, &qnull));
    check("the NULL stream names the current green context", qnull == g1);
    CUdevResource rc1;
    CU_CHECK(cuCtxGetDevResource(c1, &rc1, CU_DEV_RESOURCE_TYPE_SM));
    check("the converted context has the green context's SMs", rc1.sm.smCount == groups[1].sm.smCount);
    CUexecAffinityParam aff;
    std::memset(&aff, 0, sizeof aff);
    CUresult ra = cuCtxGetExecAffinity(&aff, CU_EXEC_AFFINITY_TYPE_SM_COUNT);
    std::printf("the converted context's SM limit: %s, its green context's SMs: %s\n", name_of(ra),
                ra == CUDA_SUCCESS ? (aff.param.smCount.val == groups[1].sm.smCount ? "yes" : "no") : "-");
    CUdeviceptr dp;
    CU_CHECK(cuMemAlloc(&dp, N * sizeof(unsigned)));
    fg_fill_u32<<<64, 256>>>((unsigned *)dp, 0x600dU, (unsigned long long)N);
    CHECK(cudaGetLastError());
    std::vector<unsigned> filled(N, 0);
    CU_CHECK(cuMemcpyDtoH(filled.data(), dp, N * sizeof(unsigned)));
    bool fill_ok = true;
    for (int i = 0; i < N; i++)
        fill_ok = fill_ok && filled[i] == 0x600dU;
    check("memory and a launch on the default stream while the converted context is current", fill_ok);
    CUstream made;
    CU_CHECK(cuStreamCreate(&made, CU_STREAM_NON_BLOCKING));
    CUgreenCtx qm = nullptr;
    CU_CHECK(cuStreamGetGreenCtx(made, &qm));
    check("a stream made while it is current belongs to the green context", qm == g1);
    CUcontext pc = nullptr;
    CUgreenCtx pg = nullptr;
    std::printf("cuStreamGetCtx_v2 of the per-thread stream with a green context current: %s\n",
                name_of(cuStreamGetCtx_v2(CU_STREAM_PER_THREAD, &pc, &pg)));
    CU_CHECK(cuStreamDestroy(made));
    CU_CHECK(cuMemFree(dp));
    CUcontext popped = nullptr;
    CU_CHECK(cuCtxPopCurrent(&popped));
    CU_CHECK(cuCtxGetCurrent(&now));
    check("popping it gives it back and the primary context is current again", popped == c1 && now == primary);

    // refusals that need live green contexts
    CUstream bad_stream;
    std::printf("green stream without CU_STREAM_NON_BLOCKING: %s\n",
                name_of(cuGreenCtxStreamCreate(&bad_stream, g0, CU_STREAM_DEFAULT, 0)));
    std::printf("green context id without an output: %s\n", name_of(cuGreenCtxGetId(g0, nullptr)));
    std::printf("converting without an output: %s\n", name_of(cuCtxFromGreenCtx(nullptr, g0)));
    std::printf("green resource of the wrong type: %s\n",
                name_of(cuGreenCtxGetDevResource(g0, &r0, CU_DEV_RESOURCE_TYPE_INVALID)));
    CUgreenCtx g2;
    std::printf("green context without CU_GREEN_CTX_DEFAULT_STREAM: %s\n", name_of(cuGreenCtxCreate(&g2, d0, dev, 0)));
    std::printf("green context without an output: %s\n",
                name_of(cuGreenCtxCreate(nullptr, d0, dev, CU_GREEN_CTX_DEFAULT_STREAM)));

    CU_CHECK(cuEventDestroy(ev));
    CHECK(cudaFree(da));
    CHECK(cudaFree(db));
    CHECK(cudaFree(dc));
    CU_CHECK(cuStreamDestroy(s0));
    CU_CHECK(cuStreamDestroy(s1));
    CU_CHECK(cuStreamDestroy(plain));
    CU_CHECK(cuGreenCtxDestroy(g0));
    CU_CHECK(cuGreenCtxDestroy(g1));
    CU_CHECK(cuCtxGetCurrent(&now));
    check("destroying the green contexts leaves the primary context current", now == primary);
}

// Refusals of the resource calls, with no green context needed.
static void refusals(CUdevice dev, const CUdevResource &whole)
{
    CUdevResource r;
    std::printf("device resource without an output: %s\n",
                name_of(cuDeviceGetDevResource(dev, nullptr, CU_DEV_RESOURCE_TYPE_SM)));
    std::printf("device resource of an invalid type: %s\n",
                name_of(cuDeviceGetDevResource(dev, &r, CU_DEV_RESOURCE_TYPE_INVALID)));
    int count = 0;
    CU_CHECK(cuDeviceGetCount(&count));
    std::printf("device resource of a device that does not exist: %s\n",
                name_of(cuDeviceGetDevResource((CUdevice)count, &r, CU_DEV_RESOURCE_TYPE_SM)));
    CUcontext cur = nullptr;
    CU_CHECK(cuCtxGetCurrent(&cur));
    std::printf("context resource without an output: %s\n",
                name_of(cuCtxGetDevResource(cur, nullptr, CU_DEV_RESOURCE_TYPE_SM)));

    CUdevResource groups[4], rem;
    unsigned n = 4;
    std::printf("split without a group count: %s\n",
                name_of(cuDevSmResourceSplitByCount(groups, nullptr, &whole, &rem, 0, 0)));
    std::printf("split without an input: %s\n",
                name_of(cuDevSmResourceSplitByCount(groups, &n, nullptr, &rem, 0, 0)));
    n = 4;
    std::printf("split asking more SMs than the device has: %s\n",
                name_of(cuDevSmResourceSplitByCount(groups, &n, &whole, &rem, 0, whole.sm.smCount + 1)));
    CUdevResource invalid;
    std::memset(&invalid, 0, sizeof invalid);
    n = 4;
    std::printf("split of a resource of no type: %s\n",
                name_of(cuDevSmResourceSplitByCount(groups, &n, &invalid, &rem, 0, 0)));
    n = 4;
    std::printf("split with an unknown flag: %s\n",
                name_of(cuDevSmResourceSplitByCount(groups, &n, &whole, &rem, 0x100, 0)));

    // two splits of the same resource: one descriptor may not mix them
    CUdevResource a[1], b[1];
    unsigned na = 1, nb = 1;
    CU_CHECK(cuDevSmResourceSplitByCount(a, &na, &whole, nullptr, 0, 0));
    CU_CHECK(cuDevSmResourceSplitByCount(b, &nb, &whole, nullptr, 0, 0));
    CUdevResource mixed[2] = {a[0], b[0]};
    CUdevResourceDesc d;
    std::printf("descriptor mixing two splits: %s\n", name_of(cuDevResourceGenerateDesc(&d, mixed, 2)));
    std::printf("descriptor without an output: %s\n", name_of(cuDevResourceGenerateDesc(nullptr, a, 1)));
    std::printf("descriptor without resources: %s\n", name_of(cuDevResourceGenerateDesc(&d, nullptr, 1)));
    CUgreenCtx g;
    std::printf("green context without a descriptor: %s\n",
                name_of(cuGreenCtxCreate(&g, nullptr, dev, CU_GREEN_CTX_DEFAULT_STREAM)));
    unsigned long long id = 0;
    std::printf("current green context id with an ordinary context current: %s\n",
                name_of(cuGreenCtxGetId(nullptr, &id)));
    std::printf("green context of a stream without an output: %s\n", name_of(cuStreamGetGreenCtx(nullptr, nullptr)));
}

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));
    CUdevice dev;
    CU_CHECK(cuCtxGetDevice(&dev));
    CUcontext primary = nullptr;
    CU_CHECK(cuCtxGetCurrent(&primary));

    CUdevResource whole, of_ctx;
    CU_CHECK(cuDeviceGetDevResource(dev, &whole, CU_DEV_RESOURCE_TYPE_SM));
    CU_CHECK(cuCtxGetDevResource(primary, &of_ctx, CU_DEV_RESOURCE_TYPE_SM));
    int sms = 0;
    CU_CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    std::printf("device resource type: %d\n", (int)whole.type);
    check("the device resource has the device's SMs, a minimum partition and an alignment",
          (int)whole.sm.smCount == sms && whole.sm.smCoscheduledAlignment > 0 && whole.sm.minSmPartitionSize > 0);
    check("the primary context has the device's SMs", of_ctx.sm.smCount == whole.sm.smCount);
    unsigned fit = 0;
    CU_CHECK(cuDevSmResourceSplitByCount(nullptr, &fit, &whole, nullptr, 0, whole.sm.minSmPartitionSize));
    check("a query of the smallest split counts groups that fit the device",
          fit >= 2 && fit * whole.sm.minSmPartitionSize <= whole.sm.smCount);

    partitions(dev, whole, primary);
    refusals(dev, whole);
    CHECK(cudaDeviceSynchronize());
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
