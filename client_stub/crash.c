/* crash.c — with FARGPU_CRASH_TRACE=1, a fatal signal in the client prints the native stack (library and
 * offset of each frame) to stderr before the process dies as it would have: a debugging aid for failures
 * inside closed libraries that call the stub. */
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_fatal(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    void *frames[48];
    int n = backtrace(frames, 48);
    char line[512];
    int m = snprintf(line, sizeof line, "fargpu: fatal signal %d at address %p; stack:\n", sig, si ? si->si_addr : NULL);
    if (m > 0) (void)!write(2, line, (size_t)m);
    for (int i = 0; i < n; i++) {
        Dl_info d;
        if (dladdr(frames[i], &d) && d.dli_fname)
            m = snprintf(line, sizeof line, "  #%d %s+%#lx (%s)\n", i, d.dli_fname,
                         (unsigned long)((char *)frames[i] - (char *)d.dli_fbase), d.dli_sname ? d.dli_sname : "?");
        else
            m = snprintf(line, sizeof line, "  #%d %p\n", i, frames[i]);
        if (m > 0) (void)!write(2, line, (size_t)m);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

__attribute__((constructor)) static void fgc_crash_trace_init(void) {
    const char *e = getenv("FARGPU_CRASH_TRACE");
    if (!e || strcmp(e, "1")) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
}
