/* module.c — modules, libraries, functions, kernels and launches for a session. Images come from the
 * content-addressed store (image.c); cuModuleGetFunction and cuLibraryGetKernel answer with the parameter
 * layout; launches pass the client's packed parameter buffer through CU_LAUNCH_PARAM_BUFFER_POINTER.
 *
 * cuModuleLoadDataEx and cuLibraryLoadData carry their JIT options in the load record's extra bytes
 * (jit_options.c's form; cuModuleLoadData's extra bytes are ignored). Without options a load answers as
 * cuModuleLoadData does: the driver's result, and "u64 id" on success. With options the driver's logs matter most
 * when the load fails, so once the image is there the record succeeds and answers "u64 id (0 when the load
 * failed), u32 the driver's result, outputs" (the outputs of jit_options.c). A missing or refused image
 * (NEED_IMAGE, CUDA_ERROR_INVALID_IMAGE) is answered first and alone, as without options; so is an option list
 * the worker refuses (malformed, too long, naming client memory). Library options are not forwarded (the stub
 * logs that it ignores them). */
#include <stdlib.h>
#include <string.h>

#include "fgs_impl.h"
#include "fgs_jit.h"
#include "fgs_journal.h"
#include "fgs_session.h"

/* cuModuleLoadData takes no length: the driver finds the end of an ELF from its section table, of a fatbin from
 * its header, of PTX from the NUL. Check that each lies inside the n bytes the client sent. */
static int image_fits(const uint8_t *p, uint64_t n) {
    if (n >= 4 && memcmp(p, "\x7f" "ELF", 4) == 0) {
        uint64_t shoff;
        uint16_t shentsize, shnum;
        if (n < 64 || p[4] != 2) return 0; /* ELF64 only */
        memcpy(&shoff, p + 40, 8);
        memcpy(&shentsize, p + 58, 2);
        memcpy(&shnum, p + 60, 2);
        if (shentsize != 64 || shoff < 64 || shoff > n || n - shoff < 64) return 0;
        if (shnum == 0) { /* the real count is in section 0's sh_size */
            uint64_t big;
            memcpy(&big, p + shoff + 32, 8);
            if (big > (n - shoff) / 64) return 0;
            shnum = (uint16_t)big; /* <= n/64: fits when it passes the check below */
            if (big != shnum) return 0;
        }
        if ((uint64_t)shnum * 64 > n - shoff) return 0;
        for (uint32_t i = 1; i < shnum; i++) {
            const uint8_t *sh = p + shoff + (uint64_t)i * 64;
            uint32_t type;
            uint64_t off, size;
            memcpy(&type, sh + 4, 4);
            memcpy(&off, sh + 24, 8);
            memcpy(&size, sh + 32, 8);
            if (type != 8 /* SHT_NOBITS */ && (off > n || size > n - off)) return 0;
        }
        return 1;
    }
    uint32_t magic = 0;
    if (n >= 4) memcpy(&magic, p, 4);
    if (magic == 0xBA55ED50u) { /* fatbin: u32 magic, u16 version, u16 header size, u64 payload size */
        uint16_t hsize;
        uint64_t fsize;
        if (n < 16) return 0;
        memcpy(&hsize, p + 6, 2);
        memcpy(&fsize, p + 8, 8);
        return hsize >= 16 && fsize <= n - hsize;
    }
    if (magic == 0x466243B1u) return 0; /* a fatbin wrapper holds a host pointer: never from a client */
    return 1; /* PTX: load() appends a NUL */
}

/* The extra bytes of a load record (the stub's JIT options), read ahead of fgs_image_get, which skips them. */
static int load_extra(fg_reader *r, fg_reader *x) {
    fg_reader peek = *r;
    fg_take(&peek, 32 + 8);
    uint32_t n = fg_get_u32(&peek);
    const uint8_t *extra = fg_take(&peek, n);
    if (peek.failed) return -1;
    fg_reader_init(x, extra, n);
    return (int)(n != 0);
}

