/* fuzz_images.h — module images for fuzz_server.c (included there, after record building): the test PTX and its
 * SHA-256 name, images the server may or may not hold, uploads in IMAGE_CHUNK records (in order, out of order,
 * oversized, wrongly named) and the load records that name them, each with the answer that is certain. */

/* ---------------------------------------------------------------- module images ---- */

/* A PTX module with the sim's test kernels (tests/c/kernels/test_kernels.cu) and a global. */
static const char ptx[] =
    ".version 8.0\n.target sm_90\n.address_size 64\n"
    ".visible .global .align 4 .u32 fg_magic = 305419896;\n"
    ".visible .entry fg_vadd(.param .u64 a, .param .u64 b, .param .u64 c, .param .u32 n)\n{\n ret;\n}\n"
    ".visible .entry fg_fill_u32(.param .u64 p, .param .u32 v, .param .u64 n)\n{\n ret;\n}\n";
static uint8_t ptx_sha[32]; /* its name: SHA-256 of its sizeof ptx bytes (NUL included) */

#define IMG_MAX 1024

/* Names (SHA-256 and size) of images uploaded under their true hash: a load may name one without uploading it
 * (found in the node's cache if that upload was verified, else NEED_IMAGE). */
#define KNOWN 16
static struct {
    uint8_t sha[32];
    uint64_t n;
} known[KNOWN];
static unsigned n_known;
static int ptx_uploaded; /* this session uploaded the test PTX itself (reset when a session starts) */

static void remember_image(const uint8_t sha[32], uint64_t n) {
    unsigned i = n_known < KNOWN ? n_known++ : (unsigned)rndn(KNOWN);
    memcpy(known[i].sha, sha, 32);
    known[i].n = n;
}

/* What the result of a batch's final record must be, where it is certain (image loads). */
enum {
    EXP_ANY,
    EXP_NEED_IMAGE,    /* FG_RESULT_NEED_IMAGE: the server cannot have the image */
    EXP_INVALID_IMAGE, /* CUDA_ERROR_INVALID_IMAGE: a wrong hash or an impossible size */
    EXP_NOT_NEED,      /* the image arrived complete: anything but NEED_IMAGE */
    EXP_HAVE_IMAGE,    /* the test PTX, which the server holds: neither NEED_IMAGE nor INVALID_IMAGE */
};
static const char *exp_name[] = {"any", "NEED_IMAGE", "INVALID_IMAGE", "not NEED_IMAGE", "a loaded image"};
static const char *load_case = "?"; /* the last image load built, for failure messages */

