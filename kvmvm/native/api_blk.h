/*
 * virtio-blk backing-file changes (cffi-visible; no #include, no #ifdef). 0 / -errno.
 */
/* Point the drive at base to another file (opened as the drive was: read-only or not):
   requests already running finish on the old file, later ones use the new one; the
   capacity is re-read and the guest gets a configuration-change interrupt (as Firecracker's
   PATCH /drives). -ENODEV: no virtio-blk there. */
int kvmvm_vm_virtio_blk_swap(kvmvm_vm *vm, uint64_t base, const char *path);
