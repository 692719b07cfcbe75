/* sim_visible.c - which of the simulated physical devices a process sees, and in what order: the driver's
 * CUDA_VISIBLE_DEVICES rules, so that the node can give a session exactly its lease's GPUs the same way on the
 * simulated device and on a real one (server/node_agent.py sets it for each worker).
 *
 * The list is comma-separated; each entry is a physical ordinal ("1") or a UUID ("GPU-66617267-..." as
 * nvidia-smi -L prints it; a unique prefix is enough). As with the driver, the first entry that names no device
 * (or names one already listed) ends the list: the devices before it are visible. Unset: every device, in order.
 * Set but empty (or starting with an invalid entry): none (cuInit then fails with CUDA_ERROR_NO_DEVICE). */
#include "sim.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void sim_phys_uuid(int phys, unsigned char out[16])
{
    /* Fixed per device, shaped like an RFC 4122 version-4 UUID: "fargpu" then the physical ordinal. */
    static const unsigned char base[16] = { 'f', 'a', 'r', 'g', 'p', 'u', 0x4d, 0x69,
                                            0x8d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00 };
    memcpy(out, base, sizeof base);
    out[15] = (unsigned char)phys;
}

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" of physical device `phys`. */
static void uuid_text(int phys, char *buf, size_t len)
{
    unsigned char u[16];
    sim_phys_uuid(phys, u);
    snprintf(buf, len, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", u[0], u[1],
             u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

/* The physical ordinal an entry names, or -1. */
static int entry_device(const char *e, size_t n, int nphys)
{
    if (n == 0)
        return -1;
    int digits = 1;
    for (size_t i = 0; i < n; i++)
        digits &= isdigit((unsigned char)e[i]) != 0;
    if (digits) {
        if (n > 3)
            return -1;
        int v = atoi(e);
        return v < nphys ? v : -1;
    }
    if (n < 5 || strncmp(e, "GPU-", 4) != 0)
        return -1;
    int found = -1;
    for (int p = 0; p < nphys; p++) {
        char u[48];
        uuid_text(p, u, sizeof u);
        if (strlen(u) >= n && strncasecmp(u, e, n) == 0) {
            if (found >= 0)
                return -1; /* an ambiguous prefix names no device */
            found = p;
        }
    }
    return found;
}

int sim_visible_devices(int nphys, int *out)
{
    const char *s = getenv("CUDA_VISIBLE_DEVICES");
    if (!s) {
        for (int i = 0; i < nphys; i++)
            out[i] = i;
        return nphys;
    }
    int n = 0;
    while (*s && n < nphys) {
        while (*s == ' ')
            s++;
        size_t len = strcspn(s, ",");
        size_t trim = len;
        while (trim > 0 && s[trim - 1] == ' ')
            trim--;
        int p = entry_device(s, trim, nphys);
        for (int i = 0; i < n && p >= 0; i++)
            if (out[i] == p)
                p = -1;
        if (p < 0)
            break;
        out[n++] = p;
        s += len;
        if (*s == ',')
            s++;
    }
    return n;
}
