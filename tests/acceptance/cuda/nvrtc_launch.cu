// nvrtc_launch.cu - acceptance: run-time compilation. NVRTC compiles a kernel source string, then the image is
// loaded and launched one of two ways (argv[1]):
//   driver   NVRTC -> sm_90 cubin -> cuModuleLoadData -> cuModuleGetFunction -> cuLaunchKernel (driver API, on
//            the runtime's primary context), plus a __device__ global read back through cuModuleGetGlobal;
//   runtime  NVRTC -> compute_90 PTX -> cudaLibraryLoadData -> cudaLibraryGetKernel -> cudaLaunchKernel (the
//            driver JIT-compiles the PTX).
// Results are checked element by element against the CPU.
// acceptance: link=-lnvrtc -lcuda
// acceptance: args=driver|runtime
#include <cuda.h>
#include <nvrtc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "acceptance.h"

static const char *kSource = R"(
__device__ int g_calls = 0;

extern "C" __global__ void saxpb(float *y, const float *x, float a, float b, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n)
        y[i] = a * x[i] + b;
    if (i == 0)
        atomicAdd(&g_calls, 1);
}
)";

static std::vector<char> compile(bool cubin)
{
    nvrtcProgram prog;
    NVRTC_CHECK(nvrtcCreateProgram(&prog, kSource, "saxpb.cu", 0, nullptr, nullptr));
    const char *opts[] = {cubin ? "--gpu-architecture=sm_90" : "--gpu-architecture=compute_90", "--std=c++17"};
    nvrtcResult r = nvrtcCompileProgram(prog, 2, opts);
    if (r != NVRTC_SUCCESS) {
        size_t n = 0;
        nvrtcGetProgramLogSize(prog, &n);
        std::vector<char> log(n + 1);
        nvrtcGetProgramLog(prog, log.data());
        std::printf("nvrtc log:\n%s\n", log.data());
        NVRTC_CHECK(r);
    }
    size_t size = 0;
    std::vector<char> image;
    if (cubin) {
        NVRTC_CHECK(nvrtcGetCUBINSize(prog, &size));
        image.resize(size);
        NVRTC_CHECK(nvrtcGetCUBIN(prog, image.data()));
    } else {
        NVRTC_CHECK(nvrtcGetPTXSize(prog, &size));
        image.resize(size);  // includes the terminating NUL
        NVRTC_CHECK(nvrtcGetPTX(prog, image.data()));
    }
    NVRTC_CHECK(nvrtcDestroyProgram(&prog));
    return image;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "driver";
    bool driver = std::strcmp(mode, "driver") == 0;
    if (!driver && std::strcmp(mode, "runtime") != 0) {
        std::printf("usage: %s driver|runtime\n", argv[0]);
        return 2;
    }
    int major = 0, minor = 0;
    NVRTC_CHECK(nvrtcVersion(&major, &minor));
    std::vector<char> image = compile(driver);
    std::printf("nvrtc %d.%d compiled %s (%s)\n", major, minor, driver ? "sm_90 cubin" : "compute_90 PTX",
                image.size() > 0 ? "non-empty" : "empty");

    const int n = 10000;
    std::vector<float> hx(n), hy(n);
    for (int i = 0; i < n; i++)
        hx[i] = (float)(i % 257) * 0.5f;
    float *dx, *dy;
    CHECK(cudaMalloc(&dx, n * sizeof(float)));
    CHECK(cudaMalloc(&dy, n * sizeof(float)));
    CHECK(cudaMemcpy(dx, hx.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    CHECK(cudaMemset(dy, 0, n * sizeof(float)));
    float a = 3.0f, b = -2.5f;
    int calls = -1, launches = 3;
    if (driver) {
        CUcontext ctx = nullptr;
        CU_CHECK(cuCtxGetCurrent(&ctx));  // the runtime's primary context, made current by cudaMalloc
        std::printf("driver API sees the runtime's context: %s\n", ctx ? "yes" : "no");
        CUmodule mod;
        CUfunction fn;
        CU_CHECK(cuModuleLoadData(&mod, image.data()));
        CU_CHECK(cuModuleGetFunction(&fn, mod, "saxpb"));
        CUdeviceptr py = (CUdeviceptr)dy, px = (CUdeviceptr)dx;
        void *params[] = {&py, &px, &a, &b, (void *)&n};
        for (int l = 0; l < launches; l++)
            CU_CHECK(cuLaunchKernel(fn, (n + 127) / 128, 1, 1, 128, 1, 1, 0, nullptr, params, nullptr));
        CU_CHECK(cuCtxSynchronize());
        CUdeviceptr g;
        size_t gsize = 0;
        CU_CHECK(cuModuleGetGlobal(&g, &gsize, mod, "g_calls"));
        CU_CHECK(cuMemcpyDtoH(&calls, g, sizeof calls));
        std::printf("global g_calls size %zu\n", gsize);
        CU_CHECK(cuModuleUnload(mod));
    } else {
        cudaLibrary_t lib;
        cudaKernel_t k;
        CHECK(cudaLibraryLoadData(&lib, image.data(), nullptr, nullptr, 0, nullptr, nullptr, 0));
        CHECK(cudaLibraryGetKernel(&k, lib, "saxpb"));
        unsigned kernels = 0;
        CHECK(cudaLibraryGetKernelCount(&kernels, lib));
        std::printf("library kernels %u\n", kernels);
        void *params[] = {&dy, &dx, &a, &b, (void *)&n};
        for (int l = 0; l < launches; l++)
            CHECK(cudaLaunchKernel((const void *)k, dim3((n + 127) / 128), dim3(128), params, 0, nullptr));
        CHECK(cudaDeviceSynchronize());
        void *g = nullptr;
        size_t gsize = 0;
        CHECK(cudaLibraryGetGlobal(&g, &gsize, lib, "g_calls"));
        CHECK(cudaMemcpy(&calls, g, sizeof calls, cudaMemcpyDeviceToHost));
        std::printf("global g_calls size %zu\n", gsize);
        CHECK(cudaLibraryUnload(lib));
    }
    CHECK(cudaMemcpy(hy.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
    int bad = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        bad += hy[i] != a * hx[i] + b;
        sum += hy[i];
    }
    std::printf("%s: launches %d g_calls %d checksum %.2f mismatches %d\n", mode, launches, calls, sum, bad);
    bad += calls != launches;
    CHECK(cudaFree(dx));
    CHECK(cudaFree(dy));
    std::printf("%s\n", bad ? "FAIL" : "PASS");
    return bad ? 1 : 0;
}
