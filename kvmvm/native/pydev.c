/*
 * The slow path: a bus range whose device is written in Python. The vCPU thread calls
 * the cffi callback kvmvm_py_io, which takes the GIL; used for rare, slow devices only.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void pydev_read(struct kvmvm_device *dev, uint64_t off, uint8_t *data, uint32_t len)
{
    memset(data, 0, len);
    if (dev->vm)
        atomic_fetch_add_explicit(&dev->vm->py_calls, 1, memory_order_relaxed);
    kvmvm_py_io((uint64_t)(uintptr_t)dev->priv, 0, off, data, len);
}

static void pydev_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    uint8_t buf[8];
    uint32_t n = len < sizeof(buf) ? len : sizeof(buf);
    memcpy(buf, data, n);
    if (dev->vm)
        atomic_fetch_add_explicit(&dev->vm->py_calls, 1, memory_order_relaxed);
    kvmvm_py_io((uint64_t)(uintptr_t)dev->priv, 1, off, buf, n);
}

static void pydev_destroy(struct kvmvm_device *dev) { free(dev); }

static const struct device_ops pydev_ops = {
    .read = pydev_read, .write = pydev_write, .destroy = pydev_destroy,
};

struct kvmvm_device *pydev_new(uint64_t handle)
{
    struct kvmvm_device *dev = calloc(1, sizeof(*dev));
    if (dev) {
        dev->name = "python";
        dev->ops = &pydev_ops;
        dev->priv = (void *)(uintptr_t)handle;
    }
    return dev;
}
