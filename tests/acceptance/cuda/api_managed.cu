// api_managed.cu - acceptance: managed memory (cudaMallocManaged with host writes before and host reads after
// kernels, partial host updates, copies and memsets into and out of it, prefetch, advice and the range
// attributes they set, the batched prefetch and discards of CUDA 13 with the arguments the driver refuses, stream
// attachment to the host and back, pointer attributes, odd sizes) and mapped host
// memory (cudaHostAlloc(Mapped) and cudaHostRegister(Mapped) with cudaHostGetDevicePointer, written by kernels
// and read by the host after synchronising). It follows CUDA's rules for devices without concurrent managed
// access (no host access while kernels run), which every device allows. Checked exactly against the host
// (the kernels compute x*2, x+y: exact in float for these integers). Kernels are named and laid out as
// tests/c/kernels/test_kernels.cu, so the simulated device runs them too.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "acceptance.h"
#include "acceptance_check.h"
#include "test_kernels.cuh"

static const int N = 1 << 20;
static int blocks(int n) { return (n + 255) / 256; }

// A deliberate error's name, cleared so that later checks of cudaGetLastError do not see it.
static const char *refused(cudaError_t e)
{
    cudaGetLastError();
    return cudaGetErrorName(e);
}

// The batched forms (CUDA 13): one prefetch of two ranges to two places, a discard whose range is written again
// before it is read, a discard and prefetch before a kernel overwrites the range, and the arguments the driver
// refuses. a, b and c hold N floats of managed memory (c's values are left as they are), dev N floats of device
// memory.
static void batched(float *a, float *b, float *c, float *dev, cudaStream_t s)
{
    const size_t bytes = N * sizeof(float);
    cudaMemLocation dev0 = {cudaMemLocationTypeDevice, 0}, host = {cudaMemLocationTypeHost, 0};
    void *ptrs[2] = {a, c};
    size_t sizes[2] = {bytes, bytes};
    cudaMemLocation locs[2] = {dev0, host};
    size_t idxs[2] = {0, 1};
    a[1] = 7.0f; // a host write the prefetch to the device must carry
    CHECK(cudaMemPrefetchBatchAsync(ptrs, sizes, 2, locs, idxs, 2, 0, s));
    fg_scale<<<blocks(N), 256, 0, s>>>(a, 2.0f, N);
    CHECK(cudaStreamSynchronize(s));
    int la = -5, lc = -5;
    CHECK(cudaMemRangeGetAttribute(&la, sizeof la, cudaMemRangeAttributeLastPrefetchLocation, a, bytes));
    CHECK(cudaMemRangeGetAttribute(&lc, sizeof lc, cudaMemRangeAttributeLastPrefetchLocation, c, bytes));
    std::printf("batched prefetch last locations: %d %d\n", la, lc);
    check("batched prefetch then kernel", a[1] == 14.0f);

    // Discarded, then written by the host before anything reads it: the written values are what the kernel sees.
    void *tail[1] = {a + N / 2};
    size_t tail_bytes[1] = {bytes / 2};
    CHECK(cudaMemDiscardBatchAsync(tail, tail_bytes, 1, 0, s));
    CHECK(cudaStreamSynchronize(s));
    for (int i = N / 2; i < N; i++)
        a[i] = 1.0f;
    fg_scale<<<blocks(N), 256, 0, s>>>(a, 3.0f, N);
    CHECK(cudaStreamSynchronize(s));
    bool ok = a[1] == 42.0f;
    for (int i = N / 2; i < N; i++)
        ok = ok && a[i] == 3.0f;
    check("discarded range written again before it is read", ok);

    // Discarded and prefetched to the device, then overwritten there by a kernel.
    unsigned int *u = (unsigned int *)(void *)b;
    void *head[1] = {u};
    size_t head_bytes[1] = {4096 * sizeof(unsigned int)};
    size_t idx0[1] = {0};
    CHECK(cudaMemDiscardAndPrefetchBatchAsync(head, head_bytes, 1, &dev0, idx0, 1, 0, s));
    fg_fill_u32<<<16, 256, 0, s>>>(u, 0x5151u, 4096);
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaMemRangeGetAttribute(&lc, sizeof lc, cudaMemRangeAttributeLastPrefetchLocation, u, head_bytes[0]));
    ok = lc == 0;
    for (int i = 0; i < 4096; i++)
        ok = ok && u[i] == 0x5151u;
    check("discarded and prefetched range overwritten by a kernel", ok);

    size_t bad_idxs[2] = {1, 0};
    void *not_managed[1] = {dev};
    std::printf("batched prefetch with flags: %s\n",
                refused(cudaMemPrefetchBatchAsync(ptrs, sizes, 2, locs, idxs, 2, 1, s)));
    std::printf("batched prefetch not starting at index 0: %s\n",
                refused(cudaMemPrefetchBatchAsync(ptrs, sizes, 2, locs, bad_idxs, 2, 0, s)));
    std::printf("batched prefetch of device memory: %s\n",
                refused(cudaMemPrefetchBatchAsync(not_managed, sizes, 1, locs, idx0, 1, 0, s)));
    std::printf("batched discard of device memory: %s\n",
                refused(cudaMemDiscardBatchAsync(not_managed, sizes, 1, 0, s)));
    std::printf("batched discard past the allocation: %s\n",
                refused(cudaMemDiscardBatchAsync(tail, sizes, 1, 0, s)));
    std::printf("batched discard on the legacy stream: %s\n",
                refused(cudaMemDiscardBatchAsync(ptrs, sizes, 2, 0, cudaStreamLegacy)));
}

