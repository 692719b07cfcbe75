/* module.c — modules, functions and launches. An image goes to the server whole (its size found from its
 * format: PTX text, ELF cubin, fatbin, or a fatbin wrapper). cuModuleGetFunction's reply carries the
 * function's parameter layout (offset and size of each parameter), cached here, so cuLaunchKernel can pack
 * kernelParams into one buffer and return without a round trip. */
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_internal.h"

#define FATBIN_MAGIC 0xBA55ED50u
#define FATBIN_WRAPPER_MAGIC 0x466243b1u
#define MAX_IMAGE (1ull << 30)
#define MAX_PARAMS 4096

/* ---- image size ---- */

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

static size_t elf_size(const uint8_t *p) {
    if (p[4] != 2) return 0; /* ELF64 only */
    uint64_t phoff = rd64(p + 0x20), shoff = rd64(p + 0x28);
    uint16_t phentsize = rd16(p + 0x36), phnum = rd16(p + 0x38);
    uint16_t shentsize = rd16(p + 0x3A), shnum = rd16(p + 0x3C);
    uint64_t end = 0x40;
    if (phoff + (uint64_t)phentsize * phnum > end) end = phoff + (uint64_t)phentsize * phnum;
    if (shoff + (uint64_t)shentsize * shnum > end) end = shoff + (uint64_t)shentsize * shnum;
    if (shentsize >= 0x40 && shoff < MAX_IMAGE) {
        for (unsigned i = 0; i < shnum; i++) {
            const uint8_t *sh = p + shoff + (uint64_t)i * shentsize;
            uint32_t type = rd32(sh + 4);
            uint64_t off = rd64(sh + 0x18), size = rd64(sh + 0x20);
            if (type != 8 /* SHT_NOBITS */ && off + size > end) end = off + size;
        }
    }
    return end <= MAX_IMAGE ? (size_t)end : 0;
}

static size_t image_size(const void **image) {
    const uint8_t *p = (const uint8_t *)*image;
    uint32_t magic = rd32(p);
    if (magic == FATBIN_WRAPPER_MAGIC) {
        const void *data;
        memcpy(&data, p + 8, sizeof data);
        *image = data;
        p = (const uint8_t *)data;
        magic = rd32(p);
    }
    if (magic == FATBIN_MAGIC) {
        uint64_t total = (uint64_t)rd16(p + 6) + rd64(p + 8);
        return total <= MAX_IMAGE ? (size_t)total : 0;
    }
    if (p[0] == 0x7f && p[1] == 'E' && p[2] == 'L' && p[3] == 'F') return elf_size(p);
    size_t n = strnlen((const char *)p, MAX_IMAGE);
    return n < MAX_IMAGE ? n + 1 : 0; /* PTX text, NUL included */
}

static CUresult load(CUmodule *module, const void *image) {
    FGC_REQUIRE_INIT();
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    size_t n = image_size(&image);
    if (n == 0) return CUDA_ERROR_INVALID_IMAGE;
    if (n > FG_DEFAULT_MAX_FRAME - 4096) {
        static int logged;
        return fgc_unsupported("cuModuleLoadData with an image larger than the frame limit", &logged);
    }
    fg_writer *w = fgc_begin(FG_OP_cuModuleLoadData);
    if (!w) return fgc_last_error();
    fg_put_u64(w, n);
    fgc_put_external(image, n);
    uint64_t id = 0;
    fgc_expect(&id, sizeof id);
    CUresult r = fgc_sync();
    if (r == CUDA_SUCCESS) *module = (CUmodule)(uintptr_t)id;
    return r;
}

CUresult fgc_cuModuleLoadData(CUmodule *module, const void *image) { return load(module, image); }

CUresult fgc_cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                CUjit_option *options, void **optionValues) {
    (void)options;
    (void)optionValues;
    if (numOptions) {
        static int logged;
        if (!__atomic_exchange_n(&logged, 1, __ATOMIC_RELAXED))
            fgc_log(FGC_LOG_WARN, "cuModuleLoadDataEx: JIT options are not forwarded yet; loading with defaults");
    }
    return load(module, image);
}

