/* global_names.c — the names of the variables an image defines at module scope, so that parking can save every
 * module global by name (park.c), not only those the client looked up: a `__device__` counter a kernel bumps is
 * part of the session's memory although no host call ever names it.
 *
 * The driver has no call that lists a module's globals, so the names come from the image the session loaded:
 * a cubin's symbol table (STT_OBJECT symbols defined in a .nv.global* or .nv.constant1-9 section: `__device__`,
 * `__constant__`, `__managed__` and file-static variables), PTX's module-scope `.global` and `.const` declarations (not `.extern` ones), and
 * for a fatbin, its entries: the cubins for the device's SM where there are any, else every entry. Compressed
 * fatbin entries (Zstandard, nvcc's default since 12.8, or LZ4) are decompressed with the system's libzstd or
 * liblz4, loaded on first use. A name the lister finds that the loaded module lacks is skipped by the caller
 * (cuModuleGetGlobal says CUDA_ERROR_NOT_FOUND); an image it cannot read completely makes the session
 * unparkable, with the reason, rather than parked without some of its globals.
 *
 * The bytes are the session's own upload (checked against their SHA-256, bounded by FG_MAX_IMAGE), and every
 * offset read from them is bounds-checked here. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fgs_globals.h"
#include "fgs_session.h"

#define FATBIN_MAGIC 0xBA55ED50u
#define KIND_PTX 1
#define KIND_ELF 2
#define FLAG_LZ4 ((uint64_t)0x1000 | 0x2000)
#define FLAG_ZSTD ((uint64_t)0x8000)
#define MAX_UNPACKED ((uint64_t)1 << 30)
#define MAX_NAME 4096

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static uint64_t fnv(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

/* Adds a name unless it is there already. 0, or -1 out of memory. */
static int add(fgs_names *L, const char *s, size_t n) {
    if (!n || n > MAX_NAME || s[0] == '.') return 0;
    if (L->n * 2 >= L->slots) {
        size_t slots = L->slots ? L->slots * 2 : 256;
        uint32_t *ns = (uint32_t *)calloc(slots, sizeof *ns);
        if (!ns) return -1;
        for (size_t i = 0; i < L->n; i++) {
            size_t k = fnv(L->name[i], strlen(L->name[i])) & (slots - 1);
            while (ns[k]) k = (k + 1) & (slots - 1);
            ns[k] = (uint32_t)i + 1;
        }
        free(L->slot);
        L->slot = ns;
        L->slots = slots;
    }
    size_t k = fnv(s, n) & (L->slots - 1);
    for (; L->slot[k]; k = (k + 1) & (L->slots - 1)) {
        const char *have = L->name[L->slot[k] - 1];
        if (strlen(have) == n && !memcmp(have, s, n)) return 0;
    }
    if (L->n == L->cap) {
        size_t cap = L->cap ? L->cap * 2 : 64;
        char **nn = (char **)realloc(L->name, cap * sizeof *nn);
        if (!nn) return -1;
        L->name = nn;
        L->cap = cap;
    }
    char *c = (char *)malloc(n + 1);
    if (!c) return -1;
    memcpy(c, s, n);
    c[n] = 0;
    L->name[L->n] = c;
    L->slot[k] = (uint32_t)++L->n;
    return 0;
}

void fgs_names_free(fgs_names *L) {
    for (size_t i = 0; i < L->n; i++) free(L->name[i]);
    free(L->name);
    free(L->slot);
    memset(L, 0, sizeof *L);
}

/* ---- cubin (ELF64, little-endian) ---- */
/* Whether section i holds module globals: .nv.global* (`__device__`, `__managed__`) or .nv.constant1..N
 * (`__constant__`; bank 0 holds kernel parameters). Shared, local and code sections do not. */
static int globals_section(const uint8_t *b, uint64_t n, uint64_t shoff, uint16_t shentsize, uint16_t shnum,
                           uint16_t shstrndx, uint16_t i) {
    if (i >= shnum || shstrndx >= shnum) return 0;
    const uint8_t *strs = b + shoff + (uint64_t)shstrndx * shentsize;
    uint64_t soff = rd64(strs + 0x18), ssize = rd64(strs + 0x20);
    uint32_t name = rd32(b + shoff + (uint64_t)i * shentsize);
    if (soff > n || ssize > n - soff || name >= ssize) return 0;
    const char *s = (const char *)b + soff + name;
    size_t len = strnlen(s, (size_t)(ssize - name));
    if (len == ssize - name) return 0;
    if (!strncmp(s, ".nv.global", 10)) return 1;
    return !strncmp(s, ".nv.constant", 12) && s[12] >= '1' && s[12] <= '9';
}

