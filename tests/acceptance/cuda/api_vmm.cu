// api_vmm.cu - acceptance: the application's own virtual memory management (cuMemGetAllocationGranularity,
// cuMemAddressReserve, cuMemCreate, cuMemMap, cuMemSetAccess, cuMemGetAccess, cuMemRetainAllocationHandle,
// cuMemGetAllocationPropertiesFromHandle, cuMemUnmap, cuMemRelease, cuMemAddressFree), the occupancy helper
// that calls back into the program (cuOccupancyMaxPotentialBlockSize[WithFlags] with a block-size callback, and
// the runtime's template on top of it), and profiler start/stop. Two physical allocations are mapped side by
// side in one reservation, given access in one call across both, filled by one kernel across the seam and
// read back with driver and runtime copies. Every value is checked against the host (exact: integers).
// The kernels share names and parameter layouts with tests/c/kernels/test_kernels.cu, so the simulated device
// runs them too.
// acceptance: link=-lcuda
#include <cstdio>
#include <cstring>
#include <vector>

#include <cuda.h>
#include <cuda_profiler_api.h>

#include "acceptance.h"
#include "acceptance_check.h"
#include "test_kernels.cuh"

static size_t smem_per_block(int block) { return (size_t)block * 8; }

static void occupancy(CUdevice dev)
{
    CUfunction f;
    CHECK(cudaGetFuncBySymbol((cudaFunction_t *)&f, (const void *)fg_vadd));
    int grid = 0, block = 0;
    CU_CHECK(cuOccupancyMaxPotentialBlockSize(&grid, &block, f, nullptr, 0, 0));
    std::printf("occupancy plain: grid %d block %d\n", grid, block);
    CU_CHECK(cuOccupancyMaxPotentialBlockSize(&grid, &block, f, smem_per_block, 0, 0));
    std::printf("occupancy callback: grid %d block %d\n", grid, block);
    CU_CHECK(cuOccupancyMaxPotentialBlockSize(&grid, &block, f, nullptr, 16384, 200));
    std::printf("occupancy fixed smem, limit 200: grid %d block %d\n", grid, block);
    CU_CHECK(cuOccupancyMaxPotentialBlockSizeWithFlags(&grid, &block, f, smem_per_block, 0, 0,
                                                       CU_OCCUPANCY_DISABLE_CACHING_OVERRIDE));
    std::printf("occupancy with flags: grid %d block %d\n", grid, block);
    int rgrid = 0, rblock = 0;
    CHECK(cudaOccupancyMaxPotentialBlockSizeVariableSMem(&rgrid, &rblock, fg_vadd, smem_per_block));
    std::printf("runtime template: grid %d block %d\n", rgrid, rblock);
    int sms = 0, per_sm = 0;
    CU_CHECK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
    CU_CHECK(cuOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, f, block, smem_per_block(block)));
    check("occupancy grid is blocks per SM times SMs", grid == per_sm * sms);
    CUresult bad = cuOccupancyMaxPotentialBlockSize(nullptr, &block, f, nullptr, 0, 0);
    std::printf("occupancy without minGridSize: %s\n", bad == CUDA_ERROR_INVALID_VALUE ? "invalid value" : "other");
}

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr)); // the primary context, current on this thread for the driver calls
    CUdevice dev;
    CU_CHECK(cuCtxGetDevice(&dev));
    CHECK(cudaProfilerStart());

    CUmemAllocationProp prop;
    std::memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    size_t gran = 0, rec = 0;
    CU_CHECK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    CU_CHECK(cuMemGetAllocationGranularity(&rec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
    std::printf("granularity minimum %zu, recommended is a multiple: %s\n", gran, rec % gran == 0 ? "yes" : "no");

    const size_t half = 2 * gran, total = 2 * half;
    CUdeviceptr va = 0;
    CU_CHECK(cuMemAddressReserve(&va, total, 0, 0, 0));
    check("reservation aligned to the granularity", va % gran == 0);
    CUmemGenericAllocationHandle h1, h2;
    CU_CHECK(cuMemCreate(&h1, half, &prop, 0));
    CU_CHECK(cuMemCreate(&h2, half, &prop, 0));
    CU_CHECK(cuMemMap(va, half, 0, h1, 0));
    CU_CHECK(cuMemMap(va + half, half, 0, h2, 0));
    CU_CHECK(cuMemRelease(h1)); // the mapping keeps the memory
    CUmemAccessDesc acc;
    std::memset(&acc, 0, sizeof acc);
    acc.location = prop.location;
    acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CU_CHECK(cuMemSetAccess(va, total, &acc, 1)); // one call across both mappings
    unsigned long long flags = 0;
    CU_CHECK(cuMemGetAccess(&flags, &prop.location, va + half + 4096));
    std::printf("access after set: %s\n", flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE ? "read-write" : "other");

    // One kernel fills both allocations across the seam; the host checks every word.
    const size_t words = total / 4;
    fg_fill_u32<<<64, 256>>>((unsigned int *)va, 0xC0FFEE11u, words);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::vector<unsigned int> host(words);
    CU_CHECK(cuMemcpyDtoH(host.data(), va, total));
    size_t bad = 0;
    for (size_t i = 0; i < words; i++)
        bad += host[i] != 0xC0FFEE11u;
    check("kernel fill across two mapped handles", bad == 0);

    // Runtime copies see the mapped range as device memory (cudaMemcpyDefault).
    std::vector<float> a(1024), b(1024), c(1024);
    for (int i = 0; i < 1024; i++) {
        a[i] = (float)i;
        b[i] = (float)(3 * i);
    }
    float *da = (float *)(va + half - 4096), *db = da + 1024, *dc = da + 2048; // straddles the seam
    CHECK(cudaMemcpy(da, a.data(), 4096, cudaMemcpyDefault));
    CHECK(cudaMemcpy(db, b.data(), 4096, cudaMemcpyHostToDevice));
    fg_vadd<<<4, 256>>>(da, db, dc, 1024);
    CHECK(cudaGetLastError());
    CHECK(cudaMemcpy(c.data(), dc, 4096, cudaMemcpyDefault));
    bool sums = true;
    for (int i = 0; i < 1024; i++)
        sums = sums && c[i] == (float)(4 * i);
    check("vector add in mapped memory", sums);
    CHECK(cudaMemset(da, 0, 4096));
    CHECK(cudaMemcpy(a.data(), da, 4096, cudaMemcpyDeviceToHost));
    check("memset in mapped memory", a[0] == 0.0f && a[1023] == 0.0f);

    CUmemGenericAllocationHandle r1 = 0, r2 = 0;
    CU_CHECK(cuMemRetainAllocationHandle(&r2, (void *)(va + half + 100)));
    CU_CHECK(cuMemRetainAllocationHandle(&r1, (void *)(va + 8)));
    check("retained handle is the mapped one", r2 == h2);
    CUmemAllocationProp got;
    std::memset(&got, 0, sizeof got);
    CU_CHECK(cuMemGetAllocationPropertiesFromHandle(&got, r1));
    std::printf("properties: type %d location type %d id %d\n", (int)got.type, (int)got.location.type,
                got.location.id);
    CU_CHECK(cuMemRelease(r1));
    CU_CHECK(cuMemRelease(r2));

    CU_CHECK(cuMemUnmap(va, total));
    CU_CHECK(cuMemRelease(h2));
    CU_CHECK(cuMemAddressFree(va, total));

    occupancy(dev);
    CHECK(cudaProfilerStop());
    CHECK(cudaDeviceSynchronize());
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
