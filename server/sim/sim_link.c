/* sim_link.c - JIT linking (cuLinkCreate_v2, cuLinkAddData_v2, cuLinkAddFile_v2, cuLinkComplete, cuLinkDestroy)
 * for the simulated device, enough of a linker for CI.
 *
 * Each input (PTX, an sm_90 cubin or a fatbin) is parsed as a module image would be (sim_image.c) and its
 * kernels and globals are gathered; a kernel defined twice is an error, as for a real linker. Completing the link
 * writes the gathered kernels and globals out as one PTX text (entries with their exact parameter layouts,
 * static shared memory and .maxntid; globals with their initial bytes), which the sim's cuModuleLoadData reads
 * back into the same kernels and globals. That text, NUL-terminated, is the "cubin" the link state owns until
 * cuLinkDestroy; a GPU's linker returns an ELF cubin instead. Cross-image references (.extern) are not resolved
 * or checked: the sim executes no PTX. Host objects and libraries (CU_JIT_INPUT_OBJECT / _LIBRARY) and NVVM IR
 * are CUDA_ERROR_NOT_SUPPORTED here.
 *
 * JIT options are checked as the driver does (an unknown option is CUDA_ERROR_INVALID_VALUE) and the output
 * ones are honoured: the link state keeps the option arrays given to cuLinkCreate (the driver requires them to
 * stay valid for its life) and after each call writes its info and error logs into the log buffers (capped at
 * their sizes, NUL included), the bytes written (terminator excluded) into the size options, and the wall time
 * in milliseconds (a float) into CU_JIT_WALL_TIME's value. Per-input options of cuLinkAddData get the same
 * treatment for that call. */
#include "sim_image.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINK_OPTIONS 1024
#define MAX_LOG ((size_t)1 << 20)
#define MAX_INIT_BYTES ((uint64_t)16 << 20) /* initialised global bytes the written PTX may carry */

struct sim_link {
    struct sim_obj h;
    unsigned int nopt;
    CUjit_option *opt; /* the caller's arrays (kept valid by the caller until cuLinkDestroy) */
    void **val;
    size_t info_cap, err_cap; /* the log buffers' sizes given at creation (the size options then say bytes written) */
    int verbose;
    struct sim_image_desc d; /* everything added so far */
    int arch;
    unsigned int inputs;
    char *info, *err; /* logs so far */
    size_t info_n, err_n;
    char *out; /* the completed image (PTX text), owned until cuLinkDestroy */
    size_t out_n;
    uint64_t t0;
};

static CUresult check_options(unsigned int n, const CUjit_option *opt, void **val)
{
    if (n > MAX_LINK_OPTIONS || (n && (!opt || !val)))
        return CUDA_ERROR_INVALID_VALUE;
    for (unsigned int i = 0; i < n; i++)
        if ((unsigned int)opt[i] >= CU_JIT_NUM_OPTIONS)
            return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}

static void log_add(char **log, size_t *n, const char *text)
{
    size_t k = strlen(text);
    if (*n + k + 2 > MAX_LOG)
        return;
    char *nl = realloc(*log, *n + k + 2);
    if (!nl)
        return;
    memcpy(nl + *n, text, k);
    nl[*n + k] = '\n';
    nl[*n + k + 1] = 0;
    *log = nl;
    *n += k + 1;
}

/* The size option's value for log buffer option `log` (0 without one). */
size_t sim_jit_log_size(unsigned int n, const CUjit_option *opt, void **val, CUjit_option log)
{
    CUjit_option want = log == CU_JIT_INFO_LOG_BUFFER ? CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES : CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
    for (unsigned int j = 0; j < n; j++)
        if (opt[j] == want)
            return (size_t)(unsigned int)(uintptr_t)val[j];
    return 0;
}

/* Writes the logs, their sizes and the wall time into one option array (see the file comment); caps: the log
 * buffers' sizes (info, error). */
