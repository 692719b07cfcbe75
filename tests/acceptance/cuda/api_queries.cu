// api_queries.cu - acceptance: driver queries without a home elsewhere. A library loaded from PTX enumerates its
// kernels (their names, and the same handles cuLibraryGetKernel gives); the device's LUID (a Linux driver has
// none); atomic capabilities over the host link (consistent with the host-native atomic attributes) and between a
// device and itself (refused: not a link); a CUDA array's plane (a single-plane format has none) and its memory
// requirements (only an array made for deferred mapping has them: whole units of a power-of-two alignment that
// hold its elements); a mipmapped array's memory requirements (the same rule over all its levels); the sparse
// layout of a sparse array (tile extents, no mip tail), of a sparse mipmapped array (the same tiles, a mip tail
// from the first level smaller than a tile) and the refusals for arrays that are not sparse and for a level of a
// mipmapped array; the one pointer attribute an application sets (SYNC_MEMOPS: read back, kept by data written
// into the memory, refused for other attributes and for the application's own VMM mapping); execution affinity
// (SM-count support, the primary context's SM limit: all of them); a decompression batch on a device without an
// engine (refused). Results the driver
// documents are printed by name; the rest are checked as relations.
// The PTX kernels carry the test kernels' names and parameter layouts, so the simulated device loads them too.
// acceptance: link=-lcuda
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <cuda.h>

#include "acceptance.h"
#include "acceptance_check.h"

static const char kPtx[] = R"(
.version 8.0
.target sm_90
.address_size 64

.visible .entry fg_scale(
	.param .u64 fg_scale_x,
	.param .f32 fg_scale_s,
	.param .u32 fg_scale_n
)
{
	ret;
}

.visible .entry fg_fill_u32(
	.param .u64 fg_fill_u32_p,
	.param .u32 fg_fill_u32_v,
	.param .u64 fg_fill_u32_n
)
{
	ret;
}
)";

static size_t level_bytes(const CUDA_ARRAY3D_DESCRIPTOR &d, unsigned levels)
{
    size_t sum = 0;
    for (unsigned l = 0; l < levels; l++)
        sum += std::max<size_t>(d.Width >> l, 1) * std::max<size_t>(d.Height >> l, 1) * sizeof(float);
    return sum;
}

// A mipmapped array's memory requirements: refused without deferred mapping, else whole aligned units that hold
// every level.
static void mipmap_requirements(CUDA_ARRAY3D_DESCRIPTOR d)
{
    const unsigned levels = 5;
    d.Flags = 0;
    CUmipmappedArray mip;
    CU_CHECK(cuMipmappedArrayCreate(&mip, &d, levels));
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    std::printf("memory requirements of an ordinary mipmapped array: %s\n",
                name_of(cuMipmappedArrayGetMemoryRequirements(&req, mip, 0)));
    std::printf("sparse properties of an ordinary mipmapped array: %s\n",
                name_of(cuMipmappedArrayGetSparseProperties(nullptr, mip)));
    CU_CHECK(cuMipmappedArrayDestroy(mip));
    int deferred = 0;
    CU_CHECK(cuDeviceGetAttribute(&deferred, CU_DEVICE_ATTRIBUTE_DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED, 0));
    if (!deferred)
        return;
    d.Flags = CUDA_ARRAY3D_DEFERRED_MAPPING;
    CU_CHECK(cuMipmappedArrayCreate(&mip, &d, levels));
    std::memset(&req, 0, sizeof req);
    CU_CHECK(cuMipmappedArrayGetMemoryRequirements(&req, mip, 0));
    bool pow2 = req.alignment && (req.alignment & (req.alignment - 1)) == 0;
    check("a deferred-mapping mipmapped array's requirements hold every level in whole aligned units",
          pow2 && req.size >= level_bytes(d, levels) && req.size % req.alignment == 0);
    std::printf("mipmapped memory requirements without an output: %s\n",
                name_of(cuMipmappedArrayGetMemoryRequirements(nullptr, mip, 0)));
    CU_CHECK(cuMipmappedArrayDestroy(mip));
}

