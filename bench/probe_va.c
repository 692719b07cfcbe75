/* probe_va.c — where the real driver puts device addresses, for parking (a restored session needs its old
 * addresses in a fresh worker; server/replay/park_place.c): whether cuMemAddressReserve honours a requested address
 * in the session arena (server/park/arena.py), elsewhere, and inside the range it hands out; whether it hands out
 * the lowest free range (what filling below an old address relies on); which mapping of /proc/self/maps holds its
 * ranges (how large the driver's range is); and, with PROBE_BIAS_MB=N, whether N MiB mapped before cuInit move its
 * range down by as much (what a restoring worker's bias relies on). Run it twice, and under `setarch -R`, to see
 * whether the places repeat across processes. Prints one JSON object. Usage: probe_va [HINT_HEX...] */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cuda.h>

#define F(name) static __typeof__(&name) p_##name
F(cuInit); F(cuDeviceGet); F(cuDevicePrimaryCtxRetain); F(cuCtxSetCurrent); F(cuMemAlloc_v2);
F(cuMemAddressReserve); F(cuMemAddressFree);

#define MiB ((size_t)1 << 20)

static CUdeviceptr reserve(size_t size, CUdeviceptr want, int *rc) {
    CUdeviceptr got = 0;
    *rc = (int)p_cuMemAddressReserve(&got, size, 0, want, 0);
    return *rc ? 0 : got;
}

/* The /proc/self/maps line holding addr, and the total size of the adjacent mappings with its permissions. */
static void mapping_of(unsigned long long addr, const char *key) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], found[512] = "";
    unsigned long long lo, hi, run_lo = 0, run_hi = 0, prev_hi = 0;
    char perms[8], run_perms[8] = "";
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "%llx-%llx %7s", &lo, &hi, perms) != 3) continue;
        if (lo == prev_hi && strcmp(perms, run_perms) == 0) run_hi = hi;
        else if (!*found) { run_lo = lo; run_hi = hi; strcpy(run_perms, perms); }
        if (addr >= lo && addr < hi && !*found) {
            snprintf(found, sizeof found, "%s", line);
            found[strcspn(found, "\n")] = 0;
        }
        if (*found && lo > addr && lo != prev_hi) break;
        prev_hi = hi;
    }
    if (f) fclose(f);
    printf(", \"%s\": {\"line\": \"%s\", \"run\": \"0x%llx-0x%llx\", \"run_GiB\": %.3f}", key, found, run_lo, run_hi,
           (double)(run_hi - run_lo) / (1 << 30));
}