/* Image bytes: the test PTX (*pristine), mutated PTX, or (unless safe_images) hostile bytes. */
static size_t make_image(uint8_t *img, int *pristine) {
    int r = (int)rndn(safe_images ? 8 : 13);
    *pristine = r < 4;
    memcpy(img, ptx, sizeof ptx);
    if (r < 4) return sizeof ptx;
    if (r < 8) { /* PTX-ish text, mutated, NUL-terminated */
        for (int k = 0; k < 4; k++) img[rndn(sizeof ptx - 1)] = (uint8_t)(32 + rndn(95));
        return sizeof ptx;
    }
    /* hostile images: the driver finds an image's end from its own headers (module.c image_fits checks them) */
    uint64_t n = 1 + rndn(256);
    for (uint64_t i = 0; i < n; i++) img[i] = (uint8_t)rnd();
    switch (r) {
    case 8: img[0] = 0x7f; break; /* not ELF, not NUL-terminated: read as PTX past the end */
    case 9: /* an ELF magic on fewer bytes than an ELF header */
        n = 4 + rndn(60);
        memcpy(img, "\x7f" "ELF", 4);
        break;
    case 10: { /* a valid-looking CUDA ELF header whose section table lies past the image */
        n = 64 + rndn(64);
        memset(img, 0, 64);
        memcpy(img, "\x7f" "ELF\x02\x01\x01", 7);
        uint16_t em = 190, shent = 64, shnum = (uint16_t)(rndn(10)), strndx = 1;
        uint64_t shoff = 64 + rndn(4096);
        memcpy(img + 18, &em, 2);
        memcpy(img + 40, &shoff, 8);
        memcpy(img + 58, &shent, 2);
        memcpy(img + 60, &shnum, 2);
        memcpy(img + 62, &strndx, 2);
        break;
    }
    case 11: { /* a section table inside the image, its sections (or, with shnum 0, its count) maybe not */
        uint16_t em = 190, shent = 64, shnum = (uint16_t)rndn(4), strndx = 0;
        uint64_t shoff = 64, nsec = shnum ? shnum : 2;
        n = 64 + 64 * nsec + rndn(32);
        memset(img, 0, n);
        memcpy(img, "\x7f" "ELF\x02\x01\x01", 7);
        memcpy(img + 18, &em, 2);
        memcpy(img + 40, &shoff, 8);
        memcpy(img + 58, &shent, 2);
        memcpy(img + 60, &shnum, 2);
        memcpy(img + 62, &strndx, 2);
        for (uint64_t i = 0; i < nsec; i++) {
            uint8_t *sh = img + 64 + 64 * i;
            uint32_t type = chance(25) ? 8 /* SHT_NOBITS */ : (uint32_t)(1 + rndn(4));
            uint64_t off = chance(60) ? rndn(n) : n + rndn(4096);
            uint64_t size = chance(60) && off < n ? rndn(n - off + 1) : rnd();
            memcpy(sh + 4, &type, 4);
            memcpy(sh + 24, &off, 8);
            memcpy(sh + 32, &size, 8);
        }
        if (!shnum) { /* the real count in section 0's sh_size */
            uint64_t big = chance(50) ? nsec : rnd() >> rndn(64);
            memcpy(img + 64 + 32, &big, 8);
        }
        break;
    }
    default: /* random bytes, or a fatbin header that promises more than the image holds */
        if (chance(50) && n >= 16) {
            uint32_t magic = chance(80) ? 0xBA55ED50u : 0x466243B1u;
            uint16_t hsize = (uint16_t)(16 + rndn(32));
            uint64_t fsize = rndn(2) ? n : rnd();
            memcpy(img, &magic, 4);
            memcpy(img + 6, &hsize, 2);
            memcpy(img + 8, &fsize, 8);
        }
        break;
    }
    return n;
}

/* Image bytes no earlier upload can have had (a load of them answers NEED_IMAGE unless they arrive complete):
 * the PTX with a unique comment, or random bytes. */
static size_t fresh_image(uint8_t *img) {
    if (chance(50)) {
        int k = snprintf((char *)img, IMG_MAX, "%s// %016" PRIx64 "%016" PRIx64 "\n", ptx, rnd(), rnd());
        return (size_t)k + 1;
    }
    size_t n = 32 + rndn(224);
    for (size_t i = 0; i < n; i++) img[i] = (uint8_t)rnd();
    if (chance(30)) memcpy(img, "\x7f" "ELF\x02\x01\x01", 7);
    return n;
}

static void put_chunk(buf *pre, const uint8_t sha[32], uint64_t total, uint64_t off, const uint8_t *data,
                      uint32_t len) {
    buf c = {0};
    put(&c, sha, 32);
    put64(&c, total);
    put64(&c, off);
    put32(&c, len);
    put(&c, data, len);
    add_record(pre, FG_OP_IMAGE_CHUNK, &c);
    free(c.b);
    st_chunks++;
}

/* IMAGE_CHUNK records uploading img[0..n) under `sha` in `parts` in-order, non-empty pieces. */
static void put_upload(buf *pre, const uint8_t sha[32], const uint8_t *img, size_t n, unsigned parts) {
    if (parts > n) parts = (unsigned)n;
    if (!parts) parts = 1;
    size_t piece = (n + parts - 1) / parts;
    for (size_t off = 0; off < n; off += piece)
        put_chunk(pre, sha, n, off, img + off, (uint32_t)(off + piece < n ? piece : n - off));
}

/* A load record's arguments, naming an image: sha256[32], u64 size, u32 extra_len (0), no extra. */
static void put_image_ref(buf *a, const uint8_t sha[32], uint64_t n) {
    put(a, sha, 32);
    put64(a, n);
    put32(a, 0);
}

