/* sim_elf.c - a cubin (CUDA ELF64) reader: kernels, their parameter layout and resource usage, and globals.
 *
 *   kernels     STT_FUNC symbols marked as entries (st_other & STO_CUDA_ENTRY) or owning a .nv.info.<name>
 *               section;
 *   parameters  EIATTR_KPARAM_INFO records of .nv.info.<name>: ordinal, offset and size of each parameter
 *               (size in bits 18..31 of the last word);
 *   resources   EIATTR_REGCOUNT / EIATTR_FRAME_SIZE in .nv.info (per symbol index), else the register count
 *               in bits 24..31 of the .text.<name> section's sh_info; static shared memory = the size of
 *               .nv.shared.<name>; EIATTR_MAX_THREADS / EIATTR_REQNTID for launch bounds;
 *   globals     STT_OBJECT symbols in .nv.global (zero) or .nv.global.init / .nv.constant<N> (initialised);
 *   arch        e_flags: bits 8..15 (ELF ABI version >= 8) or bits 0..7 (older ABI).
 *
 * cuModuleLoadData passes no size, so the image must be self-delimiting: the extent is the end of the section
 * header table or of the furthest section, whichever is larger, capped at 1 GiB. The caller (the fargpu
 * server) must provide at least that many readable bytes; within them every offset, size, index and string
 * is bounds-checked, so a hostile image gives CUDA_ERROR_INVALID_IMAGE, never a read outside the extent.
 * A cubin inside a fatbin has a known size (its entry's payload): every read, the header included, then also
 * stays below that limit. */
#include "sim_image.h"

#include <string.h>

#define EM_CUDA 190
#define SHT_SYMTAB 2
#define SHT_NOBITS 8
#define STT_OBJECT 1
#define STT_FUNC 2
#define STO_CUDA_ENTRY 0x10

#define EIFMT_NVAL 1
#define EIFMT_BVAL 2
#define EIFMT_HVAL 3
#define EIFMT_SVAL 4
#define EIATTR_MAX_THREADS 0x05
#define EIATTR_REQNTID 0x10
#define EIATTR_FRAME_SIZE 0x11
#define EIATTR_KPARAM_INFO 0x17
#define EIATTR_REGCOUNT 0x2f

struct elf {
    const unsigned char *p;
    uint64_t size; /* extent */
    uint64_t shoff;
    uint32_t shnum;
    uint32_t shstrndx;
};

struct shdr {
    uint32_t name, type;
    uint64_t flags, addr, offset, size;
    uint32_t link, info;
    uint64_t align, entsize;
};

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static int in_bounds(const struct elf *e, uint64_t off, uint64_t len) { return off <= e->size && len <= e->size - off; }

static void get_shdr(const struct elf *e, uint32_t i, struct shdr *s)
{
    const unsigned char *q = e->p + e->shoff + (uint64_t)i * 64;
    s->name = rd32(q);
    s->type = rd32(q + 4);
    s->flags = rd64(q + 8);
    s->addr = rd64(q + 16);
    s->offset = rd64(q + 24);
    s->size = rd64(q + 32);
    s->link = rd32(q + 40);
    s->info = rd32(q + 44);
    s->align = rd64(q + 48);
    s->entsize = rd64(q + 56);
}

/* Section contents are in bounds (NOBITS sections have none). */
static int sec_ok(const struct elf *e, const struct shdr *s) { return s->type == SHT_NOBITS || in_bounds(e, s->offset, s->size); }

/* A NUL-terminated string at offset `off` of string table section `strsec`, or NULL. */
static const char *str_at(const struct elf *e, uint32_t strsec, uint64_t off, size_t *len)
{
    if (strsec == 0 || strsec >= e->shnum)
        return NULL;
    struct shdr s;
    get_shdr(e, strsec, &s);
    if (s.type == SHT_NOBITS || !sec_ok(e, &s) || off >= s.size)
        return NULL;
    const char *base = (const char *)e->p + s.offset + off;
    size_t n = strnlen(base, (size_t)(s.size - off));
    if (n == s.size - off)
        return NULL; /* unterminated */
    if (len)
        *len = n;
    return base;
}