/* ---- parameter layouts, keyed by function id ---- */

typedef struct {
    uint64_t id;
    uint32_t n;
    uint32_t total; /* bytes of the packed parameter buffer */
    uint32_t *off_size; /* n pairs */
    char *name;         /* the kernel's name, for cuFuncGetName */
} layout;

static pthread_mutex_t lay_mu = PTHREAD_MUTEX_INITIALIZER;
static layout *lays;
static size_t lay_cap, lay_n;

static layout *lay_find(uint64_t id) {
    if (!lay_cap) return NULL;
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull) & (lay_cap - 1);
    while (lays[i].id) {
        if (lays[i].id == id) return &lays[i];
        i = (i + 1) & (lay_cap - 1);
    }
    return NULL;
}

static void lay_put(uint64_t id, uint32_t n, uint32_t *off_size, const char *name) {
    if ((lay_n + 1) * 2 > lay_cap) {
        size_t cap = lay_cap ? lay_cap * 2 : 256;
        layout *nl = (layout *)calloc(cap, sizeof *nl);
        if (!nl) { free(off_size); return; }
        for (size_t k = 0; k < lay_cap; k++) {
            if (!lays[k].id) continue;
            size_t i = (size_t)(lays[k].id * 0x9E3779B97F4A7C15ull) & (cap - 1);
            while (nl[i].id) i = (i + 1) & (cap - 1);
            nl[i] = lays[k];
        }
        free(lays);
        lays = nl;
        lay_cap = cap;
    }
    uint32_t total = 0;
    for (uint32_t k = 0; k < n; k++)
        if (off_size[2 * k] + off_size[2 * k + 1] > total) total = off_size[2 * k] + off_size[2 * k + 1];
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull) & (lay_cap - 1);
    while (lays[i].id && lays[i].id != id) i = (i + 1) & (lay_cap - 1);
    if (lays[i].id == id) {
        free(lays[i].off_size);
        free(lays[i].name);
    } else {
        lay_n++;
    }
    lays[i] = (layout){id, n, total, off_size, strdup(name)};
}

CUresult fgc_cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    FGC_REQUIRE_INIT();
    if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
    uint32_t *info = (uint32_t *)malloc(8 + 8 * MAX_PARAMS);
    if (!info) return CUDA_ERROR_OUT_OF_MEMORY;
    uint64_t id = 0;
    fg_writer *w = fgc_begin(FG_OP_cuModuleGetFunction);
    if (!w) { free(info); return fgc_last_error(); }
    fgc_put_handle(w, hmod);
    fgc_put_cstr(w, name);
    fgc_expect(&id, sizeof id);
    fgc_expect(info, 4 + 8 * MAX_PARAMS);
    size_t got = 0;
    CUresult r = fgc_sync_var(&got);
    if (r != CUDA_SUCCESS) { free(info); return r; }
    uint32_t n = info[0];
    if (got < 12 || n > MAX_PARAMS || got != 12 + 8ull * n) {
        free(info);
        return CUDA_ERROR_INVALID_IMAGE;
    }
    uint32_t *pairs = (uint32_t *)malloc(8ull * (n ? n : 1));
    if (!pairs) { free(info); return CUDA_ERROR_OUT_OF_MEMORY; }
    memcpy(pairs, info + 1, 8ull * n);
    free(info);
    pthread_mutex_lock(&lay_mu);
    lay_put(id, n, pairs, name);
    pthread_mutex_unlock(&lay_mu);
    *hfunc = (CUfunction)(uintptr_t)id;
    return CUDA_SUCCESS;
}

