/* probe_hostmem.c — measures the ways a node can hold pinned host memory for paging, on the real driver:
 * mapping a shared memfd (populate serially, in parallel, with transparent huge pages), registering it with the
 * driver, and host-located VMM allocations (cuMemCreate on a host NUMA node) exported as a file descriptor and
 * imported by another process. Prints one JSON object. Usage: probe_hostmem GIB [child FD GIB] */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cuda.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define F(name) static __typeof__(&name) p_##name
F(cuInit); F(cuDeviceGet); F(cuDevicePrimaryCtxRetain); F(cuCtxSetCurrent); F(cuMemAllocHost_v2); F(cuMemAlloc_v2);
F(cuMemcpyDtoH_v2); F(cuMemcpyHtoD_v2); F(cuMemcpyDtoD_v2); F(cuMemHostRegister_v2); F(cuMemHostUnregister);
F(cuMemCreate); F(cuMemExportToShareableHandle); F(cuMemImportFromShareableHandle); F(cuMemAddressReserve);
F(cuMemMap); F(cuMemSetAccess); F(cuMemGetAllocationGranularity); F(cuMemRelease); F(cuMemUnmap);
F(cuCtxSynchronize); F(cuMemsetD8_v2); F(cuDevicePrimaryCtxRelease_v2);

static void load(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { fprintf(stderr, "no libcuda: %s\n", dlerror()); exit(1); }
#define L(name) p_##name = (__typeof__(p_##name))dlsym(h, #name)
    L(cuInit); L(cuDeviceGet); L(cuDevicePrimaryCtxRetain); L(cuCtxSetCurrent); L(cuMemAllocHost_v2); L(cuMemAlloc_v2);
    L(cuMemcpyDtoH_v2); L(cuMemcpyHtoD_v2); L(cuMemcpyDtoD_v2); L(cuMemHostRegister_v2); L(cuMemHostUnregister);
    L(cuMemCreate); L(cuMemExportToShareableHandle); L(cuMemImportFromShareableHandle); L(cuMemAddressReserve);
    L(cuMemMap); L(cuMemSetAccess); L(cuMemGetAllocationGranularity); L(cuMemRelease); L(cuMemUnmap);
    L(cuCtxSynchronize); L(cuMemsetD8_v2); L(cuDevicePrimaryCtxRelease_v2);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct { uint8_t *p; size_t n; int op; } job;
static void *worker(void *a) {
    job *j = (job *)a;
    if (j->op == 0) j->op = madvise(j->p, j->n, MADV_POPULATE_WRITE) ? errno : 0;
    else if (j->op == 1) { memset(j->p, 1, j->n); j->op = 0; }
    return NULL;
}
static int par(uint8_t *p, size_t n, int op, int threads) {
    pthread_t th[64];
    job j[64];
    size_t part = (n / (size_t)threads + 4095) & ~(size_t)4095;
    int bad = 0;
    for (int i = 0; i < threads; i++) {
        size_t lo = part * (size_t)i, len = lo < n ? (n - lo < part ? n - lo : part) : 0;
        j[i] = (job){p + lo, len, op};
        pthread_create(&th[i], NULL, worker, &j[i]);
    }
    for (int i = 0; i < threads; i++) { pthread_join(th[i], NULL); if (j[i].op) bad = j[i].op; }
    return bad;
}

static long pmd_mapped_kb(void *addr) {
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    long kb = -1;
    int in = 0;
    unsigned long a = (unsigned long)addr;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { in = lo == a; continue; }
        if (in && (strncmp(line, "ShmemPmdMapped:", 15) == 0 || strncmp(line, "FilePmdMapped:", 14) == 0)) {
            long v = 0;
            sscanf(strchr(line, ':') + 1, "%ld", &v);
            kb = kb < 0 ? v : kb + v;
        }
    }
    if (f) fclose(f);
    return kb;
}

static CUdeviceptr dev;
static size_t N;

static double dma(int to_host, void *h) {
    double t = now();
    CUresult r = to_host ? p_cuMemcpyDtoH_v2(h, dev, N) : p_cuMemcpyHtoD_v2(dev, h, N);
    double s = now() - t;
    return r ? -(double)r : (double)N / s / 1e9;
}

