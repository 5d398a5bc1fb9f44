/*
 * The i8042 keyboard controller, as much as a guest needs: the reset line (0xfe to port
 * 0x64), the controller commands Linux's i8042 driver probes with, and a small output
 * buffer the host fills with key scancodes (Ctrl+Alt+Del, as Firecracker's API sends).
 * Ports 0x60 (data) and 0x64 (status/command) are offsets 0 and 4 of one device.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define I8042_IRQ       1
#define BUF_SIZE        16

#define SB_OUT_FULL     0x01
#define SB_SYS_FLAG     0x04
#define SB_LAST_CMD     0x08
#define SB_KBD_ENABLED  0x10

#define CB_KBD_INT      0x01
#define CB_POST_OK      0x04

#define CMD_READ_CTR    0x20
#define CMD_WRITE_CTR   0x60
#define CMD_SELF_TEST   0xaa
#define CMD_KBD_TEST    0xab
#define CMD_KBD_DISABLE 0xad
#define CMD_KBD_ENABLE  0xae
#define CMD_READ_INPUT  0xc0
#define CMD_READ_OUTP   0xd0
#define CMD_WRITE_OUTP  0xd1
#define CMD_RESET_CPU   0xfe

struct i8042 {
    pthread_mutex_t lock;
    uint8_t buf[BUF_SIZE];
    unsigned int head, len;
    uint8_t status, control, outp, cmd;
};

static int push(struct i8042 *k, uint8_t b)
{
    if (k->len == BUF_SIZE)
        return -ENOSPC;
    k->buf[(k->head + k->len++) % BUF_SIZE] = b;
    return 0;
}

static void pulse_irq(struct kvmvm_device *dev)
{
    if (dev->vm) {
        kvmvm_vm_irq_line(dev->vm, I8042_IRQ, 1);
        kvmvm_vm_irq_line(dev->vm, I8042_IRQ, 0);
    }
}

static void i8042_read(struct kvmvm_device *dev, uint64_t off, uint8_t *data, uint32_t len)
{
    struct i8042 *k = dev->priv;
    int more = 0;

    memset(data, 0, len);
    pthread_mutex_lock(&k->lock);
    if (off == 4) {
        data[0] = k->status | (k->len ? SB_OUT_FULL : 0);
    } else if (off == 0 && k->len) {
        data[0] = k->buf[k->head];
        k->head = (k->head + 1) % BUF_SIZE;
        k->len--;
        more = k->len && (k->control & CB_KBD_INT);
    }
    pthread_mutex_unlock(&k->lock);
    if (more)
        pulse_irq(dev);
}

static void i8042_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    struct i8042 *k = dev->priv;
    uint8_t v = data[0];
    (void)len;

    if (off == 4 && v == CMD_RESET_CPU) {
        vm_stop_simple(dev->vm, KVMVM_STOP_RESET, 0, -1);
        return;
    }
    pthread_mutex_lock(&k->lock);
    if (off == 4) {
        k->status |= SB_LAST_CMD;
        k->cmd = 0;
        switch (v) {
        case CMD_READ_CTR:   push(k, k->control); break;
        case CMD_WRITE_CTR:
        case CMD_WRITE_OUTP: k->cmd = v; break;
        case CMD_SELF_TEST:  push(k, 0x55); break;
        case CMD_KBD_TEST:   push(k, 0x00); break;
        case CMD_KBD_DISABLE: k->status &= ~SB_KBD_ENABLED; break;
        case CMD_KBD_ENABLE:  k->status |= SB_KBD_ENABLED; break;
        case CMD_READ_INPUT: push(k, 0x00); break;
        case CMD_READ_OUTP:  push(k, k->outp); break;
        default: break;
        }
    } else if (off == 0) {
        k->status &= ~SB_LAST_CMD;
        if (k->cmd == CMD_WRITE_CTR)
            k->control = v;
        else if (k->cmd == CMD_WRITE_OUTP)
            k->outp = v;
        else
            push(k, 0xfa);          /* a command to the keyboard itself: ACK */
        k->cmd = 0;
    }
    pthread_mutex_unlock(&k->lock);
}

static void i8042_destroy(struct kvmvm_device *dev)
{
    struct i8042 *k = dev->priv;
    pthread_mutex_destroy(&k->lock);
    free(k);
    free(dev);
}

static const struct device_ops i8042_ops = {
    .read = i8042_read, .write = i8042_write, .destroy = i8042_destroy,
};

struct kvmvm_device *i8042_new(struct kvmvm_vm *vm)
{
    struct kvmvm_device *dev = calloc(1, sizeof(*dev));
    struct i8042 *k = calloc(1, sizeof(*k));
    if (!dev || !k) {
        free(dev);
        free(k);
        return NULL;
    }
    pthread_mutex_init(&k->lock, NULL);
    k->status = SB_SYS_FLAG | SB_KBD_ENABLED;
    k->control = CB_POST_OK | CB_KBD_INT;
    dev->name = "i8042";
    dev->ops = &i8042_ops;
    dev->vm = vm;
    dev->priv = k;
    return dev;
}

/* one key press and release in scancode set 2 (0xe0-prefixed keys have a high byte) */
static int push_key(struct i8042 *k, uint16_t key)
{
    int rc = 0;
    if (key >> 8)
        rc |= push(k, key >> 8);
    rc |= push(k, key & 0xff);
    if (key >> 8)
        rc |= push(k, 0xe0);
    rc |= push(k, 0xf0);
    rc |= push(k, key & 0xff);
    return rc;
}

int kvmvm_vm_i8042_ctrl_alt_del(kvmvm_vm *vm)
{
    struct kvmvm_device *dev = NULL;

    pthread_rwlock_rdlock(&vm->pio.lock);
    for (int i = 0; i < vm->pio.nr; i++)
        if (vm->pio.ranges[i].dev->ops == &i8042_ops)
            dev = vm->pio.ranges[i].dev;
    pthread_rwlock_unlock(&vm->pio.lock);
    if (!dev)
        return -ENODEV;
    struct i8042 *k = dev->priv;
    pthread_mutex_lock(&k->lock);
    int rc = 0;
    if (BUF_SIZE - k->len < 14)     /* the three keys need 14 bytes: all or nothing */
        rc = -ENOSPC;
    else {
        push_key(k, 0x0014);        /* Ctrl */
        push_key(k, 0x0011);        /* Alt */
        push_key(k, 0xe071);        /* Del */
    }
    int irq = rc == 0 && (k->control & CB_KBD_INT);
    pthread_mutex_unlock(&k->lock);
    if (irq)
        pulse_irq(dev);
    return rc;
}