static int elf_names(const uint8_t *b, uint64_t n, fgs_names *L, char *err, size_t errlen) {
    if (n < 64 || memcmp(b, "\x7f" "ELF", 4) || b[4] != 2 || b[5] != 1) {
        snprintf(err, errlen, "a cubin in it is not a 64-bit little-endian ELF file");
        return -1;
    }
    uint64_t shoff = rd64(b + 0x28);
    uint16_t shentsize = rd16(b + 0x3a), shnum = rd16(b + 0x3c), shstrndx = rd16(b + 0x3e);
    if (shentsize < 64 || shoff > n || (uint64_t)shnum * shentsize > n - shoff) goto bad;
    for (uint16_t i = 0; i < shnum; i++) {
        const uint8_t *sh = b + shoff + (uint64_t)i * shentsize;
        if (rd32(sh + 4) != 2) continue; /* SHT_SYMTAB */
        uint64_t off = rd64(sh + 0x18), size = rd64(sh + 0x20);
        uint32_t link = rd32(sh + 0x28);
        if (off > n || size > n - off || link >= shnum) goto bad;
        const uint8_t *st = b + shoff + (uint64_t)link * shentsize;
        uint64_t stroff = rd64(st + 0x18), strsize = rd64(st + 0x20);
        if (stroff > n || strsize > n - stroff) goto bad;
        const char *strtab = (const char *)b + stroff;
        for (uint64_t s = 0; s + 24 <= size; s += 24) {
            const uint8_t *sym = b + off + s;
            uint32_t name = rd32(sym);
            if ((sym[4] & 0xf) != 1 || rd16(sym + 6) == 0 || name >= strsize || /* STT_OBJECT, defined */
                !globals_section(b, n, shoff, shentsize, shnum, shstrndx, rd16(sym + 6)))
                continue;
            size_t len = strnlen(strtab + name, (size_t)(strsize - name));
            if (len == strsize - name) goto bad; /* not terminated inside the table */
            if (add(L, strtab + name, len)) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
        }
    }
    return 0;
bad:
    snprintf(err, errlen, "a cubin in it has a section or symbol table outside the file");
    return -1;
}

/* ---- PTX ---- */
static int ident(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '$' ||
           c == '%' || c == '.';
}

/* One module-scope statement (without its ';'): a .global or .const variable's name, if it declares one. */
static int ptx_statement(const char *s, size_t n, fgs_names *L) {
    int var = 0, skip = 0;
    const char *name = NULL;
    size_t name_len = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '/' && i + 1 < n && s[i + 1] == '/') { /* comments (the caller's statement keeps them) */
            while (i < n && s[i] != '\n') i++;
            continue;
        }
        if (s[i] == '/' && i + 1 < n && s[i + 1] == '*') {
            for (i += 2; i + 1 < n && !(s[i] == '*' && s[i + 1] == '/'); i++) {}
            i += 2;
            continue;
        }
        if (!ident(s[i])) {
            if (s[i] == '[' || s[i] == '=' || s[i] == '<' || s[i] == ',') break;
            i++;
            continue;
        }
        size_t j = i;
        while (j < n && ident(s[j])) j++;
        size_t len = j - i;
        if ((len == 7 && !memcmp(s + i, ".global", 7)) || (len == 6 && !memcmp(s + i, ".const", 6))) var = 1;
        else if ((len == 7 && !memcmp(s + i, ".extern", 7)) || (len == 6 && !memcmp(s + i, ".entry", 6)) ||
                 (len == 5 && !memcmp(s + i, ".func", 5)))
            skip = 1;
        else if (s[i] != '.' && !(s[i] >= '0' && s[i] <= '9')) {
            name = s + i;
            name_len = len;
        }
        i = j;
    }
    return var && !skip && name ? add(L, name, name_len) : 0;
}

static int ptx_names(const char *t, size_t n, fgs_names *L, char *err, size_t errlen) {
    size_t start = 0;
    int depth = 0, init = 0; /* init: inside a statement with '=' (its braces are an initialiser) */
    for (size_t i = 0; i < n && t[i]; i++) {
        char c = t[i];
        if (c == '/' && i + 1 < n && t[i + 1] == '/') {
            while (i < n && t[i] && t[i] != '\n') i++;
            continue;
        }
        if (c == '/' && i + 1 < n && t[i + 1] == '*') {
            for (i += 2; i + 1 < n && t[i] && !(t[i] == '*' && t[i + 1] == '/'); i++) {}
            i++;
            continue;
        }
        if (c == '"') {
            for (i++; i < n && t[i] && t[i] != '"'; i++) {}
            continue;
        }
        if (depth == 0 && c == '=') init = 1;
        if (c == '{') {
            depth++;
            continue;
        }
        if (c == '}') {
            if (depth > 0 && --depth == 0 && !init) start = i + 1; /* a function body ended */
            continue;
        }
        if (depth == 0 && c == ';') {
            if (ptx_statement(t + start, i - start, L)) {
                snprintf(err, errlen, "out of memory");
                return -1;
            }
            start = i + 1;
            init = 0;
        }
    }
    return 0;
}

/* ---- fatbin ---- */
typedef size_t (*zstd_fn)(void *, size_t, const void *, size_t);
typedef unsigned (*zstd_err_fn)(size_t);
typedef int (*lz4_fn)(const char *, char *, int, int);

