/* sim_image.h - what the module loaders learn from an image, independent of its format. The PTX parser
 * (sim_ptx.c) and the cubin parser (sim_elf.c) fill a sim_image_desc, the fatbin reader (sim_fatbin.c) picks
 * the entry to hand to one of them; sim_module.c and sim_library.c turn a desc into modules with function
 * handles and device globals. sim_image.c holds the builders, the format sniffing and sim_image_parse. */
#ifndef FARGPU_SIM_IMAGE_H
#define FARGPU_SIM_IMAGE_H

#include "sim.h"

#define SIM_IMAGE_MAX_KERNELS 65536
#define SIM_IMAGE_MAX_GLOBALS 65536
#define SIM_IMAGE_MAX_PARAMS 4096
#define SIM_IMAGE_MAX_PARAM_BYTES 32764 /* the driver's kernel parameter limit on sm_70+ (CUDA 12.1+) */
#define SIM_IMAGE_MAX_NAME 4096
#define SIM_IMAGE_CAP ((uint64_t)1 << 30) /* the largest cubin or fatbin the sim accepts */

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

enum sim_image_format { SIM_IMAGE_ELF, SIM_IMAGE_FATBIN, SIM_IMAGE_FATBIN_WRAPPER, SIM_IMAGE_PTX };
enum sim_image_format sim_image_sniff(const void *image);

/* Parses any image cuModuleLoadData accepts (cubin, fatbin, fatbin wrapper, PTX) into d; *is_ptx tells whether
 * the kernels came from PTX. A cubin for another SM, or a fatbin without sm_90 code or PTX the device can
 * run, is CUDA_ERROR_NO_BINARY_FOR_GPU. On error d is left empty. */
CUresult sim_image_parse(const void *image, struct sim_image_desc *d, int *is_ptx);

struct sim_kernel_desc *sim_desc_add_kernel(struct sim_image_desc *d, const char *name, size_t len);
struct sim_global_desc *sim_desc_add_global(struct sim_image_desc *d, const char *name, size_t len);
/* Appends a parameter with natural layout (offset aligned up to align); CUDA_ERROR_INVALID_IMAGE on limits. */
CUresult sim_kernel_add_param(struct sim_kernel_desc *k, uint32_t size, uint32_t align);
void sim_desc_free(struct sim_image_desc *d);

CUresult sim_ptx_parse(const char *text, struct sim_image_desc *out);
/* limit: the bytes known to be readable (SIM_IMAGE_CAP when the image stands alone and delimits itself). */
CUresult sim_elf_parse(const unsigned char *image, uint64_t limit, struct sim_image_desc *out);

/* The entry of a fatbin the sim loads: the sm_90 cubin if there is one, else the newest PTX for sm_90 or older. */
struct sim_fatbin_pick {
    int is_ptx;
    const unsigned char *payload;
    uint64_t size; /* readable payload bytes */
};
/* fatbin: starts with the fatbin header; its own size fields bound every read. */
CUresult sim_fatbin_pick(const unsigned char *fatbin, struct sim_fatbin_pick *out);

#endif
