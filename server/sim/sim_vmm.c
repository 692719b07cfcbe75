/* sim_vmm.c - the virtual memory management API, implemented faithfully on host virtual memory, because the
 * fargpu server's paging relies on its semantics:
 *
 *   cuMemAddressReserve  mmap(PROT_NONE) of a granularity-aligned VA range; a requested address is honoured
 *                        when free (MAP_FIXED_NOREPLACE), else the range goes elsewhere, as the driver's hint;
 *                        with FARGPU_SIM_VA=heap, placed as the probed real driver places it (sim_vaheap.c);
 *   cuMemCreate          a physical allocation = a memfd of that size, charged against device memory (on a
 *                        host NUMA node: host memory the devices reach, charged to nothing);
 *   cuMemMap             mmap(MAP_FIXED | MAP_SHARED) of the memfd into a reserved range (no access yet);
 *   cuMemSetAccess       mprotect of whole mappings (PROT_READ or PROT_READWRITE);
 *   cuMemUnmap           puts the PROT_NONE reservation back; the memfd keeps the contents, so mapping the same
 *                        handle again (at the same or another address) shows the same bytes;
 *   cuMemRelease         drops the handle; the memory goes when its last mapping does.
 *
 * FARGPU_SIM_KEEP_FREED_MB (default 0: off) keeps up to that much released, never exported memory per process and
 * gives it to the next cuMemCreate of the same size and device, its pages still allocated (stale bytes, as the
 * driver's fresh memory has), as a GPU's memory is there before it is allocated. bench/paging_disk.py sets it, so
 * that a page-in's copies into fresh memory do not fault in and zero every host page, which on a small CPU machine
 * is slower than the disk the bench measures.
 *
 * Like an H100 (driver 580), cuMemMap of host-NUMA memory takes only the whole allocation at offset 0; a part
 * answers CUDA_ERROR_NOT_SUPPORTED (the CUDA documentation says the offset "currently must be zero").
 *
 * The sim is stricter than the driver in two documented ways: cuMemSetAccess and cuMemUnmap act on whole
 * mappings only, and cuMemAddressFree refuses a range that still has mappings (CUDA_ERROR_INVALID_VALUE). */
#include "sim.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct sim_phys {
    struct sim_obj h;
    int fd;
    size_t size;
    int device;
    int released;
    unsigned int refs; /* handles given out: create + retains - releases */
    unsigned int maps;
    unsigned long long id; /* CU_POINTER_ATTRIBUTE_MEMORY_BLOCK_ID of its mappings */
    unsigned int handle_types; /* requestedHandleTypes at creation */
    int imported;              /* from cuMemImportFromShareableHandle: another process's memory, not charged here */
    int exported;              /* its memfd was handed out: never kept for reuse */
};

/* Released memory kept for reuse (FARGPU_SIM_KEEP_FREED_MB). */
struct kept {
    int fd;
    size_t size;
    int device;
};
static struct kept g_kept[4096];
static size_t g_nkept, g_kept_bytes;

static size_t keep_limit(void)
{
    const char *e = getenv("FARGPU_SIM_KEEP_FREED_MB");
    return e ? (size_t)strtoull(e, NULL, 10) << 20 : 0;
}

struct resv {
    uintptr_t base;
    size_t size;
};
static struct resv *g_resv;
static size_t g_nresv, g_capresv;

static struct resv *find_resv(uintptr_t p, size_t n)
{
    for (size_t i = 0; i < g_nresv; i++)
        if (p >= g_resv[i].base && p - g_resv[i].base <= g_resv[i].size && n <= g_resv[i].size - (p - g_resv[i].base))
            return &g_resv[i];
    return NULL;
}

void sim_vmm_describe(const struct sim_seg *seg, struct sim_vmm_info *info)
{
    const struct resv *r = find_resv(seg->base, seg->size); /* a mapping always lies in a reservation */
    info->resv_base = r ? r->base : seg->base;
    info->resv_size = r ? r->size : seg->size;
    info->block_id = seg->phys ? seg->phys->id : seg->id;
    info->handle_types = seg->phys ? seg->phys->handle_types : 0;
}

