/* sim_image.h - what the module loaders learn from an image, independent of its format. The PTX parser
 * (sim_ptx.c) and the cubin parser (sim_elf.c) fill a sim_image_desc; sim_module.c turns it into a module with
 * function handles and device globals. sim_image.c holds the builders and the format sniffing. */
#ifndef FARGPU_SIM_IMAGE_H
#define FARGPU_SIM_IMAGE_H

#include "sim.h"

#define SIM_IMAGE_MAX_KERNELS 65536
#define SIM_IMAGE_MAX_GLOBALS 65536
#define SIM_IMAGE_MAX_PARAMS 4096
#define SIM_IMAGE_MAX_PARAM_BYTES 32764 /* the driver's kernel parameter limit on sm_70+ (CUDA 12.1+) */
#define SIM_IMAGE_MAX_NAME 4096

struct sim_kernel_desc {
    char *name;
    uint32_t nparams;
    struct sim_param *params;
    int num_regs;
    int shared_bytes;
    int local_bytes;
    int max_threads;
};

struct sim_global_desc {
    char *name;
    size_t size;
    unsigned char *init; /* NULL: zero-initialised; else size bytes */
};

struct sim_image_desc {
    int arch;        /* PTX: .target sm_NN; cubin: the SM the code is for (e.g. 90) */
    struct sim_kernel_desc *kernels;
    size_t nkernels, capk;
    struct sim_global_desc *globals;
    size_t nglobals, capg;
};

enum sim_image_format { SIM_IMAGE_ELF, SIM_IMAGE_FATBIN, SIM_IMAGE_PTX };
enum sim_image_format sim_image_sniff(const void *image);

struct sim_kernel_desc *sim_desc_add_kernel(struct sim_image_desc *d, const char *name, size_t len);
struct sim_global_desc *sim_desc_add_global(struct sim_image_desc *d, const char *name, size_t len);
/* Appends a parameter with natural layout (offset aligned up to align); CUDA_ERROR_INVALID_IMAGE on limits. */
CUresult sim_kernel_add_param(struct sim_kernel_desc *k, uint32_t size, uint32_t align);
void sim_desc_free(struct sim_image_desc *d);

CUresult sim_ptx_parse(const char *text, struct sim_image_desc *out);
CUresult sim_elf_parse(const unsigned char *image, struct sim_image_desc *out);

#endif
