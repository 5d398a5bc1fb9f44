/*
 * Wiring a virtio device's eventfds into KVM: KVM_IOEVENTFD on QueueNotify (one fd per
 * queue, matched on the queue index) so a kick never leaves the kernel, and KVM_IRQFD on
 * the device's GSI so the worker raises its interrupt without an ioctl per request.
 */
#include <errno.h>
#include <sys/ioctl.h>

#include "virtio.h"

#define QUEUE_NOTIFY_OFFSET 0x050

int virtio_kvm_ioeventfd(struct virtio_dev *d, int q, int assign)
{
    struct kvm_ioeventfd io = {
        .datamatch = (uint64_t)q,
        .addr = d->base + QUEUE_NOTIFY_OFFSET,
        .len = 4,
        .fd = d->kick_fd[q],
        .flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
    };
    if (!d->vm || d->kick_fd[q] < 0)
        return -EINVAL;
    return ioctl(d->vm->vm_fd, KVM_IOEVENTFD, &io) < 0 ? -errno : 0;
}

int virtio_kvm_irqfd(struct virtio_dev *d, int assign)
{
    struct kvm_irqfd irqfd = {
        .fd = (uint32_t)d->irq_fd,
        .gsi = (uint32_t)d->irq,
        .flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN,
    };
    if (!d->vm || d->irq_fd < 0)
        return -EINVAL;
    return ioctl(d->vm->vm_fd, KVM_IRQFD, &irqfd) < 0 ? -errno : 0;
}
