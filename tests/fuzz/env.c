/* The fuzz harnesses' fake world: see env.h. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "env.h"

/* --- the Python slow path is never taken here --- */
int kvmvm_py_io(uint64_t handle, int is_write, uint64_t offset, uint8_t *data, uint32_t len)
{
    (void)handle; (void)is_write; (void)offset; (void)data; (void)len;
    return 0;
}

/* --- the synchronous worker: the same interface as virtio_worker.c, no thread --- */
#define MAX_WATCH 512

static struct watch {
    struct virtio_dev *d;
    int fd;
    uint32_t events;
    uint64_t tag;
} watches[MAX_WATCH];
static int nwatch;

static struct watch *find(struct virtio_dev *d, int fd)
{
    for (int i = 0; i < nwatch; i++)
        if (watches[i].d == d && watches[i].fd == fd)
            return &watches[i];
    return NULL;
}

int virtio_worker_watch(struct virtio_dev *d, int fd, uint32_t events, uint64_t tag)
{
    if (find(d, fd))
        return -EEXIST;
    if (nwatch == MAX_WATCH)
        return -ENOSPC;
    watches[nwatch++] = (struct watch){ d, fd, events, tag };
    return 0;
}

int virtio_worker_modify(struct virtio_dev *d, int fd, uint32_t events, uint64_t tag)
{
    struct watch *w = find(d, fd);
    if (!w)
        return -ENOENT;
    w->events = events;
    w->tag = tag;
    return 0;
}

void virtio_worker_unwatch(struct virtio_dev *d, int fd)
{
    struct watch *w = find(d, fd);
    if (w)
        *w = watches[--nwatch];
}

int virtio_worker_start(struct virtio_dev *d)
{
    if (d->running) {   /* the real one would leak its epoll fd and a second worker thread */
        fprintf(stderr, "fuzz env: virtio_worker_start on a running device\n");
        abort();
    }
    int rc = d->ops->activate ? d->ops->activate(d) : 0;
    if (rc < 0) {
        for (int i = nwatch - 1; i >= 0; i--)
            if (watches[i].d == d)
                watches[i] = watches[--nwatch];
        return rc;
    }
    d->running = 1;
    /* kicks may have come before DRIVER_OK: look at every queue once, like worker_main */
    for (int q = 0; q < d->ops->nqueues && !virtio_broken(d); q++)
        if (d->q[q].size)
            d->ops->queue_notify(d, q);
    return 0;
}

void virtio_worker_stop(struct virtio_dev *d)
{
    if (!d->running)
        return;
    for (int i = nwatch - 1; i >= 0; i--)
        if (watches[i].d == d)
            watches[i] = watches[--nwatch];
    d->running = 0;
}

/* pause/snapshot (virtio_state.c): the synchronous stand-in has no thread to park */
void virtio_worker_park(struct virtio_dev *d, int park)
{
    (void)d;
    (void)park;
}

void fuzz_worker_round(struct virtio_dev *d)
{
    if (!d->running || virtio_broken(d))
        return;
    pthread_mutex_lock(&d->dp_lock);
    for (int q = 0; q < d->ops->nqueues && !virtio_broken(d); q++) {
        uint64_t cnt;
        if (read(d->kick_fd[q], &cnt, sizeof(cnt)) == sizeof(cnt) && d->q[q].size)
            d->ops->queue_notify(d, q);
    }
    /* level-triggered, like epoll: every watched fd that is ready now */
    struct pollfd pf[MAX_WATCH];
    struct watch snap[MAX_WATCH];
    int n = 0;
    for (int i = 0; i < nwatch; i++) {
        if (watches[i].d != d || !watches[i].events)
            continue;
        snap[n] = watches[i];
        pf[n].fd = watches[i].fd;
        pf[n].events = (short)watches[i].events;
        pf[n].revents = 0;
        n++;
    }
    if (n && poll(pf, n, 0) > 0) {
        for (int i = 0; i < n && !virtio_broken(d); i++)
            if (pf[i].revents && d->ops->fd_event)
                d->ops->fd_event(d, snap[i].tag, (uint32_t)pf[i].revents);
    }
    if (d->ops->idle)
        d->ops->idle(d);
    pthread_mutex_unlock(&d->dp_lock);
}