static void managed()
{
    float *a, *b, *c;
    CHECK(cudaMallocManaged(&a, N * sizeof(float)));
    CHECK(cudaMallocManaged(&b, N * sizeof(float)));
    CHECK(cudaMallocManaged(&c, N * sizeof(float), cudaMemAttachGlobal));
    for (int i = 0; i < N; i++) {
        a[i] = (float)i;
        b[i] = (float)(2 * i);
    }
    fg_vadd<<<blocks(N), 256>>>(a, b, c, N);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    bool ok = true;
    for (int i = 0; i < N; i++)
        ok = ok && c[i] == (float)(3 * i);
    check("host writes, kernel, host reads", ok);

    // A few host writes into memory the device wrote: only they change, the rest stays the device's.
    c[7] = -1.0f;
    c[N - 1] = -2.0f;
    fg_scale<<<blocks(N), 256>>>(c, 2.0f, N);
    CHECK(cudaDeviceSynchronize());
    ok = c[7] == -2.0f && c[N - 1] == -4.0f;
    for (int i = 0; i < N; i++)
        if (i != 7 && i != N - 1)
            ok = ok && c[i] == (float)(6 * i);
    check("partial host update between kernels", ok);

    // Copies with managed memory on either side, and a memset.
    float *dev, *host = (float *)std::malloc(N * sizeof(float));
    CHECK(cudaMalloc(&dev, N * sizeof(float)));
    a[3] = 33.0f; // a host write the copy must see
    CHECK(cudaMemcpy(dev, a, N * sizeof(float), cudaMemcpyDefault));
    CHECK(cudaMemcpy(host, dev, N * sizeof(float), cudaMemcpyDeviceToHost));
    check("managed to device copy sees host writes", host[3] == 33.0f && host[4] == 4.0f && host[N - 1] == (float)(N - 1));
    for (int i = 0; i < N; i++)
        host[i] = (float)(N - i);
    CHECK(cudaMemcpy(b, host, N * sizeof(float), cudaMemcpyHostToDevice));
    check("host to managed copy", b[0] == (float)N && b[N - 1] == 1.0f);
    CHECK(cudaMemcpy(host, c, N * sizeof(float), cudaMemcpyDeviceToHost));
    check("managed to host copy", host[7] == -2.0f && host[8] == 48.0f);
    CHECK(cudaMemset(b, 0, 4096 * sizeof(float)));
    CHECK(cudaDeviceSynchronize());
    check("memset into managed", b[0] == 0.0f && b[4095] == 0.0f && b[4096] == (float)(N - 4096));

    // Prefetch, advice and the attributes they set.
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cudaMemLocation dev0 = {cudaMemLocationTypeDevice, 0};
    a[0] = 5.0f;
    CHECK(cudaMemPrefetchAsync(a, N * sizeof(float), dev0, 0, s));
    fg_scale<<<blocks(N), 256, 0, s>>>(a, 2.0f, N);
    CHECK(cudaStreamSynchronize(s));
    check("prefetch then kernel on a stream", a[0] == 10.0f && a[3] == 66.0f && a[N - 1] == (float)(2 * (N - 1)));
    batched(a, b, c, dev, s);
    CHECK(cudaMemAdvise(a, N * sizeof(float), cudaMemAdviseSetReadMostly, dev0));
    CHECK(cudaMemAdvise(a, N * sizeof(float), cudaMemAdviseSetPreferredLocation, dev0));
    int v = -5;
    CHECK(cudaMemRangeGetAttribute(&v, sizeof v, cudaMemRangeAttributeReadMostly, a, N * sizeof(float)));
    std::printf("read mostly: %d\n", v);
    CHECK(cudaMemRangeGetAttribute(&v, sizeof v, cudaMemRangeAttributePreferredLocation, a, N * sizeof(float)));
    std::printf("preferred location: %d\n", v);
    CHECK(cudaMemRangeGetAttribute(&v, sizeof v, cudaMemRangeAttributeLastPrefetchLocation, a, N * sizeof(float)));
    std::printf("last prefetch location: %d\n", v);
    CHECK(cudaMemAdvise(a, N * sizeof(float), cudaMemAdviseUnsetReadMostly, dev0));
    CHECK(cudaMemRangeGetAttribute(&v, sizeof v, cudaMemRangeAttributeReadMostly, a, N * sizeof(float)));
    std::printf("read mostly after unset: %d\n", v);

    // Attached to the host: the host may use it while the device works on other memory.
    unsigned int *u;
    const int odd = 1000; // not a page multiple
    CHECK(cudaMallocManaged(&u, odd * sizeof(unsigned int)));
    CHECK(cudaStreamAttachMemAsync(s, u, 0, cudaMemAttachHost));
    CHECK(cudaStreamSynchronize(s));
    fg_scale<<<blocks(N), 256, 0, s>>>(c, 0.5f, N);
    for (int i = 0; i < odd; i++)
        u[i] = (unsigned)i;
    CHECK(cudaStreamSynchronize(s));
    CHECK(cudaStreamAttachMemAsync(s, u, 0, cudaMemAttachGlobal));
    fg_fill_u32<<<2, 128, 0, s>>>(u, 0xABCDu, odd / 2);
    CHECK(cudaStreamSynchronize(s));
    ok = true;
    for (int i = 0; i < odd; i++)
        ok = ok && u[i] == (i < odd / 2 ? 0xABCDu : (unsigned)i);
    check("attached to the host, then global again", ok && c[8] == 24.0f);

    cudaPointerAttributes pa;
    CHECK(cudaPointerGetAttributes(&pa, a + 10));
    std::printf("managed pointer type %d, device %d, host pointer %s\n", (int)pa.type, pa.device,
                pa.hostPointer == (void *)(a + 10) ? "same" : "other");
    CHECK(cudaPointerGetAttributes(&pa, dev));
    std::printf("device pointer type %d\n", (int)pa.type);

    CHECK(cudaStreamDestroy(s));
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
    CHECK(cudaFree(c));
    CHECK(cudaFree(u));
    CHECK(cudaFree(dev));
    std::free(host);
}

