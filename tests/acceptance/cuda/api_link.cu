// api_link.cu - acceptance: JIT linking with the driver API, as Numba and CuPy do it. Two PTX inputs of the
// program's own: one (added as data) holds the kernel fg_vadd, which calls a device function it only declares
// (.extern); the other (written to a temporary file and added with cuLinkAddFile) defines that function and a
// global. The link is made with JIT options whose outputs the program reads back (info and error logs with their
// sizes, the wall time); the completed image is loaded as a module, the kernel runs (c = a + b through the linked
// function, checked element by element, exact) and the global holds its initial value. The image must stay
// readable until cuLinkDestroy. A broken PTX input on a second link state is refused with an error log.
// fg_vadd has the name and parameter layout of the test kernel of tests/c/kernels/test_kernels.cu, so the
// simulated device runs it too (its linker merges the inputs; it does not resolve the call).
// acceptance: link=-lcuda
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda.h>
#include <unistd.h>

#include "acceptance.h"
#include "acceptance_check.h"

static const char kKernelPtx[] = R"(
.version 8.0
.target sm_90
.address_size 64

.extern .func (.param .b32 fg_link_add_r) fg_link_add
(
	.param .b32 fg_link_add_x,
	.param .b32 fg_link_add_y
)
;

.visible .entry fg_vadd(
	.param .u64 fg_vadd_a,
	.param .u64 fg_vadd_b,
	.param .u64 fg_vadd_c,
	.param .u32 fg_vadd_n
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<6>;
	.reg .f32 	%f<4>;
	.reg .b64 	%rd<11>;

	ld.param.u64 	%rd1, [fg_vadd_a];
	ld.param.u64 	%rd2, [fg_vadd_b];
	ld.param.u64 	%rd3, [fg_vadd_c];
	ld.param.u32 	%r2, [fg_vadd_n];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.s32 	%p1, %r1, %r2;
	@%p1 bra 	DONE;
	cvta.to.global.u64 	%rd4, %rd1;
	mul.wide.s32 	%rd5, %r1, 4;
	add.s64 	%rd6, %rd4, %rd5;
	cvta.to.global.u64 	%rd7, %rd2;
	add.s64 	%rd8, %rd7, %rd5;
	ld.global.f32 	%f1, [%rd6];
	ld.global.f32 	%f2, [%rd8];
	{
	.param .b32 x;
	st.param.f32 	[x], %f1;
	.param .b32 y;
	st.param.f32 	[y], %f2;
	.param .b32 r;
	call.uni (r), fg_link_add, (x, y);
	ld.param.f32 	%f3, [r];
	}
	cvta.to.global.u64 	%rd9, %rd3;
	add.s64 	%rd10, %rd9, %rd5;
	st.global.f32 	[%rd10], %f3;
DONE:
	ret;
}
)";

static const char kFunctionPtx[] = R"(
.version 8.0
.target sm_90
.address_size 64

.visible .global .align 4 .u32 fg_link_tag = 42;

.visible .func (.param .b32 fg_link_add_r) fg_link_add(
	.param .b32 fg_link_add_x,
	.param .b32 fg_link_add_y
)
{
	.reg .f32 	%f<4>;
	ld.param.f32 	%f1, [fg_link_add_x];
	ld.param.f32 	%f2, [fg_link_add_y];
	add.rn.f32 	%f3, %f1, %f2;
	st.param.f32 	[fg_link_add_r], %f3;
	ret;
}
)";

static const char kBrokenPtx[] = ".version 8.0\n.target sm_90\n.address_size 64\n.visible .entry broken(\n";