// Sparse layouts: a plain sparse array has tile extents and no mip tail; a sparse mipmapped array has the same
// tiles and a tail from the first level smaller than a tile; arrays that are not sparse, and a level of a
// mipmapped array, are refused.
static void sparse_layouts()
{
    int sparse = 0;
    CU_CHECK(cuDeviceGetAttribute(&sparse, CU_DEVICE_ATTRIBUTE_SPARSE_CUDA_ARRAY_SUPPORTED, 0));
    if (!sparse) {
        std::printf("sparse arrays not supported\n");
        return;
    }
    CUDA_ARRAY3D_DESCRIPTOR d;
    std::memset(&d, 0, sizeof d);
    d.Width = 1024;
    d.Height = 512;
    d.Format = CU_AD_FORMAT_FLOAT;
    d.NumChannels = 1;
    CUarray plain;
    CU_CHECK(cuArray3DCreate(&plain, &d));
    CUDA_ARRAY_SPARSE_PROPERTIES sp;
    std::printf("sparse properties of an ordinary array: %s\n", name_of(cuArrayGetSparseProperties(&sp, plain)));
    CU_CHECK(cuArrayDestroy(plain));

    d.Flags = CUDA_ARRAY3D_SPARSE;
    CUarray arr;
    CU_CHECK(cuArray3DCreate(&arr, &d));
    std::memset(&sp, 0xff, sizeof sp);
    CU_CHECK(cuArrayGetSparseProperties(&sp, arr));
    std::printf("sparse array: mip tail first level %u size %llu flags %u\n", sp.miptailFirstLevel,
                sp.miptailSize, sp.flags);
    size_t tile = (size_t)sp.tileExtent.width * sp.tileExtent.height * sp.tileExtent.depth * sizeof(float);
    check("a sparse array's tile is a power of two of bytes, one deep in 2D",
          sp.tileExtent.width && sp.tileExtent.height && sp.tileExtent.depth == 1 && tile &&
              (tile & (tile - 1)) == 0);
    std::printf("sparse properties without an output: %s\n", name_of(cuArrayGetSparseProperties(nullptr, arr)));
    CU_CHECK(cuArrayDestroy(arr));

    const unsigned levels = 11; // 1024 x 512 down to 1 x 1
    CUmipmappedArray mip;
    CU_CHECK(cuMipmappedArrayCreate(&mip, &d, levels));
    CUDA_ARRAY_SPARSE_PROPERTIES mp;
    std::memset(&mp, 0xff, sizeof mp);
    CU_CHECK(cuMipmappedArrayGetSparseProperties(&mp, mip));
    unsigned first = 0; // the first level smaller than a tile in width or height
    while (first < levels && (d.Width >> first) >= mp.tileExtent.width && (d.Height >> first) >= mp.tileExtent.height)
        first++;
    check("a sparse mipmapped array has the array's tiles", mp.tileExtent.width == sp.tileExtent.width &&
                                                              mp.tileExtent.height == sp.tileExtent.height &&
                                                              mp.tileExtent.depth == sp.tileExtent.depth);
    check("its mip tail starts at the first level smaller than a tile and holds the levels from there",
          mp.miptailFirstLevel == first && mp.miptailSize >= level_bytes(d, levels) - level_bytes(d, first) &&
              mp.miptailSize < level_bytes(d, levels));
    CUarray level = nullptr;
    CU_CHECK(cuMipmappedArrayGetLevel(&level, mip, 0));
    std::printf("sparse properties of a mipmapped array's level: %s\n",
                name_of(cuArrayGetSparseProperties(&sp, level)));
    CU_CHECK(cuMipmappedArrayDestroy(mip));
}

