/* probe_va.c — where the real driver puts device addresses, for parking (a restored session needs its old
 * addresses free in a fresh worker): whether cuMemAddressReserve honours a hint in the session arena
 * (server/park/arena.py) and elsewhere, and where cuMemAlloc places memory. Run it twice, and under `setarch -R`, to
 * see whether the places repeat across processes. Prints one JSON object. Usage: probe_va [HINT_HEX...] */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

#include <cuda.h>

#define F(name) static __typeof__(&name) p_##name
F(cuInit); F(cuDeviceGet); F(cuDevicePrimaryCtxRetain); F(cuCtxSetCurrent); F(cuMemAlloc_v2);
F(cuMemAddressReserve); F(cuMemAddressFree);

int main(int argc, char **argv) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { fprintf(stderr, "no libcuda: %s\n", dlerror()); return 1; }
#define L(name) *(void **)&p_##name = dlsym(h, #name)
    L(cuInit); L(cuDeviceGet); L(cuDevicePrimaryCtxRetain); L(cuCtxSetCurrent); L(cuMemAlloc_v2);
    L(cuMemAddressReserve); L(cuMemAddressFree);
    CUdevice d; CUcontext c;
    if (p_cuInit(0) || p_cuDeviceGet(&d, 0) || p_cuDevicePrimaryCtxRetain(&c, d) || p_cuCtxSetCurrent(c)) return 1;
    printf("{\"self\": \"%p\"", (void *)&main);
    const char *dflt[] = {"600000000000", "7f0000000000", "200000000", "10000000000"};
    int n = argc > 1 ? argc - 1 : 4;
    for (int i = 0; i < n; i++) {
        const char *hex = argc > 1 ? argv[i + 1] : dflt[i];
        CUdeviceptr want = (CUdeviceptr)strtoull(hex, NULL, 16), got = 0;
        CUresult r = p_cuMemAddressReserve(&got, 2 << 20, 0, want, 0);
        printf(", \"reserve_0x%s\": {\"rc\": %d, \"got\": \"0x%llx\", \"honoured\": %d}", hex, (int)r,
               (unsigned long long)got, r == CUDA_SUCCESS && got == want);
        if (r == CUDA_SUCCESS) p_cuMemAddressFree(got, 2 << 20);
    }
    for (int i = 0; i < 3; i++) {
        CUdeviceptr p = 0;
        CUresult r = p_cuMemAlloc_v2(&p, (size_t)(2 << 20) << i);
        printf(", \"alloc_%d\": {\"rc\": %d, \"ptr\": \"0x%llx\"}", i, (int)r, (unsigned long long)p);
    }
    /* hints inside the range the driver placed memory in: 64 MiB and 1 GiB above the first allocation */
    CUdeviceptr base = 0;
    if (p_cuMemAlloc_v2(&base, 2 << 20) == CUDA_SUCCESS) {
        for (int i = 0; i < 2; i++) {
            CUdeviceptr want = base + (i ? (CUdeviceptr)1 << 30 : (CUdeviceptr)64 << 20), got = 0;
            CUresult r = p_cuMemAddressReserve(&got, 2 << 20, 0, want, 0);
            printf(", \"reserve_inside_%d\": {\"rc\": %d, \"want\": \"0x%llx\", \"got\": \"0x%llx\", \"honoured\": %d}", i,
                   (int)r, (unsigned long long)want, (unsigned long long)got, r == CUDA_SUCCESS && got == want);
        }
    }
    printf("}\n");
    return 0;
}
