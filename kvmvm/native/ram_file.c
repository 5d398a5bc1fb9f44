/*
 * Guest RAM as files. Saving writes only the pages a guest can have changed: those
 * present or swapped in this process (/proc/self/pagemap) and, for a region that is itself
 * a MAP_PRIVATE file mapping, those where the file has data (SEEK_DATA); all-zero pages
 * are left as holes too. Loading maps a file MAP_PRIVATE: nothing is read up front.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"
#include "api_state.h"

#define PM_PRESENT (1ull << 63)
#define PM_SWAPPED (1ull << 62)
#define CHUNK_PAGES 512

int kvmvm_vm_ram_slots(kvmvm_vm *vm)
{
    return vm->mem.nr;
}

static int page_is_zero(const uint8_t *p, size_t n)
{
    const uint64_t *q = (const uint64_t *)p;
    for (size_t i = 0; i < n / 8; i++)
        if (q[i])
            return 0;
    return 1;
}

static int write_all_at(int fd, const uint8_t *p, uint64_t len, uint64_t off)
{
    while (len) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        off += w;
        len -= w;
    }
    return 0;
}

/* 1 if [off, off+len) of the backing file holds data somewhere */
static int file_has_data(int fd, uint64_t off, uint64_t len)
{
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    return d >= 0 && (uint64_t)d < off + len;
}

int kvmvm_vm_save_ram(kvmvm_vm *vm, int slot, int fd, uint64_t *written)
{
    long page = sysconf(_SC_PAGESIZE);
    uint64_t pm[CHUNK_PAGES];
    int rc = 0, pmfd;

    *written = 0;
    if (slot < 0 || slot >= vm->mem.nr)
        return -EINVAL;
    if (vm->started && !vm->paused)
        return -EBUSY;
    struct gmem_region *r = &vm->mem.r[slot];
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)r->size) < 0)
        return -errno;
    pmfd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (pmfd < 0)
        return -errno;
    uint64_t npages = r->size / page;
    for (uint64_t p0 = 0; p0 < npages && rc == 0; p0 += CHUNK_PAGES) {
        uint64_t n = npages - p0 < CHUNK_PAGES ? npages - p0 : CHUNK_PAGES;
        uint64_t va = (uint64_t)(uintptr_t)r->hva + p0 * page;
        ssize_t got = pread(pmfd, pm, n * 8, (off_t)(va / page * 8));
        if (got != (ssize_t)(n * 8)) {
            rc = got < 0 ? -errno : -EIO;
            break;
        }
        int file_data = r->fd >= 0 && file_has_data(r->fd, p0 * page, n * page);
        uint64_t run_start = 0, run_len = 0;
        for (uint64_t i = 0; i <= n && rc == 0; i++) {
            int keep = 0;
            if (i < n) {
                uint8_t *pg = r->hva + (p0 + i) * page;
                int cand = (pm[i] & (PM_PRESENT | PM_SWAPPED)) ||
                           (file_data && file_has_data(r->fd, (p0 + i) * page, page));
                keep = cand && !page_is_zero(pg, page);
            }
            if (keep) {
                if (!run_len)
                    run_start = p0 + i;
                run_len++;
            } else if (run_len) {
                rc = write_all_at(fd, r->hva + run_start * page, run_len * page,
                                  run_start * page);
                *written += run_len * page;
                run_len = 0;
            }
        }
    }
    close(pmfd);
    return rc;
}

int kvmvm_vm_add_ram_file(kvmvm_vm *vm, uint64_t gpa, uint64_t size, int fd)
{
    return vm_register_ram(vm, kvmvm_gmem_add_file(&vm->mem, gpa, size, fd));
}

/* Put fd (which holds this region's current contents) under the live region, MAP_PRIVATE:
   the region's own anonymous pages are freed and it shares the file's page cache. The
   address does not change, so the KVM memslot stays; KVM drops its old mappings through
   its MMU notifier. The VM must be paused. */
int kvmvm_vm_remap_ram_file(kvmvm_vm *vm, int slot, int fd)
{
    if (slot < 0 || slot >= vm->mem.nr)
        return -EINVAL;
    if (vm->started && !vm->paused)
        return -EBUSY;
    struct gmem_region *r = &vm->mem.r[slot];
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0)
        return -errno;
    if (mmap(r->hva, r->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE,
             dfd, 0) == MAP_FAILED) {
        int e = -errno;
        close(dfd);
        return e;
    }
    if (r->fd >= 0)
        close(r->fd);
    r->fd = dfd;
    return 0;
}
