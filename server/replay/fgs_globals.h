/* fgs_globals.h — listing the module-scope variables of a session's images (global_names.c), for parking every
 * module global by name (park.c). */
#ifndef FGS_GLOBALS_H
#define FGS_GLOBALS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char **name;
    size_t n, cap;
    uint32_t *slot; /* open-addressing set over name (index + 1; 0 empty) */
    size_t slots;
} fgs_names;

/* Adds to out the names of the variables the image defines (sm: the device's compute capability, major * 10 +
 * minor, picks a fatbin's cubins). 0, or -1 with err saying why the image cannot be listed completely. */
int fgs_image_global_names(const uint8_t *img, uint64_t size, int sm, fgs_names *out, char *err, size_t errlen);
void fgs_names_free(fgs_names *L);

#endif
