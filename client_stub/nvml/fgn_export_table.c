/* fgn_export_table.c - nvmlInternalGetExportTable, the private NVML interface nvidia-smi asks for before it
 * shows anything: for GUID 6c3efec4-8fc9-4e6c-a327-ee696e12f7c4 it wants a table of pointer-sized slots, slot 0
 * holding the table's size in bytes and slots 1..255 entry points that nvidia-smi calls by slot number. The
 * meaning of most slots is not public; what is known (from watching driver 580's nvidia-smi call a table whose
 * every slot is a distinct function) is:
 *
 *   81       handle of device `index`: fn(unsigned int index, nvmlDevice_t *out, <third argument seen as 0x22>)
 *   213-215  running processes of a device: fn(nvmlDevice_t, unsigned int *count, entry *array), *count the
 *            caller's capacity on entry and the number written on return. Entry: u32 pid @0, u64
 *            usedGpuMemory @8, u32 gpuInstanceId @16, u32 computeInstanceId @20, u64 usedGpuCcProtectedMemory @24,
 *            char name[4096] @32 (stride 4128).
 *   230      host-side maximum PCIe link generation: fn(nvmlDevice_t, unsigned int *out)
 *   231      GPU part number (nvidia-smi -q): fn(nvmlDevice_t, char *out, unsigned int length)
 *   237      FRU part number (nvidia-smi -q): fn(nvmlDevice_t, char *out, unsigned int length)
 *   249      sparse operation mode: fn(nvmlDevice_t, unsigned int *out); an error shows as N/A
 *
 * What the shim answers:
 *   26       writes the line to the shim's log at debug level (FARGPU_LOG=debug), prefixed "fargpu-nvml: ",
 *            and returns NVML_SUCCESS, as the real NVML does with its debug log.
 *   81       nvmlDeviceGetHandleByIndex_v2.
 *   213-215  no processes (*count = 0): the remote GPU's process list is not visible through the driver API, so
 *            the shim cannot list any (it says so once on stderr).
 *   230, 249 NVML_ERROR_NOT_SUPPORTED (not visible through the driver API), after checking their arguments;
 *            nvidia-smi shows N/A.
 *   231, 237 NVML_ERROR_NOT_SUPPORTED after checking their arguments: the part numbers are not visible through
 *            the driver API.
 *   others   NVML_ERROR_NOT_SUPPORTED, logging the slot number and the first call's raw arguments once per slot:
 *            the shim never reports success for a call whose meaning it does not know.
 * Every slot is its own function (generated below), so each knows its number; FARGPU_LOG=debug traces every call
 * (slot 26 is variadic and has a function of its own). The arguments are read as four integer registers whatever the real prototype, which the x86-64 and AArch64
 * calling conventions allow (extra arguments are ignored; missing ones read as garbage, which only the known
 * slots look at, and only those the signature has). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fgn_internal.h"

/* 6c3efec4-8fc9-4e6c-a327-ee696e12f7c4 as it lies in memory (a CUuuid-like struct, first three fields
 * little-endian). */
static const unsigned char smi_guid[16] = { 0xc4, 0xfe, 0x3e, 0x6c, 0xc9, 0x8f, 0x6c, 0x4e,
                                            0xa3, 0x27, 0xee, 0x69, 0x6e, 0x12, 0xf7, 0xc4 };

enum {
    SMI_SLOTS = 270, /* slot 0 (the size) included: driver 580's table size */
    SLOT_DEBUG_LOG = 26,
    SLOT_HANDLE_BY_INDEX = 81,
    SLOT_PROCESSES_FIRST = 213,
    SLOT_PROCESSES_LAST = 215,
    SLOT_HOST_MAX_PCIE_GEN = 230,
    SLOT_GPU_PART_NUMBER = 231,
    SLOT_FRU_PART_NUMBER = 237,
    SLOT_SPARSE_MODE = 249,
};
#define SLOT81_THIRD_ARG 0x22u /* what nvidia-smi 580 passes as slot 81's third argument (meaning unknown) */

typedef nvmlReturn_t (*smi_slot_fn)(uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3);

struct smi_table {
    uintptr_t size; /* bytes, slot 0 included */
    smi_slot_fn fn[SMI_SLOTS - 1];
};
_Static_assert(sizeof(struct smi_table) == SMI_SLOTS * sizeof(void *), "one pointer-sized word per slot");
_Static_assert(sizeof(smi_slot_fn) == sizeof(uintptr_t), "function pointers are pointer-sized");

static int slot_logged[SMI_SLOTS];
static int processes_logged, slot81_arg_logged;

static int first_time(int *flag) { return !__atomic_exchange_n(flag, 1, __ATOMIC_RELAXED); }

/* " (device N's handle)" when v is one of the shim's device handles (and NVML is initialised), else "". */
static void describe_handle(uintptr_t v, char *out, size_t cap)
{
    struct fgn_device *d;
    out[0] = 0;
    if (fgn_device((nvmlDevice_t)v, &d) == NVML_SUCCESS)
        snprintf(out, cap, " (device %u's handle)", d->index);
}

