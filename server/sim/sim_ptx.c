/* sim_ptx.c - a PTX reader that learns what the driver would: kernel entry points and their parameter layout,
 * module-scope .global/.const variables (size and simple initialisers), static .shared usage, .maxntid/.reqntid,
 * and the .version/.target header. It does not compile or check instructions.
 *
 * Parameter layout follows the PTX ABI the driver uses for cuFuncGetParamInfo: each parameter starts at the
 * previous end rounded up to its alignment, which is the explicit `.align N` (before the type) or else the
 * element size; `.b8 name[16]` style arrays take size = element size x count. An `.align` written after `.ptr`
 * is the pointee's alignment and does not affect the layout.
 *
 * The text is untrusted but NUL-terminated (the caller's contract for cuModuleLoadData with PTX); the lexer
 * never reads past the terminator, and every count is bounded. */
#include "sim_image.h"

#include <stdlib.h>
#include <string.h>

#define PTX_MAX_LEN ((size_t)1 << 30)
#define MAX_GLOBAL_BYTES ((uint64_t)1 << 34)

enum { T_EOF, T_WORD, T_NUM, T_PUNCT };

struct tok {
    int kind;
    const char *s;
    size_t len;
};

struct lexer {
    const char *p, *end;
    struct tok cur;
};

static int word_start(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c == '.' || c == '$' || c == '%'; }
static int word_char(char c) { return word_start(c) || (c >= '0' && c <= '9'); }
static int digit(char c) { return c >= '0' && c <= '9'; }

static void next(struct lexer *L)
{
    for (;;) {
        while (L->p < L->end && (*L->p == ' ' || *L->p == '\t' || *L->p == '\n' || *L->p == '\r'))
            L->p++;
        if (L->p + 1 < L->end && L->p[0] == '/' && L->p[1] == '/') {
            while (L->p < L->end && *L->p != '\n')
                L->p++;
            continue;
        }
        if (L->p + 1 < L->end && L->p[0] == '/' && L->p[1] == '*') {
            L->p += 2;
            while (L->p + 1 < L->end && !(L->p[0] == '*' && L->p[1] == '/'))
                L->p++;
            L->p = L->p + 1 < L->end ? L->p + 2 : L->end;
            continue;
        }
        if (L->p < L->end && *L->p == '"') { /* strings only appear in .file; skip them */
            L->p++;
            while (L->p < L->end && *L->p != '"')
                L->p++;
            if (L->p < L->end)
                L->p++;
            continue;
        }
        break;
    }
    L->cur.s = L->p;
    if (L->p >= L->end) {
        L->cur.kind = T_EOF;
        L->cur.len = 0;
        return;
    }
    if (word_start(*L->p)) {
        while (L->p < L->end && word_char(*L->p))
            L->p++;
        L->cur.kind = T_WORD;
    } else if (digit(*L->p)) {
        while (L->p < L->end && (word_char(*L->p)))
            L->p++;
        L->cur.kind = T_NUM;
    } else {
        L->p++;
        L->cur.kind = T_PUNCT;
    }
    L->cur.len = (size_t)(L->p - L->cur.s);
}

static int is(const struct tok *t, const char *w) { return t->len == strlen(w) && memcmp(t->s, w, t->len) == 0; }
static int is_punct(const struct tok *t, char c) { return t->kind == T_PUNCT && t->s[0] == c; }

/* Parses an unsigned number token (decimal, 0x hex, 0f/0d float bit patterns); returns 0 on failure. */
static int tok_u64(const struct tok *t, uint64_t *out)
{
    if (t->kind != T_NUM || t->len > 40)
        return 0;
    char buf[48];
    memcpy(buf, t->s, t->len);
    buf[t->len] = 0;
    const char *s = buf;
    int base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X' || s[1] == 'f' || s[1] == 'F' || s[1] == 'd' || s[1] == 'D')) {
        base = 16;
        s += 2;
    }
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, base);
    if (end == s || (*end && !(base == 10 && (*end == 'U' || *end == 'u') && end[1] == 0)))
        return 0;
    *out = v;
    return 1;
}