static int child(int fd, size_t n) {
    load();
    CUcontext ctx; CUdevice d;
    p_cuInit(0); p_cuDeviceGet(&d, 0); p_cuDevicePrimaryCtxRetain(&ctx, d); p_cuCtxSetCurrent(ctx);
    CUmemGenericAllocationHandle h;
    double t = now();
    CUresult r = p_cuMemImportFromShareableHandle(&h, (void *)(intptr_t)fd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR);
    CUdeviceptr va = 0;
    if (!r) r = p_cuMemAddressReserve(&va, n, 0, 0, 0);
    if (!r) r = p_cuMemMap(va, n, 0, h, 0);
    CUmemAccessDesc ad = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    if (!r) r = p_cuMemSetAccess(va, n, &ad, 1);
    double map_s = now() - t;
    CUdeviceptr dv = 0;
    if (!r) r = p_cuMemAlloc_v2(&dv, n);
    uint8_t probe = 0;
    if (!r) r = p_cuMemcpyDtoH_v2(&probe, va + n / 2, 1);
    double gbs = 0, gbs_in = 0;
    if (!r) { t = now(); r = p_cuMemcpyDtoD_v2(va, dv, n); if (!r) r = p_cuCtxSynchronize(); gbs = (double)n / (now() - t) / 1e9; }
    if (!r) { t = now(); r = p_cuMemcpyDtoD_v2(dv, va, n); if (!r) r = p_cuCtxSynchronize(); gbs_in = (double)n / (now() - t) / 1e9; }
    printf("{\"child_rc\": %d, \"child_import_map_s\": %.4f, \"child_pattern_byte\": %u, "
           "\"child_dev_to_hostvmm_GBps\": %.2f, \"child_hostvmm_to_dev_GBps\": %.2f}\n", (int)r, map_s, probe, gbs,
           gbs_in);
    return 0;
}

/* Creates host-NUMA VMM memory, fills it, exports it as a file descriptor, sends that over a unix socket, drops
 * every other reference and exits: does the memory outlive the process that made it? */
