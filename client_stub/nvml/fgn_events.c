/* fgn_events.c - NVML event sets. The shim can deliver no events: Xid errors, clock changes and the like happen
 * on the node's GPU and nothing carries them here, so a device's supported event types are none. An event set
 * is still a real object: it can be created, have no types registered on it, be waited on (the wait runs out
 * with NVML_ERROR_TIMEOUT, as a set with nothing registered does with the real NVML) and be freed. Registering
 * any event type is refused with NVML_ERROR_NOT_SUPPORTED, logged once. nvidia-smi creates a set before it
 * prints its table and stops with "Internal NVML error" when that fails. */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "fgn_internal.h"

struct nvmlEventSet_st {
    struct nvmlEventSet_st *next; /* live sets, so a handle is checked before it is used */
};

static pthread_mutex_t g_sets_mu = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlEventSet_st *g_sets;
static int g_register_logged;

/* Whether set is a live set (caller holds g_sets_mu). */
static int live(nvmlEventSet_t set)
{
    for (struct nvmlEventSet_st *s = g_sets; s; s = s->next)
        if (s == set)
            return 1;
    return 0;
}

static nvmlReturn_t check_set(nvmlEventSet_t set)
{
    pthread_mutex_lock(&g_sets_mu);
    int ok = set && live(set);
    pthread_mutex_unlock(&g_sets_mu);
    return ok ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

FGN_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    if (!set)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *s = calloc(1, sizeof *s);
    if (!s)
        return NVML_ERROR_MEMORY;
    pthread_mutex_lock(&g_sets_mu);
    s->next = g_sets;
    g_sets = s;
    pthread_mutex_unlock(&g_sets_mu);
    *set = s;
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    nvmlReturn_t r = fgn_check_init();
    if (r != NVML_SUCCESS)
        return r;
    pthread_mutex_lock(&g_sets_mu);
    struct nvmlEventSet_st **p = &g_sets;
    while (*p && *p != set)
        p = &(*p)->next;
    int found = set && *p == set;
    if (found)
        *p = set->next;
    pthread_mutex_unlock(&g_sets_mu);
    if (!found)
        return NVML_ERROR_INVALID_ARGUMENT;
    free(set);
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!eventTypes)
        return NVML_ERROR_INVALID_ARGUMENT;
    *eventTypes = 0; /* none can be delivered through the driver API */
    return NVML_SUCCESS;
}

FGN_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                                 nvmlEventSet_t set)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device(device, &d);
    if (r == NVML_SUCCESS)
        r = check_set(set);
    if (r != NVML_SUCCESS || !eventTypes)
        return r;
    if (!__atomic_exchange_n(&g_register_logged, 1, __ATOMIC_RELAXED))
        fgn_log(FGN_LOG_WARN, "nvmlDeviceRegisterEvents(event types %#llx): the fargpu NVML shim delivers no "
                "events (the remote GPU's events are not visible through the driver API); it returns "
                "NVML_ERROR_NOT_SUPPORTED", eventTypes);
    return NVML_ERROR_NOT_SUPPORTED;
}

/* Nothing can be registered, so nothing arrives: the wait lasts timeoutms and times out. */
static nvmlReturn_t wait_set(nvmlEventSet_t set, const void *data, unsigned int timeoutms)
{
    nvmlReturn_t r = fgn_check_init();
    if (r == NVML_SUCCESS)
        r = check_set(set);
    if (r == NVML_SUCCESS && !data)
        r = NVML_ERROR_INVALID_ARGUMENT;
    if (r != NVML_SUCCESS)
        return r;
    struct timespec ts = { (time_t)(timeoutms / 1000), (long)(timeoutms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    return NVML_ERROR_TIMEOUT;
}

FGN_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return wait_set(set, data, timeoutms);
}

FGN_EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
    return wait_set(set, data, timeoutms);
}
