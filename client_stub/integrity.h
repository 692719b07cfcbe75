/* integrity.h — the keyed digest that the CUDA runtime asks the driver for through the INTEGRITY_CHECK
 * private table (see export_tables.c), computed entirely in the stub. */
#ifndef FGC_INTEGRITY_H
#define FGC_INTEGRITY_H

#include <stddef.h>
#include <stdint.h>

/* MD2 (RFC 1319) over data; out receives the 16-byte digest. Exposed for the unit test. */
void fgc_md2(const void *data, size_t n, uint8_t out[16]);

/* One device's identity as the digest mixes it in. */
typedef struct {
    uint8_t uuid[16];
    int32_t pci_domain, pci_bus, pci_device;
} fgc_integrity_device;

typedef struct {
    uint32_t driver_version;   /* what cuDriverGetVersion reports */
    uint32_t requested;        /* the runtime's version argument */
    uint32_t pid, tid;         /* getpid(), pthread_self() truncated to 32 bits */
    const void *cudart_table;  /* the CUDART_INTERFACE table handed out */
    const void *integrity_table;
    const void *fn_address;    /* the integrity-check function itself */
    uint64_t unix_seconds;     /* the runtime's time argument */
} fgc_integrity_input;

/* Computes the 16-byte answer (as two little-endian u64) for the given inputs and devices. */
void fgc_integrity_digest(const fgc_integrity_input *in, const fgc_integrity_device *devs, int ndev,
                          uint64_t out[2]);

#endif
