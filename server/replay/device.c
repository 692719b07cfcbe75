/* device.c — cuDeviceGetAttribute for the client (the stub overrides the memory-sharing attributes it cannot give
 * remotely: client_stub/device_attrs.c); cuDeviceGetP2PAtomicCapabilities and cuDeviceGetLuid; cuLogsDumpToMemory
 * (the driver's error log of this worker process, which serves one session). The node answers as its driver does. */
#include <string.h>

#include "fgs_impl.h"
#include "fgs_session.h"

CUresult fgs_cuDeviceGetAttribute(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint8_t want = 0;
    CUdevice_attribute attrib;
    CUdevice dev;
    fg_get(r, &want, 1);
    fg_get(r, &attrib, sizeof attrib);
    fg_get(r, &dev, sizeof dev);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    int v = 0;
    CUresult res = S->api->cuDeviceGetAttribute(want ? &v : NULL, attrib, dev);
    if (res == CUDA_SUCCESS) fg_put(out, &v, sizeof v);
    return res;
}

/* u32 count + count operations, i32 source and destination devices; the reply: count capability masks. */
CUresult fgs_cuDeviceGetP2PAtomicCapabilities(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint32_t count = fg_get_u32(r);
    if (r->failed || count == 0 || count > 1024) return FGS_PROTOCOL_ERROR;
    CUatomicOperation *ops = (CUatomicOperation *)fgs_scratch(S, count * (sizeof(CUatomicOperation) + sizeof(unsigned)));
    if (!ops) return CUDA_ERROR_OUT_OF_MEMORY;
    for (uint32_t i = 0; i < count; i++) ops[i] = (CUatomicOperation)fg_get_u32(r);
    CUdevice src = (CUdevice)fg_get_u32(r), dst = (CUdevice)fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuDeviceGetP2PAtomicCapabilities) return fgs_missing(S, "cuDeviceGetP2PAtomicCapabilities");
    unsigned *caps = (unsigned *)(void *)(ops + count);
    CUresult res = S->api->cuDeviceGetP2PAtomicCapabilities(caps, ops, count, src, dst);
    if (res == CUDA_SUCCESS) fg_put(out, caps, count * sizeof *caps);
    return res;
}

/* i32 device; the reply: 8 LUID bytes, u32 node mask. */
CUresult fgs_cuDeviceGetLuid(fgs_session *S, fg_reader *r, fg_writer *out) {
    CUdevice dev = (CUdevice)fg_get_u32(r);
    if (r->failed) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuDeviceGetLuid) return fgs_missing(S, "cuDeviceGetLuid");
    char luid[8];
    unsigned mask = 0;
    memset(luid, 0, sizeof luid);
    CUresult res = S->api->cuDeviceGetLuid(luid, &mask, dev);
    if (res == CUDA_SUCCESS) {
        fg_put(out, luid, sizeof luid);
        fg_put_u32(out, mask);
    }
    return res;
}

/* The most log bytes one dump asks the driver for: its log buffer holds at most 25600 bytes (cuda.h), so a larger
 * buffer holds every message anyway. */
#define LOGS_CAP 65536u

/* u8 which of iterator (1), buffer (2) and size (4) the application passed, u32 iterator, u64 size, u32 flags.
 * The reply, whatever the driver answers (so *size and the iterator come back with an error too): u32 the driver's
 * result, u32 iterator, u8 whether *size changed, u64 *size, u32 n, n bytes of the buffer (the text and its NUL). */
CUresult fgs_cuLogsDumpToMemory(fgs_session *S, fg_reader *r, fg_writer *out) {
    uint8_t given = 0;
    fg_get(r, &given, 1);
    CUlogIterator it = fg_get_u32(r);
    uint64_t size = fg_get_u64(r);
    unsigned flags = fg_get_u32(r);
    if (r->failed || (given & ~7u)) return FGS_PROTOCOL_ERROR;
    if (!S->api->cuLogsDumpToMemory) return fgs_missing(S, "cuLogsDumpToMemory");
    size_t cap = size < LOGS_CAP ? (size_t)size : LOGS_CAP, sz = cap;
    char *buf = (char *)fgs_scratch(S, cap + 1);
    if (!buf) return CUDA_ERROR_OUT_OF_MEMORY;
    CUresult res = S->api->cuLogsDumpToMemory(given & 1 ? &it : NULL, given & 2 ? buf : NULL, given & 4 ? &sz : NULL,
                                              flags);
    uint32_t n = 0;
    if (res == CUDA_SUCCESS && (given & 6) == 6 && cap) n = (uint32_t)(sz < cap ? sz + 1 : cap);
    fg_put_u32(out, (uint32_t)res);
    fg_put_u32(out, it);
    uint8_t changed = sz != cap;
    fg_put(out, &changed, 1);
    fg_put_u64(out, sz);
    fg_put_u32(out, n);
    fg_put(out, buf, n);
    return CUDA_SUCCESS;
}