static int creator(int sock, size_t n) {
    load();
    CUcontext ctx; CUdevice d;
    p_cuInit(0); p_cuDeviceGet(&d, 0); p_cuDevicePrimaryCtxRetain(&ctx, d); p_cuCtxSetCurrent(ctx);
    CUmemAllocationProp prop;
    memset(&prop, 0, sizeof prop);
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_HOST_NUMA;
    prop.location.id = 0;
    prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
    CUmemGenericAllocationHandle h = 0;
    CUdeviceptr va = 0;
    int fd = -1;
    CUresult r = p_cuMemCreate(&h, n, &prop, 0);
    if (!r) r = p_cuMemAddressReserve(&va, n, 0, 0, 0);
    if (!r) r = p_cuMemMap(va, n, 0, h, 0);
    CUmemAccessDesc ad = {{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE};
    if (!r) r = p_cuMemSetAccess(va, n, &ad, 1);
    if (!r) r = p_cuMemsetD8_v2(va, 0x5a, n);
    if (!r) r = p_cuCtxSynchronize();
    if (!r) r = p_cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
    if (va) p_cuMemUnmap(va, n);
    if (h) p_cuMemRelease(h);
    fprintf(stderr, "creator rc=%d fd=%d\n", (int)r, fd);
    char c = 0;
    struct iovec io = {&c, 1};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } u;
    struct msghdr m = {0};
    m.msg_iov = &io; m.msg_iovlen = 1;
    if (fd >= 0) {
        m.msg_control = u.buf; m.msg_controllen = sizeof u.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET; cm->cmsg_type = SCM_RIGHTS; cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    sendmsg(sock, &m, 0);
    return 0;
}

static void outlive_test(const char *self, size_t n) {
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        char a[16], b[32];
        snprintf(a, sizeof a, "%d", sv[1]);
        snprintf(b, sizeof b, "%zu", n);
        execl("/proc/self/exe", self, "creator", a, b, (char *)NULL);
        _exit(127);
    }
    close(sv[1]);
    char c;
    struct iovec io = {&c, 1};
    union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr a; } u;
    struct msghdr m = {0};
    m.msg_iov = &io; m.msg_iovlen = 1; m.msg_control = u.buf; m.msg_controllen = sizeof u.buf;
    int fd = -1;
    if (recvmsg(sv[0], &m, 0) > 0) {
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        if (cm && cm->cmsg_type == SCM_RIGHTS) memcpy(&fd, CMSG_DATA(cm), sizeof fd);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    printf(", \"outlive_creator_exit\": %d, \"outlive_fd\": %d}\n", st, fd);
    if (fd < 0) return;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        char a[16], b[32];
        snprintf(a, sizeof a, "%d", fd);
        snprintf(b, sizeof b, "%zu", n);
        execl("/proc/self/exe", self, "child", a, b, (char *)NULL);
        _exit(127);
    }
    waitpid(pid, &st, 0);
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "child") == 0) return child(atoi(argv[2]), (size_t)atoll(argv[3]));
    if (argc >= 4 && strcmp(argv[1], "creator") == 0) return creator(atoi(argv[2]), (size_t)atoll(argv[3]));
    if (argc >= 3 && strcmp(argv[1], "outlive") == 0) {
        printf("{\"outlive_gib\": %s", argv[2]);
        outlive_test(argv[0], (size_t)atoll(argv[2]) << 30);
        return 0;
    }
    size_t gib = argc > 1 ? (size_t)atoll(argv[1]) : 8;
    N = gib << 30;
    load();
    CUcontext ctx; CUdevice d;
    p_cuInit(0); p_cuDeviceGet(&d, 0); p_cuDevicePrimaryCtxRetain(&ctx, d); p_cuCtxSetCurrent(ctx);
    if (p_cuMemAlloc_v2(&dev, N)) { fprintf(stderr, "cuMemAlloc failed\n"); return 1; }
    printf("{\"gib\": %zu", gib);

    /* pinned baseline */
    void *pin = NULL;
    if (!p_cuMemAllocHost_v2(&pin, 1u << 30)) {
        size_t keep = N; N = 1u << 30;
        printf(", \"pinned_1g_dtoh_GBps\": %.2f, \"pinned_1g_htod_GBps\": %.2f", dma(1, pin), dma(0, pin));
        N = keep;
    }

    /* memfd, pages allocated by writing zeros (as the node agent does) */
    for (int huge = 0; huge < 2; huge++) {
        int fd = memfd_create("probe", MFD_CLOEXEC);
        ftruncate(fd, (off_t)N);
        double t = now();
        uint8_t *a = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (huge) printf(", \"madv_hugepage_rc\": %d", madvise(a, N, MADV_HUGEPAGE) ? errno : 0);
        par(a, N, 1, 16);
        printf(", \"h%d_agent_fill_s\": %.3f, \"h%d_agent_pmd_kb\": %ld", huge, now() - t, huge, pmd_mapped_kb(a));
        munmap(a, N);
        /* the worker's view */
        t = now();
        uint8_t *m = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
        printf(", \"h%d_map_populate_s\": %.3f, \"h%d_worker_pmd_kb\": %ld", huge, now() - t, huge, pmd_mapped_kb(m));
        munmap(m, N);
        t = now();
        m = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (huge) madvise(m, N, MADV_HUGEPAGE);
        int rc = par(m, N, 0, 8);
        printf(", \"h%d_par8_populate_s\": %.3f, \"h%d_par8_rc\": %d", huge, now() - t, huge, rc);
        t = now();
        CUresult r = p_cuMemHostRegister_v2(m, N, 0);
        printf(", \"h%d_register_populated_s\": %.3f, \"h%d_register_rc\": %d", huge, now() - t, huge, (int)r);
        if (!r) {
            printf(", \"h%d_registered_dtoh_GBps\": %.2f, \"h%d_registered_htod_GBps\": %.2f", huge, dma(1, m), huge,
                   dma(0, m));
            t = now();
            p_cuMemHostUnregister(m);
            printf(", \"h%d_unregister_s\": %.3f", huge, now() - t);
        }
        munmap(m, N);
        t = now();
        m = mmap(NULL, N, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (huge) madvise(m, N, MADV_HUGEPAGE);
        r = p_cuMemHostRegister_v2(m, N, 0);
        printf(", \"h%d_register_unpopulated_s\": %.3f", huge, now() - t);
        if (!r) p_cuMemHostUnregister(m);
        munmap(m, N);
        close(fd);
    }

    /* host-located VMM memory, exportable as a file descriptor */
    for (int kind = 0; kind < 2; kind++) {
        CUmemAllocationProp prop;
        memset(&prop, 0, sizeof prop);
        prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type = kind ? CU_MEM_LOCATION_TYPE_HOST : CU_MEM_LOCATION_TYPE_HOST_NUMA;
        prop.location.id = 0;
        prop.requestedHandleTypes = kind ? CU_MEM_HANDLE_TYPE_NONE : CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        size_t gran = 0;
        CUresult r = p_cuMemGetAllocationGranularity(&gran, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED);
        printf(", \"k%d_gran_rc\": %d, \"k%d_gran\": %zu", kind, (int)r, kind, gran);
        CUmemGenericAllocationHandle h = 0;
        double t = now();
        r = p_cuMemCreate(&h, N, &prop, 0);
        printf(", \"k%d_create_rc\": %d, \"k%d_create_s\": %.3f", kind, (int)r, kind, now() - t);
        if (r) continue;
        CUdeviceptr va = 0;
        t = now();
        r = p_cuMemAddressReserve(&va, N, 0, 0, 0);
        if (!r) r = p_cuMemMap(va, N, 0, h, 0);
        CUmemAccessDesc ad[2] = {{{CU_MEM_LOCATION_TYPE_DEVICE, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE},
                                 {{CU_MEM_LOCATION_TYPE_HOST_NUMA, 0}, CU_MEM_ACCESS_FLAGS_PROT_READWRITE}};
        if (!r) r = p_cuMemSetAccess(va, N, ad, 1);
        printf(", \"k%d_map_rc\": %d, \"k%d_map_s\": %.3f", kind, (int)r, kind, now() - t);
        if (r) continue;
        CUresult rh = p_cuMemSetAccess(va, N, &ad[1], 1);
        printf(", \"k%d_cpu_access_rc\": %d", kind, (int)rh);
        if (!rh) {
            t = now();
            memset((void *)(uintptr_t)va, 7, N);
            printf(", \"k%d_cpu_memset_GBps\": %.2f", kind, (double)N / (now() - t) / 1e9);
        }
        for (int rep = 0; rep < 2; rep++) {
            t = now();
            r = p_cuMemcpyDtoD_v2(va, dev, N);
            if (!r) r = p_cuCtxSynchronize();
            printf(", \"k%d_dev_to_hostvmm_GBps_%d\": %.2f", kind, rep, r ? -(double)r : (double)N / (now() - t) / 1e9);
            t = now();
            r = p_cuMemcpyDtoD_v2(dev, va, N);
            if (!r) r = p_cuCtxSynchronize();
            printf(", \"k%d_hostvmm_to_dev_GBps_%d\": %.2f", kind, rep, r ? -(double)r : (double)N / (now() - t) / 1e9);
        }
        if (kind == 0) {
            int fd = -1;
            r = p_cuMemExportToShareableHandle(&fd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0);
            printf(", \"k0_export_rc\": %d", (int)r);
            if (!r) {
                p_cuMemsetD8_v2(va, 0x5a, N);
                p_cuCtxSynchronize();
                /* drop every reference but the fd, then let another process import it */
                p_cuMemUnmap(va, N);
                p_cuMemRelease(h);
                fcntl(fd, F_SETFD, 0);
                fflush(stdout);
                pid_t pid = fork();
                if (pid == 0) {
                    char fds[16], ns[32];
                    snprintf(fds, sizeof fds, "%d", fd);
                    snprintf(ns, sizeof ns, "%zu", N);
                    execl("/proc/self/exe", argv[0], "child", fds, ns, (char *)NULL);
                    _exit(127);
                }
                int st = 0;
                waitpid(pid, &st, 0);
                printf("{\"child_exit\": %d}\n", st);
                close(fd);
                continue;
            }
        }
        p_cuMemUnmap(va, N);
        p_cuMemRelease(h);
    }
    printf("}\n");
    return 0;
}
