/* probe_mmap_log.c — an LD_PRELOAD library for bench/probe_va.c (run by bench/park_gpu.sh): logs to stderr every
 * mapping of 64 MiB or more the process makes or removes (mmap, mmap64, munmap), with the requested address, flags,
 * the result and the library that asked, so a GPU run shows how the driver reserves the range it hands device
 * addresses out of (and whether it does so through the C library at all: a driver that makes system calls directly
 * logs nothing here). Build: gcc -shared -fPIC -O2 bench/probe_mmap_log.c -o mmaplog.so -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

#define BIG ((size_t)64 << 20)

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);

static const char *caller(const void *ret) {
    Dl_info info;
    if (!dladdr(ret, &info) || !info.dli_fname) return "?";
    const char *slash = strrchr(info.dli_fname, '/');
    return slash ? slash + 1 : info.dli_fname;
}

static void say(const char *what, void *addr, size_t len, int prot, int flags, void *res, const void *ret) {
    char line[256];
    int n = snprintf(line, sizeof line, "%s hint=%p len=0x%zx prot=%d flags=0x%x -> %p by %s\n", what, addr, len, prot,
                     flags, res, caller(ret));
    if (n > 0) {
        ssize_t w = write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
        (void)w;
    }
}

static void *do_map(const char *name, void *addr, size_t len, int prot, int flags, int fd, off_t off, const void *ret) {
    static mmap_fn real;
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "mmap");
    void *res = real(addr, len, prot, flags, fd, off);
    if (len >= BIG) say(name, addr, len, prot, flags, res, ret);
    return res;
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return do_map("MMAP", addr, len, prot, flags, fd, off, __builtin_return_address(0));
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return do_map("MMAP64", addr, len, prot, flags, fd, off, __builtin_return_address(0));
}

int munmap(void *addr, size_t len) {
    static munmap_fn real;
    if (!real) *(void **)&real = dlsym(RTLD_NEXT, "munmap");
    int rc = real(addr, len);
    if (len >= BIG) say("MUNMAP", addr, len, 0, 0, rc ? MAP_FAILED : addr, __builtin_return_address(0));
    return rc;
}
