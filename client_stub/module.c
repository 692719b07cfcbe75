/* module.c — modules and functions. An image's size is found from its format (PTX text, ELF cubin, fatbin,
 * or a fatbin wrapper) and it is shipped content-addressed (image.c). cuModuleGetFunction's reply carries the
 * function's parameter layout (offset and size of each parameter), cached here by virtual id, so a launch
 * (launch.c) can pack kernelParams into one buffer and return without a round trip.
 *
 * cuModuleLoadDataEx (and cuLibraryLoadData, library.c) send their JIT options in the load record's extra bytes
 * (jit_options.c); the node's driver compiles with them, and its outputs come back into the application's arrays
 * as the driver would write them: log text into the log buffers, the bytes written into the size options, the
 * wall time, threads per block. They come back when the load fails too, which is when an error log matters. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgc_impl.h"
#include "fgc_image.h"
#include "fgc_internal.h"
#include "fgc_jit.h"

#define FATBIN_MAGIC 0xBA55ED50u
#define FATBIN_WRAPPER_MAGIC 0x466243b1u
#define MAX_IMAGE FG_MAX_IMAGE
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

size_t fgc_image_size(const void **image) {
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

CUresult fgc_image_load_jit(uint16_t op, const void *image, size_t n, unsigned numOptions, CUjit_option *options,
                            void **optionValues, uint64_t *id) {
    if (!numOptions) return fgc_image_load(op, image, n, NULL, 0, id);
    size_t want = 16;
    CUresult r = fgc_jit_encode(NULL, numOptions, options, optionValues, NULL);
    if (r != CUDA_SUCCESS) return r;
    fg_writer x;
    fg_writer_init(&x, 256, (size_t)1 << 20);
    (void)fgc_jit_encode(&x, numOptions, options, optionValues, &want);
    uint8_t *reply = x.failed ? NULL : (uint8_t *)malloc(want);
    if (!reply) {
        fg_writer_free(&x);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    size_t got = 0;
    r = fgc_image_call(op, image, n, x.buf, x.len, reply, want, &got);
    fg_writer_free(&x);
    if (r == CUDA_SUCCESS) { /* "u64 id, u32 the driver's result, outputs" (server/replay/module.c) */
        fg_reader rd;
        fg_reader_init(&rd, reply, got);
        uint64_t v = fg_get_u64(&rd);
        r = (CUresult)fg_get_u32(&rd);
        if (rd.failed || fgc_jit_apply(&rd, numOptions, options, optionValues, NULL) || (r == CUDA_SUCCESS && !v))
            r = CUDA_ERROR_UNKNOWN;
        else if (r == CUDA_SUCCESS)
            *id = v;
    }
    free(reply);
    return r;
}

static CUresult load(CUmodule *module, const void *image, unsigned numOptions, CUjit_option *options,
                     void **optionValues) {
    FGC_REQUIRE_INIT();
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    size_t n = fgc_image_size(&image);
    if (n == 0) return CUDA_ERROR_INVALID_IMAGE;
    uint64_t id = 0;
    CUresult r = numOptions ? fgc_image_load_jit(FG_OP_cuModuleLoadDataEx, image, n, numOptions, options,
                                                 optionValues, &id)
                            : fgc_image_load(FG_OP_cuModuleLoadData, image, n, NULL, 0, &id);
    if (r == CUDA_SUCCESS) *module = (CUmodule)(uintptr_t)id;
    return r;
}

CUresult fgc_cuModuleLoadData(CUmodule *module, const void *image) { return load(module, image, 0, NULL, NULL); }

/* The file is read here, on the client (the server cannot see the client's files), and shipped like an image. */
CUresult fgc_cuModuleLoad(CUmodule *module, const char *fname) {
    FGC_REQUIRE_INIT();
    if (!module || !fname) return CUDA_ERROR_INVALID_VALUE;
    CUresult r;
    void *buf = fgc_read_image_file(fname, &r);
    if (!buf) return r;
    r = load(module, buf, 0, NULL, NULL);
    free(buf);
    return r;
}