int main()
{
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr)); // the runtime's primary context is current from here on

    // The function input goes through a file the driver reads (the stub reads it on the client).
    char path[] = "/tmp/api_link_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, kFunctionPtx, sizeof kFunctionPtx - 1) != (ssize_t)(sizeof kFunctionPtx - 1)) {
        std::printf("FAIL cannot write %s\n", path);
        return 1;
    }
    close(fd);

    char info[8192] = {0}, err[8192] = {0};
    CUjit_option opt[] = {CU_JIT_WALL_TIME, CU_JIT_INFO_LOG_BUFFER, CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
                          CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_LOG_VERBOSE};
    void *val[] = {nullptr, info, (void *)(uintptr_t)sizeof info, err, (void *)(uintptr_t)sizeof err, (void *)1};
    CUlinkState link;
    CU_CHECK(cuLinkCreate(6, opt, val, &link));
    CU_CHECK(cuLinkAddData(link, CU_JIT_INPUT_PTX, (void *)kKernelPtx, sizeof kKernelPtx, "kernel.ptx", 0, nullptr,
                           nullptr));
    CU_CHECK(cuLinkAddFile(link, CU_JIT_INPUT_PTX, path, 0, nullptr, nullptr));
    unlink(path);
    void *cubin = nullptr;
    size_t size = 0;
    CU_CHECK(cuLinkComplete(link, &cubin, &size));
    std::printf("linked image non-empty: %s\n", cubin && size > 0 ? "yes" : "no");
    float wall;
    std::memcpy(&wall, &val[0], sizeof wall);
    unsigned info_n = (unsigned)(uintptr_t)val[2], err_n = (unsigned)(uintptr_t)val[4];
    check("wall time reported", wall >= 0.0f && wall < 600000.0f);
    check("info log size within its buffer", info_n < sizeof info && std::strlen(info) <= info_n);
    check("no error log on success", err_n == 0 || err[0] == 0 || std::strlen(err) <= err_n);
    std::vector<char> copy((const char *)cubin, (const char *)cubin + size);

    // Other driver work in between: the image stays the link state's until cuLinkDestroy.
    CUlinkState other;
    CU_CHECK(cuLinkCreate(0, nullptr, nullptr, &other));
    CU_CHECK(cuLinkDestroy(other));
    check("image unchanged until destroy", std::memcmp(copy.data(), cubin, size) == 0);

    CUmodule mod;
    CU_CHECK(cuModuleLoadData(&mod, cubin));
    CU_CHECK(cuLinkDestroy(link));
    CUfunction f;
    CU_CHECK(cuModuleGetFunction(&f, mod, "fg_vadd"));
    const int n = 10000;
    std::vector<float> ha(n), hb(n), hc(n, -1.0f);
    for (int i = 0; i < n; i++) {
        ha[i] = (float)(i % 1000) * 0.25f;
        hb[i] = (float)(i / 1000) + 1.0f;
    }
    CUdeviceptr a, b, c;
    CU_CHECK(cuMemAlloc(&a, n * sizeof(float)));
    CU_CHECK(cuMemAlloc(&b, n * sizeof(float)));
    CU_CHECK(cuMemAlloc(&c, n * sizeof(float)));
    CU_CHECK(cuMemcpyHtoD(a, ha.data(), n * sizeof(float)));
    CU_CHECK(cuMemcpyHtoD(b, hb.data(), n * sizeof(float)));
    int count = n;
    void *args[] = {&a, &b, &c, &count};
    CU_CHECK(cuLaunchKernel(f, (n + 255) / 256, 1, 1, 256, 1, 1, 0, nullptr, args, nullptr));
    CU_CHECK(cuCtxSynchronize());
    CU_CHECK(cuMemcpyDtoH(hc.data(), c, n * sizeof(float)));
    bool ok = true;
    for (int i = 0; i < n; i++)
        ok = ok && hc[i] == ha[i] + hb[i];
    check("fg_vadd through the linked device function", ok);
    CUdeviceptr tag;
    size_t tag_size = 0;
    CU_CHECK(cuModuleGetGlobal(&tag, &tag_size, mod, "fg_link_tag"));
    unsigned tag_value = 0;
    CU_CHECK(cuMemcpyDtoH(&tag_value, tag, sizeof tag_value));
    std::printf("linked global fg_link_tag %u (%zu bytes)\n", tag_value, tag_size);
    CU_CHECK(cuModuleUnload(mod));

    // A broken input, on a link state of its own, with an error log for this input only.
    char own[1024] = {0};
    CUjit_option bopt[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void *bval[] = {own, (void *)(uintptr_t)sizeof own};
    CUlinkState bad;
    CU_CHECK(cuLinkCreate(0, nullptr, nullptr, &bad));
    CUresult r = cuLinkAddData(bad, CU_JIT_INPUT_PTX, (void *)kBrokenPtx, sizeof kBrokenPtx, "broken.ptx", 2, bopt,
                               bval);
    std::printf("broken input: %s, error log non-empty: %s\n", name_of(r), own[0] ? "yes" : "no");
    CU_CHECK(cuLinkDestroy(bad));

    CU_CHECK(cuMemFree(a));
    CU_CHECK(cuMemFree(b));
    CU_CHECK(cuMemFree(c));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