/* One load; `lib` picks cuLibraryLoadData, `opts` whether the extra bytes are JIT options. */
static CUresult load(fgs_session *S, fg_reader *r, fg_writer *out, int lib, int opts) {
    fg_reader x;
    int has = load_extra(r, &x);
    if (has < 0) return FGS_PROTOCOL_ERROR;
    uint64_t n = 0;
    CUresult res;
    const uint8_t *img = fgs_image_get(S, r, &n, &res);
    if (!img) return res;
    if (!image_fits(img, n)) return CUDA_ERROR_INVALID_IMAGE;
    if (lib && !S->api->cuLibraryLoadData) return fgs_missing(S, "cuLibraryLoadData");
    if (!opts || !has) {
        void *h = NULL;
        res = lib ? S->api->cuLibraryLoadData((CUlibrary *)&h, img, NULL, NULL, 0, NULL, NULL, 0)
                  : S->api->cuModuleLoadData((CUmodule *)&h, img);
        if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, lib ? FGH_LIBRARY : FGH_MODULE, h));
        return res;
    }
    fgs_jit j;
    res = fgs_jit_decode(S, &x, &j);
    if (res == CUDA_SUCCESS && fg_reader_left(&x)) res = CUDA_ERROR_INVALID_VALUE;
    if (res != CUDA_SUCCESS) {
        fgs_jit_free(&j);
        return res == FGS_PROTOCOL_ERROR ? CUDA_ERROR_INVALID_VALUE : res; /* the record itself is well formed */
    }
    void *h = NULL;
    res = lib ? S->api->cuLibraryLoadData((CUlibrary *)&h, img, j.opt, j.val, j.n, NULL, NULL, 0)
              : S->api->cuModuleLoadDataEx((CUmodule *)&h, img, j.n, j.opt, j.val);
    fg_put_u64(out, res == CUDA_SUCCESS ? fgs_handle_add(S, lib ? FGH_LIBRARY : FGH_MODULE, h) : 0);
    fg_put_u32(out, (uint32_t)res);
    fgs_jit_outputs(&j, out);
    fgs_jit_free(&j);
    return CUDA_SUCCESS;
}

CUresult fgs_cuLibraryLoadData(fgs_session *S, fg_reader *r, fg_writer *out) { return load(S, r, out, 1, 1); }

void fgs_put_param_layout(fgs_session *S, void *fn, int is_kernel, fg_writer *out) {
    size_t count_at = out->len;
    fg_put_u32(out, 0);
    uint32_t n = 0;
    int pushed = 0;
    if (is_kernel && S->api->cuKernelGetParamInfo && S->api->cuKernelGetFunction) {
        /* A library kernel the driver has not loaded into a context yet may not answer cuKernelGetParamInfo;
         * its function in the current context (which loads it) always does. cuLibraryGetKernel needs no context,
         * so a thread may ask before it has one: then the device's primary context (retained once for the
         * session, as the application's runtime will) serves for loading. */
        size_t off = 0, size = 0;
        CUresult q = S->api->cuKernelGetParamInfo((CUkernel)fn, 0, &off, &size);
        CUcontext cur = NULL;
        if (q != CUDA_SUCCESS && q != CUDA_ERROR_INVALID_VALUE && S->api->cuCtxGetCurrent(&cur) == CUDA_SUCCESS &&
            !cur) {
            static CUcontext primary;
            if (!primary && S->api->cuDevicePrimaryCtxRetain(&primary, 0) != CUDA_SUCCESS) primary = NULL;
            if (primary && S->api->cuCtxPushCurrent_v2(primary) == CUDA_SUCCESS) pushed = 1;
            static int logged;
            if (!logged++) fgs_log(S, "cuKernelGetParamInfo answered %d with no current context; asking again in the "
                                      "primary context (%s)", (int)q, pushed ? "pushed" : "not available");
            if (pushed) q = S->api->cuKernelGetParamInfo((CUkernel)fn, 0, &off, &size);
        }
        CUfunction f = NULL;
        if (q != CUDA_SUCCESS && S->api->cuKernelGetFunction(&f, (CUkernel)fn) == CUDA_SUCCESS && f &&
            S->api->cuFuncGetParamInfo(f, 0, &off, &size) == CUDA_SUCCESS) {
            static int logged;
            if (!logged++) fgs_log(S, "cuKernelGetParamInfo answered %d for a kernel with parameters; its layout comes "
                                      "from the kernel's function", (int)q);
            fn = f;
            is_kernel = 0;
        }
    }
    CUfunctionLoadingState state = CU_FUNCTION_LOADING_STATE_LOADED;
    if (!is_kernel && S->api->cuFuncIsLoaded && S->api->cuFuncLoad &&
        S->api->cuFuncIsLoaded(&state, (CUfunction)fn) == CUDA_SUCCESS && state != CU_FUNCTION_LOADING_STATE_LOADED) {
        /* Under lazy loading a function is not loaded until its first launch, and an unloaded function may not
         * describe its parameters: load it now (the launch would load it anyway). */
        CUresult l = S->api->cuFuncLoad((CUfunction)fn);
        if (l != CUDA_SUCCESS) fgs_log(S, "cuFuncLoad of a lazily loaded function failed (%d)", (int)l);
    }
    for (; n < 4096; n++) {
        size_t off = 0, size = 0;
        CUresult q = is_kernel ? (S->api->cuKernelGetParamInfo
                                      ? S->api->cuKernelGetParamInfo((CUkernel)fn, n, &off, &size)
                                      : CUDA_ERROR_NOT_SUPPORTED)
                               : S->api->cuFuncGetParamInfo((CUfunction)fn, n, &off, &size);
        if (q != CUDA_SUCCESS) break;
        fg_put_u32(out, (uint32_t)off);
        fg_put_u32(out, (uint32_t)size);
    }
    if (pushed) {
        CUcontext popped = NULL;
        S->api->cuCtxPopCurrent_v2(&popped);
    }
    if (!out->failed) memcpy(out->buf + count_at, &n, 4);
}