CUresult fgc_cuModuleLoadDataEx(CUmodule *module, const void *image, unsigned int numOptions,
                                CUjit_option *options, void **optionValues) {
    return load(module, image, numOptions, options, optionValues);
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

void fgc_layout_put(uint64_t id, uint32_t n, uint32_t *pairs, const char *name) {
    pthread_mutex_lock(&lay_mu);
    lay_put(id, n, pairs, name);
    pthread_mutex_unlock(&lay_mu);
}

int fgc_layout_alias(uint64_t from, uint64_t to) {
    pthread_mutex_lock(&lay_mu);
    layout *l = lay_find(from);
    uint32_t *pairs = l ? (uint32_t *)malloc(8ull * (l->n ? l->n : 1)) : NULL;
    char *name = l && l->name ? strdup(l->name) : NULL;
    if (pairs) {
        memcpy(pairs, l->off_size, 8ull * l->n);
        lay_put(to, l->n, pairs, name ? name : "");
    }
    pthread_mutex_unlock(&lay_mu);
    free(name);
    return pairs ? 0 : -1;
}

int fgc_layout_get(uint64_t id, uint32_t *n, uint32_t *total, uint32_t **pairs, size_t *cap) {
    pthread_mutex_lock(&lay_mu);
    layout *l = lay_find(id);
    int rc = -1;
    if (l) {
        *n = l->n;
        *total = l->total;
        rc = 0;
        if (l->n > *cap) { /* the caller's buffer grows once to the largest layout it meets */
            uint32_t *np = (uint32_t *)realloc(*pairs, 8ull * l->n);
            if (np) {
                *pairs = np;
                *cap = l->n;
            } else {
                rc = -2;
            }
        }
        if (rc == 0 && l->n) memcpy(*pairs, l->off_size, 8ull * l->n);
    }
    pthread_mutex_unlock(&lay_mu);
    return rc;
}

CUresult fgc_sync_with_layout(uint64_t *id, const char *name) {
    uint32_t *info = (uint32_t *)malloc(8 + 8 * MAX_PARAMS);
    if (!info) return CUDA_ERROR_OUT_OF_MEMORY;
    fgc_expect(id, sizeof *id);
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
    fgc_layout_put(*id, n, pairs, name);
    return CUDA_SUCCESS;
}

CUresult fgc_cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    FGC_REQUIRE_INIT();
    if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
    uint64_t id = 0;
    fg_writer *w = fgc_begin(FG_OP_cuModuleGetFunction);
    if (!w) return fgc_last_error();
    fgc_put_handle(w, hmod);
    fgc_put_cstr(w, name);
    CUresult r = fgc_sync_with_layout(&id, name);
    if (r == CUDA_SUCCESS) *hfunc = (CUfunction)(uintptr_t)id;
    return r;
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

CUresult fgc_cuFuncGetName(const char **name, CUfunction hfunc) {
    FGC_REQUIRE_INIT();
    if (!name) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&lay_mu);
    layout *l = lay_find(fgc_handle_id(hfunc));
    if (l) *name = l->name;
    pthread_mutex_unlock(&lay_mu);
    return l && l->name ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

CUresult fgc_cuKernelGetParamInfo(CUkernel kernel, size_t paramIndex, size_t *paramOffset, size_t *paramSize) {
    return fgc_cuFuncGetParamInfo((CUfunction)kernel, paramIndex, paramOffset, paramSize);
}

CUresult fgc_cuKernelGetName(const char **name, CUkernel hfunc) { return fgc_cuFuncGetName(name, (CUfunction)hfunc); }

/* The module's functions (the library's kernels), in the driver's order: their names come in one round trip, then
 * each is named back with cuModuleGetFunction (cuLibraryGetKernel: its id and parameter layout), so the handles are
 * the same as for any other function (kernel). */
#define ENUM_NAMES_CAP (1u << 20)
static CUresult enumerate(uint16_t op, void **out, unsigned int capacity, const void *mod) {
    FGC_REQUIRE_INIT();
    if (!out) return CUDA_ERROR_INVALID_VALUE;
    uint8_t *buf = NULL;
    CUresult r;
    fg_writer *w = fgc_begin_var(op, ENUM_NAMES_CAP, &buf, &r);
    if (!w) return r;
    fgc_put_handle(w, mod);
    fg_put_u32(w, ENUM_NAMES_CAP);
    fg_reader rd;
    if ((r = fgc_sync_var_reply(buf, ENUM_NAMES_CAP, &rd)) != CUDA_SUCCESS) return r;
    size_t got = fg_reader_left(&rd);
    uint32_t count = 0;
    if (got >= 4) memcpy(&count, buf, 4);
    else r = CUDA_ERROR_INVALID_IMAGE;
    if (r == CUDA_SUCCESS && count > capacity) r = CUDA_ERROR_INVALID_VALUE;
    size_t at = 4;
    char name[4097];
    for (uint32_t i = 0; i < count && r == CUDA_SUCCESS; i++) {
        uint32_t n = 0;
        if (at + 4 > got) { r = CUDA_ERROR_INVALID_IMAGE; break; }
        memcpy(&n, buf + at, 4);
        at += 4;
        if (n > 4096 || at + n > got) { r = CUDA_ERROR_INVALID_IMAGE; break; }
        memcpy(name, buf + at, n);
        name[n] = 0;
        at += n;
        r = op == FG_OP_cuLibraryEnumerateKernels ? fgc_cuLibraryGetKernel((CUkernel *)&out[i], (CUlibrary)mod, name)
                                                  : fgc_cuModuleGetFunction((CUfunction *)&out[i], (CUmodule)mod, name);
    }
    free(buf);
    return r;
}

CUresult fgc_cuModuleEnumerateFunctions(CUfunction *functions, unsigned int numFunctions, CUmodule mod) {
    return enumerate(FG_OP_cuModuleEnumerateFunctions, (void **)functions, numFunctions, mod);
}

CUresult fgc_cuLibraryEnumerateKernels(CUkernel *kernels, unsigned int numKernels, CUlibrary lib) {
    return enumerate(FG_OP_cuLibraryEnumerateKernels, (void **)kernels, numKernels, lib);
}