/* Size in bytes of a PTX fundamental type token, 0 if it is not one. */
static uint32_t type_size(const struct tok *t)
{
    static const struct {
        const char *name;
        uint32_t size;
    } types[] = {
        { ".b8", 1 },   { ".u8", 1 },   { ".s8", 1 },    { ".pred", 1 },   { ".b16", 2 },     { ".u16", 2 },
        { ".s16", 2 },  { ".f16", 2 },  { ".bf16", 2 },  { ".b32", 4 },    { ".u32", 4 },     { ".s32", 4 },
        { ".f32", 4 },  { ".f16x2", 4 }, { ".bf16x2", 4 }, { ".tf32", 4 }, { ".b64", 8 },     { ".u64", 8 },
        { ".s64", 8 },  { ".f64", 8 },  { ".b128", 16 }, { ".texref", 8 }, { ".samplerref", 8 }, { ".surfref", 8 },
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (is(t, types[i].name))
            return types[i].size;
    return 0;
}

struct decl {
    uint32_t align;     /* explicit alignment before the type, or 0 */
    uint32_t elem;      /* element size (type size x vector width) */
    uint64_t count;     /* product of array dimensions (1 for scalars; 0 for an unsized []) */
    const char *name;
    size_t name_len;
};

/* Parses "[.align N] [.vN] [.ptr ...] .type name [dims]" starting at the current token (after the state space
 * or .param). Leaves the token after the declarator current. Returns 0 on syntax error. */
static int parse_declarator(struct lexer *L, struct decl *d)
{
    memset(d, 0, sizeof *d);
    uint32_t vec = 1;
    int after_type_ptr = 0;
    for (int guard = 0; guard < 16 && L->cur.kind == T_WORD && L->cur.s[0] == '.'; guard++) {
        uint64_t n = 0;
        uint32_t ts = type_size(&L->cur);
        if (is(&L->cur, ".align")) {
            next(L);
            if (!tok_u64(&L->cur, &n) || n == 0 || n > 256 || (n & (n - 1)))
                return 0;
            if (!after_type_ptr)
                d->align = (uint32_t)n;
        } else if (is(&L->cur, ".v2") || is(&L->cur, ".v4") || is(&L->cur, ".v8")) {
            vec = (uint32_t)(L->cur.s[2] - '0');
        } else if (ts) {
            if (d->elem)
                return 0;
            d->elem = ts * vec;
        } else if (is(&L->cur, ".ptr")) {
            after_type_ptr = 1;
        } else if (!(is(&L->cur, ".global") || is(&L->cur, ".const") || is(&L->cur, ".local") || is(&L->cur, ".shared"))) {
            return 0; /* an unknown qualifier */
        }
        next(L);
    }
    if (!d->elem || L->cur.kind != T_WORD || L->cur.s[0] == '.')
        return 0;
    d->name = L->cur.s;
    d->name_len = L->cur.len;
    d->count = 1;
    next(L);
    for (int dims = 0; is_punct(&L->cur, '['); dims++) {
        uint64_t n = 0;
        next(L);
        if (is_punct(&L->cur, ']')) {
            d->count = 0; /* unsized: the initialiser decides */
        } else {
            if (!tok_u64(&L->cur, &n) || n == 0 || n > MAX_GLOBAL_BYTES || dims > 8)
                return 0;
            next(L);
            if (!is_punct(&L->cur, ']'))
                return 0;
            d->count = d->count * n;
            if (d->count > MAX_GLOBAL_BYTES)
                return 0;
        }
        next(L);
    }
    return 1;
}

/* Parses an initialiser "{ v, v, { v } ... }" or "v" into a growing byte buffer of elem-sized values.
 * Non-numeric values (symbol addresses) become zeros. */
static int parse_init(struct lexer *L, uint32_t elem, unsigned char **buf, uint64_t *nvals, uint64_t cap_vals)
{
    int depth = 0;
    do {
        if (is_punct(&L->cur, '{')) {
            if (++depth > 16)
                return 0;
        } else if (is_punct(&L->cur, '}')) {
            depth--;
        } else if (is_punct(&L->cur, ',')) {
            /* separator */
        } else if (L->cur.kind == T_EOF || is_punct(&L->cur, ';')) {
            return 0;
        } else {
            int neg = 0;
            if (is_punct(&L->cur, '-')) {
                neg = 1;
                next(L);
            }
            uint64_t v = 0;
            if (L->cur.kind == T_NUM && !tok_u64(&L->cur, &v))
                v = 0;
            if (L->cur.kind == T_WORD) { /* generic(sym), sym+off: skip the expression */
                next(L);
                if (is_punct(&L->cur, '(')) {
                    while (L->cur.kind != T_EOF && !is_punct(&L->cur, ')'))
                        next(L);
                } else {
                    continue; /* re-examine this token */
                }
            }
            if (neg)
                v = (uint64_t)0 - v;
            if (*nvals >= cap_vals)
                return 0;
            unsigned char *nb = realloc(*buf, (size_t)((*nvals + 1) * elem));
            if (!nb)
                return 0;
            *buf = nb;
            for (uint32_t i = 0; i < elem; i++)
                nb[*nvals * elem + i] = i < 8 ? (unsigned char)(v >> (8 * i)) : 0;
            (*nvals)++;
        }
        next(L);
    } while (depth > 0);
    return 1;
}

static CUresult parse_global(struct lexer *L, struct sim_image_desc *out)
{
    for (;;) {
        struct decl d;
        if (!parse_declarator(L, &d))
            return CUDA_ERROR_INVALID_PTX;
        unsigned char *init = NULL;
        uint64_t nvals = 0;
        uint64_t cap_vals = d.count ? d.count : MAX_GLOBAL_BYTES / d.elem;
        if (is_punct(&L->cur, '=')) {
            next(L);
            if (!parse_init(L, d.elem, &init, &nvals, cap_vals)) {
                free(init);
                return CUDA_ERROR_INVALID_PTX;
            }
        }
        uint64_t count = d.count ? d.count : nvals;
        uint64_t size = count * d.elem;
        if (size > 0) {
            struct sim_global_desc *g = sim_desc_add_global(out, d.name, d.name_len);
            if (!g) {
                free(init);
                return CUDA_ERROR_INVALID_PTX;
            }
            g->size = (size_t)size;
            if (init) {
                g->init = calloc(1, (size_t)size);
                if (!g->init) {
                    free(init);
                    return CUDA_ERROR_OUT_OF_MEMORY;
                }
                memcpy(g->init, init, (size_t)(nvals * d.elem));
            }
        }
        free(init);
        if (!is_punct(&L->cur, ','))
            break;
        next(L);
    }
    return is_punct(&L->cur, ';') ? CUDA_SUCCESS : CUDA_ERROR_INVALID_PTX;
}

/* Parses ".entry name ( params ) [performance directives]" leaving '{' or ';' current. */
static CUresult parse_entry(struct lexer *L, struct sim_image_desc *out, struct sim_kernel_desc **kout)
{
    next(L);
    if (L->cur.kind != T_WORD || L->cur.s[0] == '.')
        return CUDA_ERROR_INVALID_PTX;
    struct sim_kernel_desc *k = sim_desc_add_kernel(out, L->cur.s, L->cur.len);
    if (!k)
        return CUDA_ERROR_INVALID_PTX;
    *kout = k;
    next(L);
    if (is_punct(&L->cur, '(')) {
        next(L);
        while (!is_punct(&L->cur, ')')) {
            if (!is(&L->cur, ".param"))
                return CUDA_ERROR_INVALID_PTX;
            next(L);
            struct decl d;
            if (!parse_declarator(L, &d) || d.count == 0 || d.count * d.elem > SIM_IMAGE_MAX_PARAM_BYTES)
                return CUDA_ERROR_INVALID_PTX;
            uint32_t elem_align = d.elem > 16 ? 16 : d.elem;
            CUresult rc = sim_kernel_add_param(k, (uint32_t)(d.count * d.elem), d.align ? d.align : elem_align);
            if (rc != CUDA_SUCCESS)
                return rc == CUDA_ERROR_INVALID_IMAGE ? CUDA_ERROR_INVALID_PTX : rc;
            if (is_punct(&L->cur, ','))
                next(L);
            else if (!is_punct(&L->cur, ')'))
                return CUDA_ERROR_INVALID_PTX;
        }
        next(L);
    }
    while (L->cur.kind != T_EOF && !is_punct(&L->cur, '{') && !is_punct(&L->cur, ';')) {
        if (is(&L->cur, ".maxntid") || is(&L->cur, ".reqntid")) {
            uint64_t prod = 1;
            next(L);
            for (int i = 0; i < 3; i++) {
                uint64_t n = 0;
                if (!tok_u64(&L->cur, &n) || n == 0 || n > 1024)
                    return CUDA_ERROR_INVALID_PTX;
                prod *= n;
                next(L);
                if (!is_punct(&L->cur, ','))
                    break;
                next(L);
            }
            if (prod < (uint64_t)k->max_threads)
                k->max_threads = (int)prod;
            continue;
        }
        next(L);
    }
    return CUDA_SUCCESS;
}

CUresult sim_ptx_parse(const char *text, struct sim_image_desc *out)
{
    struct lexer L;
    L.p = text;
    L.end = text + strnlen(text, PTX_MAX_LEN);
    memset(out, 0, sizeof *out);
    int saw_version = 0, depth = 0, prev_extern = 0;
    struct sim_kernel_desc *in_entry = NULL;
    CUresult rc = CUDA_SUCCESS;
    for (next(&L); rc == CUDA_SUCCESS && L.cur.kind != T_EOF; next(&L)) {
        const struct tok *t = &L.cur;
        int was_extern = prev_extern;
        prev_extern = is(t, ".extern");
        if (is_punct(t, '{')) {
            depth++;
        } else if (is_punct(t, '}')) {
            if (--depth < 0)
                rc = CUDA_ERROR_INVALID_PTX;
            if (depth == 0)
                in_entry = NULL;
        } else if (depth == 0 && is(t, ".version")) {
            uint64_t major = 0;
            next(&L);
            if (L.cur.kind != T_NUM || !digit(L.cur.s[0]))
                rc = CUDA_ERROR_INVALID_PTX;
            else if ((major = strtoull(L.cur.s, NULL, 10)) > 9)
                rc = CUDA_ERROR_UNSUPPORTED_PTX_VERSION; /* newer than the PTX ISA of CUDA 13.0 */
            saw_version = 1;
        } else if (depth == 0 && is(t, ".target")) {
            next(&L);
            if (L.cur.kind != T_WORD || L.cur.len < 4 || memcmp(L.cur.s, "sm_", 3) != 0 || !digit(L.cur.s[3]))
                rc = CUDA_ERROR_INVALID_PTX;
            else if ((out->arch = (int)strtol(L.cur.s + 3, NULL, 10)) > 90)
                rc = CUDA_ERROR_INVALID_PTX; /* the JIT cannot target a newer architecture than the device */
        } else if (depth == 0 && is(t, ".entry")) {
            struct sim_kernel_desc *k = NULL;
            rc = parse_entry(&L, out, &k);
            if (rc == CUDA_SUCCESS && is_punct(&L.cur, '{')) {
                depth++;
                in_entry = k;
            }
        } else if (depth == 0 && !was_extern && (is(t, ".global") || is(t, ".const"))) {
            next(&L);
            rc = parse_global(&L, out);
        } else if (depth > 0 && in_entry && !was_extern && is(t, ".shared")) {
            struct decl d;
            next(&L);
            if (parse_declarator(&L, &d) && d.count) {
                uint64_t total = (uint64_t)in_entry->shared_bytes + d.count * d.elem;
                in_entry->shared_bytes = total > 0x7fffffff ? 0x7fffffff : (int)total;
            }
            if (is_punct(&L.cur, '{') || is_punct(&L.cur, '}'))
                rc = CUDA_ERROR_INVALID_PTX;
        }
    }
    if (rc == CUDA_SUCCESS && !saw_version)
        rc = CUDA_ERROR_INVALID_IMAGE;
    if (rc == CUDA_SUCCESS && depth != 0)
        rc = CUDA_ERROR_INVALID_PTX;
    if (rc == CUDA_SUCCESS && !out->arch)
        rc = CUDA_ERROR_INVALID_PTX;
    if (rc != CUDA_SUCCESS)
        sim_desc_free(out);
    return rc;
}
