/* sim_image.c - format sniffing for cuModuleLoadData images and the builders of sim_image_desc (kernels with
 * their parameter layouts, globals with their initial bytes). Limits (SIM_IMAGE_MAX_*) keep a hostile image
 * from making the sim allocate without bound. */
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
    if (has_magic(image, fatbin) || has_magic(image, fatwrap))
        return SIM_IMAGE_FATBIN;
    return SIM_IMAGE_PTX;
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
