// api_ipc.cu - acceptance: CUDA IPC between two processes on one GPU, as a data-parallel job's processes share
// buffers. The parent exports device memory (cudaIpcGetMemHandle), an interprocess event (cudaIpcGetEventHandle)
// and a VMM allocation made shareable as a POSIX file descriptor (cuMemExportToShareableHandle), then starts itself
// again as a child with the handles on its command line and the descriptor inherited. The child opens all three,
// reads the parent's bytes, waits on the parent's event, writes bytes of its own into both buffers, and closes
// what it opened; the parent then sees the child's bytes. Through fargpu each process is a session of the same
// lease, and the node brokers the handles between their workers.
// acceptance: link=-lcuda
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <cuda.h>
#include <sys/wait.h>
#include <unistd.h>

#include "acceptance.h"
#include "acceptance_check.h"

static const size_t BYTES = 1 << 20;

static std::string hex(const void *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = ((const unsigned char *)p)[i];
        s += digits[c >> 4];
        s += digits[c & 15];
    }
    return s;
}

static bool unhex(const char *s, void *out, size_t n)
{
    if (std::strlen(s) != 2 * n)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned v = 0;
        if (std::sscanf(s + 2 * i, "%2x", &v) != 1)
            return false;
        ((unsigned char *)out)[i] = (unsigned char)v;
    }
    return true;
}

static std::vector<uint32_t> pattern(uint32_t seed)
{
    std::vector<uint32_t> v(BYTES / 4);
    for (size_t i = 0; i < v.size(); i++)
        v[i] = seed * 2654435761u + (uint32_t)i * 40503u;
    return v;
}

static CUmemAllocationProp shareable_prop()
{
    CUmemAllocationProp prop;
    std::memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = 0;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    return prop;
}

// Maps an imported or created VMM handle at a new address, readable and writable by device 0.
static CUdeviceptr map(CUmemGenericAllocationHandle h, size_t size)
{
    CUdeviceptr va = 0;
    CU_CHECK(cuMemAddressReserve(&va, size, 0, 0, 0));
    CU_CHECK(cuMemMap(va, size, 0, h, 0));
    CUmemAccessDesc access;
    std::memset(&access, 0, sizeof access);
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = 0;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    CU_CHECK(cuMemSetAccess(va, size, &access, 1));
    return va;
}

