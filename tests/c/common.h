/* common.h - check helpers for driver_api_test.c. Each check prints one deterministic line,
 * "check <name>: ok" or "check <name>: FAIL <details>", and is counted; the program prints a summary and exits
 * 1 if any check failed. Error codes are printed by name (cuGetErrorName), never as pointers or timings, so the
 * output of a native run and a remote run on the same GPU can be compared line by line. */
#ifndef FARGPU_TEST_COMMON_H
#define FARGPU_TEST_COMMON_H

#include <cuda.h>
#include <stdarg.h>
#include <stdio.h>

static int g_checks, g_failed;

static const char *errname(CUresult r)
{
    static char buf[4][32];
    static int slot;
    const char *s = NULL;
    if (cuGetErrorName(r, &s) == CUDA_SUCCESS && s)
        return s;
    slot = (slot + 1) % 4;
    snprintf(buf[slot], sizeof buf[slot], "CUresult(%d)", (int)r);
    return buf[slot];
}

/* Records a check; details (printf-style) are printed only on failure. Returns ok. */
__attribute__((format(printf, 3, 4))) static int check(const char *name, int ok, const char *fmt, ...)
{
    g_checks++;
    if (ok) {
        printf("check %s: ok\n", name);
        return 1;
    }
    g_failed++;
    printf("check %s: FAIL ", name);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    return 0;
}

/* A call that must return `want`. */
static int check_rc(const char *name, CUresult got, CUresult want)
{
    return check(name, got == want, "got %s, want %s", errname(got), errname(want));
}

#define CHECK_OK(name, call) check_rc(name, (call), CUDA_SUCCESS)

/* A call that must fail with one of the given codes (a real driver may choose among them); the code returned
 * is part of the line so that two runs of the same driver must agree on it. */
static int check_one_of(const char *name, CUresult got, const CUresult *want, int nwant)
{
    g_checks++;
    for (int i = 0; i < nwant; i++) {
        if (got == want[i]) {
            printf("check %s: ok (%s)\n", name, errname(got));
            return 1;
        }
    }
    g_failed++;
    printf("check %s: FAIL got %s\n", name, errname(got));
    return 0;
}

static int finish(const char *prog)
{
    printf("%s: %d checks, %d failed\n", prog, g_checks, g_failed);
    return g_failed ? 1 : 0;
}

#endif
