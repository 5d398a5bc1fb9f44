#include <errno.h>
#include "virtio.h"
int kvmvm_vm_add_virtio_vsock(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                              uint64_t cid, const char *uds_path)
{
    return -ENOSYS;
}