/* --- the VM --- */

static void kick_handler(int sig) { (void)sig; }

struct kvmvm_vm *fuzz_vm_new(void)
{
    static int once;
    if (!once) {    /* as kvmvm_vm_new does: the kick that interrupts a stuck write() */
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = kick_handler;
        sigaction(vm_kick_signal(), &sa, NULL);
        once = 1;
    }
    struct kvmvm_vm *vm = calloc(1, sizeof(*vm));
    if (!vm)
        abort();
    vm->kvm_fd = vm->vm_fd = -1;
    bus_init_embedded(&vm->pio);
    bus_init_embedded(&vm->mmio);
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    /* one guest RAM for the whole run, zeroed for each VM: a fresh mapping per input spent
       half the run in the kernel (page faults, munmap) */
    static struct gmem_region ram;
    if (!ram.map) {
        if (kvmvm_gmem_add(&vm->mem, 0, FUZZ_RAM) < 0)
            abort();
        ram = vm->mem.r[0];
    } else {
        memset(ram.hva, 0, FUZZ_RAM);
        vm->mem.r[0] = ram;
        vm->mem.nr = 1;
    }
    return vm;
}

uint8_t *fuzz_ram(struct kvmvm_vm *vm)
{
    return vm->mem.r[0].hva;
}

void fuzz_vm_free(struct kvmvm_vm *vm)
{
    bus_destroy_devices(&vm->pio);
    bus_destroy_devices(&vm->mmio);
    for (int i = 1; i < vm->mem.nr; i++)   /* region 0 is the run's RAM (fuzz_vm_new) */
        munmap(vm->mem.r[i].map, vm->mem.r[i].map_len);
    pthread_rwlock_destroy(&vm->pio.lock);
    pthread_rwlock_destroy(&vm->mmio.lock);
    pthread_mutex_destroy(&vm->lock);
    pthread_cond_destroy(&vm->cond);
    free(vm);
}

uint32_t fuzz_mmio_read(struct kvmvm_vm *vm, uint64_t off)
{
    uint32_t v = 0;
    bus_dispatch(&vm->mmio, FUZZ_MMIO + off, 0, (uint8_t *)&v, 4);
    return v;
}

void fuzz_mmio_write(struct kvmvm_vm *vm, uint64_t off, uint32_t v)
{
    bus_dispatch(&vm->mmio, FUZZ_MMIO + off, 1, (uint8_t *)&v, 4);
}

struct virtio_dev *fuzz_driver_setup(struct kvmvm_vm *vm, uint64_t features,
                                     const struct fuzz_queue *q, int nq)
{
    fuzz_mmio_write(vm, 0x070, 0);
    fuzz_mmio_write(vm, 0x070, 1 | 2);
    features |= 1ull << VIRTIO_F_VERSION_1;
    fuzz_mmio_write(vm, 0x024, 0);
    fuzz_mmio_write(vm, 0x020, (uint32_t)features);
    fuzz_mmio_write(vm, 0x024, 1);
    fuzz_mmio_write(vm, 0x020, (uint32_t)(features >> 32));
    fuzz_mmio_write(vm, 0x070, 1 | 2 | 8);
    for (int i = 0; i < nq; i++) {
        fuzz_mmio_write(vm, 0x030, (uint32_t)i);
        fuzz_mmio_write(vm, 0x038, q[i].size);
        fuzz_mmio_write(vm, 0x080, (uint32_t)q[i].desc);
        fuzz_mmio_write(vm, 0x084, (uint32_t)(q[i].desc >> 32));
        fuzz_mmio_write(vm, 0x090, (uint32_t)q[i].avail);
        fuzz_mmio_write(vm, 0x094, (uint32_t)(q[i].avail >> 32));
        fuzz_mmio_write(vm, 0x0a0, (uint32_t)q[i].used);
        fuzz_mmio_write(vm, 0x0a4, (uint32_t)(q[i].used >> 32));
        fuzz_mmio_write(vm, 0x044, 1);
    }
    fuzz_mmio_write(vm, 0x070, 1 | 2 | 8 | 4);
    struct virtio_dev *d = virtio_find(vm, FUZZ_MMIO);
    if (!d || !d->running)
        return NULL;
    return d;
}

