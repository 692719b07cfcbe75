/* fgc_procaddr.h — the generated cuGetProcAddress table's row type. */
#ifndef FGC_PROCADDR_H
#define FGC_PROCADDR_H

typedef struct {
    const char *name;
    int version;      /* the CUDA version that introduced this ABI; 0: any */
    void *fn;         /* default-stream semantics */
    void *fn_ptds;    /* per-thread default stream variant (same as fn when there is none) */
} fgc_procaddr_entry;

extern const fgc_procaddr_entry fgc_procaddr_table[];
extern const unsigned fgc_procaddr_count;

#endif