void sim_jit_write_outputs(unsigned int n, const CUjit_option *opt, void **val, const char *info, const char *err,
                          float wall_ms, const size_t caps[2])
{
    for (unsigned int i = 0; i < n; i++) {
        if (opt[i] == CU_JIT_WALL_TIME) {
            val[i] = NULL;
            memcpy(&val[i], &wall_ms, sizeof wall_ms);
            continue;
        }
        if (opt[i] != CU_JIT_INFO_LOG_BUFFER && opt[i] != CU_JIT_ERROR_LOG_BUFFER)
            continue;
        const char *text = opt[i] == CU_JIT_INFO_LOG_BUFFER ? info : err;
        CUjit_option size_opt = opt[i] == CU_JIT_INFO_LOG_BUFFER ? CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES
                                                                 : CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES;
        for (unsigned int j = 0; j < n; j++) {
            if (opt[j] != size_opt)
                continue;
            size_t cap = caps[opt[i] == CU_JIT_INFO_LOG_BUFFER ? 0 : 1];
            if (!cap || !val[i])
                break;
            size_t k = text ? strlen(text) : 0;
            if (k > cap - 1)
                k = cap - 1;
            if (k)
                memcpy(val[i], text, k);
            ((char *)val[i])[k] = 0;
            val[j] = (void *)(uintptr_t)k;
            break;
        }
    }
}

static void finish_call(struct sim_link *L, unsigned int n, const CUjit_option *opt, void **val)
{
    float ms = (float)((double)(sim_now_ns() - L->t0) / 1e6);
    size_t caps[2] = { L->info_cap, L->err_cap };
    sim_jit_write_outputs(L->nopt, L->opt, L->val, L->info, L->err, ms, caps);
    if (n) {
        caps[0] = sim_jit_log_size(n, opt, val, CU_JIT_INFO_LOG_BUFFER);
        caps[1] = sim_jit_log_size(n, opt, val, CU_JIT_ERROR_LOG_BUFFER);
        sim_jit_write_outputs(n, opt, val, L->info, L->err, ms, caps);
    }
}

