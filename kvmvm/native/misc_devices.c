/*
 * The small legacy devices that end or time a VM: QEMU-compatible debug-exit, the
 * boot-timer register a guest's init writes, ACPI PM, pvpanic (the i8042 is in i8042.c).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void zero_read(struct kvmvm_device *dev, uint64_t off, uint8_t *data, uint32_t len)
{
    (void)dev; (void)off;
    memset(data, 0, len);
}

static void plain_destroy(struct kvmvm_device *dev) { free(dev); }

static struct kvmvm_device *plain_new(struct kvmvm_vm *vm, const char *name,
                                      const struct device_ops *ops)
{
    struct kvmvm_device *dev = calloc(1, sizeof(*dev));
    if (dev) {
        dev->name = name;
        dev->ops = ops;
        dev->vm = vm;
    }
    return dev;
}

static uint64_t le_value(const uint8_t *data, uint32_t len)
{
    uint64_t v = 0;
    for (uint32_t i = 0; i < len && i < 8; i++)
        v |= (uint64_t)data[i] << (8 * i);
    return v;
}

/* debug-exit: a write of v ends the VM; the host turns v into status (v << 1) | 1 */
static void debug_exit_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    (void)off;
    vm_stop_simple(dev->vm, KVMVM_STOP_DEBUG_EXIT, le_value(data, len), -1);
}

static const struct device_ops debug_exit_ops = {
    .read = zero_read, .write = debug_exit_write, .destroy = plain_destroy,
};

struct kvmvm_device *debug_exit_new(struct kvmvm_vm *vm)
{
    return plain_new(vm, "debug-exit", &debug_exit_ops);
}

/* boot timer: the first write of 123 at offset 0 stamps "guest init reached" (Firecracker's
   convention, so the same guest init works under both) */
static void boot_timer_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    (void)len;
    if (off == 0 && data[0] == 123) {
        long long zero = 0;
        atomic_compare_exchange_strong(&dev->vm->t_boot_signal_ns, &zero, kvmvm_now_ns());
    }
}

static const struct device_ops boot_timer_ops = {
    .read = zero_read, .write = boot_timer_write, .destroy = plain_destroy,
};

struct kvmvm_device *boot_timer_new(struct kvmvm_vm *vm)
{
    return plain_new(vm, "boot-timer", &boot_timer_ops);
}

/* ACPI hardware-reduced sleep control (offset 0) and status (offset 1) registers; the FADT
   also names offset 0 as the reset register with value 1. S5 (SLP_TYP 5, SLP_EN) = poweroff. */
#define ACPI_RESET_VALUE 0x01
#define ACPI_SLP_EN      0x20

static void acpi_pm_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    (void)len;
    if (off != 0)
        return;
    if (data[0] == ACPI_RESET_VALUE)
        vm_stop_simple(dev->vm, KVMVM_STOP_RESET, 0, -1);
    else if ((data[0] & ACPI_SLP_EN) && ((data[0] >> 2) & 7) == 5)
        vm_stop_simple(dev->vm, KVMVM_STOP_POWEROFF, 0, -1);
}

static const struct device_ops acpi_pm_ops = {
    .read = zero_read, .write = acpi_pm_write, .destroy = plain_destroy,
};

struct kvmvm_device *acpi_pm_new(struct kvmvm_vm *vm)
{
    return plain_new(vm, "acpi-pm", &acpi_pm_ops);
}

/* pvpanic (QEMU's ISA device): reads report "panic events supported", a write of the
   PANICKED bit ends the VM */
static void pvpanic_read(struct kvmvm_device *dev, uint64_t off, uint8_t *data, uint32_t len)
{
    (void)dev; (void)off;
    memset(data, 0, len);
    data[0] = 0x01;     /* PVPANIC_PANICKED */
}

static void pvpanic_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    (void)off; (void)len;
    if (data[0] & 0x01)
        vm_stop_simple(dev->vm, KVMVM_STOP_PANIC, data[0], -1);
}

static const struct device_ops pvpanic_ops = {
    .read = pvpanic_read, .write = pvpanic_write, .destroy = plain_destroy,
};

struct kvmvm_device *pvpanic_new(struct kvmvm_vm *vm)
{
    return plain_new(vm, "pvpanic", &pvpanic_ops);
}
