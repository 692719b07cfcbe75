/* fgc_image.h — module/library images: size detection and content-addressed upload (module.c, image.c). */
#ifndef FGC_IMAGE_H
#define FGC_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "fgc_rpc.h"

/* Size of a PTX, ELF cubin, fatbin or fatbin-wrapper image (a wrapper is replaced by the fatbin it points
 * to); 0 when it cannot be determined. */
size_t fgc_image_size(const void **image);
/* Load an image through op (module or library load): extra_n bytes of op-specific arguments follow the
 * image name. *id receives the new handle's virtual id. */
CUresult fgc_image_load(uint16_t op, const void *image, size_t n, const void *extra, size_t extra_n, uint64_t *id);
/* The same for an op whose reply has a variable length (up to cap bytes into reply; *got receives the count). */
CUresult fgc_image_call(uint16_t op, const void *image, size_t n, const void *extra, size_t extra_n, void *reply,
                        size_t cap, size_t *got);
/* fgc_image_load with JIT options (cuModuleLoadDataEx, cuLibraryLoadData; module.c): the node's driver gets them
 * and its outputs are written into the application's arrays, also when the load fails. */
CUresult fgc_image_load_jit(uint16_t op, const void *image, size_t n, unsigned numOptions, CUjit_option *options,
                            void **optionValues, uint64_t *id);
uint64_t fgc_image_bytes_sent(void);
/* Read an image file on the client (callers free it); NULL with *err set when it cannot be read. */
void *fgc_read_image_file(const char *path, CUresult *err);

/* Parameter layouts of functions and kernels, by virtual id (module.c). */
void fgc_layout_put(uint64_t id, uint32_t n, uint32_t *pairs, const char *name);
int fgc_layout_alias(uint64_t from, uint64_t to);
/* Copies the layout for a launch into the caller's buffer *pairs (of *cap pairs; grown with realloc when too
 * small). 0: found; -1: unknown id; -2: out of memory. */
int fgc_layout_get(uint64_t id, uint32_t *n, uint32_t *total, uint32_t **pairs, size_t *cap);
/* Receive "u32 count, count × (u32 offset, u32 size)" after the reply's id, and store it for id. */
CUresult fgc_sync_with_layout(uint64_t *id, const char *name);

#endif
