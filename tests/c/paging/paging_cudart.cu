// paging_cudart.cu — a cudart program for the paging tests: memory allocated by cudart in a cuBLAS-like pattern
// (many small allocations, a few large ones), filled by memsets, host copies and device-to-device copies, read
// back as checksums; then, when FARGPU_TEST_PAUSE_S is set, it idles that long (the node pages it out), and
// goes on working on the same memory. Its output must be the same whether or not it was paged out meanwhile.
// It launches no kernels (the simulated device runs only the project's test kernels).
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHECK(x)                                                                         \
    do {                                                                                 \
        cudaError_t e_ = (x);                                                            \
        if (e_ != cudaSuccess) {                                                         \
            printf("FAIL %s: %s\n", #x, cudaGetErrorString(e_));                         \
            exit(1);                                                                     \
        }                                                                                \
    } while (0)

static uint64_t fnv(const unsigned char *p, size_t n, uint64_t h) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

int main(void) {
    enum { SMALL = 96, LARGE = 3 };
    size_t sizes[SMALL + LARGE];
    void *bufs[SMALL + LARGE];
    for (int i = 0; i < SMALL; i++) sizes[i] = 256 + (size_t)i * 700;
    sizes[SMALL] = 8u << 20;
    sizes[SMALL + 1] = 24u << 20;
    sizes[SMALL + 2] = 40u << 20;
    size_t most = sizes[SMALL + 2];
    unsigned char *host = (unsigned char *)malloc(most), *back = (unsigned char *)malloc(most);
    if (!host || !back) return 2;
    for (size_t k = 0; k < most; k++) host[k] = (unsigned char)(k * 2654435761u >> 13);
    for (int i = 0; i < SMALL + LARGE; i++) {
        CHECK(cudaMalloc(&bufs[i], sizes[i]));
        if (i % 3 == 0) CHECK(cudaMemcpy(bufs[i], host + i, sizes[i] - i, cudaMemcpyHostToDevice));
        else CHECK(cudaMemset(bufs[i], i & 0xff, sizes[i]));
    }
    CHECK(cudaMemcpy(bufs[SMALL + 1], bufs[SMALL], sizes[SMALL], cudaMemcpyDeviceToDevice));
    for (int phase = 1; phase <= 2; phase++) {
        uint64_t h = 1469598103934665603ull;
        for (int i = 0; i < SMALL + LARGE; i++) {
            CHECK(cudaMemcpy(back, bufs[i], sizes[i], cudaMemcpyDeviceToHost));
            h = fnv(back, sizes[i], h);
        }
        printf("phase %d checksum %016llx\n", phase, (unsigned long long)h);
        fflush(stdout);
        if (phase == 1) {
            const char *pause = getenv("FARGPU_TEST_PAUSE_S");
            if (pause) sleep((unsigned)atoi(pause));
            // Work on the same memory again: the pointers the program holds must still be valid.
            CHECK(cudaMemset((char *)bufs[SMALL + 2] + 4096, 0x5a, 1 << 20));
            CHECK(cudaMemcpy(bufs[7], bufs[SMALL + 2], sizes[7], cudaMemcpyDeviceToDevice));
        }
    }
    for (int i = 0; i < SMALL + LARGE; i++) CHECK(cudaFree(bufs[i]));
    printf("done\n");
    return 0;
}
