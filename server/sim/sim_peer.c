/* sim_peer.c - several devices of one process reaching each other's memory, as the driver lets them:
 *   cuDeviceCanAccessPeer     1 between two different devices (the simulated devices form one P2P clique), 0
 *                             for a device and itself;
 *   cuDeviceGetP2PAttribute   access and native atomics supported, performance rank 0 (and
 *                             cuDeviceGetP2PAtomicCapabilities: every operation native);
 *   cuCtxEnablePeerAccess     the current context may then reach the peer context's allocations (past and
 *                             future, module globals included); twice is CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED,
 *                             the same device CUDA_ERROR_PEER_ACCESS_UNSUPPORTED, flags other than 0 invalid;
 *   cuCtxDisablePeerAccess    ends it (CUDA_ERROR_PEER_ACCESS_NOT_ENABLED if it was not on);
 *   cuMemcpyPeer[Async]       copies between two contexts' memory (no peer access needed, as with the driver).
 * VMM mappings are not affected by peer access: a device reaches one only with the access cuMemSetAccess gave it
 * (sim_vmm.c keeps it per device). A launch checks its buffers against its own device (sim_range_check_from):
 * memory it may not reach makes the launch fail with CUDA_ERROR_INVALID_VALUE where a GPU would fault. */
#include "sim.h"

#include <string.h>

static int peer_enabled(const struct sim_ctx *c, unsigned long long peer_id)
{
    for (unsigned int i = 0; i < c->npeers; i++)
        if (c->peers[i] == peer_id)
            return 1;
    return 0;
}

SIM_API CUresult cuDeviceCanAccessPeer(int *canAccessPeer, CUdevice dev, CUdevice peerDev)
{
    if (!canAccessPeer)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_device(dev);
    if (rc == CUDA_SUCCESS)
        rc = sim_check_device(peerDev);
    if (rc == CUDA_SUCCESS)
        *canAccessPeer = dev != peerDev;
    sim_unlock();
    return rc;
}

/* Two distinct devices of the simulated node (a P2P query about one device with itself is invalid). */
static CUresult check_pair(CUdevice src, CUdevice dst)
{
    sim_lock();
    CUresult rc = sim_check_device(src);
    if (rc == CUDA_SUCCESS)
        rc = sim_check_device(dst);
    if (rc == CUDA_SUCCESS && src == dst)
        rc = CUDA_ERROR_INVALID_DEVICE;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDeviceGetP2PAttribute(int *value, CUdevice_P2PAttribute attrib, CUdevice srcDevice,
                                         CUdevice dstDevice)
{
    if (!value)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = check_pair(srcDevice, dstDevice);
    if (rc != CUDA_SUCCESS)
        return rc;
    switch (attrib) {
    case CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK:
        *value = 0;
        return CUDA_SUCCESS;
    case CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED:
    case CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED:
    case CU_DEVICE_P2P_ATTRIBUTE_CUDA_ARRAY_ACCESS_SUPPORTED:
        *value = 1;
        return CUDA_SUCCESS;
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

/* Between two simulated GPUs every atomic operation is native (NATIVE_ATOMIC_SUPPORTED above is 1): the integer
 * ones signed and unsigned, 32 and 64 bits, as reductions too; the float ones 32 and 64 bits. */
SIM_API CUresult cuDeviceGetP2PAtomicCapabilities(unsigned int *capabilities, const CUatomicOperation *operations,
                                                  unsigned int count, CUdevice srcDevice, CUdevice dstDevice)
{
    CUresult rc = check_pair(srcDevice, dstDevice);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (!capabilities || !operations || !count)
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < count; i++)
        if ((unsigned)operations[i] >= (unsigned)CU_ATOMIC_OPERATION_MAX)
            return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < count; i++) {
        unsigned int sizes = CU_ATOMIC_CAPABILITY_SCALAR_32 | CU_ATOMIC_CAPABILITY_SCALAR_64;
        capabilities[i] = operations[i] >= CU_ATOMIC_OPERATION_FLOAT_ADD
                              ? sizes
                              : sizes | CU_ATOMIC_CAPABILITY_SIGNED | CU_ATOMIC_CAPABILITY_UNSIGNED |
                                    CU_ATOMIC_CAPABILITY_REDUCTION;
    }
    return CUDA_SUCCESS;
}

/* The live, active context a handle names, or NULL. */
static struct sim_ctx *live_ctx(CUcontext h)
{
    struct sim_ctx *c = sim_reg_find(h, SIM_KIND_CTX);
    return c && c->active ? c : NULL;
}

SIM_API CUresult cuCtxEnablePeerAccess(CUcontext peerContext, unsigned int Flags)
{
    sim_lock();
    struct sim_ctx *cur = NULL, *peer = NULL;
    CUresult rc = sim_current_ctx(&cur);
    if (rc == CUDA_SUCCESS && Flags != 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS && !(peer = live_ctx(peerContext)))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS && peer->device == cur->device)
        rc = CUDA_ERROR_PEER_ACCESS_UNSUPPORTED;
    if (rc == CUDA_SUCCESS && peer_enabled(cur, peer->id))
        rc = CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED;
    if (rc == CUDA_SUCCESS && cur->npeers == SIM_MAX_PEERS)
        rc = CUDA_ERROR_TOO_MANY_PEERS;
    if (rc == CUDA_SUCCESS)
        cur->peers[cur->npeers++] = peer->id;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuCtxDisablePeerAccess(CUcontext peerContext)
{
    sim_lock();
    struct sim_ctx *cur = NULL, *peer = NULL;
    CUresult rc = sim_current_ctx(&cur);
    if (rc == CUDA_SUCCESS && !(peer = live_ctx(peerContext)))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS) {
        rc = CUDA_ERROR_PEER_ACCESS_NOT_ENABLED;
        for (unsigned int i = 0; i < cur->npeers; i++)
            if (cur->peers[i] == peer->id) {
                cur->peers[i] = cur->peers[--cur->npeers];
                rc = CUDA_SUCCESS;
                break;
            }
    }
    sim_unlock();
    return rc;
}

