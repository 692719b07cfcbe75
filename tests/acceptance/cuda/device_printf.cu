// device_printf.cu - acceptance: printf from device code. The driver drains the device printf buffer at
// synchronisation points and writes it to the *client's* stdout; through fargpu the lines must reach the
// client's stdout exactly as natively (the runner's native-vs-remote comparison is the check: the program
// cannot read its own stdout). Only deterministic output: one thread prints, so the order is fixed, with
// integer, float, hex, string and char conversions; a second kernel is launched four times (one block each,
// synchronised in between) and prints one line per launch. stdout is flushed before each launch so the host's
// buffered lines and the driver's writes cannot interleave differently by buffering alone.
#include <cstdio>
#include <cstdlib>

#include "acceptance.h"

__global__ void say_hello(int n, float scale, unsigned long long tag)
{
    if (threadIdx.x != 0 || blockIdx.x != 0)
        return;
    printf("device: hello from block %d thread %d of %d\n", blockIdx.x, threadIdx.x, blockDim.x * gridDim.x);
    for (int i = 0; i < n; i++)
        printf("device: i=%d i*scale=%.3f hex=%#x tag=%llu %s%c\n", i, i * scale, 0xC0DE + i, tag + i, "ok", '!');
}

__global__ void one_line(int launch, const int *data)
{
    if (threadIdx.x == 0)
        printf("device: launch %d block %d reads %d\n", launch, blockIdx.x, data[launch]);
}

int main()
{
    int *d;
    int h[4] = {7, 11, 13, 17};
    CHECK(cudaMalloc(&d, sizeof h));
    CHECK(cudaMemcpy(d, h, sizeof h, cudaMemcpyHostToDevice));
    std::printf("host: before launch\n");
    std::fflush(stdout);
    say_hello<<<2, 64>>>(5, 0.25f, 1000000000000ULL);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
    std::printf("host: after first sync\n");
    for (int i = 0; i < 4; i++) {
        std::fflush(stdout);
        one_line<<<1, 32>>>(i, d);
        CHECK(cudaGetLastError());
        CHECK(cudaDeviceSynchronize());
    }
    std::printf("host: after %d single-block launches\n", 4);
    CHECK(cudaFree(d));
    std::printf("PASS\n");
    return 0;
}