CUresult fgs_cuModuleLoadData(fgs_session *S, fg_reader *r, fg_writer *out) { return load(S, r, out, 0, 0); }
CUresult fgs_cuModuleLoadDataEx(fgs_session *S, fg_reader *r, fg_writer *out) { return load(S, r, out, 0, 1); }

CUresult fgs_cuModuleGetFunction(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t mid = fg_get_u64(r);
    const char *name = fgs_get_cstr(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *mod;
    if (fgs_handle_get(S, FGH_MODULE, mid, &mod) || !mod) return CUDA_ERROR_INVALID_HANDLE;
    CUfunction f = NULL;
    CUresult res = S->api->cuModuleGetFunction(&f, (CUmodule)mod, name);
    if (res != CUDA_SUCCESS) return res;
    fg_put_u64(out, fgs_handle_add(S, FGH_FUNCTION, f));
    fgs_put_param_layout(S, f, 0, out);
    return CUDA_SUCCESS;
}

CUresult fgs_cuLibraryGetKernel(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t lid = fg_get_u64(r);
    const char *name = fgs_get_cstr(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *lib;
    if (fgs_handle_get(S, FGH_LIBRARY, lid, &lib) || !lib) return CUDA_ERROR_INVALID_HANDLE;
    if (!S->api->cuLibraryGetKernel) return fgs_missing(S, "cuLibraryGetKernel");
    CUkernel k = NULL;
    CUresult res = S->api->cuLibraryGetKernel(&k, (CUlibrary)lib, name);
    if (res != CUDA_SUCCESS) return res;
    fg_put_u64(out, fgs_handle_add(S, FGH_KERNEL, k));
    fgs_put_param_layout(S, k, 1, out);
    return CUDA_SUCCESS;
}

CUresult fgs_cuKernelGetFunction(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint64_t kid = fg_get_u64(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *k;
    if (fgs_handle_get(S, FGH_KERNEL, kid, &k) || !k) return CUDA_ERROR_INVALID_HANDLE;
    if (!S->api->cuKernelGetFunction) return fgs_missing(S, "cuKernelGetFunction");
    CUfunction f = NULL;
    CUresult res = S->api->cuKernelGetFunction(&f, (CUkernel)k);
    if (res == CUDA_SUCCESS) fg_put_u64(out, fgs_handle_add(S, FGH_FUNCTION, f));
    return res;
}

/* A launch names a function or, as the driver allows, a library kernel (fgs_handle_get accepts both). */
static int launch_target(fgs_session *S, uint64_t id, void **f) { return fgs_handle_get(S, FGH_FUNCTION, id, f) || !*f ? -1 : 0; }

static const char *kernel_name(fgs_session *S, uint64_t id, void *f, CUresult *q) {
    const char *name = NULL;
    void *k = NULL;
    *q = CUDA_ERROR_NOT_SUPPORTED;
    if (!fgs_handle_get(S, FGH_KERNEL, id, &k) && k && S->api->cuKernelGetName)
        *q = S->api->cuKernelGetName(&name, (CUkernel)k);
    else if (S->api->cuFuncGetName)
        *q = S->api->cuFuncGetName(&name, (CUfunction)f);
    return *q == CUDA_SUCCESS && name ? name : "?";
}

/* A launch the driver refused is logged (the client only learns the error code, later): the kernel's name, the
 * configuration, and the parameter bytes against the kernel's own layout. The first few per session. */
static CUresult launch_result(fgs_session *S, uint64_t id, void *f, const uint32_t *d, uint32_t nparams,
                              CUresult res) {
    static int logged;
    if (res == CUDA_SUCCESS || logged >= 8) return res;
    logged++;
    CUresult qn, qp = CUDA_ERROR_NOT_SUPPORTED, qa = CUDA_ERROR_NOT_SUPPORTED;
    const char *name = kernel_name(S, id, f, &qn);
    size_t end = 0, off = 0, size = 0;
    for (uint32_t i = 0; i < 4096 && S->api->cuFuncGetParamInfo; i++) {
        qp = S->api->cuFuncGetParamInfo((CUfunction)f, i, &off, &size);
        if (qp != CUDA_SUCCESS) break;
        end = off + size;
    }
    int maxdyn = -1;
    if (S->api->cuFuncGetAttribute)
        qa = S->api->cuFuncGetAttribute(&maxdyn, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (CUfunction)f);
    CUcontext cur = NULL;
    S->api->cuCtxGetCurrent(&cur);
    fgs_log(S, "launch of %.200s failed (%d): grid %u,%u,%u block %u,%u,%u shared %u (max dynamic %d), "
               "%u parameter bytes (layout ends at %zu); queries: name %d, params %d, attribute %d; context %p",
            name, (int)res, d[0], d[1], d[2], d[3], d[4], d[5], d[6], maxdyn, nparams, end, (int)qn, (int)qp, (int)qa,
            (void *)cur);
    return res;
}

CUresult fgs_cuLaunchKernel(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    uint64_t fid = fg_get_u64(r);
    uint32_t d[7];
    fg_get(r, d, sizeof d);
    uint64_t sid = fg_get_u64(r);
    uint32_t n = fg_get_u32(r);
    const uint8_t *params = fg_take(r, n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *f, *s;
    if (launch_target(S, fid, &f)) return CUDA_ERROR_INVALID_HANDLE;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    if (n == 0)
        return launch_result(S, fid, f, d, n,
                             S->api->cuLaunchKernel((CUfunction)f, d[0], d[1], d[2], d[3], d[4], d[5], d[6],
                                                    (CUstream)s, NULL, NULL));
    void *buf = fgs_scratch(S, n);
    if (!buf) return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(buf, params, n);
    if (S->journal && S->journal->n_moves) fgs_park_xlate_params(S, (uint8_t *)buf, n);
    size_t size = n;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    return launch_result(S, fid, f, d, n,
                         S->api->cuLaunchKernel((CUfunction)f, d[0], d[1], d[2], d[3], d[4], d[5], d[6], (CUstream)s,
                                                NULL, extra));
}

/* Attributes whose value holds a handle carry the client's virtual id: translate them. */
static CUresult translate_attrs(fgs_session *S, CUlaunchAttribute *a, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        void *ev = NULL;
        switch (a[i].id) {
        case CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_EVENT:
            if (fgs_handle_get(S, FGH_EVENT, (uint64_t)(uintptr_t)a[i].value.programmaticEvent.event, &ev))
                return CUDA_ERROR_INVALID_HANDLE;
            a[i].value.programmaticEvent.event = (CUevent)ev;
            break;
        case CU_LAUNCH_ATTRIBUTE_LAUNCH_COMPLETION_EVENT:
            if (fgs_handle_get(S, FGH_EVENT, (uint64_t)(uintptr_t)a[i].value.launchCompletionEvent.event, &ev))
                return CUDA_ERROR_INVALID_HANDLE;
            a[i].value.launchCompletionEvent.event = (CUevent)ev;
            break;
        case CU_LAUNCH_ATTRIBUTE_DEVICE_UPDATABLE_KERNEL_NODE:
            return CUDA_ERROR_NOT_SUPPORTED; /* writes a graph node handle back: not forwarded */
        default:
            break;
        }
    }
    return CUDA_SUCCESS;
}

typedef struct {
    void *f;
    uint64_t id;
    CUlaunchConfig cfg;
    CUlaunchAttribute attrs[64];
} launch_config;

/* Decode "function, dims[7], stream, u32 n, n attributes" into a driver launch configuration. */
static CUresult get_config(fgs_session *S, fg_reader *r, launch_config *lc) {
    uint64_t fid = fg_get_u64(r);
    uint32_t d[7];
    fg_get(r, d, sizeof d);
    uint64_t sid = fg_get_u64(r);
    uint32_t na = fg_get_u32(r);
    if (na > 64) return FGS_PROTOCOL_ERROR;
    fg_get(r, lc->attrs, na * sizeof lc->attrs[0]);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *s;
    if (launch_target(S, fid, &lc->f)) return CUDA_ERROR_INVALID_HANDLE;
    lc->id = fid;
    if (fgs_handle_get(S, FGH_STREAM, sid, &s)) return CUDA_ERROR_INVALID_HANDLE;
    CUresult tr = translate_attrs(S, lc->attrs, na);
    if (tr != CUDA_SUCCESS) return tr;
    CUlaunchConfig cfg = {d[0], d[1], d[2], d[3], d[4], d[5], d[6], (CUstream)s, na ? lc->attrs : NULL, na};
    lc->cfg = cfg;
    return CUDA_SUCCESS;
}

typedef CUresult (*cluster_query)(int *, CUfunction, const CUlaunchConfig *);

/* The cluster occupancy queries: a launch configuration in, one int out. */
static CUresult cluster_occupancy(fgs_session *S, fg_reader *r, fg_writer *out, cluster_query q, const char *name) {
    launch_config lc;
    CUresult res = get_config(S, r, &lc);
    if (res != CUDA_SUCCESS) return res;
    if (!q) return fgs_missing(S, name);
    int v = 0;
    res = q(&v, (CUfunction)lc.f, &lc.cfg);
    if (res == CUDA_SUCCESS) fg_put(out, &v, sizeof v);
    return res;
}

CUresult fgs_cuOccupancyMaxActiveClusters(fgs_session *S, fg_reader *r, fg_writer *out) {
    return cluster_occupancy(S, r, out, S->api->cuOccupancyMaxActiveClusters, "cuOccupancyMaxActiveClusters");
}

CUresult fgs_cuOccupancyMaxPotentialClusterSize(fgs_session *S, fg_reader *r, fg_writer *out) {
    return cluster_occupancy(S, r, out, S->api->cuOccupancyMaxPotentialClusterSize,
                             "cuOccupancyMaxPotentialClusterSize");
}

CUresult fgs_cuLaunchKernelEx(fgs_session *S, fg_reader *r, fg_writer *out) {
    (void)out;
    launch_config lc;
    CUresult res = get_config(S, r, &lc);
    if (res != CUDA_SUCCESS) return res;
    uint32_t n = fg_get_u32(r);
    const uint8_t *params = fg_take(r, n);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuLaunchKernelEx) return fgs_missing(S, "cuLaunchKernelEx");
    void *f = lc.f;
    CUlaunchConfig cfg = lc.cfg;
    const uint32_t d[7] = {cfg.gridDimX, cfg.gridDimY, cfg.gridDimZ, cfg.blockDimX, cfg.blockDimY, cfg.blockDimZ,
                           cfg.sharedMemBytes};
    if (n == 0) return launch_result(S, lc.id, f, d, n, S->api->cuLaunchKernelEx(&cfg, (CUfunction)f, NULL, NULL));
    void *buf = fgs_scratch(S, n);
    if (!buf) return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(buf, params, n);
    if (S->journal && S->journal->n_moves) fgs_park_xlate_params(S, (uint8_t *)buf, n);
    size_t size = n;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buf, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    return launch_result(S, lc.id, f, d, n, S->api->cuLaunchKernelEx(&cfg, (CUfunction)f, NULL, extra));
}

/* cuModuleEnumerateFunctions / cuLibraryEnumerateKernels: "u64 module (library), u32 capacity" -> "u32 count, then
 * per function (kernel) u32 length + its name", at most capacity bytes in all (else CUDA_ERROR_NOT_SUPPORTED). The
 * client names each back with cuModuleGetFunction (cuLibraryGetKernel), which brings its id and parameter
 * layout. */
static CUresult enumerate(fgs_session *S, fg_reader *r, fg_writer *out, int lib) {
    uint64_t mid = fg_get_u64(r);
    uint32_t capacity = fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    void *mod;
    if (fgs_handle_get(S, lib ? FGH_LIBRARY : FGH_MODULE, mid, &mod) || !mod) return CUDA_ERROR_INVALID_HANDLE;
    if (!lib && (!S->api->cuModuleEnumerateFunctions || !S->api->cuModuleGetFunctionCount || !S->api->cuFuncGetName))
        return fgs_missing(S, "cuModuleEnumerateFunctions");
    if (lib && (!S->api->cuLibraryEnumerateKernels || !S->api->cuLibraryGetKernelCount || !S->api->cuKernelGetName))
        return fgs_missing(S, "cuLibraryEnumerateKernels");
    unsigned count = 0;
    CUresult res = lib ? S->api->cuLibraryGetKernelCount(&count, (CUlibrary)mod)
                       : S->api->cuModuleGetFunctionCount(&count, (CUmodule)mod);
    if (res != CUDA_SUCCESS) return res;
    if (count > 65536) return CUDA_ERROR_NOT_SUPPORTED;
    void **fns = (void **)calloc(count ? count : 1, sizeof *fns);
    if (!fns) return CUDA_ERROR_OUT_OF_MEMORY;
    if (count)
        res = lib ? S->api->cuLibraryEnumerateKernels((CUkernel *)fns, count, (CUlibrary)mod)
                  : S->api->cuModuleEnumerateFunctions((CUfunction *)fns, count, (CUmodule)mod);
    fg_put_u32(out, res == CUDA_SUCCESS ? count : 0);
    for (unsigned i = 0; i < count && res == CUDA_SUCCESS; i++) {
        const char *name = NULL;
        res = lib ? S->api->cuKernelGetName(&name, (CUkernel)fns[i]) : S->api->cuFuncGetName(&name, (CUfunction)fns[i]);
        if (res == CUDA_SUCCESS && !name) res = CUDA_ERROR_NOT_FOUND;
        if (res != CUDA_SUCCESS) break;
        size_t n = strnlen(name, 4096);
        fg_put_u32(out, (uint32_t)n);
        fg_put(out, name, n);
    }
    free(fns);
    if (res == CUDA_SUCCESS && out->len > capacity) res = CUDA_ERROR_NOT_SUPPORTED;
    return out->failed ? CUDA_ERROR_OUT_OF_MEMORY : res;
}

CUresult fgs_cuModuleEnumerateFunctions(fgs_session *S, fg_reader *r, fg_writer *out) { return enumerate(S, r, out, 0); }

CUresult fgs_cuLibraryEnumerateKernels(fgs_session *S, fg_reader *r, fg_writer *out) { return enumerate(S, r, out, 1); }