// SYNC_MEMOPS set on device memory reads back, synchronous memsets and copies into it land, other attributes
// are refused, and so is memory mapped with the VMM API.
static void sync_memops()
{
    const size_t n = 1 << 20;
    CUdeviceptr p;
    CU_CHECK(cuMemAlloc(&p, n));
    unsigned int one = 1, zero = 0;
    int v = -1;
    CU_CHECK(cuPointerGetAttribute(&v, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, p));
    std::printf("sync memops of fresh memory: %d\n", v);
    CU_CHECK(cuPointerSetAttribute(&one, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, p));
    CU_CHECK(cuPointerGetAttribute(&v, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, p + 4096));
    std::printf("sync memops after setting it: %d\n", v);
    std::vector<unsigned char> host(8192, 7), back(8192);
    CU_CHECK(cuMemsetD8(p, 3, n));
    CU_CHECK(cuMemcpyHtoD(p + 4096, host.data(), 4096));
    CU_CHECK(cuMemcpyDtoH(back.data(), p, 8192));
    check("synchronous memset and copy into it land", back[0] == 3 && back[4095] == 3 && back[4096] == 7 &&
                                                         back[8191] == 7);
    std::printf("setting another attribute: %s\n",
                name_of(cuPointerSetAttribute(&one, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p)));
    CU_CHECK(cuPointerSetAttribute(&zero, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, p));
    CU_CHECK(cuPointerGetAttribute(&v, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, p));
    std::printf("sync memops after unsetting it: %d\n", v);
    CU_CHECK(cuMemFree(p));

    CUmemAllocationProp prop;
    std::memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    size_t g = 0;
    CU_CHECK(cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CUdeviceptr va;
    CUmemGenericAllocationHandle h;
    CU_CHECK(cuMemAddressReserve(&va, g, 0, 0, 0));
    CU_CHECK(cuMemCreate(&h, g, &prop, 0));
    CU_CHECK(cuMemMap(va, g, 0, h, 0));
    std::printf("sync memops on a VMM mapping: %s\n",
                name_of(cuPointerSetAttribute(&one, CU_POINTER_ATTRIBUTE_SYNC_MEMOPS, va)));
    CU_CHECK(cuMemUnmap(va, g));
    CU_CHECK(cuMemRelease(h));
    CU_CHECK(cuMemAddressFree(va, g));
}

// Execution affinity: whether the device makes SM-count contexts (only under MPS, per cuCtxCreate's docs) and the
// current context's SM limit, which without one of its own is every SM of the device.
static void exec_affinity()
{
    int supported = -1, sms = 0;
    CU_CHECK(cuDeviceGetExecAffinitySupport(&supported, CU_EXEC_AFFINITY_TYPE_SM_COUNT, 0));
    std::printf("SM-count affinity supported: %d\n", supported);
    std::printf("affinity support of an invalid type: %s\n",
                name_of(cuDeviceGetExecAffinitySupport(&supported, CU_EXEC_AFFINITY_TYPE_MAX, 0)));
    std::printf("affinity support of an invalid device: %s\n",
                name_of(cuDeviceGetExecAffinitySupport(&supported, CU_EXEC_AFFINITY_TYPE_SM_COUNT, 999)));
    CU_CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, 0));
    CUexecAffinityParam p;
    std::memset(&p, 0xff, sizeof p);
    CUresult r = cuCtxGetExecAffinity(&p, CU_EXEC_AFFINITY_TYPE_SM_COUNT);
    std::printf("the primary context's SM limit: %s\n", name_of(r));
    if (r == CUDA_SUCCESS)
        check("the primary context's SM limit is every SM of the device",
              p.type == CU_EXEC_AFFINITY_TYPE_SM_COUNT && p.param.smCount.val == (unsigned)sms);
    std::printf("context affinity without an output: %s\n",
                name_of(cuCtxGetExecAffinity(nullptr, CU_EXEC_AFFINITY_TYPE_SM_COUNT)));
}