static int child(const char *mem_hex, const char *ev_hex, int fd, size_t vmm_size)
{
    CHECK(cudaSetDevice(0));
    cudaIpcMemHandle_t mh;
    cudaIpcEventHandle_t eh;
    if (!unhex(mem_hex, &mh, sizeof mh) || !unhex(ev_hex, &eh, sizeof eh)) {
        std::printf("child: malformed handles\n");
        return 1;
    }
    void *p = nullptr;
    CHECK(cudaIpcOpenMemHandle(&p, mh, cudaIpcMemLazyEnablePeerAccess));
    cudaEvent_t ev;
    CHECK(cudaIpcOpenEventHandle(&ev, eh));
    cudaStream_t s;
    CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    CHECK(cudaStreamWaitEvent(s, ev, 0));
    std::vector<uint32_t> got(BYTES / 4);
    CHECK(cudaMemcpyAsync(got.data(), p, BYTES, cudaMemcpyDeviceToHost, s));
    CHECK(cudaStreamSynchronize(s));
    check("child: the parent's device memory through its IPC handle", got == pattern(1));
    check("child: the parent's interprocess event has completed", cudaEventQuery(ev) == cudaSuccess);
    std::vector<uint32_t> mine = pattern(2);
    CHECK(cudaMemcpy(p, mine.data(), BYTES, cudaMemcpyHostToDevice));

    CUmemGenericAllocationHandle h = 0;
    CU_CHECK(cuMemImportFromShareableHandle(&h, (void *)(uintptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    CUmemAllocationProp prop;
    CU_CHECK(cuMemGetAllocationPropertiesFromHandle(&prop, h));
    check("child: the imported allocation is device memory of device 0",
          prop.location.type == CU_MEM_LOCATION_TYPE_DEVICE && prop.location.id == 0);
    CUdeviceptr va = map(h, vmm_size);
    CHECK(cudaMemcpy(got.data(), (void *)va, BYTES, cudaMemcpyDeviceToHost));
    check("child: the parent's VMM allocation through its file descriptor", got == pattern(3));
    mine = pattern(4);
    CHECK(cudaMemcpy((void *)va, mine.data(), BYTES, cudaMemcpyHostToDevice));
    CHECK(cudaDeviceSynchronize());
    CU_CHECK(cuMemUnmap(va, vmm_size));
    CU_CHECK(cuMemAddressFree(va, vmm_size));
    CU_CHECK(cuMemRelease(h));
    CHECK(cudaIpcCloseMemHandle(p));
    CHECK(cudaEventDestroy(ev));
    CHECK(cudaStreamDestroy(s));
    close(fd);
    std::printf("child %s\n", g_fail ? "FAIL" : "PASS");
    std::fflush(stdout);
    return g_fail;
}

int main(int argc, char **argv)
{
    if (argc == 6 && !std::strcmp(argv[1], "child"))
        return child(argv[2], argv[3], std::atoi(argv[4]), (size_t)std::strtoull(argv[5], nullptr, 10));
    CHECK(cudaSetDevice(0));
    CHECK(cudaFree(nullptr));
    void *p = nullptr;
    CHECK(cudaMalloc(&p, BYTES));
    std::vector<uint32_t> first = pattern(1);
    CHECK(cudaMemcpy(p, first.data(), BYTES, cudaMemcpyHostToDevice));
    cudaIpcMemHandle_t mh;
    CHECK(cudaIpcGetMemHandle(&mh, p));
    cudaEvent_t ev;
    CHECK(cudaEventCreateWithFlags(&ev, cudaEventInterprocess | cudaEventDisableTiming));
    cudaIpcEventHandle_t eh;
    CHECK(cudaIpcGetEventHandle(&eh, ev));
    CHECK(cudaEventRecord(ev, 0)); // after the copy above, on the same (legacy) stream
    CHECK(cudaEventSynchronize(ev));

    CUmemAllocationProp prop = shareable_prop();
    size_t gran = 0;
    CU_CHECK(cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
    size_t vmm_size = (BYTES + gran - 1) / gran * gran;
    CUmemGenericAllocationHandle h = 0;
    CU_CHECK(cuMemCreate(&h, vmm_size, &prop, 0));
    CUdeviceptr va = map(h, vmm_size);
    std::vector<uint32_t> third = pattern(3);
    CHECK(cudaMemcpy((void *)va, third.data(), BYTES, cudaMemcpyHostToDevice));
    int fd = -1;
    CU_CHECK(cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    int inherit = dup(fd); // a descriptor without close-on-exec, for the child
    check("parent: the allocation is exported as a file descriptor", fd >= 0 && inherit >= 0);
    std::fflush(stdout);

    std::string mem_hex = hex(&mh, sizeof mh), ev_hex = hex(&eh, sizeof eh);
    std::string fd_s = std::to_string(inherit), size_s = std::to_string(vmm_size);
    pid_t pid = fork();
    if (pid == 0) {
        char self[] = "/proc/self/exe", mode[] = "child";
        char *args[] = {self, mode, mem_hex.data(), ev_hex.data(), fd_s.data(), size_s.data(), nullptr};
        execv(self, args);
        std::_Exit(127);
    }
    int status = 0;
    check("parent: the child ran", pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
                                       WEXITSTATUS(status) == 0);
    close(inherit);
    close(fd);

    std::vector<uint32_t> got(BYTES / 4);
    CHECK(cudaMemcpy(got.data(), p, BYTES, cudaMemcpyDeviceToHost));
    check("parent: the child's bytes in the exported device memory", got == pattern(2));
    CHECK(cudaMemcpy(got.data(), (void *)va, BYTES, cudaMemcpyDeviceToHost));
    check("parent: the child's bytes in the exported VMM allocation", got == pattern(4));
    CU_CHECK(cuMemUnmap(va, vmm_size));
    CU_CHECK(cuMemAddressFree(va, vmm_size));
    CU_CHECK(cuMemRelease(h));
    CHECK(cudaEventDestroy(ev));
    CHECK(cudaFree(p));
    std::printf("%s\n", g_fail ? "FAIL" : "PASS");
    return g_fail;
}