static const char *sec_name(const struct elf *e, const struct shdr *s, size_t *len) { return str_at(e, e->shstrndx, s->name, len); }

/* Index of the section named prefix+name (name of length nlen), or 0. */
static uint32_t find_section(const struct elf *e, const char *prefix, const char *name, size_t nlen)
{
    size_t plen = strlen(prefix);
    for (uint32_t i = 1; i < e->shnum; i++) {
        struct shdr s;
        size_t len = 0;
        get_shdr(e, i, &s);
        const char *n = sec_name(e, &s, &len);
        if (n && len == plen + nlen && memcmp(n, prefix, plen) == 0 && memcmp(n + plen, name, nlen) == 0)
            return i;
    }
    return 0;
}

static CUresult open_elf(const unsigned char *p, uint64_t limit, struct elf *e, int *arch)
{
    if (limit > SIM_IMAGE_CAP)
        limit = SIM_IMAGE_CAP;
    /* e_ident: class 2 (64-bit), data 1 (little endian); e_machine EM_CUDA; section headers of 64 bytes. */
    if (limit < 64 || p[4] != 2 || p[5] != 1 || rd16(p + 18) != EM_CUDA || rd16(p + 58) != 64)
        return CUDA_ERROR_INVALID_IMAGE;
    e->p = p;
    e->shoff = rd64(p + 40);
    e->shnum = rd16(p + 60);
    e->shstrndx = rd16(p + 62);
    uint32_t flags = rd32(p + 48);
    *arch = p[8] >= 8 ? (int)((flags >> 8) & 0xff) : (int)(flags & 0xff);
    if (e->shoff < 64 || e->shoff > limit - 64)
        return CUDA_ERROR_INVALID_IMAGE;
    e->size = e->shoff + 64; /* section 0 first: it may hold the real count and string index */
    if (e->shnum == 0)
        e->shnum = (uint32_t)(rd64(p + e->shoff + 32) > 0xffffff ? 0 : rd64(p + e->shoff + 32));
    if (e->shstrndx == 0xffff)
        e->shstrndx = rd32(p + e->shoff + 40);
    if (e->shnum == 0 || e->shstrndx >= e->shnum)
        return CUDA_ERROR_INVALID_IMAGE;
    uint64_t end = e->shoff + (uint64_t)e->shnum * 64;
    if (end > limit)
        return CUDA_ERROR_INVALID_IMAGE;
    e->size = end;
    /* Extend the extent to cover every section's contents (the image is contiguous). */
    uint64_t extent = end;
    for (uint32_t i = 1; i < e->shnum; i++) {
        struct shdr s;
        get_shdr(e, i, &s);
        if (s.type == SHT_NOBITS)
            continue;
        if (s.offset > limit || s.size > limit - s.offset)
            return CUDA_ERROR_INVALID_IMAGE;
        if (s.offset + s.size > extent)
            extent = s.offset + s.size;
    }
    e->size = extent;
    return CUDA_SUCCESS;
}

/* Walks the attribute records of an .nv.info section; calls fn for each. Returns 0 on a malformed record. */
typedef void (*attr_fn)(void *arg, unsigned attr, const unsigned char *val, uint32_t len);
static int walk_info(const struct elf *e, uint32_t sec, attr_fn fn, void *arg)
{
    struct shdr s;
    get_shdr(e, sec, &s);
    if (s.type == SHT_NOBITS || !sec_ok(e, &s))
        return 0;
    const unsigned char *q = e->p + s.offset;
    uint64_t pos = 0;
    while (pos + 2 <= s.size) {
        unsigned fmt = q[pos], attr = q[pos + 1];
        if (fmt == EIFMT_NVAL) {
            fn(arg, attr, NULL, 0);
            pos += 2;
        } else if (fmt == EIFMT_BVAL || fmt == EIFMT_HVAL) {
            if (pos + 4 > s.size)
                return 0;
            fn(arg, attr, q + pos + 2, 2);
            pos += 4;
        } else if (fmt == EIFMT_SVAL) {
            if (pos + 4 > s.size)
                return 0;
            uint32_t len = rd16(q + pos + 2);
            if (len > s.size - pos - 4)
                return 0;
            fn(arg, attr, q + pos + 4, len);
            pos += 4 + (uint64_t)len;
        } else {
            return 0;
        }
    }
    return 1;
}

