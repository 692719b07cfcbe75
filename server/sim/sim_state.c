/* sim_state.c - process-wide state of the simulated device: the global lock, cuInit and its configuration,
 * device-memory accounting, the monotonic clock and the "log once" helper used for unsupported calls.
 *
 * Configuration (read once, at the first successful cuInit):
 *   FARGPU_SIM_DEVICES    number of simulated physical devices (1..16, default 1)
 *   FARGPU_SIM_MEM_BYTES  memory of each device in bytes (default 16 GiB); a comma-separated list gives each
 *                         physical device its own (the last value repeats for the devices after the list)
 *   CUDA_VISIBLE_DEVICES  which physical devices the process sees, in order, as with the driver (sim_visible.c)
 *   FARGPU_SIM_LAUNCH_LOG path of the JSON-lines launch log (read by sim_launch_log.c) */
#include "sim.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct sim_global sim_g;

static pthread_mutex_t g_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

void sim_lock(void) { pthread_mutex_lock(&g_lock); }
void sim_unlock(void) { pthread_mutex_unlock(&g_lock); }

uint64_t sim_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Parses a decimal unsigned env value; returns def if unset or malformed. */
static uint64_t env_u64(const char *name, uint64_t def, uint64_t lo, uint64_t hi)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return def;
    errno = 0;
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || !end || *end || v < lo || v > hi) {
        fprintf(stderr, "fargpu-sim: ignoring %s=%s (want an integer in [%llu, %llu])\n", name, s,
                (unsigned long long)lo, (unsigned long long)hi);
        return def;
    }
    return v;
}

/* Memory of physical device `phys` from FARGPU_SIM_MEM_BYTES (one value, or one per device). */
static uint64_t device_mem(int phys)
{
    const char *s = getenv("FARGPU_SIM_MEM_BYTES");
    if (!s || !strchr(s, ','))
        return env_u64("FARGPU_SIM_MEM_BYTES", 16ull << 30, 1ull << 20, 1ull << 50);
    uint64_t v = 16ull << 30;
    for (int i = 0; *s; i++) {
        char *end = NULL;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (errno || end == s || (*end && *end != ',') || x < (1ull << 20) || x > (1ull << 50)) {
            fprintf(stderr, "fargpu-sim: ignoring FARGPU_SIM_MEM_BYTES=%s (want integers in [1 MiB, 1 PiB], "
                    "comma-separated)\n", getenv("FARGPU_SIM_MEM_BYTES"));
            return 16ull << 30;
        }
        if (i <= phys)
            v = x;
        s = *end ? end + 1 : end;
    }
    return v;
}

static struct sim_ctx *new_primary(int device)
{
    struct sim_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->h.kind = SIM_KIND_CTX;
    c->device = device;
    c->primary = 1;
    if (sim_reg_add(c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

SIM_API CUresult cuInit(unsigned int Flags)
{
    if (Flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = CUDA_SUCCESS;
    sim_lock();
    if (!sim_g.initialized) {
        int nphys = (int)env_u64("FARGPU_SIM_DEVICES", 1, 1, SIM_MAX_DEVICES);
        int phys[SIM_MAX_DEVICES];
        int ndev = sim_visible_devices(nphys, phys);
        if (ndev == 0)
            rc = CUDA_ERROR_NO_DEVICE; /* as the driver says when CUDA_VISIBLE_DEVICES hides every device */
        for (int i = 0; i < ndev && rc == CUDA_SUCCESS; i++) {
            sim_g.dev[i].phys = phys[i];
            sim_g.dev[i].total_mem = device_mem(phys[i]);
            sim_g.dev[i].used_mem = 0;
            sim_g.dev[i].primary = new_primary(i);
            if (!sim_g.dev[i].primary)
                rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
        if (rc == CUDA_SUCCESS) {
            sim_g.ndev = ndev;
            sim_g.initialized = 1;
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuDriverGetVersion(int *driverVersion)
{
    if (!driverVersion)
        return CUDA_ERROR_INVALID_VALUE;
    *driverVersion = 13000;
    return CUDA_SUCCESS;
}

CUresult sim_check_init(void)
{
    return sim_g.initialized ? CUDA_SUCCESS : CUDA_ERROR_NOT_INITIALIZED;
}

CUresult sim_check_device(CUdevice dev)
{
    if (!sim_g.initialized)
        return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= sim_g.ndev)
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

CUresult sim_charge(int device, uint64_t bytes)
{
    struct sim_device *d = &sim_g.dev[device];
    if (bytes > d->total_mem || d->used_mem > d->total_mem - bytes)
        return CUDA_ERROR_OUT_OF_MEMORY;
    d->used_mem += bytes;
    return CUDA_SUCCESS;
}

void sim_uncharge(int device, uint64_t bytes)
{
    struct sim_device *d = &sim_g.dev[device];
    d->used_mem = bytes > d->used_mem ? 0 : d->used_mem - bytes;
}

/* A small fixed table of what has been logged; beyond it, messages are still logged (never silently dropped). */
#define LOG_ONCE_MAX 256
static char *g_logged[LOG_ONCE_MAX];
static size_t g_nlogged;

void sim_log_once(const char *what, const char *detail)
{
    sim_lock();
    for (size_t i = 0; i < g_nlogged; i++) {
        if (strcmp(g_logged[i], what) == 0) {
            sim_unlock();
            return;
        }
    }
    if (g_nlogged < LOG_ONCE_MAX) {
        char *copy = strdup(what);
        if (copy)
            g_logged[g_nlogged++] = copy;
    }
    fprintf(stderr, "fargpu-sim: %s: %s\n", what, detail);
    sim_unlock();
}
