/* sim_image.c - format sniffing and parsing of cuModuleLoadData / cuLibraryLoadData images, and the builders
 * of sim_image_desc (kernels with their parameter layouts, globals with their initial bytes). Limits
 * (SIM_IMAGE_MAX_*) keep a hostile image from making the sim allocate without bound.
 *
 * A fatbin wrapper (the struct nvcc emits for host code: int magic 0x466243B1, int version, const void *data,
 * void *filename_or_fatbins) holds a host pointer to the fatbin: only a caller in this process can hand one
 * over (the fargpu server refuses wrappers from clients), so the pointer is trusted like any host pointer. */
#include "sim_image.h"

#include <stdlib.h>
#include <string.h>

/* Compares byte by byte and stops at the first mismatch, so a short NUL-terminated PTX string is never read
 * past its terminator (none of the magic bytes is 0). */
static int has_magic(const unsigned char *p, const unsigned char *m)
{
    for (int i = 0; i < 4; i++)
        if (p[i] != m[i])
            return 0;
    return 1;
}

enum sim_image_format sim_image_sniff(const void *image)
{
    static const unsigned char elf[4] = { 0x7f, 'E', 'L', 'F' };
    static const unsigned char fatbin[4] = { 0x50, 0xED, 0x55, 0xBA };     /* 0xBA55ED50 little endian */
    static const unsigned char fatwrap[4] = { 0xB1, 0x43, 0x62, 0x46 };    /* 0x466243B1 little endian */
    if (has_magic(image, elf))
        return SIM_IMAGE_ELF;
    if (has_magic(image, fatbin))
        return SIM_IMAGE_FATBIN;
    if (has_magic(image, fatwrap))
        return SIM_IMAGE_FATBIN_WRAPPER;
    return SIM_IMAGE_PTX;
}

static CUresult parse_elf(const unsigned char *image, uint64_t limit, struct sim_image_desc *d)
{
    CUresult rc = sim_elf_parse(image, limit, d);
    if (rc == CUDA_SUCCESS && d->arch != 90) {
        sim_desc_free(d);
        rc = CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    return rc;
}

/* PTX from a fatbin entry: the text ends at its first NUL or at the end of the payload. */
static CUresult parse_ptx_payload(const unsigned char *p, uint64_t size, struct sim_image_desc *d)
{
    const unsigned char *nul = memchr(p, 0, (size_t)size);
    size_t len = nul ? (size_t)(nul - p) : (size_t)size;
    char *text = malloc(len + 1);
    if (!text)
        return CUDA_ERROR_OUT_OF_MEMORY;
    memcpy(text, p, len);
    text[len] = 0;
    CUresult rc = sim_ptx_parse(text, d);
    free(text);
    return rc;
}

CUresult sim_image_parse(const void *image, struct sim_image_desc *d, int *is_ptx)
{
    memset(d, 0, sizeof *d);
    *is_ptx = 0;
    enum sim_image_format fmt = sim_image_sniff(image);
    if (fmt == SIM_IMAGE_FATBIN_WRAPPER) {
        int version;
        const void *data;
        memcpy(&version, (const char *)image + 4, sizeof version);
        memcpy(&data, (const char *)image + 8, sizeof data);
        if ((version != 1 && version != 2) || !data || sim_image_sniff(data) != SIM_IMAGE_FATBIN)
            return CUDA_ERROR_INVALID_IMAGE;
        image = data;
        fmt = SIM_IMAGE_FATBIN;
    }
    switch (fmt) {
    case SIM_IMAGE_ELF:
        return parse_elf(image, SIM_IMAGE_CAP, d);
    case SIM_IMAGE_PTX:
        *is_ptx = 1;
        return sim_ptx_parse(image, d);
    case SIM_IMAGE_FATBIN:
    case SIM_IMAGE_FATBIN_WRAPPER: {
        struct sim_fatbin_pick pick;
        CUresult rc = sim_fatbin_pick(image, &pick);
        if (rc != CUDA_SUCCESS)
            return rc;
        *is_ptx = pick.is_ptx;
        return pick.is_ptx ? parse_ptx_payload(pick.payload, pick.size, d) : parse_elf(pick.payload, pick.size, d);
    }
    }
    return CUDA_ERROR_INVALID_IMAGE;
}

static char *dup_name(const char *name, size_t len)
{
    if (len == 0 || len > SIM_IMAGE_MAX_NAME)
        return NULL;
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    memcpy(s, name, len);
    s[len] = 0;
    return s;
}

struct sim_kernel_desc *sim_desc_add_kernel(struct sim_image_desc *d, const char *name, size_t len)
{
    if (d->nkernels >= SIM_IMAGE_MAX_KERNELS)
        return NULL;
    if (d->nkernels == d->capk) {
        size_t ncap = d->capk ? d->capk * 2 : 8;
        struct sim_kernel_desc *nk = realloc(d->kernels, ncap * sizeof *nk);
        if (!nk)
            return NULL;
        d->kernels = nk;
        d->capk = ncap;
    }
    char *n = dup_name(name, len);
    if (!n)
        return NULL;
    struct sim_kernel_desc *k = &d->kernels[d->nkernels++];
    memset(k, 0, sizeof *k);
    k->name = n;
    k->max_threads = 1024;
    return k;
}

struct sim_global_desc *sim_desc_add_global(struct sim_image_desc *d, const char *name, size_t len)
{
    if (d->nglobals >= SIM_IMAGE_MAX_GLOBALS)
        return NULL;
    if (d->nglobals == d->capg) {
        size_t ncap = d->capg ? d->capg * 2 : 8;
        struct sim_global_desc *ng = realloc(d->globals, ncap * sizeof *ng);
        if (!ng)
            return NULL;
        d->globals = ng;
        d->capg = ncap;
    }
    char *n = dup_name(name, len);
    if (!n)
        return NULL;
    struct sim_global_desc *g = &d->globals[d->nglobals++];
    memset(g, 0, sizeof *g);
    g->name = n;
    return g;
}

CUresult sim_kernel_add_param(struct sim_kernel_desc *k, uint32_t size, uint32_t align)
{
    if (k->nparams >= SIM_IMAGE_MAX_PARAMS || size == 0 || size > SIM_IMAGE_MAX_PARAM_BYTES || align == 0 ||
        align > 256 || (align & (align - 1)))
        return CUDA_ERROR_INVALID_IMAGE;
    uint32_t end = k->nparams ? k->params[k->nparams - 1].offset + k->params[k->nparams - 1].size : 0;
    uint32_t off = (end + align - 1) & ~(align - 1);
    if (off > SIM_IMAGE_MAX_PARAM_BYTES || size > SIM_IMAGE_MAX_PARAM_BYTES - off)
        return CUDA_ERROR_INVALID_IMAGE;
    struct sim_param *np = realloc(k->params, (k->nparams + 1) * sizeof *np);
    if (!np)
        return CUDA_ERROR_OUT_OF_MEMORY;
    k->params = np;
    k->params[k->nparams].offset = off;
    k->params[k->nparams].size = size;
    k->nparams++;
    return CUDA_SUCCESS;
}

void sim_desc_free(struct sim_image_desc *d)
{
    for (size_t i = 0; i < d->nkernels; i++) {
        free(d->kernels[i].name);
        free(d->kernels[i].params);
    }
    for (size_t i = 0; i < d->nglobals; i++) {
        free(d->globals[i].name);
        free(d->globals[i].init);
    }
    free(d->kernels);
    free(d->globals);
    memset(d, 0, sizeof *d);
}