static void mapped()
{
    const int n = 1 << 16;
    float *h, *d;
    CHECK(cudaHostAlloc(&h, n * sizeof(float), cudaHostAllocMapped));
    for (int i = 0; i < n; i++)
        h[i] = (float)i;
    CHECK(cudaHostGetDevicePointer(&d, h, 0));
    fg_scale<<<blocks(n), 256>>>(d, 3.0f, n);
    CHECK(cudaDeviceSynchronize());
    bool ok = true;
    for (int i = 0; i < n; i++)
        ok = ok && h[i] == (float)(3 * i);
    check("mapped pinned memory written by a kernel", ok);
    h[1] = 7.0f;
    fg_scale<<<blocks(n), 256>>>(d, 2.0f, n);
    CHECK(cudaDeviceSynchronize());
    check("host write to mapped memory reaches the kernel", h[1] == 14.0f && h[2] == 12.0f);
    float *dev;
    CHECK(cudaMalloc(&dev, n * sizeof(float)));
    CHECK(cudaMemcpyAsync(dev, h, n * sizeof(float), cudaMemcpyHostToDevice, 0));
    CHECK(cudaMemsetAsync(dev, 0, 16, 0));
    CHECK(cudaMemcpyAsync(h, dev, n * sizeof(float), cudaMemcpyDeviceToHost, 0));
    CHECK(cudaDeviceSynchronize());
    check("async copies with mapped pinned memory", h[0] == 0.0f && h[3] == 0.0f && h[4] == 24.0f);
    CHECK(cudaFreeHost(h));

    const size_t bytes = 1 << 20;
    void *raw = nullptr;
    if (posix_memalign(&raw, 4096, bytes) != 0)
        ACC_FAIL("posix_memalign", __FILE__, __LINE__, "no host memory");
    unsigned int *r = (unsigned int *)raw;
    for (size_t i = 0; i < bytes / 4; i++)
        r[i] = 1u;
    CHECK(cudaHostRegister(r, bytes, cudaHostRegisterMapped));
    unsigned int *rd;
    CHECK(cudaHostGetDevicePointer(&rd, r, 0));
    fg_fill_u32<<<8, 256>>>(rd + 1024, 9u, 1024);
    CHECK(cudaDeviceSynchronize());
    check("registered memory written by a kernel", r[1023] == 1u && r[1024] == 9u && r[2047] == 9u && r[2048] == 1u);
    CHECK(cudaHostUnregister(r));
    r[0] = 2u; // the application's memory again
    check("registered memory after unregistering", r[0] == 2u && r[1500] == 9u);
    std::free(raw);
    CHECK(cudaFree(dev));
}

int main()
{
    CHECK(cudaSetDevice(0));
    int managed_ok = 0, map_ok = 0;
    CHECK(cudaDeviceGetAttribute(&managed_ok, cudaDevAttrManagedMemory, 0));
    CHECK(cudaDeviceGetAttribute(&map_ok, cudaDevAttrCanMapHostMemory, 0));
    std::printf("managed memory %d, can map host memory %d\n", managed_ok, map_ok);
    managed();
    mapped();
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