static nvmlReturn_t not_supported(unsigned int slot, const char *what, uintptr_t a0, uintptr_t a1, uintptr_t a2,
                                  uintptr_t a3)
{
    if (first_time(&slot_logged[slot])) {
        char h[48];
        describe_handle(a0, h, sizeof h);
        fgn_log(FGN_LOG_WARN,
                "nvidia-smi private slot %u%s is not supported by the fargpu NVML shim; it returns "
                "NVML_ERROR_NOT_SUPPORTED (first call's raw arguments: %#" PRIxPTR "%s, %#" PRIxPTR ", %#" PRIxPTR
                ", %#" PRIxPTR ")",
                slot, what, a0, h, a1, a2, a3);
    }
    return NVML_ERROR_NOT_SUPPORTED;
}

/* Slot 81: fn(unsigned int index, nvmlDevice_t *out, 0x22). The index is a 32-bit argument: only the low half
 * of its register is defined. */
static nvmlReturn_t handle_by_index(uintptr_t a0, uintptr_t a1, uintptr_t a2)
{
    if ((unsigned int)a2 != SLOT81_THIRD_ARG && first_time(&slot81_arg_logged))
        fgn_log(FGN_LOG_WARN, "nvidia-smi private slot 81 (device handle by index) was called with third argument "
                "%#" PRIxPTR ", not the 0x22 seen so far; answering it as nvmlDeviceGetHandleByIndex_v2 anyway", a2);
    return nvmlDeviceGetHandleByIndex_v2((unsigned int)a0, (nvmlDevice_t *)a1);
}

/* Slots 213-215: fn(nvmlDevice_t, unsigned int *count, entry *array). */
static nvmlReturn_t running_processes(uintptr_t a0, uintptr_t a1, uintptr_t a2)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device((nvmlDevice_t)a0, &d);
    if (r != NVML_SUCCESS)
        return r;
    unsigned int *count = (unsigned int *)a1;
    if (!count || (*count > 0 && !a2))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (first_time(&processes_logged))
        fgn_log(FGN_LOG_WARN, "nvidia-smi's process list (private slots %d-%d) is reported empty: the processes "
                "using the remote GPU are not visible through the driver API", SLOT_PROCESSES_FIRST,
                SLOT_PROCESSES_LAST);
    *count = 0;
    return NVML_SUCCESS;
}

/* Slots 230 and 249: fn(nvmlDevice_t, unsigned int *out); neither value is visible through the driver API. */
static nvmlReturn_t device_uint_not_supported(unsigned int slot, const char *what, uintptr_t a0, uintptr_t a1)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device((nvmlDevice_t)a0, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!a1)
        return NVML_ERROR_INVALID_ARGUMENT;
    return not_supported(slot, what, a0, a1, 0, 0);
}

/* Slots 231 and 237: fn(nvmlDevice_t, char *out, unsigned int length); neither part number is visible through
 * the driver API. */
static nvmlReturn_t device_string_not_supported(unsigned int slot, const char *what, uintptr_t a0, uintptr_t a1,
                                                uintptr_t a2)
{
    struct fgn_device *d;
    nvmlReturn_t r = fgn_device((nvmlDevice_t)a0, &d);
    if (r != NVML_SUCCESS)
        return r;
    if (!a1 || !(unsigned int)a2)
        return NVML_ERROR_INVALID_ARGUMENT;
    return not_supported(slot, what, a0, a1, a2, 0);
}

static nvmlReturn_t dispatch(unsigned int slot, uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3)
{
    if (slot == SLOT_HANDLE_BY_INDEX)
        return handle_by_index(a0, a1, a2);
    if (slot >= SLOT_PROCESSES_FIRST && slot <= SLOT_PROCESSES_LAST)
        return running_processes(a0, a1, a2);
    if (slot == SLOT_HOST_MAX_PCIE_GEN)
        return device_uint_not_supported(slot, " (host-side maximum PCIe link generation)", a0, a1);
    if (slot == SLOT_SPARSE_MODE)
        return device_uint_not_supported(slot, " (sparse operation mode)", a0, a1);
    if (slot == SLOT_GPU_PART_NUMBER)
        return device_string_not_supported(slot, " (GPU part number)", a0, a1, a2);
    if (slot == SLOT_FRU_PART_NUMBER)
        return device_string_not_supported(slot, " (FRU part number)", a0, a1, a2);
    return not_supported(slot, "", a0, a1, a2, a3);
}

/* Every slot's function lands here with its number. Kept out of line: 255 callers. */
__attribute__((noinline)) static nvmlReturn_t smi_call(unsigned int slot, uintptr_t a0, uintptr_t a1, uintptr_t a2,
                                                       uintptr_t a3)
{
    nvmlReturn_t r = dispatch(slot, a0, a1, a2, a3);
    fgn_log(FGN_LOG_DEBUG, "nvidia-smi private slot %u(%#" PRIxPTR ", %#" PRIxPTR ", %#" PRIxPTR ", %#" PRIxPTR
            ") -> %d (%s)", slot, a0, a1, a2, a3, (int)r, nvmlErrorString(r));
    return r;
}

