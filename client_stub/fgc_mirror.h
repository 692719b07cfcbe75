/* fgc_mirror.h — host mirrors of device memory (mirror.c): managed memory (cuMemAllocManaged) and mapped host
 * memory (cuMemHostGetDevicePointer) over a transport that cannot share pages with the GPU. The hooks other
 * files call: before a record is built, on host-side copies, and when memory is freed. */
#ifndef FGC_MIRROR_H
#define FGC_MIRROR_H

#include <cuda.h>
#include <stddef.h>
#include <stdint.h>

/* batch.c, fgc_begin, before the connection lock: dirty host pages go to the device before work that may read
 * them, and host copies become stale after work that may write. Cheap when no mirror exists. */
void fgc_mirror_before_op(uint16_t op);
/* memory.c: a host-side copy whose host range lies in a mirror is done on the device instead (the mirror's
 * device side), so the stub never reads or writes protected mirror pages. Returns 1 with *r set when it
 * handled the copy, 0 to go on as usual. s: the stream (async), async: 0/1. */
int fgc_mirror_htod(CUdeviceptr dst, const void *src, size_t n, CUstream s, int async, CUresult *r);
int fgc_mirror_dtoh(void *dst, CUdeviceptr src, size_t n, CUstream s, int async, CUresult *r);
/* memory.c: managed memory freed with cuMemFree (after the server freed it), pinned host memory freed or
 * unregistered (before): the mirror goes. */
void fgc_mirror_managed_freed(CUdeviceptr p);
void fgc_mirror_host_gone(void *p);
/* pointer.c: managed memory (1) or not (0); for mapped host memory, its device address. */
int fgc_mirror_is_managed(uint64_t p);
int fgc_mirror_device_of(const void *host, uint64_t *dev);

#endif
