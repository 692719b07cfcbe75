// api_copies.cu - acceptance: batched and 3D peer copies through the driver API. cuMemcpyBatchAsync with one
// batch mixing host-to-device (pageable and pinned sources), device-to-device and device-to-host (pageable
// destination) copies at offsets, under two attribute ranges; a batch without a source access order refused.
// cuMemcpy3DBatchAsync between pitched host memory, a 2D float array at an offset, and pitched device memory (in
// elements of the array), and a byte-wise 3D copy between device layouts with their own row lengths and layer
// heights; the batches that read what an earlier batch wrote come after it (copies within a batch are unordered).
// cuMemcpy3DPeer and cuMemcpy3DPeerAsync within the one context. Every byte is checked against the host, gaps
// included.
// acceptance: link=-lcuda
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>

#include "acceptance.h"
#include "acceptance_check.h"

static const size_t N = 4096; // 32-bit words per buffer of the 1D batch
static const size_t B = N * sizeof(uint32_t);

static CUmemcpy3DOperand ptr_operand(CUdeviceptr p, size_t row_length, size_t layer_height)
{
    CUmemcpy3DOperand o;
    std::memset(&o, 0, sizeof o);
    o.type = CU_MEMCPY_OPERAND_TYPE_POINTER;
    o.op.ptr.ptr = p;
    o.op.ptr.rowLength = row_length;
    o.op.ptr.layerHeight = layer_height;
    return o;
}

static CUmemcpy3DOperand array_operand(CUarray a, size_t x, size_t y)
{
    CUmemcpy3DOperand o;
    std::memset(&o, 0, sizeof o);
    o.type = CU_MEMCPY_OPERAND_TYPE_ARRAY;
    o.op.array.array = a;
    o.op.array.offset.x = x;
    o.op.array.offset.y = y;
    return o;
}

static CUDA_MEMCPY3D_BATCH_OP batch_op(CUmemcpy3DOperand src, CUmemcpy3DOperand dst, size_t w, size_t h, size_t d)
{
    CUDA_MEMCPY3D_BATCH_OP op;
    std::memset(&op, 0, sizeof op);
    op.src = src;
    op.dst = dst;
    op.extent.width = w;
    op.extent.height = h;
    op.extent.depth = d;
    op.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
    return op;
}