static int aligned(size_t v) { return (v & (SIM_GRANULARITY - 1)) == 0; }

static CUresult check_location(const CUmemLocation *loc)
{
    if (loc->type != CU_MEM_LOCATION_TYPE_DEVICE || loc->id < 0 || loc->id >= sim_g.ndev)
        return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

/* Host memory of NUMA node 0 (the simulated host has one): physical memory the devices reach by DMA, as the
 * node's host page pool uses it (server/replay/hostpool.c). Not charged against any device's memory. */
static int host_numa(const CUmemLocation *loc) { return loc->type == CU_MEM_LOCATION_TYPE_HOST_NUMA; }

static CUresult check_prop(const CUmemAllocationProp *prop)
{
    if (!prop || prop->type != CU_MEM_ALLOCATION_TYPE_PINNED)
        return CUDA_ERROR_INVALID_VALUE;
    if (prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_NONE &&
        prop->requestedHandleTypes != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_NOT_SUPPORTED;
    if (host_numa(&prop->location))
        return prop->location.id == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
    return check_location(&prop->location) == CUDA_SUCCESS ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}

SIM_API CUresult cuMemGetAllocationGranularity(size_t *granularity, const CUmemAllocationProp *prop,
                                               CUmemAllocationGranularity_flags option)
{
    if (!granularity || (option != CU_MEM_ALLOC_GRANULARITY_MINIMUM && option != CU_MEM_ALLOC_GRANULARITY_RECOMMENDED))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS)
        rc = check_prop(prop);
    if (rc == CUDA_SUCCESS)
        *granularity = SIM_GRANULARITY;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemAddressReserve(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                     unsigned long long flags)
{
    if (!ptr || size == 0 || !aligned(size) || flags != 0 || (alignment & (alignment - 1)) != 0 ||
        size > ((size_t)1 << 47))
        return CUDA_ERROR_INVALID_VALUE;
    if (alignment < SIM_GRANULARITY)
        alignment = SIM_GRANULARITY;
    if (alignment > ((size_t)1 << 40))
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && g_nresv == g_capresv) {
        size_t ncap = g_capresv ? g_capresv * 2 : 16;
        struct resv *nr = realloc(g_resv, ncap * sizeof *nr);
        if (nr) {
            g_resv = nr;
            g_capresv = ncap;
        } else {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    uintptr_t base = 0;
    const int mflags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (rc == CUDA_SUCCESS && sim_vaheap_on()) { /* as the probed driver: the requested address is ignored */
        base = sim_vaheap_take(size, alignment);
        if (!base)
            rc = CUDA_ERROR_OUT_OF_MEMORY;
    }
    if (rc == CUDA_SUCCESS && !base && addr && ((uintptr_t)addr & (alignment - 1)) == 0) {
        void *p = mmap((void *)(uintptr_t)addr, size, PROT_NONE, mflags | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != MAP_FAILED && (uintptr_t)p == (uintptr_t)addr)
            base = (uintptr_t)p;
        else if (p != MAP_FAILED)
            munmap(p, size); /* old kernels treat the flag as a hint */
    }
    if (rc == CUDA_SUCCESS && !base) {
        size_t span = size + alignment;
        void *p = mmap(NULL, span, PROT_NONE, mflags, -1, 0);
        if (p == MAP_FAILED) {
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            uintptr_t raw = (uintptr_t)p;
            base = (raw + alignment - 1) & ~(uintptr_t)(alignment - 1);
            if (base > raw)
                munmap(p, base - raw);
            if (raw + span > base + size)
                munmap((void *)(base + size), raw + span - (base + size));
        }
    }
    if (rc == CUDA_SUCCESS) {
        g_resv[g_nresv].base = base;
        g_resv[g_nresv].size = size;
        g_nresv++;
        *ptr = (CUdeviceptr)base;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size)
{
    sim_lock();
    CUresult rc = sim_check_init();
    size_t i = 0;
    if (rc == CUDA_SUCCESS) {
        for (i = 0; i < g_nresv; i++)
            if (g_resv[i].base == (uintptr_t)ptr && g_resv[i].size == size)
                break;
        if (i == g_nresv || sim_seg_overlaps((uintptr_t)ptr, size))
            rc = CUDA_ERROR_INVALID_VALUE;
    }
    if (rc == CUDA_SUCCESS) {
        if (!sim_vaheap_give(g_resv[i].base, g_resv[i].size))
            munmap((void *)g_resv[i].base, g_resv[i].size);
        g_resv[i] = g_resv[--g_nresv];
    }
    sim_unlock();
    return rc;
}

static void phys_free(struct sim_phys *ph)
{
    sim_reg_remove(ph);
    if (!ph->imported && !ph->exported && g_nkept < sizeof g_kept / sizeof g_kept[0] &&
        g_kept_bytes + ph->size <= keep_limit()) {
        g_kept[g_nkept++] = (struct kept){ph->fd, ph->size, ph->device};
        g_kept_bytes += ph->size;
    } else {
        close(ph->fd);
    }
    if (!ph->imported && ph->device != SIM_HOST_PHYS)
        sim_uncharge(ph->device, ph->size);
    free(ph);
}

SIM_API CUresult cuMemCreate(CUmemGenericAllocationHandle *handle, size_t size, const CUmemAllocationProp *prop,
                             unsigned long long flags)
{
    if (!handle || size == 0 || !aligned(size) || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    CUresult unsafe = sim_capture_unsafe(); /* an allocation under stream capture: as cuMemAlloc (sim_capture.c) */
    if (unsafe != CUDA_SUCCESS)
        return unsafe;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS)
        rc = check_prop(prop);
    int dev = rc == CUDA_SUCCESS && host_numa(&prop->location) ? SIM_HOST_PHYS : rc == CUDA_SUCCESS ? prop->location.id : 0;
    if (rc == CUDA_SUCCESS && dev != SIM_HOST_PHYS)
        rc = sim_charge(dev, size);
    if (rc == CUDA_SUCCESS) {
        struct sim_phys *ph = calloc(1, sizeof *ph);
        char name[48]; /* names the physical device (or the host), so that a process importing it knows where it lives */
        if (dev == SIM_HOST_PHYS)
            snprintf(name, sizeof name, "fargpu-sim-host-0");
        else
            snprintf(name, sizeof name, "fargpu-sim-vmm-%d", sim_g.dev[dev].phys);
        int fd = -1;
        for (size_t i = 0; i < g_nkept && fd < 0; i++)
            if (g_kept[i].size == size && g_kept[i].device == dev) {
                fd = g_kept[i].fd;
                g_kept_bytes -= size;
                g_kept[i] = g_kept[--g_nkept];
            }
        if (fd < 0 && (fd = memfd_create(name, MFD_CLOEXEC)) >= 0 && ftruncate(fd, (off_t)size) != 0) {
            close(fd);
            fd = -1;
        }
        if (!ph || fd < 0 || sim_reg_add(ph) != 0) {
            if (fd >= 0)
                close(fd);
            free(ph);
            if (dev != SIM_HOST_PHYS)
                sim_uncharge(dev, size);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            ph->h.kind = SIM_KIND_PHYS;
            ph->fd = fd;
            ph->size = size;
            ph->device = dev;
            ph->id = sim_next_buffer_id();
            ph->handle_types = (unsigned int)prop->requestedHandleTypes;
            ph->refs = 1;
            *handle = (CUmemGenericAllocationHandle)(uintptr_t)ph;
        }
    }
    sim_unlock();
    return rc;
}

static struct sim_phys *find_phys(CUmemGenericAllocationHandle h)
{
    struct sim_phys *ph = sim_reg_find((const void *)(uintptr_t)h, SIM_KIND_PHYS);
    return ph && !ph->released ? ph : NULL;
}

SIM_API CUresult cuMemRelease(CUmemGenericAllocationHandle handle)
{
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_phys *ph = rc == CUDA_SUCCESS ? find_phys(handle) : NULL;
    if (rc == CUDA_SUCCESS && !ph)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        if (--ph->refs == 0) {
            ph->released = 1;
            if (ph->maps == 0)
                phys_free(ph);
        }
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                          unsigned long long flags)
{
    if (size == 0 || !aligned(size) || !aligned(offset) || !aligned((size_t)ptr) || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_phys *ph = rc == CUDA_SUCCESS ? find_phys(handle) : NULL;
    if (rc == CUDA_SUCCESS && !ph)
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (rc == CUDA_SUCCESS && (offset > ph->size || size > ph->size - offset))
        rc = CUDA_ERROR_INVALID_VALUE;
    /* As an H100 on driver 580 does: host-NUMA memory maps only whole, at offset 0 (CUDA_ERROR_NOT_SUPPORTED,
     * error 801, for a part), so the node's host pool is made of slabs mapped whole (server/replay/hostpool.c). */
    if (rc == CUDA_SUCCESS && ph->device == SIM_HOST_PHYS && (offset != 0 || size != ph->size))
        rc = CUDA_ERROR_NOT_SUPPORTED;
    /* Tests: FARGPU_SIM_HOST_NUMA_MAP=refuse models a driver that cannot map host-NUMA memory at all (the node's
     * host pool then fails, and its sessions page to disk instead). */
    const char *hn = getenv("FARGPU_SIM_HOST_NUMA_MAP");
    if (rc == CUDA_SUCCESS && ph->device == SIM_HOST_PHYS && hn && !strcmp(hn, "refuse"))
        rc = CUDA_ERROR_NOT_SUPPORTED;
    if (rc == CUDA_SUCCESS && (!find_resv((uintptr_t)ptr, size) || sim_seg_overlaps((uintptr_t)ptr, size)))
        rc = CUDA_ERROR_INVALID_VALUE;
    struct sim_seg *s = NULL;
    if (rc == CUDA_SUCCESS && !(s = calloc(1, sizeof *s)))
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) {
        void *p = mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED, ph->fd, (off_t)offset);
        s->base = (uintptr_t)ptr;
        s->size = size;
        s->kind = SIM_SEG_VMM;
        s->prot = 0; /* no access until cuMemSetAccess */
        s->device = ph->device;
        s->phys = ph;
        if (p == MAP_FAILED || sim_seg_insert(s) != 0) {
            /* put the reservation back */
            mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
            free(s);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        } else {
            ph->maps++;
        }
    }
    sim_unlock();
    return rc;
}

/* Collects the VMM mappings that exactly tile [p, p+n); returns the count, or 0 if they don't. */
static size_t tile(uintptr_t p, size_t n, struct sim_seg **out, size_t max)
{
    size_t k = 0;
    uintptr_t cur = p, end = p + n;
    if (n == 0 || end < p)
        return 0;
    while (cur < end) {
        struct sim_seg *s = sim_seg_find(cur);
        if (!s || s->kind != SIM_SEG_VMM || s->base != cur || s->size > end - cur || k == max)
            return 0;
        out[k++] = s;
        cur += s->size;
    }
    return k;
}

#define TILE_MAX 4096

SIM_API CUresult cuMemUnmap(CUdeviceptr ptr, size_t size)
{
    sim_lock();
    CUresult rc = sim_check_init();
    static struct sim_seg *segs[TILE_MAX];
    size_t k = rc == CUDA_SUCCESS ? tile((uintptr_t)ptr, size, segs, TILE_MAX) : 0;
    if (rc == CUDA_SUCCESS && k == 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; rc == CUDA_SUCCESS && i < k; i++) {
        struct sim_seg *s = segs[i];
        mmap((void *)s->base, s->size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
        struct sim_phys *ph = s->phys;
        sim_seg_remove(s);
        free(s);
        if (--ph->maps == 0 && ph->released)
            phys_free(ph);
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count)
{
    if (!desc || count == 0)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    int want[SIM_MAX_DEVICES], given[SIM_MAX_DEVICES] = {0}; /* per device: the access asked for, and whether */
    if (rc == CUDA_SUCCESS && count > (size_t)sim_g.ndev)
        rc = CUDA_ERROR_INVALID_VALUE;
    for (size_t i = 0; rc == CUDA_SUCCESS && i < count; i++) {
        int prot = 0;
        if (check_location(&desc[i].location) != CUDA_SUCCESS)
            rc = CUDA_ERROR_INVALID_DEVICE;
        else if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READ)
            prot = SIM_PROT_R;
        else if (desc[i].flags == CU_MEM_ACCESS_FLAGS_PROT_READWRITE)
            prot = SIM_PROT_R | SIM_PROT_W;
        else if (desc[i].flags != CU_MEM_ACCESS_FLAGS_PROT_NONE)
            rc = CUDA_ERROR_INVALID_VALUE;
        if (rc == CUDA_SUCCESS) {
            want[desc[i].location.id] = prot;
            given[desc[i].location.id] = 1;
        }
    }
    static struct sim_seg *segs[TILE_MAX];
    size_t k = rc == CUDA_SUCCESS ? tile((uintptr_t)ptr, size, segs, TILE_MAX) : 0;
    if (rc == CUDA_SUCCESS && k == 0)
        rc = CUDA_ERROR_INVALID_VALUE;
    /* As the driver: the devices named change their access, the others keep theirs. The host mapping allows the
     * union (what some device may do); launches check the running device's own (sim_peer.c). */
    for (size_t i = 0; rc == CUDA_SUCCESS && i < k; i++) {
        int prot = 0;
        for (int d = 0; d < sim_g.ndev; d++)
            prot |= given[d] ? want[d] : segs[i]->dprot[d];
        int hostprot = (prot & SIM_PROT_W) ? PROT_READ | PROT_WRITE : (prot & SIM_PROT_R) ? PROT_READ : PROT_NONE;
        if (mprotect((void *)segs[i]->base, segs[i]->size, hostprot) != 0) {
            rc = CUDA_ERROR_INVALID_VALUE;
            break;
        }
        segs[i]->prot = prot;
        for (int d = 0; d < sim_g.ndev; d++)
            if (given[d])
                segs[i]->dprot[d] = want[d];
    }
    sim_unlock();
    return rc;
}

/* The handle of the mapping that contains addr, with one more reference the caller releases. */
SIM_API CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *handle, void *addr)
{
    if (!handle)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_seg *s = rc == CUDA_SUCCESS ? sim_seg_find((uintptr_t)addr) : NULL;
    if (rc == CUDA_SUCCESS && (!s || s->kind != SIM_SEG_VMM || !s->phys || s->phys->released))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        s->phys->refs++;
        *handle = (CUmemGenericAllocationHandle)(uintptr_t)s->phys;
    }
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemGetAllocationPropertiesFromHandle(CUmemAllocationProp *prop, CUmemGenericAllocationHandle handle)
{
    if (!prop)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_phys *ph = rc == CUDA_SUCCESS ? find_phys(handle) : NULL;
    if (rc == CUDA_SUCCESS && !ph)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        memset(prop, 0, sizeof *prop);
        prop->type = CU_MEM_ALLOCATION_TYPE_PINNED;
        prop->location.type = ph->device == SIM_HOST_PHYS ? CU_MEM_LOCATION_TYPE_HOST_NUMA : CU_MEM_LOCATION_TYPE_DEVICE;
        prop->location.id = ph->device == SIM_HOST_PHYS ? 0 : ph->device;
        prop->requestedHandleTypes = (CUmemAllocationHandleType)ph->handle_types;
    }
    sim_unlock();
    return rc;
}

/* The access a device has to the mapping at ptr (what cuMemSetAccess granted). */
SIM_API CUresult cuMemGetAccess(unsigned long long *flags, const CUmemLocation *location, CUdeviceptr ptr)
{
    if (!flags || !location)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    if (rc == CUDA_SUCCESS && check_location(location) != CUDA_SUCCESS)
        rc = CUDA_ERROR_INVALID_DEVICE;
    struct sim_seg *s = rc == CUDA_SUCCESS ? sim_seg_find((uintptr_t)ptr) : NULL;
    if (rc == CUDA_SUCCESS && (!s || s->kind != SIM_SEG_VMM))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS) {
        int prot = s->dprot[location->id]; /* that device's own access */
        *flags = (prot & SIM_PROT_W)   ? CU_MEM_ACCESS_FLAGS_PROT_READWRITE
                 : (prot & SIM_PROT_R) ? CU_MEM_ACCESS_FLAGS_PROT_READ
                                       : CU_MEM_ACCESS_FLAGS_PROT_NONE;
    }
    sim_unlock();
    return rc;
}

/* ---- shareable handles (POSIX file descriptors) ----
 * Export gives a duplicate of the allocation's memfd (only for memory created with
 * CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR in requestedHandleTypes, as with the driver). Import, in this or another
 * process, makes a new handle of the same memory: mapping it shows the same bytes. The memfd's name says which
 * physical device the memory is on; a process that does not see that device cannot import it
 * (CUDA_ERROR_INVALID_DEVICE). Imported memory is charged to the exporting process's device memory, not here. */
SIM_API CUresult cuMemExportToShareableHandle(void *shareableHandle, CUmemGenericAllocationHandle handle,
                                              CUmemAllocationHandleType handleType, unsigned long long flags)
{
    if (!shareableHandle || flags != 0)
        return CUDA_ERROR_INVALID_VALUE;
    sim_lock();
    CUresult rc = sim_check_init();
    struct sim_phys *ph = rc == CUDA_SUCCESS ? find_phys(handle) : NULL;
    if (rc == CUDA_SUCCESS && !ph)
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc == CUDA_SUCCESS && (handleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ||
                               !(ph->handle_types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)))
        rc = CUDA_ERROR_INVALID_VALUE;
    int fd = -1;
    if (rc == CUDA_SUCCESS && (fd = fcntl(ph->fd, F_DUPFD_CLOEXEC, 0)) < 0)
        rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS)
        ph->exported = 1;
    if (rc == CUDA_SUCCESS)
        *(int *)shareableHandle = fd;
    sim_unlock();
    return rc;
}