SIM_API CUresult cuLinkCreate_v2(unsigned int numOptions, CUjit_option *options, void **optionValues,
                                 CUlinkState *stateOut)
{
    if (!stateOut)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = check_options(numOptions, options, optionValues);
    if (rc != CUDA_SUCCESS)
        return rc;
    sim_lock();
    struct sim_ctx *ctx = NULL;
    rc = sim_current_ctx(&ctx);
    struct sim_link *L = rc == CUDA_SUCCESS ? calloc(1, sizeof *L) : NULL;
    if (rc == CUDA_SUCCESS && !L)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) {
        L->h.kind = SIM_KIND_LINK;
        L->nopt = numOptions;
        L->opt = options;
        L->val = optionValues;
        L->t0 = sim_now_ns();
        L->info_cap = sim_jit_log_size(numOptions, options, optionValues, CU_JIT_INFO_LOG_BUFFER);
        L->err_cap = sim_jit_log_size(numOptions, options, optionValues, CU_JIT_ERROR_LOG_BUFFER);
        for (unsigned int i = 0; i < numOptions; i++)
            if (options[i] == CU_JIT_LOG_VERBOSE && optionValues[i])
                L->verbose = 1;
        if (sim_reg_add(L) != 0) {
            free(L);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    if (rc == CUDA_SUCCESS) {
        finish_call(L, 0, NULL, NULL);
        *stateOut = (CUlinkState)L;
    }
    sim_unlock();
    return rc;
}

/* Moves the kernels and globals of one parsed input into the link; a kernel defined twice is an error. Globals
 * are not checked: the sim's PTX reader does not tell module-local ones (nvcc's $str) from visible ones, so two
 * inputs may each have one of a name; a lookup of that name finds the first. */
static CUresult gather(struct sim_link *L, struct sim_image_desc *in, const char *name)
{
    char msg[600];
    for (size_t i = 0; i < in->nkernels; i++)
        for (size_t k = 0; k < L->d.nkernels; k++)
            if (!strcmp(in->kernels[i].name, L->d.kernels[k].name)) {
                snprintf(msg, sizeof msg, "error   : %.200s: multiple definition of '%.300s'", name, in->kernels[i].name);
                log_add(&L->err, &L->err_n, msg);
                return CUDA_ERROR_INVALID_IMAGE;
            }
    for (size_t i = 0; i < in->nkernels; i++) {
        struct sim_kernel_desc *src = &in->kernels[i];
        struct sim_kernel_desc *k = sim_desc_add_kernel(&L->d, src->name, strlen(src->name));
        if (!k)
            return CUDA_ERROR_OUT_OF_MEMORY;
        char *keep = k->name;
        *k = *src;
        k->name = keep;
        src->params = NULL; /* moved */
        src->nparams = 0;
    }
    for (size_t i = 0; i < in->nglobals; i++) {
        struct sim_global_desc *src = &in->globals[i];
        struct sim_global_desc *g = sim_desc_add_global(&L->d, src->name, strlen(src->name));
        if (!g)
            return CUDA_ERROR_OUT_OF_MEMORY;
        g->size = src->size;
        g->init = src->init;
        src->init = NULL;
    }
    if (in->arch > L->arch)
        L->arch = in->arch;
    return CUDA_SUCCESS;
}

/* Parses size bytes of one input into a desc; every read stays within them. */
static CUresult parse_input(CUjitInputType type, const unsigned char *data, size_t size, struct sim_image_desc *d)
{
    memset(d, 0, sizeof *d);
    if (type == CU_JIT_INPUT_PTX) {
        char *text = malloc(size + 1);
        if (!text)
            return CUDA_ERROR_OUT_OF_MEMORY;
        memcpy(text, data, size);
        text[size] = 0;
        CUresult rc = sim_ptx_parse(text, d);
        free(text);
        return rc;
    }
    if (type == CU_JIT_INPUT_CUBIN) {
        if (size < 64 || sim_image_sniff(data) != SIM_IMAGE_ELF)
            return CUDA_ERROR_INVALID_IMAGE;
        CUresult rc = sim_elf_parse(data, size, d);
        if (rc == CUDA_SUCCESS && d->arch != 90) {
            sim_desc_free(d);
            rc = CUDA_ERROR_NO_BINARY_FOR_GPU;
        }
        return rc;
    }
    /* a fatbin: its header's sizes must lie within the input before the picker trusts them */
    uint16_t hsize;
    uint64_t body;
    if (size < 16 || sim_image_sniff(data) != SIM_IMAGE_FATBIN)
        return CUDA_ERROR_INVALID_IMAGE;
    memcpy(&hsize, data + 6, 2);
    memcpy(&body, data + 8, 8);
    if (body > size || hsize > size - body)
        return CUDA_ERROR_INVALID_IMAGE;
    struct sim_fatbin_pick pick;
    CUresult rc = sim_fatbin_pick(data, &pick);
    if (rc != CUDA_SUCCESS)
        return rc;
    if (pick.is_ptx)
        return parse_input(CU_JIT_INPUT_PTX, pick.payload, (size_t)pick.size, d);
    return parse_input(CU_JIT_INPUT_CUBIN, pick.payload, (size_t)pick.size, d);
}

static CUresult add(CUlinkState state, CUjitInputType type, const void *data, size_t size, const char *name,
                    unsigned int numOptions, CUjit_option *options, void **optionValues)
{
    CUresult rc = check_options(numOptions, options, optionValues);
    if (rc != CUDA_SUCCESS)
        return rc;
    sim_lock();
    struct sim_link *L = sim_reg_find(state, SIM_KIND_LINK);
    rc = sim_check_init();
    if (rc == CUDA_SUCCESS && !L)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc != CUDA_SUCCESS) {
        sim_unlock();
        return rc;
    }
    const char *what = name && *name ? name : "<unnamed>";
    char msg[600];
    if (!data || !size || (unsigned int)type > CU_JIT_INPUT_NVVM) {
        rc = CUDA_ERROR_INVALID_VALUE;
    } else if (L->out) {
        rc = CUDA_ERROR_INVALID_VALUE; /* already completed */
    } else if (type == CU_JIT_INPUT_OBJECT || type == CU_JIT_INPUT_LIBRARY || type == CU_JIT_INPUT_NVVM) {
        sim_log_once("cuLinkAddData of a host object, library or NVVM IR", "not supported by the simulated linker");
        snprintf(msg, sizeof msg, "error   : %.300s: the simulated linker takes PTX, cubins and fatbins only", what);
        log_add(&L->err, &L->err_n, msg);
        rc = CUDA_ERROR_NOT_SUPPORTED;
    } else {
        struct sim_image_desc d;
        rc = parse_input(type, data, size, &d);
        if (rc == CUDA_SUCCESS) {
            rc = gather(L, &d, what);
            sim_desc_free(&d);
        } else {
            snprintf(msg, sizeof msg, "error   : %.300s: %s input could not be parsed (CUresult %d)", what,
                     type == CU_JIT_INPUT_PTX ? "PTX" : "binary", (int)rc);
            log_add(&L->err, &L->err_n, msg);
        }
        if (rc == CUDA_SUCCESS) {
            L->inputs++;
            if (L->verbose) {
                snprintf(msg, sizeof msg, "info    : added %.300s", what);
                log_add(&L->info, &L->info_n, msg);
            }
        }
    }
    finish_call(L, numOptions, options, optionValues);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLinkAddData_v2(CUlinkState state, CUjitInputType type, void *data, size_t size, const char *name,
                                  unsigned int numOptions, CUjit_option *options, void **optionValues)
{
    return add(state, type, data, size, name, numOptions, options, optionValues);
}

SIM_API CUresult cuLinkAddFile_v2(CUlinkState state, CUjitInputType type, const char *path, unsigned int numOptions,
                                  CUjit_option *options, void **optionValues)
{
    if (!path)
        return CUDA_ERROR_INVALID_VALUE;
    FILE *f = fopen(path, "rb");
    if (!f)
        return CUDA_ERROR_FILE_NOT_FOUND;
    unsigned char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) > 0 && (uint64_t)n <= SIM_IMAGE_CAP && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n)) && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (!buf)
        return n == 0 ? CUDA_ERROR_INVALID_IMAGE : CUDA_ERROR_FILE_NOT_FOUND;
    CUresult rc = add(state, type, buf, (size_t)n, path, numOptions, options, optionValues);
    free(buf);
    return rc;
}