struct kparams {
    struct sim_param p[SIM_IMAGE_MAX_PARAMS];
    unsigned char seen[SIM_IMAGE_MAX_PARAMS];
    uint32_t n;
    int bad;
    int max_threads;
};

static void kernel_attr(void *arg, unsigned attr, const unsigned char *v, uint32_t len)
{
    struct kparams *k = arg;
    if (attr == EIATTR_KPARAM_INFO) {
        if (len < 12) {
            k->bad = 1;
            return;
        }
        uint32_t ord = rd16(v + 4), off = rd16(v + 6), size = (rd32(v + 8) >> 18) & 0x3fff;
        if (ord >= SIM_IMAGE_MAX_PARAMS || k->seen[ord] || size == 0 || off + size > SIM_IMAGE_MAX_PARAM_BYTES) {
            k->bad = 1;
            return;
        }
        k->seen[ord] = 1;
        k->p[ord].offset = off;
        k->p[ord].size = size;
        if (ord + 1 > k->n)
            k->n = ord + 1;
    } else if ((attr == EIATTR_MAX_THREADS || attr == EIATTR_REQNTID) && len >= 12) {
        uint64_t prod = (uint64_t)rd32(v) * rd32(v + 4) * rd32(v + 8);
        if (prod > 0 && prod < (uint64_t)k->max_threads)
            k->max_threads = (int)prod;
    }
}

struct modinfo {
    struct sim_image_desc *d;
    const uint32_t *kernel_sym; /* symbol index of each kernel */
};

static void module_attr(void *arg, unsigned attr, const unsigned char *v, uint32_t len)
{
    struct modinfo *m = arg;
    if ((attr != EIATTR_REGCOUNT && attr != EIATTR_FRAME_SIZE) || len < 8)
        return;
    uint32_t sym = rd32(v), val = rd32(v + 4);
    for (size_t i = 0; i < m->d->nkernels; i++) {
        if (m->kernel_sym[i] != sym)
            continue;
        if (attr == EIATTR_REGCOUNT)
            m->d->kernels[i].num_regs = val > 255 ? 255 : (int)val;
        else
            m->d->kernels[i].local_bytes = val > 0x7fffffff ? 0x7fffffff : (int)val;
    }
}

static CUresult add_kernel(const struct elf *e, struct sim_image_desc *d, const char *name, size_t nlen,
                           const struct shdr *text)
{
    struct sim_kernel_desc *k = sim_desc_add_kernel(d, name, nlen);
    if (!k)
        return CUDA_ERROR_INVALID_IMAGE;
    static struct kparams kp; /* large; callers hold sim_lock */
    memset(&kp, 0, sizeof kp);
    kp.max_threads = 1024;
    uint32_t info = find_section(e, ".nv.info.", name, nlen);
    if (info && !walk_info(e, info, kernel_attr, &kp))
        return CUDA_ERROR_INVALID_IMAGE;
    if (kp.bad)
        return CUDA_ERROR_INVALID_IMAGE;
    for (uint32_t i = 0; i < kp.n; i++)
        if (!kp.seen[i])
            return CUDA_ERROR_INVALID_IMAGE;
    if (kp.n) {
        k->params = malloc(kp.n * sizeof *k->params);
        if (!k->params)
            return CUDA_ERROR_OUT_OF_MEMORY;
        memcpy(k->params, kp.p, kp.n * sizeof *k->params);
        k->nparams = kp.n;
    }
    k->max_threads = kp.max_threads;
    k->num_regs = text ? (int)(text->info >> 24) : 0;
    uint32_t sh = find_section(e, ".nv.shared.", name, nlen);
    if (sh) {
        struct shdr s;
        get_shdr(e, sh, &s);
        k->shared_bytes = s.size > 0x7fffffff ? 0x7fffffff : (int)s.size;
    }
    return CUDA_SUCCESS;
}