/* Slot 26, nvidia-smi's debug log: fn(const char *format, ...). Variadic, as nvidia-smi calls it, so the
 * arguments (floating-point ones too) are read the way they were passed. */
static nvmlReturn_t smi_debug_log(const char *format, ...)
{
    if (!format)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (fgn_log_enabled(FGN_LOG_DEBUG)) {
        char line[1024];
        va_list ap;
        va_start(ap, format);
        int n = vsnprintf(line, sizeof line, format, ap);
        va_end(ap);
        fgn_log(FGN_LOG_DEBUG, "nvidia-smi private slot %d (debug log): %s", SLOT_DEBUG_LOG,
                n < 0 ? "(unprintable format)" : line);
    }
    return NVML_SUCCESS;
}

/* The slot functions, fgn_smi_slot_1 .. fgn_smi_slot_269 (26 excepted: smi_debug_log above): the decimal slot
 * number is pasted together from a tens prefix and a digit, so the function name and the number it passes are
 * the same token. */
#define SMI_DECADE(X, tens) X(tens##0) X(tens##1) X(tens##2) X(tens##3) X(tens##4) X(tens##5) X(tens##6) \
    X(tens##7) X(tens##8) X(tens##9)
#define SMI_ALL_SLOTS(X)                                                                                       \
    X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) SMI_DECADE(X, 1)                                              \
    X(20) X(21) X(22) X(23) X(24) X(25) X(27) X(28) X(29)                                                      \
    SMI_DECADE(X, 3) SMI_DECADE(X, 4) SMI_DECADE(X, 5) SMI_DECADE(X, 6) SMI_DECADE(X, 7) SMI_DECADE(X, 8)      \
    SMI_DECADE(X, 9) SMI_DECADE(X, 10) SMI_DECADE(X, 11) SMI_DECADE(X, 12) SMI_DECADE(X, 13)                   \
    SMI_DECADE(X, 14) SMI_DECADE(X, 15) SMI_DECADE(X, 16) SMI_DECADE(X, 17) SMI_DECADE(X, 18)                  \
    SMI_DECADE(X, 19) SMI_DECADE(X, 20) SMI_DECADE(X, 21) SMI_DECADE(X, 22) SMI_DECADE(X, 23)                  \
    SMI_DECADE(X, 24) SMI_DECADE(X, 25) SMI_DECADE(X, 26)

#define SMI_DEFINE_SLOT(n)                                                                                     \
    static nvmlReturn_t fgn_smi_slot_##n(uintptr_t a0, uintptr_t a1, uintptr_t a2, uintptr_t a3)               \
    {                                                                                                          \
        return smi_call(n, a0, a1, a2, a3);                                                                    \
    }
#define SMI_TABLE_ENTRY(n) [(n) - 1] = fgn_smi_slot_##n,

SMI_ALL_SLOTS(SMI_DEFINE_SLOT)

static const struct smi_table g_smi_table = {
    .size = sizeof(struct smi_table),
    .fn = { SMI_ALL_SLOTS(SMI_TABLE_ENTRY)[SLOT_DEBUG_LOG - 1] = (smi_slot_fn)(void (*)(void))smi_debug_log },
};

/* Unknown GUIDs are logged once each (the first few distinct ones). */
static pthread_mutex_t g_guid_mu = PTHREAD_MUTEX_INITIALIZER;
static unsigned char g_guids_seen[8][16];
static unsigned int g_nguids_seen;

static void log_unknown_guid(const unsigned char *g)
{
    pthread_mutex_lock(&g_guid_mu);
    int seen = 0;
    for (unsigned int i = 0; i < g_nguids_seen && !seen; i++)
        seen = !memcmp(g_guids_seen[i], g, 16);
    int log = !seen && g_nguids_seen < sizeof g_guids_seen / sizeof g_guids_seen[0];
    if (log)
        memcpy(g_guids_seen[g_nguids_seen++], g, 16);
    pthread_mutex_unlock(&g_guid_mu);
    if (log)
        fgn_log(FGN_LOG_WARN, "nvmlInternalGetExportTable: GUID %02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
                "%02x%02x%02x%02x%02x%02x is not supported by the fargpu NVML shim; it returns "
                "NVML_ERROR_NOT_SUPPORTED", g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10],
                g[11], g[12], g[13], g[14], g[15]);
}

/* Works before nvmlInit (nothing here touches the driver); the slots that need devices check init themselves. */
FGN_EXPORT nvmlReturn_t nvmlInternalGetExportTable(const void **table, const void *guid)
{
    if (!table || !guid)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (memcmp(guid, smi_guid, sizeof smi_guid) != 0) {
        log_unknown_guid(guid);
        return NVML_ERROR_NOT_SUPPORTED;
    }
    fgn_log(FGN_LOG_DEBUG, "nvmlInternalGetExportTable: serving nvidia-smi's table (%u slots, %zu bytes)",
            (unsigned int)SMI_SLOTS, sizeof g_smi_table);
    *table = &g_smi_table;
    return NVML_SUCCESS;
}