CUresult fgc_cuFuncGetParamInfo(CUfunction func, size_t paramIndex, size_t *paramOffset, size_t *paramSize) {
    FGC_REQUIRE_INIT();
    pthread_mutex_lock(&lay_mu);
    layout *l = lay_find(fgc_handle_id(func));
    CUresult r = CUDA_ERROR_INVALID_HANDLE;
    if (l) {
        r = CUDA_ERROR_INVALID_VALUE;
        if (paramIndex < l->n) {
            if (paramOffset) *paramOffset = l->off_size[2 * paramIndex];
            if (paramSize) *paramSize = l->off_size[2 * paramIndex + 1];
            r = CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&lay_mu);
    return r;
}

CUresult fgc_cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                            unsigned int by, unsigned int bz, unsigned int shmem, CUstream hStream,
                            void **kernelParams, void **extra) {
    FGC_REQUIRE_INIT();
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    if (kernelParams && extra) return CUDA_ERROR_INVALID_VALUE;
    /* Launch-configuration errors the driver reports at once are checked here too, so they are not
     * deferred to the next sync call (limits of every supported GPU: 1024 threads per block). */
    if (!gx || !gy || !gz || !bx || !by || !bz || gx > 0x7fffffffu || gy > 65535 || gz > 65535 || bx > 1024 ||
        by > 1024 || bz > 64 || (uint64_t)bx * by * bz > 1024)
        return CUDA_ERROR_INVALID_VALUE;
    const void *ebuf = NULL;
    size_t esize = 0;
    if (extra) {
        for (int i = 0; extra[i] != CU_LAUNCH_PARAM_END; i += 2) {
            if (i > 64) return CUDA_ERROR_INVALID_VALUE;
            if (extra[i] == CU_LAUNCH_PARAM_BUFFER_POINTER) ebuf = extra[i + 1];
            else if (extra[i] == CU_LAUNCH_PARAM_BUFFER_SIZE) esize = extra[i + 1] ? *(size_t *)extra[i + 1] : 0;
            else return CUDA_ERROR_INVALID_VALUE;
        }
        if (esize && !ebuf) return CUDA_ERROR_INVALID_VALUE;
    }
    pthread_mutex_lock(&lay_mu);
    layout *l = lay_find(fgc_handle_id(f));
    uint32_t n = l ? l->n : 0, total = l ? l->total : 0;
    uint32_t pairs_local[64];
    uint32_t *pairs = NULL;
    if (l && kernelParams) {
        pairs = n <= 32 ? pairs_local : (uint32_t *)malloc(8ull * n);
        if (pairs) memcpy(pairs, l->off_size, 8ull * n);
    }
    pthread_mutex_unlock(&lay_mu);
    if (!l) return CUDA_ERROR_INVALID_HANDLE;
    if (kernelParams && n && !pairs) return CUDA_ERROR_OUT_OF_MEMORY;
    if (!kernelParams && !extra && n) return CUDA_ERROR_INVALID_VALUE;
    fg_writer *w = fgc_begin(FG_OP_cuLaunchKernel);
    if (!w) {
        if (pairs != pairs_local) free(pairs);
        return fgc_last_error();
    }
    fgc_put_handle(w, f);
    uint32_t dims[7] = {gx, gy, gz, bx, by, bz, shmem};
    fg_put(w, dims, sizeof dims);
    fgc_put_handle(w, hStream);
    if (extra) {
        fg_put_u32(w, (uint32_t)esize);
        fg_put(w, ebuf, esize);
    } else {
        fg_put_u32(w, total);
        uint8_t *dst = (uint8_t *)fg_put_space(w, total);
        if (dst) {
            memset(dst, 0, total);
            for (uint32_t k = 0; k < n; k++) {
                if (!kernelParams[k]) continue;
                memcpy(dst + pairs[2 * k], kernelParams[k], pairs[2 * k + 1]);
            }
        }
    }
    if (pairs != pairs_local) free(pairs);
    return fgc_async();
}

CUresult fgc_cuFuncGetName(const char **name, CUfunction hfunc) {
    FGC_REQUIRE_INIT();
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lay_mu);
    layout *l = lay_find(fgc_handle_id(hfunc));
    if (l) *name = l->name;
    pthread_mutex_unlock(&lay_mu);
    return l && l->name ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}