/* Appends printf-formatted text to a growing buffer; -1 when out of memory. */
static int emit(char **buf, size_t *n, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int emit(char **buf, size_t *n, size_t *cap, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(*buf ? *buf + *n : NULL, *buf ? *cap - *n : 0, fmt, ap);
        va_end(ap);
        if (k < 0)
            return -1;
        if (*buf && *n + (size_t)k < *cap) {
            *n += (size_t)k;
            return 0;
        }
        size_t ncap = (*cap ? *cap * 2 : 4096) + (size_t)k;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
}

/* The largest power of two (up to 256) dividing off: declared as the parameter's alignment, the PTX reader
 * places it exactly at off after a parameter ending at or before it, when no wider gap lies between them. */
static uint32_t align_for(uint32_t off)
{
    uint32_t a = off ? off & (~off + 1) : 8;
    return a > 256 ? 256 : a;
}

static CUresult write_ptx(const struct sim_link *L, char **out, size_t *out_n)
{
    uint64_t init_bytes = 0;
    for (size_t i = 0; i < L->d.nglobals; i++)
        init_bytes += L->d.globals[i].init ? L->d.globals[i].size : 0;
    if (init_bytes > MAX_INIT_BYTES)
        return CUDA_ERROR_NOT_SUPPORTED; /* the text would hold several bytes per initial byte */
    char *b = NULL;
    size_t n = 0, cap = 0;
    int bad = emit(&b, &n, &cap, "// fargpu simulated linker output\n.version 8.0\n.target sm_%d\n.address_size 64\n\n",
                   L->arch ? L->arch : 90);
    for (size_t i = 0; !bad && i < L->d.nglobals; i++) {
        const struct sim_global_desc *g = &L->d.globals[i];
        bad = emit(&b, &n, &cap, ".visible .global .align 16 .b8 %s[%zu]", g->name, g->size);
        for (size_t k = 0; !bad && g->init && k < g->size; k++)
            bad = emit(&b, &n, &cap, "%s%u", k ? "," : " = {", (unsigned)g->init[k]);
        if (!bad)
            bad = emit(&b, &n, &cap, "%s;\n", g->init && g->size ? "}" : "");
    }
    for (size_t i = 0; !bad && i < L->d.nkernels; i++) {
        const struct sim_kernel_desc *k = &L->d.kernels[i];
        bad = emit(&b, &n, &cap, "\n.visible .entry %s(", k->name);
        for (uint32_t p = 0; !bad && p < k->nparams; p++)
            bad = emit(&b, &n, &cap, "%s\n\t.param .align %u .b8 %s_param_%u[%u]", p ? "," : "",
                       align_for(k->params[p].offset), k->name, p, k->params[p].size);
        if (!bad)
            bad = emit(&b, &n, &cap, "\n)\n");
        if (!bad && k->max_threads > 0 && k->max_threads < 1024)
            bad = emit(&b, &n, &cap, ".maxntid %d, 1, 1\n", k->max_threads);
        if (!bad)
            bad = emit(&b, &n, &cap, "{\n");
        if (!bad && k->shared_bytes > 0)
            bad = emit(&b, &n, &cap, "\t.shared .align 16 .b8 %s_smem[%d];\n", k->name, k->shared_bytes);
        if (!bad)
            bad = emit(&b, &n, &cap, "\tret;\n}\n");
    }
    if (bad) {
        free(b);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *out = b;
    *out_n = n + 1; /* with its NUL */
    return CUDA_SUCCESS;
}

/* The written text must read back as exactly what was gathered (parameter layouts, globals, shared memory). */
static int same(const struct sim_image_desc *a, const struct sim_image_desc *b)
{
    if (a->nkernels != b->nkernels || a->nglobals != b->nglobals)
        return 0;
    for (size_t i = 0; i < a->nkernels; i++) {
        const struct sim_kernel_desc *x = &a->kernels[i], *y = &b->kernels[i];
        if (strcmp(x->name, y->name) || x->nparams != y->nparams || x->shared_bytes != y->shared_bytes ||
            (x->nparams && memcmp(x->params, y->params, x->nparams * sizeof *x->params)))
            return 0;
    }
    for (size_t i = 0; i < a->nglobals; i++) {
        const struct sim_global_desc *x = &a->globals[i], *y = &b->globals[i];
        if (strcmp(x->name, y->name) || x->size != y->size || !x->init != !y->init ||
            (x->init && memcmp(x->init, y->init, x->size)))
            return 0;
    }
    return 1;
}

SIM_API CUresult cuLinkComplete(CUlinkState state, void **cubinOut, size_t *sizeOut)
{
    if (!cubinOut || !sizeOut)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    struct sim_link *L = sim_reg_find(state, SIM_KIND_LINK);
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && !L)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc != CUDA_SUCCESS) {
        sim_unlock();
        return rc;
    }
    if (!L->out) {
        if (!L->inputs) {
            log_add(&L->err, &L->err_n, "error   : no input to link");
            rc = CUDA_ERROR_INVALID_VALUE;
        }
        char *text = NULL;
        size_t tn = 0;
        if (rc == CUDA_SUCCESS)
            rc = write_ptx(L, &text, &tn);
        if (rc == CUDA_ERROR_NOT_SUPPORTED)
            log_add(&L->err, &L->err_n, "error   : the simulated linker writes at most 16 MiB of initialised globals");
        if (rc == CUDA_SUCCESS) {
            struct sim_image_desc back;
            CUresult pr = sim_ptx_parse(text, &back);
            if (pr != CUDA_SUCCESS || !same(&L->d, &back)) {
                sim_log_once("cuLinkComplete", "the simulated linker cannot write these inputs as one image");
                log_add(&L->err, &L->err_n, "error   : the simulated linker cannot write these inputs as one image");
                free(text);
                rc = CUDA_ERROR_NOT_SUPPORTED;
            } else {
                L->out = text;
                L->out_n = tn;
            }
            if (pr == CUDA_SUCCESS)
                sim_desc_free(&back);
        }
        if (rc == CUDA_SUCCESS && L->verbose) {
            char msg[200];
            snprintf(msg, sizeof msg, "info    : linked %u inputs: %zu kernels, %zu globals", L->inputs, L->d.nkernels,
                     L->d.nglobals);
            log_add(&L->info, &L->info_n, msg);
        }
    }
    if (rc == CUDA_SUCCESS) {
        *cubinOut = L->out;
        *sizeOut = L->out_n;
    }
    finish_call(L, 0, NULL, NULL);
    sim_unlock();
    return rc;
}

SIM_API CUresult cuLinkDestroy(CUlinkState state)
{
    sim_lock();
    struct sim_link *L = sim_reg_find(state, SIM_KIND_LINK);
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && !L)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS) {
        sim_reg_remove(L);
        sim_desc_free(&L->d);
        free(L->info);
        free(L->err);
        free(L->out);
        free(L);
    }
    sim_unlock();
    return rc;
}
