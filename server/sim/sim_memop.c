/* sim_memop.c - stream memory operations for the simulated device: cuStreamWaitValue32_v2/64_v2,
 * cuStreamWriteValue32_v2/64_v2 and cuStreamBatchMemOp_v2 (waits, writes, flushes of remote writes, barriers);
 * cuMemBatchDecompressAsync (no decompression engine: refused after its argument checks).
 *
 * Stream work runs at enqueue here (sim_stream.c), so a write is done when the call returns and a wait is decided
 * at once: a condition already met passes; one not met could never be met by later work of a stream that has
 * already run, so instead of hanging the sim refuses it (CUDA_ERROR_NOT_SUPPORTED, logged once) where a GPU would
 * wait for another stream or the host to write the value. Checks as the driver documents them: the address must be
 * device-accessible memory the sim knows (allocations, VMM mappings, globals, pinned or registered host memory)
 * for all 4 or 8 bytes, aligned to them; wait flags one of GEQ/EQ/AND/NOR; write flags DEFAULT or
 * NO_MEMORY_BARRIER; a flush's flags 0; a barrier's scope SYS or GPU; a batch's flags 0 and fewer than
 * 256 operations, checked whole before any of them runs. Anything else is CUDA_ERROR_INVALID_VALUE. A flush of remote
 * writes (standalone or a wait's FLUSH flag) is CUDA_ERROR_NOT_SUPPORTED: the device reports
 * CAN_FLUSH_REMOTE_WRITES 0, as most GPUs do. */
#include "sim.h"

#include <string.h>

#define MAX_BATCH 255

static CUresult check_addr(CUdeviceptr addr, size_t n, int prot)
{
    if (addr % n)
        return CUDA_ERROR_INVALID_VALUE;
    return sim_range_check(addr, n, prot);
}

