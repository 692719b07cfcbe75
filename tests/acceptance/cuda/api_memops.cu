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
    // What the device can do decides the batch, as an application must: a NOR wait and a flush of remote writes
    // are optional (on an H100 with driver 580 a batch with both was refused with CUDA_ERROR_NOT_SUPPORTED at the
    // call).
    CUdevice dev;
    CU_CHECK(cuCtxGetDevice(&dev));
    int can_nor = 0, can_flush = 0;
    CU_CHECK(cuDeviceGetAttribute(&can_nor, CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR, dev));
    CU_CHECK(cuDeviceGetAttribute(&can_flush, CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES, dev));
    CUstreamBatchMemOpParams second[6];
    unsigned n2 = 0;
    second[n2++] = op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf, 1, CU_STREAM_WAIT_VALUE_GEQ);
    second[n2++] = op(CU_STREAM_MEM_OP_WAIT_VALUE_64, buf + 8, 0x0123456789abcdefull, CU_STREAM_WAIT_VALUE_EQ);
    second[n2++] = op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf, 3, CU_STREAM_WAIT_VALUE_AND);
    if (can_nor)
        second[n2++] = op(CU_STREAM_MEM_OP_WAIT_VALUE_32, buf, 0xfffffff0u, CU_STREAM_WAIT_VALUE_NOR);
    if (can_flush)
        second[n2++] = op(CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES, 0, 0, 0);
    second[n2++] = op(CU_STREAM_MEM_OP_WRITE_VALUE_32, buf + 16, 2, CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER);
    CU_CHECK(cuStreamBatchMemOp(s2, n2, second, 0));
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