static uint64_t pick_image_size(void) {
    switch (rndn(6)) {
    case 0: return 0;
    case 1: return FG_MAX_IMAGE + 1 + rndn(1000);
    case 2: return UINT64_MAX - rndn(16);
    case 3: return FG_MAX_IMAGE;
    default: return 1 + rndn(1u << 20);
    }
}
static int size_ok(uint64_t n) { return n > 0 && n <= FG_MAX_IMAGE; }

/* An image load: IMAGE_CHUNK records into `pre` (they go right before the load record), the load's arguments
 * into `a`, and the result that is certain (*expect). Returns 1 when the record is certainly malformed. */
static int build_image_load(buf *pre, buf *a, int *expect) {
    uint8_t img[IMG_MAX], sha[32], name[32];
    int pristine = 0;
    size_t n;
    uint64_t size;
    int r = (int)rndn(100);
    if (r < 38) { /* a correct upload in 1..4 in-order chunks, then the load */
        n = make_image(img, &pristine);
        fg_sha256(img, n, sha);
        put_upload(pre, sha, img, n, 1 + (unsigned)rndn(4));
        remember_image(sha, n);
        if (pristine) ptx_uploaded = 1;
        memcpy(name, sha, 32);
        size = n;
        *expect = pristine ? EXP_HAVE_IMAGE : EXP_NOT_NEED;
        load_case = "a correct upload";
    } else if (r < 48) { /* the test PTX by name only: the node cache has it (kernel_check uploaded it) */
        memcpy(name, ptx_sha, 32);
        size = sizeof ptx;
        /* without the cache, only an upload of this session's can have it (one that was applied, or not) */
        *expect = cache_on ? EXP_HAVE_IMAGE : ptx_uploaded ? EXP_ANY : EXP_NEED_IMAGE;
        load_case = cache_on ? "the test PTX by name (cache on)" : "the test PTX by name (cache off)";
    } else if (r < 54 && n_known) { /* an image uploaded before, by name only: cached or not */
        unsigned i = (unsigned)rndn(n_known);
        memcpy(name, known[i].sha, 32);
        size = known[i].n;
        *expect = EXP_ANY;
        load_case = "an earlier upload by name";
    } else if (r < 64) { /* an upload whose bytes do not hash to its name */
        n = make_image(img, &pristine);
        fg_sha256(img, n, name);
        int flips = 1 + (int)rndn(3);
        for (int k = 0; k < flips; k++) name[rndn(32)] ^= (uint8_t)(1 + rndn(255));
        put_upload(pre, name, img, n, 1 + (unsigned)rndn(4));
        size = n;
        *expect = EXP_INVALID_IMAGE;
        load_case = "an upload under a wrong hash";
    } else if (r < 72) { /* a name the server cannot have */
        for (int k = 0; k < 32; k++) name[k] = (uint8_t)rnd();
        size = pick_image_size();
        *expect = size_ok(size) ? EXP_NEED_IMAGE : EXP_INVALID_IMAGE;
        load_case = "a name the server cannot have";
    } else if (r < 84) { /* an upload that goes wrong: a chunk left out, two swapped, oversized, past the end, a
                          * total that changes midway (the image stays incomplete), or one sent twice (harmless) */
        n = fresh_image(img);
        fg_sha256(img, n, sha);
        memcpy(name, sha, 32);
        size = n;
        unsigned parts = 1 + (unsigned)rndn(5), k = 0;
        uint64_t off[8], len[8];
        size_t piece = (n + parts - 1) / parts;
        for (size_t o = 0; o < n; o += piece, k++) {
            off[k] = o;
            len[k] = o + piece < n ? piece : n - o;
        }
        int how = (int)rndn(6);
        unsigned j = (unsigned)rndn(how == 1 && k >= 2 ? k - 1 : k);
        *expect = how == 1 && k < 2 ? EXP_NOT_NEED : EXP_NEED_IMAGE; /* nothing to swap: a correct upload */
        static const char *hows[] = {"an upload missing a chunk", "an upload with two chunks swapped",
                                     "an upload with an oversized chunk", "an upload with a chunk past its end",
                                     "an upload whose total changes", "an upload with a chunk sent twice"};
        load_case = hows[how];
        for (unsigned i = 0; i < k; i++) {
            if (how == 0 && i == j) continue; /* left out */
            if (how == 1 && k >= 2 && i == j) { /* j + 1 before j */
                put_chunk(pre, sha, n, off[j + 1], img + off[j + 1], (uint32_t)len[j + 1]);
                put_chunk(pre, sha, n, off[j], img + off[j], (uint32_t)len[j]);
                i++;
                continue;
            }
            if (how == 2 && i == j) { /* the rest of the image and more: len > total - offset, refused */
                uint8_t big[IMG_MAX + 64];
                uint64_t rest = n - off[i];
                uint32_t extra = 1 + (uint32_t)rndn(32);
                memcpy(big, img + off[i], rest);
                for (uint32_t e = 0; e < extra; e++) big[rest + e] = (uint8_t)rnd();
                put_chunk(pre, sha, n, off[i], big, (uint32_t)rest + extra);
                continue;
            }
            if (how == 3 && i == j) { /* an offset past the total */
                put_chunk(pre, sha, n, n + 1 + rndn(1u << 20), img + off[i], (uint32_t)len[i]);
                continue;
            }
            if (how == 4 && i == j) { /* another total: the staging restarts, the rest no longer fits */
                put_chunk(pre, sha, n + 1 + rndn(64), off[i], img + off[i], (uint32_t)len[i]);
                continue;
            }
            put_chunk(pre, sha, n, off[i], img + off[i], (uint32_t)len[i]);
            if (how == 5 && i == j) { /* the same chunk again: refused, the upload goes on */
                put_chunk(pre, sha, n, off[i], img + off[i], (uint32_t)len[i]);
                *expect = EXP_NOT_NEED;
            }
        }
    } else if (r < 92) { /* a correct upload, but the load names another size (the upload stays staged: never
                          * the test PTX, whose loads by name must find it in the cache or not at all) */
        n = make_image(img, &pristine);
        if (pristine) n = fresh_image(img);
        fg_sha256(img, n, sha);
        put_upload(pre, sha, img, n, 1 + (unsigned)rndn(3));
        memcpy(name, sha, 32);
        do size = chance(50) ? n + 1 + rndn(64) : pick_image_size();
        while (size == n);
        *expect = size_ok(size) ? EXP_NEED_IMAGE : EXP_INVALID_IMAGE;
        load_case = "a correct upload, loaded under another size";
    } else { /* chunks with impossible totals (refused), or the start of a large one that never completes */
        n = fresh_image(img);
        fg_sha256(img, n, sha);
        memcpy(name, sha, 32);
        static const uint64_t totals[] = {0, FG_MAX_IMAGE + 1, UINT64_MAX, 32u << 20};
        uint64_t total = totals[rndn(chance(10) ? 4 : 3)];
        put_chunk(pre, sha, total, chance(80) ? 0 : rnd(), img, (uint32_t)n);
        size = chance(50) ? n : total;
        *expect = size_ok(size) ? EXP_NEED_IMAGE : EXP_INVALID_IMAGE;
        load_case = "chunks with an impossible or unfinished total";
    }
    put(a, name, 32);
    put64(a, size);
    int e = (int)rndn(100);
    if (e < 80) {
        put32(a, 0);
        return 0;
    }
    uint8_t extra[64];
    uint32_t k = 1 + (uint32_t)rndn(sizeof extra);
    for (uint32_t i = 0; i < k; i++) extra[i] = (uint8_t)rnd();
    if (e < 92) { /* extra bytes (JIT options), ignored by the server; sometimes fewer claimed than sent */
        put32(a, e < 88 ? k : (uint32_t)rndn(k));
        put(a, extra, k);
        return 0;
    }
    /* hostile extra_len: more than the record holds */
    *expect = EXP_ANY;
    put32(a, e < 97 ? k + 1 + (uint32_t)rndn(4096) : UINT32_MAX - (uint32_t)rndn(16));
    put(a, extra, k);
    return 1;
}
