/*
 * Bus: one type, used twice per VM (port I/O and MMIO). Ranges are kept sorted and
 * never overlap; devices see offsets from their base, never absolute addresses.
 * vCPUs dispatch under a read lock; insert/remove take the write lock, so a range is
 * never freed while another vCPU is inside its device.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void bus_init(struct kvmvm_bus *bus)
{
    memset(bus, 0, sizeof(*bus));
    pthread_rwlock_init(&bus->lock, NULL);
}

kvmvm_bus *kvmvm_bus_new(void)
{
    struct kvmvm_bus *bus = malloc(sizeof(*bus));
    if (bus)
        bus_init(bus);
    return bus;
}

void bus_destroy_devices(struct kvmvm_bus *bus)
{
    pthread_rwlock_wrlock(&bus->lock);
    for (int i = 0; i < bus->nr; i++) {
        struct kvmvm_device *dev = bus->ranges[i].dev;
        if (dev && dev->ops->destroy)
            dev->ops->destroy(dev);
    }
    free(bus->ranges);
    bus->ranges = NULL;
    bus->nr = bus->cap = 0;
    pthread_rwlock_unlock(&bus->lock);
}

void kvmvm_bus_free(kvmvm_bus *bus)
{
    if (!bus)
        return;
    bus_destroy_devices(bus);
    pthread_rwlock_destroy(&bus->lock);
    free(bus);
}

/* index of the range containing addr, or -1 (binary search; caller holds the lock) */
static int bus_find(struct kvmvm_bus *bus, uint64_t addr)
{
    int lo = 0, hi = bus->nr - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        struct bus_range *r = &bus->ranges[mid];
        if (addr < r->base)
            hi = mid - 1;
        else if (addr - r->base >= r->len)
            lo = mid + 1;
        else
            return mid;
    }
    return -1;
}

int bus_insert(struct kvmvm_bus *bus, uint64_t base, uint64_t len, struct kvmvm_device *dev)
{
    if (len == 0)
        return -EINVAL;
    if (base + (len - 1) < base)
        return -EOVERFLOW;  /* wraps past the top of the address space */
    int rc = 0;
    pthread_rwlock_wrlock(&bus->lock);
    int pos = 0;
    while (pos < bus->nr && bus->ranges[pos].base < base)
        pos++;
    /* overlap with the neighbour below or above? (last = base + len - 1, no overflow) */
    uint64_t last = base + (len - 1);
    if (pos > 0) {
        struct bus_range *p = &bus->ranges[pos - 1];
        if (p->base + (p->len - 1) >= base) { rc = -EEXIST; goto out; }
    }
    if (pos < bus->nr && bus->ranges[pos].base <= last) { rc = -EEXIST; goto out; }
    if (bus->nr == bus->cap) {
        int cap = bus->cap ? bus->cap * 2 : 8;
        struct bus_range *n = realloc(bus->ranges, cap * sizeof(*n));
        if (!n) { rc = -ENOMEM; goto out; }
        bus->ranges = n;
        bus->cap = cap;
    }
    memmove(&bus->ranges[pos + 1], &bus->ranges[pos], (bus->nr - pos) * sizeof(*bus->ranges));
    bus->ranges[pos] = (struct bus_range){ .base = base, .len = len, .dev = dev };
    bus->nr++;
out:
    pthread_rwlock_unlock(&bus->lock);
    return rc;
}

int kvmvm_bus_remove(kvmvm_bus *bus, uint64_t base)
{
    struct kvmvm_device *dev = NULL;
    pthread_rwlock_wrlock(&bus->lock);
    int i = bus_find(bus, base);
    if (i >= 0 && bus->ranges[i].base == base) {
        dev = bus->ranges[i].dev;
        memmove(&bus->ranges[i], &bus->ranges[i + 1], (bus->nr - i - 1) * sizeof(*bus->ranges));
        bus->nr--;
    }
    pthread_rwlock_unlock(&bus->lock);
    if (!dev)
        return -ENOENT;
    if (dev->ops->destroy)
        dev->ops->destroy(dev);
    return 0;
}

int bus_dispatch(struct kvmvm_bus *bus, uint64_t addr, int is_write, uint8_t *data, uint32_t len)
{
    int handled = 0;
    pthread_rwlock_rdlock(&bus->lock);
    int i = bus_find(bus, addr);
    if (i >= 0) {
        struct bus_range *r = &bus->ranges[i];
        uint64_t off = addr - r->base;
        /* an access straddling the end of the range is not the device's */
        if (len <= r->len - off) {
            if (is_write)
                r->dev->ops->write(r->dev, off, data, len);
            else
                r->dev->ops->read(r->dev, off, data, len);
            handled = 1;
        }
    }
    pthread_rwlock_unlock(&bus->lock);
    if (!handled && !is_write)
        memset(data, 0, len);   /* unmapped reads return zeros */
    return handled;
}

int kvmvm_bus_dispatch(kvmvm_bus *bus, uint64_t addr, int is_write, uint8_t *data, uint32_t len)
{
    return bus_dispatch(bus, addr, is_write, data, len);
}

int kvmvm_bus_insert_py(kvmvm_bus *bus, uint64_t base, uint64_t len, uint64_t handle)
{
    struct kvmvm_device *dev = pydev_new(handle);
    if (!dev)
        return -ENOMEM;
    int rc = bus_insert(bus, base, len, dev);
    if (rc < 0)
        dev->ops->destroy(dev);
    return rc;
}

int kvmvm_bus_count(kvmvm_bus *bus)
{
    pthread_rwlock_rdlock(&bus->lock);
    int n = bus->nr;
    pthread_rwlock_unlock(&bus->lock);
    return n;
}

/* used by vm.c to embed the two buses */
void bus_init_embedded(struct kvmvm_bus *bus) { bus_init(bus); }
