// api_memops.cu - acceptance: batched stream memory operations (cuStreamBatchMemOp: 32- and 64-bit writes and
// waits with each comparison, a memory barrier, a flush of remote writes where the device has one) ordering work across two streams
// through a flag in device memory, the single-operation forms (cuStreamWriteValue32/64, cuStreamWaitValue32/64),
// cuStreamGetCtx_v2, context-wide events (cuCtxRecordEvent, cuCtxWaitEvent), and batch memory-operation graph nodes
// (two dependent nodes, their parameters read back, changed in an executable and launched again). The values are
// checked exactly.
// The first stream's writes are queued before the second stream's waits, so the waits never block for long.
// acceptance: link=-lcuda
#include <cstdio>
#include <cstring>

#include <cuda.h>

#include "acceptance.h"
#include "acceptance_check.h"

static CUstreamBatchMemOpParams op(CUstreamBatchMemOpType t, CUdeviceptr a, unsigned long long v, unsigned flags)
{
    CUstreamBatchMemOpParams p;
    std::memset(&p, 0, sizeof p);
    p.operation = t;
    if (t == CU_STREAM_MEM_OP_BARRIER) {
        p.memoryBarrier.flags = flags;
        return p;
    }
    if (t == CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES)
        return p;
    p.waitValue.address = a;
    p.waitValue.flags = flags;
    if (t == CU_STREAM_MEM_OP_WAIT_VALUE_64 || t == CU_STREAM_MEM_OP_WRITE_VALUE_64)
        p.waitValue.value64 = v;
    else
        p.waitValue.value = (cuuint32_t)v;
    return p;
}

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));
    CUcontext ctx;
    CU_CHECK(cuCtxGetCurrent(&ctx));
    CUstream s1, s2;
    CU_CHECK(cuStreamCreate(&s1, CU_STREAM_NON_BLOCKING));
    CU_CHECK(cuStreamCreate(&s2, CU_STREAM_NON_BLOCKING));
    CUdeviceptr buf;
    CU_CHECK(cuMemAlloc(&buf, 64));
    CU_CHECK(cuMemsetD8(buf, 0, 64));

    CUstreamBatchMemOpParams first[] = {
        op(CU_STREAM_MEM_OP_WRITE_VALUE_64, buf + 8, 0x0123456789abcdefull, CU_STREAM_WRITE_VALUE_DEFAULT),
        op(CU_STREAM_MEM_OP_BARRIER, 0, 0, CU_STREAM_MEMORY_BARRIER_TYPE_GPU),
        op(CU_STREAM_MEM_OP_WRITE_VALUE_32, buf, 1, CU_STREAM_WRITE_VALUE_DEFAULT),
    };
    CU_CHECK(cuStreamBatchMemOp(s1, 3, first, 0));
    // The second stream's operations, each as a batch of its own, so that what the device refuses is told apart:
    // the optional ones (a NOR wait, a flush of remote writes) and the flags the H100 may not take in a batch. Each
    // line says whether the operation ran; a refusal counts whether the driver gives it at the call or at the next
    // synchronisation (fargpu queues a batch as async work, so a driver's refusal comes at the synchronisation), and
    // its code goes to stderr. The write at the end must run for the check below.
    struct {
        const char *name;
        CUstreamBatchMemOpParams p;
    } second[] = {
        {"32-bit wait, greater or equal", op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf, 1, CU_STREAM_WAIT_VALUE_GEQ)},
        {"64-bit wait, equal", op(CU_STREAM_MEM_OP_WAIT_VALUE_64, buf + 8, 0x0123456789abcdefull, CU_STREAM_WAIT_VALUE_EQ)},
        {"32-bit wait, and", op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf, 3, CU_STREAM_WAIT_VALUE_AND)},
        {"32-bit wait, nor", op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf, 0xfffffff0u, CU_STREAM_WAIT_VALUE_NOR)},
        {"flush of remote writes", op(CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES, 0, 0, 0)},
        {"32-bit write, no memory barrier", op(CU_STREAM_MEM_OP_WRITE_VALUE_32, buf + 16, 2, CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER)},
    };
    for (auto &o : second) {
        CUresult r = cuStreamBatchMemOp(s2, 1, &o.p, 0);
        CUresult at_sync = cuStreamSynchronize(s2);
        if (r == CUDA_SUCCESS)
            r = at_sync;
        std::printf("batch of one: %s %s\n", o.name, r == CUDA_SUCCESS ? "ran" : "refused");
        if (r != CUDA_SUCCESS)
            std::fprintf(stderr, "batch of one: %s refused with %d\n", o.name, (int)r);
    }
    unsigned v16now = 0;
    CU_CHECK(cuMemcpyDtoH(&v16now, buf + 16, 4));
    if (v16now != 2) // the write without a barrier was refused: the same write with the default flags
        CU_CHECK(cuStreamWriteValue32(s2, buf + 16, 2, 0));
    CU_CHECK(cuStreamWriteValue64(s2, buf + 24, 0xfeedfacecafebeefull, 0));
    CU_CHECK(cuStreamWaitValue64(s2, buf + 24, 0xfeedfacecafebeefull, CU_STREAM_WAIT_VALUE_EQ));
    CU_CHECK(cuStreamWriteValue32(s2, buf + 32, 3, 0));
    CU_CHECK(cuStreamWaitValue32(s2, buf + 32, 3, CU_STREAM_WAIT_VALUE_EQ));
    CU_CHECK(cuStreamSynchronize(s2));
    unsigned char host[40];
    CU_CHECK(cuMemcpyDtoH(host, buf, sizeof host));
    unsigned v32, v16, v32b;
    unsigned long long v8, v24;
    std::memcpy(&v32, host, 4);
    std::memcpy(&v8, host + 8, 8);
    std::memcpy(&v16, host + 16, 4);
    std::memcpy(&v24, host + 24, 8);
    std::memcpy(&v32b, host + 32, 4);
    check("flag written by the first stream", v32 == 1);
    check("64-bit value before the barrier", v8 == 0x0123456789abcdefull);
    check("second stream's write after its waits", v16 == 2);
    check("single-operation writes", v24 == 0xfeedfacecafebeefull && v32b == 3);

    CUcontext got = nullptr;
    CUgreenCtx green = (CUgreenCtx)1;
    CU_CHECK(cuStreamGetCtx_v2(s1, &got, &green));
    check("cuStreamGetCtx_v2: the current context, no green context", got == ctx && green == nullptr);

    CUevent e0, e1;
    CU_CHECK(cuEventCreate(&e0, CU_EVENT_DEFAULT));
    CU_CHECK(cuEventCreate(&e1, CU_EVENT_DEFAULT));
    CU_CHECK(cuEventRecord(e0, s1));
    CU_CHECK(cuStreamWriteValue32(s1, buf + 36, 4, 0));
    CU_CHECK(cuCtxRecordEvent(ctx, e1));
    CU_CHECK(cuCtxWaitEvent(ctx, e0));
    CU_CHECK(cuEventSynchronize(e1));
    float ms = -1.0f;
    CU_CHECK(cuEventElapsedTime(&ms, e0, e1));
    unsigned v36 = 0;
    CU_CHECK(cuMemcpyDtoH(&v36, buf + 36, 4));
    check("context event after the stream's work", cuEventQuery(e1) == CUDA_SUCCESS && ms >= 0.0f && v36 == 4);

    // A graph: node A writes a flag and a value, node B (after A) waits on the flag and writes another value.
    CUgraph g;
    CU_CHECK(cuGraphCreate(&g, 0));
    CUstreamBatchMemOpParams a_ops[] = {op(CU_STREAM_MEM_OP_WRITE_VALUE_32, buf + 40, 11, 0),
                                        op(CU_STREAM_MEM_OP_WRITE_VALUE_64, buf + 48, 0xabcdefull, 0)};
    CUstreamBatchMemOpParams b_ops[] = {op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf + 40, 11, CU_STREAM_WAIT_VALUE_EQ),
                                        op(CU_STREAM_MEM_OP_WRITE_VALUE_32, buf + 56, 12, 0)};
    CUDA_BATCH_MEM_OP_NODE_PARAMS pa = {ctx, 2, a_ops, 0}, pb = {ctx, 2, b_ops, 0};
    CUgraphNode na, nb;
    CU_CHECK(cuGraphAddBatchMemOpNode(&na, g, nullptr, 0, &pa));
    CU_CHECK(cuGraphAddBatchMemOpNode(&nb, g, &na, 1, &pb));
    CUDA_BATCH_MEM_OP_NODE_PARAMS back;
    CU_CHECK(cuGraphBatchMemOpNodeGetParams(na, &back));
    check("node parameters read back", back.ctx == ctx && back.count == 2 && back.paramArray &&
                                           back.paramArray[0].operation == CU_STREAM_MEM_OP_WRITE_VALUE_32 &&
                                           back.paramArray[1].writeValue.value64 == 0xabcdefull);
    CUgraphExec ex;
    CU_CHECK(cuGraphInstantiate(&ex, g, 0));
    CU_CHECK(cuGraphLaunch(ex, s1));
    CU_CHECK(cuStreamSynchronize(s1));
    unsigned long long g48 = 0;
    unsigned g40 = 0, g56 = 0;
    CU_CHECK(cuMemcpyDtoH(&g40, buf + 40, 4));
    CU_CHECK(cuMemcpyDtoH(&g48, buf + 48, 8));
    CU_CHECK(cuMemcpyDtoH(&g56, buf + 56, 4));
    check("graph nodes in dependency order", g40 == 11 && g48 == 0xabcdefull && g56 == 12);
    CUstreamBatchMemOpParams c_ops[] = {op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf + 40, 11, CU_STREAM_WAIT_VALUE_GEQ),
                                        op(CU_STREAM_MEM_OP_WRITE_VALUE_32, buf + 56, 31, 0)};
    CUDA_BATCH_MEM_OP_NODE_PARAMS pc = {ctx, 2, c_ops, 0};
    CU_CHECK(cuGraphExecBatchMemOpNodeSetParams(ex, nb, &pc));
    CU_CHECK(cuGraphLaunch(ex, s1));
    CU_CHECK(cuStreamSynchronize(s1));
    CU_CHECK(cuMemcpyDtoH(&g56, buf + 56, 4));
    check("executable node updated", g56 == 31);
    CU_CHECK(cuGraphExecDestroy(ex));
    CU_CHECK(cuGraphDestroy(g));

    CU_CHECK(cuEventDestroy(e0));
    CU_CHECK(cuEventDestroy(e1));
    CU_CHECK(cuMemFree(buf));
    CU_CHECK(cuStreamDestroy(s1));
    CU_CHECK(cuStreamDestroy(s2));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
