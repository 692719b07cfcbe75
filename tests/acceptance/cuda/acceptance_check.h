// acceptance_check.h - the value checks the API acceptance programs share: check() prints "<what> ok" or
// "<what> MISMATCH" (lines bench/acceptance.py compares between the native and the remote run) and remembers a
// mismatch in g_fail, which main prints as PASS or FAIL and returns. With cuda.h included first, name_of() gives a
// CUresult's name for lines that print a driver call's result. Include it once per program, after acceptance.h.
#pragma once
#include <cstdio>

static int g_fail = 0;

static inline void check(const char *what, bool ok)
{
    std::printf("%s %s\n", what, ok ? "ok" : "MISMATCH");
    if (!ok)
        g_fail = 1;
}

#ifdef __cuda_cuda_h__
static inline const char *name_of(CUresult r)
{
    const char *s = nullptr;
    cuGetErrorName(r, &s);
    return s ? s : "?";
}
#endif
