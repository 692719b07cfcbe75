/* ipc.c — CUDA IPC for processes of one lease on one node (DDP, NCCL): the calls go to the node, which exports and
 * opens the real handles between its workers through its IPC broker (server/replay/ipc.c, server/ipc_broker.py).
 * What the application holds is a fargpu token of the handle's size: a random id the node knows for this lease
 * only. For a VMM shareable handle the application wants a file descriptor it can pass to its peers (SCM_RIGHTS or
 * pidfd_getfd, as NCCL does): the stub makes one, a sealed memfd holding the token, and reads the token back from
 * whatever descriptor it is given to import. Only the POSIX file descriptor type is served (others:
 * CUDA_ERROR_NOT_SUPPORTED, logged once). */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define TOKEN_SIZE 64
#define TOKEN_VMM "FGIPCVMM"

/* Opened IPC memory: the stub counts opens, so that the range stops being device memory at the last close. */
typedef struct {
    uint64_t ptr, size;
    unsigned refs;
} opened;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static opened g_open[1024];
static size_t g_nopen;

CUresult fgc_cuIpcGetMemHandle(CUipcMemHandle *pHandle, CUdeviceptr dptr) {
    FGC_REQUIRE_INIT();
    if (!pHandle) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuIpcGetMemHandle);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dptr);
    fgc_expect(pHandle->reserved, TOKEN_SIZE);
    return fgc_sync();
}

CUresult fgc_cuIpcOpenMemHandle_v2(CUdeviceptr *pdptr, CUipcMemHandle handle, unsigned int Flags) {
    FGC_REQUIRE_INIT();
    if (!pdptr) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuIpcOpenMemHandle_v2);
    if (!w) return fgc_last_error();
    fg_put(w, handle.reserved, TOKEN_SIZE);
    fg_put_u32(w, Flags);
    uint64_t got[2] = {0, 0}; /* address, size */
    fgc_expect(got, sizeof got);
    CUresult r = fgc_sync();
    if (r != CUDA_SUCCESS) return r;
    int fresh = 0;
    pthread_mutex_lock(&mu);
    size_t i = 0;
    while (i < g_nopen && g_open[i].ptr != got[0]) i++;
    if (i < g_nopen) g_open[i].refs++;
    else if (g_nopen < sizeof g_open / sizeof g_open[0]) {
        g_open[g_nopen++] = (opened){got[0], got[1], 1};
        fresh = 1;
    }
    pthread_mutex_unlock(&mu);
    if (fresh) fgc_device_range_add(got[0], got[1]); /* device memory for copies */
    *pdptr = (CUdeviceptr)got[0];
    return CUDA_SUCCESS;
}

CUresult fgc_cuIpcCloseMemHandle(CUdeviceptr dptr) {
    FGC_REQUIRE_INIT();
    fg_writer *w = fgc_begin(FG_OP_cuIpcCloseMemHandle);
    if (!w) return fgc_last_error();
    fg_put_u64(w, dptr);
    CUresult r = fgc_sync();
    if (r != CUDA_SUCCESS) return r;
    int last = 0;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < g_nopen; i++)
        if (g_open[i].ptr == dptr) {
            if (--g_open[i].refs == 0) {
                g_open[i] = g_open[--g_nopen];
                last = 1;
            }
            break;
        }
    pthread_mutex_unlock(&mu);
    if (last) fgc_device_range_remove(dptr);
    return CUDA_SUCCESS;
}

CUresult fgc_cuIpcGetEventHandle(CUipcEventHandle *pHandle, CUevent event) {
    FGC_REQUIRE_INIT();
    if (!pHandle) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuIpcGetEventHandle);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, event);
    fgc_expect(pHandle->reserved, TOKEN_SIZE);
    return fgc_sync();
}

CUresult fgc_cuIpcOpenEventHandle(CUevent *phEvent, CUipcEventHandle handle) {
    FGC_REQUIRE_INIT();
    if (!phEvent) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuIpcOpenEventHandle);
    if (!w) return fgc_last_error();
    fg_put(w, handle.reserved, TOKEN_SIZE);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *phEvent = (CUevent)(uintptr_t)id;
    return r;
}

static CUresult only_fd(CUmemAllocationHandleType type) {
    if (type == CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR) return CUDA_SUCCESS;
    static int logged;
    return fgc_unsupported("shareable VMM handles of a type other than a POSIX file descriptor", &logged);
}

CUresult fgc_cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                          CUmemAllocationHandleType handleType, unsigned long long flags) {
    FGC_REQUIRE_INIT();
    if (!shareableHandle) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = only_fd(handleType);
    if (r != CUDA_SUCCESS) return r;
    fg_writer *w = fgc_begin(FG_OP_cuMemExportToShareableHandle);
    if (!w) return fgc_last_error();
    fg_put_u64(w, (uint64_t)handle);
    fg_put_u32(w, (uint32_t)handleType);
    fg_put_u64(w, flags);
    uint8_t token[TOKEN_SIZE];
    fgc_expect(token, sizeof token);
    r = fgc_sync();
    if (r != CUDA_SUCCESS) return r;
    /* A descriptor of this process that carries the token wherever the application sends it. */
    int fd = memfd_create("fargpu-ipc-handle", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return CUDA_ERROR_OPERATING_SYSTEM;
    if (pwrite(fd, token, sizeof token, 0) != (ssize_t)sizeof token ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL) != 0) {
        close(fd);
        return CUDA_ERROR_OPERATING_SYSTEM;
    }
    *(int *)shareableHandle = fd;
    return CUDA_SUCCESS;
}

CUresult fgc_cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                            CUmemAllocationHandleType shHandleType) {
    FGC_REQUIRE_INIT();
    if (!handle) return CUDA_ERROR_INVALID_VALUE;
    CUresult r = only_fd(shHandleType);
    if (r != CUDA_SUCCESS) return r;
    int fd = (int)(intptr_t)osHandle;
    uint8_t token[TOKEN_SIZE];
    if (fd < 0 || pread(fd, token, sizeof token, 0) != (ssize_t)sizeof token || memcmp(token, TOKEN_VMM, 8) != 0)
        return CUDA_ERROR_INVALID_VALUE; /* not a descriptor this stub (or a peer's) made by exporting */
    fg_writer *w = fgc_begin(FG_OP_cuMemImportFromShareableHandle);
    if (!w) return fgc_last_error();
    fg_put(w, token, sizeof token);
    fg_put_u32(w, (uint32_t)shHandleType);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    r = fgc_sync();
    if (r == CUDA_SUCCESS) *handle = (CUmemGenericAllocationHandle)id;
    return r;
}