/* --- a hostile driver --- */

void fuzz_drive(struct kvmvm_vm *vm, struct virtio_dev *d, const struct fuzz_queue *q, int nq,
                struct fuzz_in *in, int max_ops, fuzz_backend_fn backend)
{
    uint8_t *ram = fuzz_ram(vm);
    uint16_t image = in_u16(in);
    /* the guest's rings and buffers live from 0x1000 on */
    in_bytes(in, ram + 0x1000, image);     // at most 64 KiB: inside RAM
    for (int op = 0; op < max_ops && in->n > 0; op++) {
        uint8_t k = in_u8(in);
        int qi = nq ? (k >> 4) % nq : 0;
        switch (k & 15) {
        case 0: case 1:
            fuzz_mmio_write(vm, 0x050, (uint32_t)qi);
            fuzz_worker_round(d);
            break;
        case 2:
            fuzz_worker_round(d);
            break;
        case 3: {       /* poke two bytes anywhere in RAM */
            uint32_t off = in_u32(in) % (FUZZ_RAM - 1);
            uint16_t v = in_u16(in);
            memcpy(ram + off, &v, 2);
            break;
        }
        case 4: {       /* publish n descriptor heads on queue qi */
            if (!nq)
                break;
            volatile uint16_t *avail = (volatile uint16_t *)(ram + q[qi].avail);
            int n = in_u8(in) % 9;
            for (int i = 0; i < n; i++) {
                uint16_t idx = avail[1];
                avail[2 + idx % q[qi].size] = in_u16(in);
                avail[1] = idx + 1;
            }
            break;
        }
        case 5: {       /* one descriptor of queue qi */
            if (!nq)
                break;
            struct virtq_desc dsc;
            uint16_t at = in_u16(in) % q[qi].size;
            dsc.addr = in_u32(in);
            dsc.len = in_u32(in);
            dsc.flags = in_u16(in);
            dsc.next = in_u16(in);
            memcpy(ram + q[qi].desc + 16u * at, &dsc, 16);
            break;
        }
        case 6: {       /* any register write: reset, queue changes, acks... */
            uint32_t off = (in_u8(in) * 4u) & 0x1fc;
            fuzz_mmio_write(vm, off, in_u32(in));
            break;
        }
        case 7:
            (void)fuzz_mmio_read(vm, (in_u8(in) * 4u) & 0x1fc);
            break;
        case 8:
            if (backend)
                backend(vm, d, in);
            break;
        default: {      /* a plausible buffer: desc at, len, flags from the input */
            if (!nq)
                break;
            struct virtq_desc dsc = { 0 };
            uint16_t at = in_u8(in) % q[qi].size;
            dsc.addr = 0x10000 + in_u16(in);
            dsc.len = in_u16(in) & 0x1fff;
            dsc.flags = in_u8(in) & 7;
            dsc.next = in_u8(in) % q[qi].size;
            memcpy(ram + q[qi].desc + 16u * at, &dsc, 16);
            break;
        }
        }
    }
    fuzz_worker_round(d);
}

/* --- input cursor --- */

size_t in_bytes(struct fuzz_in *in, void *out, size_t max)
{
    size_t n = in->n < max ? in->n : max;
    memcpy(out, in->p, n);
    memset((uint8_t *)out + n, 0, max - n);
    in->p += n;
    in->n -= n;
    return n;
}

uint8_t in_u8(struct fuzz_in *in) { uint8_t v; in_bytes(in, &v, 1); return v; }
uint16_t in_u16(struct fuzz_in *in) { uint16_t v; in_bytes(in, &v, 2); return v; }
uint32_t in_u32(struct fuzz_in *in) { uint32_t v; in_bytes(in, &v, 4); return v; }
uint64_t in_u64(struct fuzz_in *in) { uint64_t v; in_bytes(in, &v, 8); return v; }
