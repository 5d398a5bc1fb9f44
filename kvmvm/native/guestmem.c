/*
 * GuestMemory: the guest's RAM regions and the one bounds-checked way to reach them.
 * Each region is mapped with a PROT_NONE guard page on either side, so a host access
 * that escaped the checks would fault instead of touching other host memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define GUARD_SIZE (64 * 1024)

uint64_t kvmvm_gmem_guard_size(void) { return GUARD_SIZE; }

kvmvm_gmem *kvmvm_gmem_new(void)
{
    return calloc(1, sizeof(struct kvmvm_gmem));
}

static void gmem_unmap_all(struct kvmvm_gmem *gm)
{
    for (int i = 0; i < gm->nr; i++) {
        munmap(gm->r[i].map, gm->r[i].map_len);
        if (gm->r[i].fd >= 0)
            close(gm->r[i].fd);
    }
    gm->nr = 0;
}

void kvmvm_gmem_free(kvmvm_gmem *gm)
{
    if (!gm)
        return;
    gmem_unmap_all(gm);
    free(gm);
}

/* Map a new region [gpa, gpa+size): anonymous, lazily faulted, no swap reservation. */
int kvmvm_gmem_add(kvmvm_gmem *gm, uint64_t gpa, uint64_t size)
{
    long page = sysconf(_SC_PAGESIZE);

    if (gm->nr >= GMEM_MAX_REGIONS)
        return -ENOSPC;
    if (size == 0 || (size & (page - 1)) || (gpa & (page - 1)))
        return -EINVAL;
    if (gpa + size < gpa)
        return -EOVERFLOW;
    for (int i = 0; i < gm->nr; i++) {
        struct gmem_region *r = &gm->r[i];
        if (gpa < r->gpa + r->size && r->gpa < gpa + size)
            return -EEXIST;
    }
    uint64_t map_len = size + 2 * GUARD_SIZE;
    uint8_t *map = mmap(NULL, map_len, PROT_NONE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED)
        return -errno;
    if (mprotect(map + GUARD_SIZE, size, PROT_READ | PROT_WRITE) < 0) {
        int err = errno;
        munmap(map, map_len);
        return -err;
    }
    struct gmem_region *r = &gm->r[gm->nr++];
    r->gpa = gpa;
    r->size = size;
    r->map = map;
    r->map_len = map_len;
    r->hva = map + GUARD_SIZE;
    r->fd = -1;
    return gm->nr - 1;
}

/* A region whose contents come from fd (a snapshot's memory file or a fork's memfd),
   mapped MAP_PRIVATE: pages are read lazily, writes stay private (copy-on-write), and
   every VM mapping the same file shares its page cache. Takes a duplicate of fd. */
int kvmvm_gmem_add_file(struct kvmvm_gmem *gm, uint64_t gpa, uint64_t size, int fd)
{
    int slot = kvmvm_gmem_add(gm, gpa, size);
    if (slot < 0)
        return slot;
    struct gmem_region *r = &gm->r[slot];
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    void *p = dfd < 0 ? MAP_FAILED : mmap(r->hva, size, PROT_READ | PROT_WRITE,
                                          MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, dfd, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        if (dfd >= 0)
            close(dfd);
        munmap(r->map, r->map_len);
        gm->nr--;
        return -err;
    }
    r->fd = dfd;
    return slot;
}

void *gmem_ptr(struct kvmvm_gmem *gm, uint64_t gpa, uint64_t len)
{
    for (int i = 0; i < gm->nr; i++) {
        struct gmem_region *r = &gm->r[i];
        if (gpa < r->gpa)
            continue;
        uint64_t off = gpa - r->gpa;
        /* overflow-safe form of: gpa + len <= r->gpa + r->size */
        if (off >= r->size || len > r->size - off)
            continue;
        return r->hva + off;
    }
    return NULL;
}

int kvmvm_gmem_check(kvmvm_gmem *gm, uint64_t gpa, uint64_t len)
{
    return gmem_ptr(gm, gpa, len) ? 0 : -EFAULT;
}

int kvmvm_gmem_read(kvmvm_gmem *gm, uint64_t gpa, void *buf, uint64_t len)
{
    void *p = gmem_ptr(gm, gpa, len);
    if (!p)
        return -EFAULT;
    memcpy(buf, p, len);
    return 0;
}

int kvmvm_gmem_write(kvmvm_gmem *gm, uint64_t gpa, const void *buf, uint64_t len)
{
    void *p = gmem_ptr(gm, gpa, len);
    if (!p)
        return -EFAULT;
    memcpy(p, buf, len);
    return 0;
}
