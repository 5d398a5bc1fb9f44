/*
 * The fake world the fuzz harnesses run kvmvm's real device code in: a VM structure with
 * real bounds-checked guest memory (guard pages included) and real buses, but no /dev/kvm,
 * and a synchronous stand-in for the epoll worker thread (the harness decides when the
 * device looks at its queues and backend fds). Everything under kvmvm/native/ except
 * virtio_worker.c is the production code, unchanged.
 */
#ifndef KVMVM_FUZZ_ENV_H
#define KVMVM_FUZZ_ENV_H

#include <stddef.h>
#include <stdint.h>

#include "virtio.h"

#define FUZZ_RAM      (256u * 1024)     /* guest RAM at GPA 0 */
#define FUZZ_MMIO     0xd0001000ull     /* the one virtio-mmio slot */

/* a fresh VM with FUZZ_RAM of guest memory; never NULL (aborts) */
struct kvmvm_vm *fuzz_vm_new(void);
/* destroy every device (their resets and backends included), then the VM */
void fuzz_vm_free(struct kvmvm_vm *vm);
uint8_t *fuzz_ram(struct kvmvm_vm *vm);

/* one round of the worker loop for d: queues that were kicked, then ready backend fds,
   then idle (what worker_main does after one epoll_wait) */
void fuzz_worker_round(struct virtio_dev *d);

/* MMIO register access through the real bus, as a vCPU would */
uint32_t fuzz_mmio_read(struct kvmvm_vm *vm, uint64_t off);
void fuzz_mmio_write(struct kvmvm_vm *vm, uint64_t off, uint32_t v);

/* a well-behaved driver's set-up: reset, features, queues at fixed GPAs, DRIVER_OK;
   returns the device, or NULL when it refused */
struct fuzz_queue { uint64_t desc, avail, used; uint16_t size; };
struct virtio_dev *fuzz_driver_setup(struct kvmvm_vm *vm, uint64_t features,
                                     const struct fuzz_queue *q, int nq);

/* a cursor over the fuzzer's bytes: reads past the end give zeros */
struct fuzz_in { const uint8_t *p; size_t n; };

/*
 * A hostile driver's script over a live device: the guest RAM image first, then up to
 * max_ops operations (kick a queue, run the worker, poke RAM, publish avail entries, write
 * a descriptor, raw register reads and writes, and backend(op) for the harness's own host
 * side actions).
 */
typedef void (*fuzz_backend_fn)(struct kvmvm_vm *vm, struct virtio_dev *d, struct fuzz_in *in);
void fuzz_drive(struct kvmvm_vm *vm, struct virtio_dev *d, const struct fuzz_queue *q, int nq,
                struct fuzz_in *in, int max_ops, fuzz_backend_fn backend);
uint8_t in_u8(struct fuzz_in *in);
uint16_t in_u16(struct fuzz_in *in);
uint32_t in_u32(struct fuzz_in *in);
uint64_t in_u64(struct fuzz_in *in);
size_t in_bytes(struct fuzz_in *in, void *out, size_t max);

#endif
