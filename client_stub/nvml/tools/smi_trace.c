/* smi_trace.c - diagnostic for the GPU host, not part of the shim: a libnvidia-ml.so.1 that stands in front of
 * the real NVML (loaded as its dependency libnvml_real.so, see smi_trace.sh) and wraps the private table that
 * nvidia-smi gets from nvmlInternalGetExportTable. Every slot call is written to $SMI_TRACE_FILE (default stderr)
 * with its six integer argument registers, the bytes each argument points at before and after the call (when
 * readable), the return value, and the real function's offset in the real library. This is how the meaning of
 * a slot the shim must answer is established: by watching what the real NVML does with it.
 *
 * All other NVML symbols resolve to the real library through the dependency, so nvidia-smi runs as usual. Slots
 * are forwarded with six integer registers (x86-64: rdi rsi rdx rcx r8 r9); floating-point arguments ride in
 * registers the wrapper does not touch before the call only if the compiler keeps it that way, and stack
 * arguments are not forwarded, so a slot with more than six integer arguments would be traced wrongly. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

enum { SLOTS = 320, DUMP = 96 };

typedef uintptr_t (*slot_fn)(uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t, uintptr_t);
typedef int (*get_table_fn)(const void **, const void *);

static slot_fn g_real[SLOTS];
static uintptr_t g_table[SLOTS];
static FILE *g_out;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned long g_seq;

static FILE *out(void)
{
    if (!g_out) {
        const char *p = getenv("SMI_TRACE_FILE");
        g_out = p ? fopen(p, "a") : NULL;
        if (!g_out)
            g_out = stderr;
        setvbuf(g_out, NULL, _IOLBF, 0);
    }
    return g_out;
}

/* Bytes readable at p (up to n), copied into buf; 0 when p is not a readable address. */
static size_t peek(uintptr_t p, unsigned char *buf, size_t n)
{
    if (p < 4096)
        return 0;
    struct iovec local = { buf, n }, remote = { (void *)p, n };
    ssize_t got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    if (got <= 0) { /* the range may cross into an unmapped page: try up to the page end */
        size_t to_page = 4096 - (p & 4095);
        if (to_page >= n)
            return 0;
        local.iov_len = remote.iov_len = to_page;
        got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    }
    return got > 0 ? (size_t)got : 0;
}

static void hexdump(FILE *f, const char *tag, int arg, const unsigned char *b, size_t n)
{
    fprintf(f, "    a%d %s:", arg, tag);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%02x", i % 8 ? "" : " ", b[i]);
    fprintf(f, "  |");
    for (size_t i = 0; i < n; i++)
        fputc(b[i] >= 32 && b[i] < 127 ? b[i] : '.', f);
    fprintf(f, "|\n");
}

static uintptr_t traced(unsigned int slot, uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3, uintptr_t a4,
                        uintptr_t a5)
{
    uintptr_t a[6] = { a0, a1, a2, a3, a4, a5 };
    unsigned char before[6][DUMP], after[6][DUMP];
    size_t nb[6], na[6];
    for (int i = 0; i < 6; i++)
        nb[i] = peek(a[i], before[i], DUMP);
    uintptr_t r = g_real[slot](a0, a1, a2, a3, a4, a5);
    for (int i = 0; i < 6; i++)
        na[i] = peek(a[i], after[i], DUMP);
    Dl_info info;
    memset(&info, 0, sizeof info);
    dladdr((void *)g_real[slot], &info);
    pthread_mutex_lock(&g_mu);
    FILE *f = out();
    fprintf(f, "#%lu slot %u(%#" PRIxPTR ", %#" PRIxPTR ", %#" PRIxPTR ", %#" PRIxPTR ", %#" PRIxPTR ", %#" PRIxPTR
            ") -> %#" PRIxPTR " (int %d)  fn %s+%#" PRIxPTR "\n",
            ++g_seq, slot, a0, a1, a2, a3, a4, a5, r, (int)r, info.dli_fname ? info.dli_fname : "?",
            (uintptr_t)g_real[slot] - (uintptr_t)info.dli_fbase);
    for (int i = 0; i < 6; i++) {
        if (nb[i])
            hexdump(f, "before", i, before[i], nb[i]);
        if (na[i] && (na[i] != nb[i] || memcmp(before[i], after[i], na[i])))
            hexdump(f, "after ", i, after[i], na[i]);
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

#define DECADE(X, t) X(t##0) X(t##1) X(t##2) X(t##3) X(t##4) X(t##5) X(t##6) X(t##7) X(t##8) X(t##9)
#define ALL(X)                                                                                                 \
    X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) DECADE(X, 1) DECADE(X, 2) DECADE(X, 3) DECADE(X, 4)          \
    DECADE(X, 5) DECADE(X, 6) DECADE(X, 7) DECADE(X, 8) DECADE(X, 9) DECADE(X, 10) DECADE(X, 11)               \
    DECADE(X, 12) DECADE(X, 13) DECADE(X, 14) DECADE(X, 15) DECADE(X, 16) DECADE(X, 17) DECADE(X, 18)          \
    DECADE(X, 19) DECADE(X, 20) DECADE(X, 21) DECADE(X, 22) DECADE(X, 23) DECADE(X, 24) DECADE(X, 25)          \
    DECADE(X, 26) DECADE(X, 27) DECADE(X, 28) DECADE(X, 29) DECADE(X, 30) DECADE(X, 31)
#define DEFINE(n)                                                                                              \
    static uintptr_t w##n(uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3, uintptr_t a4, uintptr_t a5)  \
    {                                                                                                          \
        return traced(n, a0, a1, a2, a3, a4, a5);                                                             \
    }
#define ENTRY(n) [n] = w##n,
ALL(DEFINE)
static const slot_fn g_wrappers[SLOTS] = { ALL(ENTRY) };

__attribute__((visibility("default"))) int nvmlInternalGetExportTable(const void **table, const void *guid)
{
    static get_table_fn real;
    if (!real) {
        void *h = dlopen("libnvml_real.so", RTLD_NOW | RTLD_NOLOAD);
        real = (get_table_fn)dlsym(h ? h : RTLD_NEXT, "nvmlInternalGetExportTable");
    }
    if (!real) {
        fprintf(out(), "smi_trace: the real nvmlInternalGetExportTable was not found: %s\n", dlerror());
        return 999; /* NVML_ERROR_UNKNOWN */
    }
    const unsigned char *g = guid;
    int r = real(table, guid);
    fprintf(out(), "getExportTable(%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x) -> %d\n",
            g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15],
            r);
    if (r != 0 || !table || !*table)
        return r;
    const uintptr_t *t = *table;
    size_t n = t[0] / sizeof(uintptr_t);
    fprintf(out(), "  table at %p: size %" PRIuPTR " bytes (%zu slots)\n", (const void *)t, t[0], n);
    if (n > SLOTS) {
        fprintf(out(), "  more slots than the tracer wraps (%d): returned unwrapped\n", SLOTS);
        return r;
    }
    pthread_mutex_lock(&g_mu);
    g_table[0] = t[0];
    for (size_t i = 1; i < n; i++) {
        g_real[i] = (slot_fn)t[i];
        g_table[i] = t[i] ? (uintptr_t)g_wrappers[i] : 0;
    }
    pthread_mutex_unlock(&g_mu);
    *table = g_table;
    return r;
}