CUresult sim_memop_check(const CUstreamBatchMemOpParams *p)
{
    switch (p->operation) {
    case CU_STREAM_MEM_OP_WAIT_VALUE_32:
    case CU_STREAM_MEM_OP_WAIT_VALUE_64:
        if ((p->waitValue.flags & ~(unsigned)CU_STREAM_WAIT_VALUE_FLUSH) > CU_STREAM_WAIT_VALUE_NOR)
            return CUDA_ERROR_INVALID_VALUE;
        if (p->waitValue.flags & CU_STREAM_WAIT_VALUE_FLUSH)
            return CUDA_ERROR_NOT_SUPPORTED; /* as its CAN_FLUSH_REMOTE_WRITES (0) says, like most GPUs */
        return check_addr(p->waitValue.address, p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 ? 4 : 8, SIM_PROT_R);
    case CU_STREAM_MEM_OP_WRITE_VALUE_32:
    case CU_STREAM_MEM_OP_WRITE_VALUE_64:
        if (p->writeValue.flags > CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER)
            return CUDA_ERROR_INVALID_VALUE;
        return check_addr(p->writeValue.address, p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32 ? 4 : 8, SIM_PROT_W);
    case CU_STREAM_MEM_OP_FLUSH_REMOTE_WRITES:
        return p->flushRemoteWrites.flags ? CUDA_ERROR_INVALID_VALUE : CUDA_ERROR_NOT_SUPPORTED; /* likewise */
    case CU_STREAM_MEM_OP_BARRIER:
        return p->memoryBarrier.flags > CU_STREAM_MEMORY_BARRIER_TYPE_GPU ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

static int met(uint64_t cur, uint64_t value, unsigned flags, int wide)
{
    if (!wide) {
        cur = (uint32_t)cur;
        value = (uint32_t)value;
    }
    switch (flags & ~(unsigned)CU_STREAM_WAIT_VALUE_FLUSH) {
    case CU_STREAM_WAIT_VALUE_GEQ:
        return wide ? (int64_t)(cur - value) >= 0 : (int32_t)(uint32_t)(cur - value) >= 0;
    case CU_STREAM_WAIT_VALUE_EQ:
        return cur == value;
    case CU_STREAM_WAIT_VALUE_AND:
        return (cur & value) != 0;
    default: /* NOR */
        return (wide ? ~(cur | value) : (uint32_t)~(cur | value)) != 0;
    }
}

/* Runs one checked operation (lock held). */
static CUresult run_op(const CUstreamBatchMemOpParams *p)
{
    int wide = p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_64 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_64;
    if (p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_32 || p->operation == CU_STREAM_MEM_OP_WRITE_VALUE_64) {
        if (wide)
            memcpy((void *)(uintptr_t)p->writeValue.address, &p->writeValue.value64, 8);
        else
            memcpy((void *)(uintptr_t)p->writeValue.address, &p->writeValue.value, 4);
        return CUDA_SUCCESS;
    }
    if (p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_32 || p->operation == CU_STREAM_MEM_OP_WAIT_VALUE_64) {
        uint64_t cur = 0;
        memcpy(&cur, (const void *)(uintptr_t)p->waitValue.address, wide ? 8 : 4);
        if (met(cur, wide ? p->waitValue.value64 : p->waitValue.value, p->waitValue.flags, wide))
            return CUDA_SUCCESS;
        sim_log_once("a stream wait on a value not yet written",
                     "the simulated device runs stream work at enqueue, so no later work could write it");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    return CUDA_SUCCESS; /* flushes and barriers: every write is already visible */
}

CUresult sim_memop_batch(CUstream stream, unsigned int count, const CUstreamBatchMemOpParams *ops, unsigned int flags)
{
    if (flags || count > MAX_BATCH || (count && !ops))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_stream_check_op(stream);
    for (unsigned int i = 0; rc == CUDA_SUCCESS && i < count; i++)
        rc = sim_memop_check(&ops[i]);
    for (unsigned int i = 0; rc == CUDA_SUCCESS && i < count; i++)
        rc = run_op(&ops[i]);
    sim_unlock();
    return rc;
}

/* A batch refuses a write without a memory barrier (CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER) with
 * CUDA_ERROR_INVALID_VALUE, before any of its operations runs: so did the H100 with driver 580 (api_memops,
 * 2026-12-07), where cuStreamWriteValue32/64 take the flag. */
SIM_API CUresult cuStreamBatchMemOp_v2(CUstream stream, unsigned int count, CUstreamBatchMemOpParams *paramArray,
                                       unsigned int flags)
{
    for (unsigned int i = 0; paramArray && i < count && i <= MAX_BATCH; i++) {
        CUstreamBatchMemOpType op = paramArray[i].operation;
        if ((op == CU_STREAM_MEM_OP_WRITE_VALUE_32 || op == CU_STREAM_MEM_OP_WRITE_VALUE_64) &&
            (paramArray[i].writeValue.flags & CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER))
            return CUDA_ERROR_INVALID_VALUE;
    }
    return sim_memop_batch(stream, count, paramArray, flags);
}

static CUresult one(CUstream stream, CUstreamBatchMemOpType op, CUdeviceptr addr, uint64_t value, unsigned int flags)
{
    CUstreamBatchMemOpParams p;
    memset(&p, 0, sizeof p);
    p.operation = op;
    p.waitValue.address = addr;
    p.waitValue.flags = flags;
    if (op == CU_STREAM_MEM_OP_WAIT_VALUE_64 || op == CU_STREAM_MEM_OP_WRITE_VALUE_64)
        p.waitValue.value64 = value;
    else
        p.waitValue.value = (cuuint32_t)value;
    return sim_memop_batch(stream, 1, &p, 0);
}

SIM_API CUresult cuStreamWaitValue32_v2(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags)
{
    return one(stream, CU_STREAM_MEM_OP_WAIT_VALUE_32, addr, value, flags);
}

SIM_API CUresult cuStreamWaitValue64_v2(CUstream stream, CUdeviceptr addr, cuuint64_t value, unsigned int flags)
{
    return one(stream, CU_STREAM_MEM_OP_WAIT_VALUE_64, addr, value, flags);
}

SIM_API CUresult cuStreamWriteValue32_v2(CUstream stream, CUdeviceptr addr, cuuint32_t value, unsigned int flags)
{
    return one(stream, CU_STREAM_MEM_OP_WRITE_VALUE_32, addr, value, flags);
}

SIM_API CUresult cuStreamWriteValue64_v2(CUstream stream, CUdeviceptr addr, cuuint64_t value, unsigned int flags)
{
    return one(stream, CU_STREAM_MEM_OP_WRITE_VALUE_64, addr, value, flags);
}

/* Hardware decompression: the simulated device has no engine (MEM_DECOMPRESS_ALGORITHM_MASK 0, as H100 and H200).
 * After the documented argument checks (flags 0, an array of at least one operation, a valid stream; else
 * CUDA_ERROR_INVALID_VALUE with the general error index SIZE_MAX, or the stream's error), every batch is
 * CUDA_ERROR_NOT_SUPPORTED with the error index left as it was (as the H100's driver 580 left it: api_queries) and
 * a message in the driver's error log. */
SIM_API CUresult cuMemBatchDecompressAsync(CUmemDecompressParams *paramsArray, size_t count, unsigned int flags,
                                           size_t *errorIndex, CUstream stream)
{
    if (flags != 0 || !paramsArray || count == 0) {
        if (errorIndex)
            *errorIndex = SIZE_MAX;
        sim_log_error("cuMemBatchDecompressAsync", "%s",
                      flags ? "flags must be 0" : "paramsArray must hold at least one operation");
        return CUDA_ERROR_INVALID_VALUE;
    }
    sim_lock();
    CUresult rc = sim_stream_check_op(stream);
    sim_unlock();
    if (rc != CUDA_SUCCESS)
        return rc;
    sim_log_error("cuMemBatchDecompressAsync", "the device has no decompression engine");
    return CUDA_ERROR_NOT_SUPPORTED;
}