// Hardware decompression on a device without an engine (no algorithm in its mask): a batch on cuMemAlloc memory
// is refused; the error and whether its index names the operation are printed.
static void decompression()
{
    int mask = -1;
    CU_CHECK(cuDeviceGetAttribute(&mask, CU_DEVICE_ATTRIBUTE_MEM_DECOMPRESS_ALGORITHM_MASK, 0));
    std::printf("decompression algorithms: %d\n", mask);
    if (mask != 0)
        return;
    CUdeviceptr src, dst, act;
    CU_CHECK(cuMemAlloc(&src, 4096));
    CU_CHECK(cuMemAlloc(&dst, 8192));
    CU_CHECK(cuMemAlloc(&act, 4));
    CUmemDecompressParams p;
    std::memset(&p, 0, sizeof p);
    p.srcNumBytes = 4096;
    p.dstNumBytes = 8192;
    p.src = (const void *)src;
    p.dst = (void *)dst;
    p.dstActBytes = (cuuint32_t *)act;
    p.algo = CU_MEM_DECOMPRESS_ALGORITHM_DEFLATE;
    size_t index = 12345;
    CUresult r = cuMemBatchDecompressAsync(&p, 1, 0, &index, nullptr);
    std::printf("decompression batch: %s, error index %s\n", name_of(r),
                r == CUDA_SUCCESS ? "-" : index == SIZE_MAX ? "general" : index == 0 ? "0" : "other");
    CU_CHECK(cuCtxSynchronize());
    CU_CHECK(cuMemFree(src));
    CU_CHECK(cuMemFree(dst));
    CU_CHECK(cuMemFree(act));
}

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));

    // ---- a library's kernels ----
    CUlibrary lib;
    CU_CHECK(cuLibraryLoadData(&lib, kPtx, nullptr, nullptr, 0, nullptr, nullptr, 0));
    unsigned int count = 0;
    CU_CHECK(cuLibraryGetKernelCount(&count, lib));
    std::vector<CUkernel> ks(count);
    CU_CHECK(cuLibraryEnumerateKernels(ks.data(), count, lib));
    std::vector<std::string> names;
    bool same = true;
    for (CUkernel k : ks) {
        const char *name = nullptr;
        CU_CHECK(cuKernelGetName(&name, k));
        names.push_back(name ? name : "");
        CUkernel again = nullptr;
        CU_CHECK(cuLibraryGetKernel(&again, lib, name));
        same = same && again == k;
    }
    std::sort(names.begin(), names.end());
    std::printf("library kernels %u:", count);
    for (auto &n : names)
        std::printf(" %s", n.c_str());
    std::printf("\n");
    check("enumerated kernels are the ones cuLibraryGetKernel names", count == 2 && same);
    CU_CHECK(cuLibraryUnload(lib));

    // ---- the device's identity and atomics ----
    char luid[8];
    unsigned int mask = 0;
    std::printf("device LUID: %s\n", name_of(cuDeviceGetLuid(luid, &mask, 0)));
    CUatomicOperation ops[3] = {CU_ATOMIC_OPERATION_INTEGER_ADD, CU_ATOMIC_OPERATION_CAS,
                                CU_ATOMIC_OPERATION_FLOAT_ADD};
    unsigned int caps[3] = {~0u, ~0u, ~0u};
    CU_CHECK(cuDeviceGetHostAtomicCapabilities(caps, ops, 3, 0));
    int native = -1, partial = -1;
    CU_CHECK(cuDeviceGetAttribute(&native, CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED, 0));
    CU_CHECK(cuDeviceGetAttribute(&partial, CU_DEVICE_ATTRIBUTE_ONLY_PARTIAL_HOST_NATIVE_ATOMIC_SUPPORTED, 0));
    bool none = caps[0] == 0 && caps[1] == 0 && caps[2] == 0;
    check("host atomic capabilities agree with the host-native atomic attributes",
          (native || partial) ? (native ? !none : true) : none);
    CUatomicOperation bad = CU_ATOMIC_OPERATION_MAX;
    std::printf("host atomic capabilities of an invalid operation: %s\n",
                name_of(cuDeviceGetHostAtomicCapabilities(caps, &bad, 1, 0)));
    std::printf("atomic capabilities between a device and itself: %s\n",
                name_of(cuDeviceGetP2PAtomicCapabilities(caps, ops, 3, 0, 0)));

    // ---- an array's plane and memory requirements ----
    CUDA_ARRAY3D_DESCRIPTOR d;
    std::memset(&d, 0, sizeof d);
    d.Width = 256;
    d.Height = 64;
    d.Format = CU_AD_FORMAT_FLOAT;
    d.NumChannels = 1;
    CUarray arr;
    CU_CHECK(cuArray3DCreate(&arr, &d));
    CUarray plane = nullptr;
    std::printf("plane 0 of a float array: %s\n", name_of(cuArrayGetPlane(&plane, arr, 0)));
    CUDA_ARRAY_MEMORY_REQUIREMENTS req;
    std::printf("memory requirements of an ordinary array: %s\n", name_of(cuArrayGetMemoryRequirements(&req, arr, 0)));
    CU_CHECK(cuArrayDestroy(arr));
    int deferred = 0;
    CU_CHECK(cuDeviceGetAttribute(&deferred, CU_DEVICE_ATTRIBUTE_DEFERRED_MAPPING_CUDA_ARRAY_SUPPORTED, 0));
    if (deferred) {
        d.Flags = CUDA_ARRAY3D_DEFERRED_MAPPING;
        CU_CHECK(cuArray3DCreate(&arr, &d));
        std::memset(&req, 0, sizeof req);
        CU_CHECK(cuArrayGetMemoryRequirements(&req, arr, 0));
        bool pow2 = req.alignment && (req.alignment & (req.alignment - 1)) == 0;
        check("a deferred-mapping array's requirements hold its elements in whole aligned units",
              pow2 && req.size >= d.Width * d.Height * sizeof(float) && req.size % req.alignment == 0);
        CU_CHECK(cuArrayDestroy(arr));
    } else {
        std::printf("deferred-mapping arrays not supported\n");
    }
    mipmap_requirements(d);
    sparse_layouts();
    sync_memops();
    exec_affinity();
    decompression();
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
