/* sim_fatbin.c - the fatbin container: choosing the entry an sm_90 device would load.
 *
 * A fatbin (what nvcc -fatbin writes, and what a program's fatbin wrapper points at) is a 16-byte header
 *     u32 magic 0xBA55ED50, u16 version (1), u16 header size, u64 size of everything after the header
 * followed by entries laid end to end, each a header of its own and then its payload:
 *     +0x00 u16 kind (1 = PTX text, 2 = ELF cubin)   +0x02 u16 entry format version
 *     +0x04 u32 entry header size (>= 64)             +0x08 u64 payload size (padded)
 *     +0x10 u32 compressed size (0 if stored)         +0x18 u32 PTX ISA version (major << 16 | minor)
 *     +0x1c u32 SM architecture (e.g. 90)             +0x28 u64 flags (0x1 64-bit, 0x10 Linux, ...)
 *     +0x38 u64 uncompressed size (compressed entries)
 * Compressed payloads are flagged by 0x1000, 0x2000 (LZ4) or 0x8000 (Zstandard, nvcc's default since 12.8).
 *
 * The choice follows the driver on an sm_90 GPU: the sm_90 cubin if there is one, else the PTX of the newest
 * architecture not above sm_90 (the JIT compiles it). The sim has no decompressor: if the chosen entry is
 * compressed the load is CUDA_ERROR_NOT_SUPPORTED (logged once; build with nvcc -no-compress).
 *
 * The bytes are untrusted and come without a length: the header's own sizes give the extent (header size +
 * size, at most 1 GiB), which the caller must have made readable (the fargpu server checks it against what the
 * client sent). Every entry header and payload must lie inside that extent, else CUDA_ERROR_INVALID_IMAGE; a
 * container version other than 1 has a layout the sim does not know (CUDA_ERROR_NOT_SUPPORTED, logged once). */
#include "sim_image.h"

#include <string.h>

#define FATBIN_MAGIC 0xBA55ED50u
#define FATBIN_HEADER_BYTES 16
#define ENTRY_HEADER_MIN 64
#define KIND_PTX 1
#define KIND_ELF 2
#define FLAGS_COMPRESSED ((uint64_t)0x1000 | 0x2000 | 0x8000)
#define DEVICE_SM 90

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

struct entry {
    const unsigned char *payload;
    uint64_t size;
    uint32_t arch;
    uint64_t flags;
};

/* [p, p+n) holds only zero bytes: padding after the last entry. */
static int all_zero(const unsigned char *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

CUresult sim_fatbin_pick(const unsigned char *fb, struct sim_fatbin_pick *out)
{
    memset(out, 0, sizeof *out);
    if (rd32(fb) != FATBIN_MAGIC)
        return CUDA_ERROR_INVALID_IMAGE;
    uint16_t version = rd16(fb + 4), hsize = rd16(fb + 6);
    uint64_t body = rd64(fb + 8);
    if (version != 1) {
        sim_log_once("fatbin container version",
                     "the simulated device reads version 1 fatbins only (what nvcc 12/13 write)");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    if (hsize < FATBIN_HEADER_BYTES || body > SIM_IMAGE_CAP - hsize)
        return CUDA_ERROR_INVALID_IMAGE;
    const uint64_t end = (uint64_t)hsize + body;
    struct entry elf = { 0 }, ptx = { 0 };
    int have_elf = 0, have_ptx = 0;
    uint64_t off = hsize;
    while (off < end) {
        const unsigned char *e = fb + off;
        uint64_t left = end - off;
        if (left < ENTRY_HEADER_MIN || (rd16(e) == 0 && rd32(e + 4) == 0)) {
            if (all_zero(e, left))
                break; /* trailing padding */
            return CUDA_ERROR_INVALID_IMAGE;
        }
        uint16_t kind = rd16(e);
        uint32_t ehsize = rd32(e + 4);
        uint64_t psize = rd64(e + 8);
        if (ehsize < ENTRY_HEADER_MIN || ehsize > left || psize > left - ehsize)
            return CUDA_ERROR_INVALID_IMAGE;
        struct entry cur = { e + ehsize, psize, rd32(e + 0x1c), rd64(e + 0x28) };
        if (kind == KIND_ELF && cur.arch == DEVICE_SM && !have_elf) {
            elf = cur;
            have_elf = 1;
        } else if (kind == KIND_PTX && cur.arch <= DEVICE_SM && (!have_ptx || cur.arch > ptx.arch)) {
            ptx = cur;
            have_ptx = 1;
        }
        off += ehsize + psize;
    }
    if (!have_elf && !have_ptx)
        return CUDA_ERROR_NO_BINARY_FOR_GPU;
    const struct entry *pick = have_elf ? &elf : &ptx;
    if (pick->flags & FLAGS_COMPRESSED) {
        sim_log_once("fatbin", "compressed fatbin entries are not supported by the simulated device; "
                               "build with nvcc -no-compress");
        return CUDA_ERROR_NOT_SUPPORTED;
    }
    out->is_ptx = !have_elf;
    out->payload = pick->payload;
    out->size = pick->size;
    return CUDA_SUCCESS;
}