SIM_API CUresult cuMemImportFromShareableHandle(CUmemGenericAllocationHandle *handle, void *osHandle,
                                                CUmemAllocationHandleType shHandleType)
{
    if (!handle || shHandleType != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR)
        return CUDA_ERROR_INVALID_VALUE;
    int fd = (int)(intptr_t)osHandle;
    char link[64], target[128];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = fd >= 0 ? readlink(link, target, sizeof target - 1) : -1;
    struct stat st;
    int phys = -1, host = 0;
    if (n > 0) {
        target[n] = 0;
        host = strncmp(target, "/memfd:fargpu-sim-host-0", 24) == 0;
        if (!host && sscanf(target, "/memfd:fargpu-sim-vmm-%d", &phys) != 1)
            phys = -1;
    }
    if ((!host && phys < 0) || fstat(fd, &st) != 0 || st.st_size <= 0 || !aligned((size_t)st.st_size))
        return CUDA_ERROR_INVALID_VALUE; /* not memory the simulated device exported */
    sim_lock();
    CUresult rc = sim_check_init();
    int dev = host ? SIM_HOST_PHYS : -2;
    for (int d = 0; rc == CUDA_SUCCESS && !host && d < sim_g.ndev; d++)
        if (sim_g.dev[d].phys == phys)
            dev = d;
    if (rc == CUDA_SUCCESS && dev == -2)
        rc = CUDA_ERROR_INVALID_DEVICE;
    struct sim_phys *ph = NULL;
    int own = -1;
    if (rc == CUDA_SUCCESS) {
        ph = calloc(1, sizeof *ph);
        own = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (!ph || own < 0 || sim_reg_add(ph) != 0) {
            if (own >= 0)
                close(own);
            free(ph);
            rc = CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    if (rc == CUDA_SUCCESS) {
        ph->h.kind = SIM_KIND_PHYS;
        ph->fd = own;
        ph->size = (size_t)st.st_size;
        ph->device = dev;
        ph->id = sim_next_buffer_id();
        ph->handle_types = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        ph->refs = 1;
        ph->imported = 1;
        *handle = (CUmemGenericAllocationHandle)(uintptr_t)ph;
    }
    sim_unlock();
    return rc;
}