static CUdeviceptr host_ptr(const void *p) { return (CUdeviceptr)(uintptr_t)p; }

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));
    CUcontext ctx;
    CU_CHECK(cuCtxGetCurrent(&ctx));
    CUstream s;
    CU_CHECK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));

    // ---- cuMemcpyBatchAsync: four kinds in one batch ----
    CUdeviceptr da, dc, db, dd, de;
    for (CUdeviceptr *p : {&da, &db, &dc, &dd, &de})
        CU_CHECK(cuMemAlloc(p, B));
    std::vector<uint32_t> ha(N), hd(N), hout(N, 0), back(N);
    uint32_t *pinned;
    CU_CHECK(cuMemAllocHost((void **)&pinned, B));
    for (size_t i = 0; i < N; i++) {
        ha[i] = (uint32_t)(i * 3 + 1);
        hd[i] = (uint32_t)(i ^ 0xabcdu);
        pinned[i] = (uint32_t)(0x10000 + i);
    }
    CU_CHECK(cuMemcpyHtoD(dd, hd.data(), B));
    CU_CHECK(cuMemsetD32(db, 0x55aa55aau, N));
    for (CUdeviceptr p : {da, dc, de})
        CU_CHECK(cuMemsetD32(p, 0, N));
    // 0: half of ha into da at word N/4; 1: db to dc; 2: dd from word 16 into hout; 3: pinned into de
    CUdeviceptr dsts[4] = {da + B / 4, dc, host_ptr(hout.data()), de};
    CUdeviceptr srcs[4] = {host_ptr(ha.data()), db, dd + 16 * sizeof(uint32_t), host_ptr(pinned)};
    size_t sizes[4] = {B / 2, B, B - 16 * sizeof(uint32_t), B};
    CUmemcpyAttributes attrs[2];
    std::memset(attrs, 0, sizeof attrs);
    attrs[0].srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM; // copies 0 and 1
    attrs[1].srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_ANY;    // copies 2 and 3
    size_t attr_idx[2] = {0, 2};
    CU_CHECK(cuMemcpyBatchAsync(dsts, srcs, sizes, 4, attrs, attr_idx, 2, s));
    CU_CHECK(cuStreamSynchronize(s));
    CU_CHECK(cuMemcpyDtoH(back.data(), da, B));
    bool ok = true;
    for (size_t i = 0; i < N; i++)
        ok = ok && back[i] == (i >= N / 4 && i < N / 4 + N / 2 ? ha[i - N / 4] : 0u);
    check("batch: pageable host to device at an offset", ok);
    CU_CHECK(cuMemcpyDtoH(back.data(), dc, B));
    ok = true;
    for (size_t i = 0; i < N; i++)
        ok = ok && back[i] == 0x55aa55aau;
    check("batch: device to device", ok);
    ok = true;
    for (size_t i = 0; i < N; i++)
        ok = ok && hout[i] == (i < N - 16 ? hd[i + 16] : 0u);
    check("batch: device to pageable host from an offset", ok);
    CU_CHECK(cuMemcpyDtoH(back.data(), de, B));
    check("batch: pinned host to device", std::memcmp(back.data(), pinned, B) == 0);
    CUmemcpyAttributes no_order;
    std::memset(&no_order, 0, sizeof no_order);
    size_t zero_idx = 0;
    std::printf("batch without a source access order: %s\n",
                name_of(cuMemcpyBatchAsync(dsts, srcs, sizes, 1, &no_order, &zero_idx, 1, s)));

    // ---- cuMemcpy3DBatchAsync: host, array and device operands ----
    const size_t AW = 64, AH = 16;        // the array: AW x AH floats
    const size_t X0 = 8, Y0 = 2;          // where the copy lands in it
    const size_t CW = 48, CH = 12;        // the copied extent, in floats
    const size_t HROW = 80, DROW = 50;    // row lengths (floats) of the host source and the device destination
    CUDA_ARRAY3D_DESCRIPTOR ad;
    std::memset(&ad, 0, sizeof ad);
    ad.Width = AW;
    ad.Height = AH;
    ad.Format = CU_AD_FORMAT_FLOAT;
    ad.NumChannels = 1;
    CUarray arr;
    CU_CHECK(cuArray3DCreate(&arr, &ad));
    std::vector<float> zeros(AW * AH, 0.0f), hsrc(HROW * CH);
    CUDA_MEMCPY3D clear;
    std::memset(&clear, 0, sizeof clear);
    clear.srcMemoryType = CU_MEMORYTYPE_HOST;
    clear.srcHost = zeros.data();
    clear.dstMemoryType = CU_MEMORYTYPE_ARRAY;
    clear.dstArray = arr;
    clear.WidthInBytes = AW * sizeof(float);
    clear.Height = AH;
    clear.Depth = 1;
    CU_CHECK(cuMemcpy3D(&clear));
    for (size_t y = 0; y < CH; y++)
        for (size_t x = 0; x < HROW; x++)
            hsrc[y * HROW + x] = x < CW ? (float)(y * 1000 + x) : -1.0f; // the gap past CW must not travel
    // Bytes: a 32 x 4 x 3 block, packed in d3, into d4 whose rows are 40 bytes and layers 6 rows.
    const size_t BW = 32, BH = 4, BD = 3, BROW = 40, BLAYER = 6;
    CUdeviceptr d3, d4, dpl;
    CU_CHECK(cuMemAlloc(&d3, BW * BH * BD));
    CU_CHECK(cuMemAlloc(&d4, BROW * BLAYER * BD));
    CU_CHECK(cuMemAlloc(&dpl, DROW * CH * sizeof(float)));
    std::vector<uint8_t> h3(BW * BH * BD);
    for (size_t i = 0; i < h3.size(); i++)
        h3[i] = (uint8_t)(i * 7 + 5);
    CU_CHECK(cuMemcpyHtoD(d3, h3.data(), h3.size()));
    CU_CHECK(cuMemsetD8(d4, 0, BROW * BLAYER * BD));
    CU_CHECK(cuMemsetD8(dpl, 0, DROW * CH * sizeof(float)));
    CUDA_MEMCPY3D_BATCH_OP first[2] = {
        batch_op(ptr_operand(host_ptr(hsrc.data()), HROW, 0), array_operand(arr, X0, Y0), CW, CH, 1),
        batch_op(ptr_operand(d3, 0, 0), ptr_operand(d4, BROW, BLAYER), BW, BH, BD),
    };
    CU_CHECK(cuMemcpy3DBatchAsync(2, first, 0, s));
    CU_CHECK(cuStreamSynchronize(s));
    std::vector<float> whole(AW * AH, -2.0f);
    std::vector<uint8_t> h4(BROW * BLAYER * BD, 0xff);
    CUDA_MEMCPY3D_BATCH_OP second[3] = {
        batch_op(array_operand(arr, X0, Y0), ptr_operand(dpl, DROW, 0), CW, CH, 1),
        batch_op(array_operand(arr, 0, 0), ptr_operand(host_ptr(whole.data()), 0, 0), AW, AH, 1),
        batch_op(ptr_operand(d4, 0, 0), ptr_operand(host_ptr(h4.data()), 0, 0), BROW, BLAYER, BD),
    };
    CU_CHECK(cuMemcpy3DBatchAsync(3, second, 0, s));
    CU_CHECK(cuStreamSynchronize(s));
    ok = true;
    for (size_t y = 0; y < AH; y++)
        for (size_t x = 0; x < AW; x++) {
            bool in = x >= X0 && x < X0 + CW && y >= Y0 && y < Y0 + CH;
            ok = ok && whole[y * AW + x] == (in ? (float)((y - Y0) * 1000 + (x - X0)) : 0.0f);
        }
    check("3D batch: pitched host rows into an array at an offset, and the array back", ok);
    std::vector<float> pl(DROW * CH);
    CU_CHECK(cuMemcpyDtoH(pl.data(), dpl, pl.size() * sizeof(float)));
    ok = true;
    for (size_t y = 0; y < CH; y++)
        for (size_t x = 0; x < DROW; x++)
            ok = ok && pl[y * DROW + x] == (x < CW ? (float)(y * 1000 + x) : 0.0f);
    check("3D batch: array region into pitched device memory", ok);
    ok = true;
    for (size_t z = 0; z < BD; z++)
        for (size_t y = 0; y < BLAYER; y++)
            for (size_t x = 0; x < BROW; x++) {
                bool in = x < BW && y < BH;
                ok = ok && h4[(z * BLAYER + y) * BROW + x] == (in ? h3[(z * BH + y) * BW + x] : 0);
            }
    check("3D batch: device bytes into row lengths and layer heights of their own", ok);

    // ---- cuMemcpy3DPeer[Async] within the one context ----
    CUdeviceptr d5;
    CU_CHECK(cuMemAlloc(&d5, BROW * BLAYER * BD));
    CU_CHECK(cuMemsetD8(d5, 0x11, BROW * BLAYER * BD));
    CUDA_MEMCPY3D_PEER p;
    std::memset(&p, 0, sizeof p);
    p.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    p.srcDevice = d3;
    p.srcContext = ctx;
    p.srcPitch = BW;
    p.srcHeight = BH;
    p.dstMemoryType = CU_MEMORYTYPE_DEVICE;
    p.dstDevice = d5;
    p.dstContext = ctx;
    p.dstXInBytes = 4;
    p.dstY = 1;
    p.dstPitch = BROW;
    p.dstHeight = BLAYER;
    p.WidthInBytes = BW;
    p.Height = BH;
    p.Depth = BD;
    CU_CHECK(cuMemcpy3DPeer(&p));
    std::vector<uint8_t> h5(BROW * BLAYER * BD, 0);
    CUDA_MEMCPY3D_PEER q;
    std::memset(&q, 0, sizeof q);
    q.srcMemoryType = CU_MEMORYTYPE_DEVICE;
    q.srcDevice = d5;
    q.srcContext = ctx;
    q.dstMemoryType = CU_MEMORYTYPE_HOST;
    q.dstHost = h5.data();
    q.dstContext = ctx;
    q.WidthInBytes = BROW;
    q.Height = BLAYER;
    q.Depth = BD;
    CU_CHECK(cuMemcpy3DPeerAsync(&q, s));
    CU_CHECK(cuStreamSynchronize(s));
    ok = true;
    for (size_t z = 0; z < BD; z++)
        for (size_t y = 0; y < BLAYER; y++)
            for (size_t x = 0; x < BROW; x++) {
                bool in = x >= 4 && x < 4 + BW && y >= 1 && y < 1 + BH;
                ok = ok && h5[(z * BLAYER + y) * BROW + x] == (in ? h3[(z * BH + y - 1) * BW + x - 4] : 0x11);
            }
    check("3D peer copies within one context", ok);

    CU_CHECK(cuArrayDestroy(arr));
    for (CUdeviceptr ptr : {da, db, dc, dd, de, d3, d4, d5, dpl})
        CU_CHECK(cuMemFree(ptr));
    CU_CHECK(cuMemFreeHost(pinned));
    CU_CHECK(cuStreamDestroy(s));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