int main(int argc, char **argv) {
    const char *bias = getenv("PROBE_BIAS_MB");
    if (bias && atoi(bias) > 0) /* before the driver maps anything, as a restoring worker does */
        mmap(NULL, (size_t)atoi(bias) * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { fprintf(stderr, "no libcuda: %s\n", dlerror()); return 1; }
#define L(name) *(void **)&p_##name = dlsym(h, #name)
    L(cuInit); L(cuDeviceGet); L(cuDevicePrimaryCtxRetain); L(cuCtxSetCurrent); L(cuMemAlloc_v2);
    L(cuMemAddressReserve); L(cuMemAddressFree);
    CUdevice d; CUcontext c;
    if (p_cuInit(0) || p_cuDeviceGet(&d, 0) || p_cuDevicePrimaryCtxRetain(&c, d) || p_cuCtxSetCurrent(c)) return 1;
    printf("{\"self\": \"%p\", \"bias_MiB\": %d", (void *)&main, bias ? atoi(bias) : 0);
    const char *dflt[] = {"600000000000", "7f0000000000", "200000000", "10000000000"};
    int n = argc > 1 ? argc - 1 : 4, rc;
    for (int i = 0; i < n; i++) {
        const char *hex = argc > 1 ? argv[i + 1] : dflt[i];
        CUdeviceptr want = (CUdeviceptr)strtoull(hex, NULL, 16), got = reserve(2 * MiB, want, &rc);
        printf(", \"reserve_0x%s\": {\"rc\": %d, \"got\": \"0x%llx\", \"honoured\": %d}", hex, rc,
               (unsigned long long)got, !rc && got == want);
        if (!rc) p_cuMemAddressFree(got, 2 * MiB);
    }
    /* lowest free first? A, B, free A, then 2 MiB (A again?) and 4 MiB (above B?) */
    CUdeviceptr a = reserve(2 * MiB, 0, &rc), b = reserve(2 * MiB, 0, &rc);
    p_cuMemAddressFree(a, 2 * MiB);
    CUdeviceptr a2 = reserve(2 * MiB, 0, &rc), c4 = reserve(4 * MiB, 0, &rc);
    printf(", \"first_fit\": {\"a\": \"0x%llx\", \"b\": \"0x%llx\", \"a_again\": \"0x%llx\", \"four_MiB\": \"0x%llx\", "
           "\"lowest_free_first\": %d}", (unsigned long long)a, (unsigned long long)b, (unsigned long long)a2,
           (unsigned long long)c4, a2 == a && c4 > b);
    mapping_of(a, "mapping_of_first_range");
    /* filling: a 1 GiB placeholder at the lowest free range, then 2 MiB: right after it? */
    CUdeviceptr pad = reserve(1024 * MiB, a, &rc), next = reserve(2 * MiB, 0, &rc);
    printf(", \"fill\": {\"pad_1GiB\": \"0x%llx\", \"next\": \"0x%llx\", \"next_follows_pad\": %d}",
           (unsigned long long)pad, (unsigned long long)next, pad && next == pad + 1024 * MiB);
    /* requested addresses inside the driver's range: above everything handed out so far, and in a freed gap */
    CUdeviceptr top = next > c4 ? next : c4;
    for (int i = 0; i < 3; i++) {
        CUdeviceptr want = i == 0 ? top + 64 * MiB : i == 1 ? top + 1024 * MiB : pad + 512 * MiB;
        if (i == 2) p_cuMemAddressFree(pad, 1024 * MiB);
        CUdeviceptr got = reserve(2 * MiB, want, &rc);
        printf(", \"reserve_inside_%d\": {\"rc\": %d, \"want\": \"0x%llx\", \"got\": \"0x%llx\", \"honoured\": %d}", i, rc,
               (unsigned long long)want, (unsigned long long)got, !rc && got == want);
        if (!rc) p_cuMemAddressFree(got, 2 * MiB);
    }
    /* one large range per session (an arena the worker sub-allocates): where a large reservation lands with no
     * address asked and with the arena's, whether the same size lands there again after a free, and whether a
     * placeholder mapped first (PROT_NONE) moves it down by as much */
    const size_t big[3] = {1024 * MiB, 64 * 1024 * MiB, 1024 * 1024 * MiB};
    for (int i = 0; i < 3; i++) {
        int r1, r2, r3, r4;
        CUdeviceptr g1 = reserve(big[i], 0, &r1);
        if (!r1) p_cuMemAddressFree(g1, big[i]);
        CUdeviceptr g2 = reserve(big[i], 0x600000000000ull, &r2);
        if (!r2) p_cuMemAddressFree(g2, big[i]);
        CUdeviceptr g3 = reserve(big[i], 0, &r3);
        void *ph = mmap(NULL, 256 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (!r3) p_cuMemAddressFree(g3, big[i]);
        CUdeviceptr g4 = reserve(big[i], 0, &r4);
        printf(", \"big_%zuGiB\": {\"rc\": [%d, %d, %d, %d], \"plain\": \"0x%llx\", \"arena_hint\": \"0x%llx\", "
               "\"again\": \"0x%llx\", \"placeholder\": \"%p\", \"after_placeholder\": \"0x%llx\"}", big[i] >> 30,
               r1, r2, r3, r4, (unsigned long long)g1, (unsigned long long)g2, (unsigned long long)g3, ph,
               (unsigned long long)g4);
        if (!r4) {
            char key[32];
            snprintf(key, sizeof key, "big_%zuGiB_mapping", big[i] >> 30);
            mapping_of(g4, key);
            p_cuMemAddressFree(g4, big[i]);
        }
        if (ph != MAP_FAILED) munmap(ph, 256 * MiB);
    }
    for (int i = 0; i < 3; i++) {
        CUdeviceptr p = 0;
        CUresult r = p_cuMemAlloc_v2(&p, (2 * MiB) << i);
        printf(", \"alloc_%d\": {\"rc\": %d, \"ptr\": \"0x%llx\"}", i, (int)r, (unsigned long long)p);
    }
    printf("}\n");
    return 0;
}