static uint8_t *unpack(const uint8_t *p, uint64_t have, uint64_t csize, uint64_t usize, uint64_t flags, char *err,
                       size_t errlen) {
    if (!usize || usize > MAX_UNPACKED || !csize || csize > have) {
        snprintf(err, errlen, "a compressed fatbin entry in it has impossible sizes");
        return NULL;
    }
    uint8_t *out = (uint8_t *)malloc((size_t)usize + 1);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    out[usize] = 0;
    const char *lib = flags & FLAG_ZSTD ? "libzstd.so.1" : "liblz4.so.1";
    void *dl = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    int ok = 0;
    if (dl && (flags & FLAG_ZSTD)) {
        zstd_fn dec = (zstd_fn)dlsym(dl, "ZSTD_decompress");
        zstd_err_fn iserr = (zstd_err_fn)dlsym(dl, "ZSTD_isError");
        if (dec && iserr) {
            size_t got = dec(out, (size_t)usize, p, (size_t)csize);
            ok = !iserr(got) && got == usize;
        }
    } else if (dl && usize <= 0x7fffffff && csize <= 0x7fffffff) {
        lz4_fn dec = (lz4_fn)dlsym(dl, "LZ4_decompress_safe");
        ok = dec && dec((const char *)p, (char *)out, (int)csize, (int)usize) == (int)usize;
    }
    if (dl) dlclose(dl);
    if (!ok) {
        free(out);
        snprintf(err, errlen, dl ? "a compressed fatbin entry in it does not decompress" :
                 "its fatbin entries are compressed and this node has no %s to read them", lib);
        return NULL;
    }
    return out;
}

static int fatbin_names(const uint8_t *b, uint64_t n, int sm, fgs_names *L, char *err, size_t errlen) {
    if (n < 16) goto bad;
    uint16_t hsize = rd16(b + 6);
    uint64_t body = rd64(b + 8);
    if (hsize < 16 || hsize > n || body > n - hsize) goto bad;
    uint64_t end = hsize + body;
    int have_sm = 0;
    for (int pass = 0; pass < 2; pass++) { /* first: is there a cubin for this SM? then read */
        for (uint64_t off = hsize; off < end;) {
            const uint8_t *e = b + off;
            uint64_t left = end - off;
            if (left < 64 || (rd16(e) == 0 && rd32(e + 4) == 0)) break; /* trailing padding */
            uint16_t kind = rd16(e);
            uint32_t ehsize = rd32(e + 4);
            uint64_t psize = rd64(e + 8), flags = rd64(e + 0x28);
            uint32_t arch = rd32(e + 0x1c);
            if (ehsize < 64 || ehsize > left || psize > left - ehsize) goto bad;
            off += ehsize + psize;
            if (pass == 0) {
                have_sm |= kind == KIND_ELF && (int)arch == sm;
                continue;
            }
            if ((kind != KIND_ELF && kind != KIND_PTX) || (have_sm && (kind != KIND_ELF || (int)arch != sm))) continue;
            const uint8_t *p = e + ehsize;
            uint64_t pn = psize;
            uint8_t *own = NULL;
            if (flags & (FLAG_ZSTD | FLAG_LZ4)) {
                if (!(own = unpack(p, psize, rd32(e + 0x10), rd64(e + 0x38), flags, err, errlen))) return -1;
                p = own;
                pn = rd64(e + 0x38);
            }
            int rc = kind == KIND_ELF ? elf_names(p, pn, L, err, errlen) : ptx_names((const char *)p, pn, L, err, errlen);
            free(own);
            if (rc) return -1;
        }
    }
    return 0;
bad:
    snprintf(err, errlen, "its fatbin container is malformed");
    return -1;
}

int fgs_image_global_names(const uint8_t *img, uint64_t size, int sm, fgs_names *out, char *err, size_t errlen) {
    if (size >= 4 && rd32(img) == FATBIN_MAGIC) return fatbin_names(img, size, sm, out, err, errlen);
    if (size >= 4 && !memcmp(img, "\x7f" "ELF", 4)) return elf_names(img, size, out, err, errlen);
    return ptx_names((const char *)img, (size_t)size, out, err, errlen); /* anything else the driver took is PTX */
}

FGS_EXPORT long fgs_list_image_globals(const unsigned char *img, unsigned long long size, int sm, char *out,
                                       unsigned long out_len) {
    fgs_names L;
    memset(&L, 0, sizeof L);
    char err[256] = "";
    if (fgs_image_global_names(img, size, sm, &L, err, sizeof err)) {
        snprintf(out, out_len, "%s", err);
        fgs_names_free(&L);
        return -1;
    }
    size_t at = 0;
    long rc = (long)L.n;
    for (size_t i = 0; i < L.n; i++) {
        size_t len = strlen(L.name[i]);
        if (at + len + 2 > out_len) {
            rc = -2;
            break;
        }
        memcpy(out + at, L.name[i], len);
        at += len;
        out[at++] = '\n';
    }
    if (out_len) out[at < out_len ? at : out_len - 1] = 0;
    fgs_names_free(&L);
    return rc;
}