static int global_section(const struct elf *e, uint32_t shndx, struct shdr *s)
{
    if (shndx == 0 || shndx >= e->shnum)
        return 0;
    get_shdr(e, shndx, s);
    size_t len = 0;
    const char *n = sec_name(e, s, &len);
    if (!n)
        return 0;
    if ((len == 10 && memcmp(n, ".nv.global", 10) == 0) || (len == 15 && memcmp(n, ".nv.global.init", 15) == 0))
        return 1;
    /* user __constant__ data lives in .nv.constant<N> (N != 0; bank 0 holds kernel parameters) */
    return len == 13 && memcmp(n, ".nv.constant", 12) == 0 && n[12] >= '1' && n[12] <= '9';
}

CUresult sim_elf_parse(const unsigned char *image, uint64_t limit, struct sim_image_desc *out)
{
    struct elf e;
    memset(out, 0, sizeof *out);
    CUresult rc = open_elf(image, limit, &e, &out->arch);
    if (rc != CUDA_SUCCESS)
        return rc;
    uint32_t symsec = 0;
    struct shdr sym;
    for (uint32_t i = 1; i < e.shnum && !symsec; i++) {
        get_shdr(&e, i, &sym);
        if (sym.type == SHT_SYMTAB)
            symsec = i;
    }
    if (!symsec || sym.entsize != 24 || !sec_ok(&e, &sym) || sym.size / 24 > 0xffffffu)
        return CUDA_ERROR_INVALID_IMAGE;
    uint32_t nsyms = (uint32_t)(sym.size / 24);
    uint32_t *ksym = calloc(nsyms ? nsyms : 1, sizeof *ksym);
    if (!ksym)
        return CUDA_ERROR_OUT_OF_MEMORY;
    for (uint32_t i = 1; i < nsyms && rc == CUDA_SUCCESS; i++) {
        const unsigned char *q = e.p + sym.offset + (uint64_t)i * 24;
        uint32_t st_name = rd32(q);
        unsigned type = q[4] & 0xf, other = q[5];
        uint16_t shndx = rd16(q + 6);
        uint64_t value = rd64(q + 8), size = rd64(q + 16);
        size_t nlen = 0;
        const char *name = str_at(&e, sym.link, st_name, &nlen);
        if (!name || nlen == 0)
            continue;
        if (type == STT_FUNC) {
            uint32_t info = find_section(&e, ".nv.info.", name, nlen);
            if (!(other & STO_CUDA_ENTRY) && !info)
                continue; /* a device function */
            struct shdr text, *tp = NULL;
            if (shndx > 0 && shndx < e.shnum) {
                get_shdr(&e, shndx, &text);
                tp = &text;
            }
            ksym[out->nkernels] = i;
            rc = add_kernel(&e, out, name, nlen, tp);
        } else if (type == STT_OBJECT && size > 0) {
            struct shdr gs;
            if (!global_section(&e, shndx, &gs))
                continue;
            if (value > gs.size || size > gs.size - value || size > ((uint64_t)1 << 34)) {
                rc = CUDA_ERROR_INVALID_IMAGE;
                break;
            }
            struct sim_global_desc *g = sim_desc_add_global(out, name, nlen);
            if (!g) {
                rc = CUDA_ERROR_INVALID_IMAGE;
                break;
            }
            g->size = (size_t)size;
            if (gs.type != SHT_NOBITS) {
                if (!sec_ok(&e, &gs)) {
                    rc = CUDA_ERROR_INVALID_IMAGE;
                    break;
                }
                g->init = malloc((size_t)size);
                if (!g->init) {
                    rc = CUDA_ERROR_OUT_OF_MEMORY;
                    break;
                }
                memcpy(g->init, e.p + gs.offset + value, (size_t)size);
            }
        }
    }
    /* Register counts and stack frames from the module-wide .nv.info (these override sh_info). */
    uint32_t modinfo_sec = rc == CUDA_SUCCESS ? find_section(&e, ".nv.info", "", 0) : 0;
    if (modinfo_sec) {
        struct modinfo m = { out, ksym };
        if (!walk_info(&e, modinfo_sec, module_attr, &m))
            rc = CUDA_ERROR_INVALID_IMAGE;
    }
    free(ksym);
    if (rc != CUDA_SUCCESS)
        sim_desc_free(out);
    return rc;
}