static CUresult copy_peer(CUdeviceptr dst, CUcontext dstCtx, CUdeviceptr src, CUcontext srcCtx, size_t n,
                          CUstream s, int async)
{
    sim_lock();
    CUresult rc = async ? sim_stream_check_op(s) : sim_current_ctx(NULL);
    if (rc == CUDA_SUCCESS && (!live_ctx(dstCtx) || !live_ctx(srcCtx)))
        rc = CUDA_ERROR_INVALID_CONTEXT;
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(src, n, SIM_PROT_R);
    if (rc == CUDA_SUCCESS)
        rc = sim_range_check(dst, n, SIM_PROT_W);
    if (rc == CUDA_SUCCESS && n)
        memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n); /* stream work runs at enqueue */
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemcpyPeer(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                              CUcontext srcContext, size_t ByteCount)
{
    return copy_peer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, NULL, 0);
}

SIM_API CUresult cuMemcpyPeerAsync(CUdeviceptr dstDevice, CUcontext dstContext, CUdeviceptr srcDevice,
                                   CUcontext srcContext, size_t ByteCount, CUstream hStream)
{
    return copy_peer(dstDevice, dstContext, srcDevice, srcContext, ByteCount, hStream, 1);
}

/* Whether a kernel running in `ctx` may touch segment `s` with `prot`. */
static int reachable(const struct sim_ctx *ctx, const struct sim_seg *s, int prot)
{
    switch (s->kind) {
    case SIM_SEG_HOST:
        return 1; /* pinned host memory is mapped for every device (unified addressing) */
    case SIM_SEG_VMM:
        return ctx->device >= 0 && ctx->device < SIM_MAX_DEVICES && (s->dprot[ctx->device] & prot) == prot;
    default: {
        if (s->device == ctx->device)
            return 1;
        const struct sim_ctx *owner = s->owner;
        if (!owner && s->module)
            owner = ((const struct sim_obj *)s->module)->ctx; /* a global belongs to its module's context */
        return owner && peer_enabled(ctx, owner->id);
    }
    }
}

CUresult sim_range_check_from(const struct sim_ctx *ctx, CUdeviceptr p, size_t n, int prot)
{
    CUresult rc = sim_range_check(p, n, prot);
    if (rc != CUDA_SUCCESS || !ctx || n == 0)
        return rc;
    uintptr_t cur = (uintptr_t)p, end = cur + n;
    while (cur < end) {
        const struct sim_seg *s = sim_seg_find(cur);
        if (!s || !reachable(ctx, s, prot))
            return CUDA_ERROR_INVALID_VALUE;
        cur = s->base + s->size;
    }
    return CUDA_SUCCESS;
}
