/*
 * virtio-blk backing-file changes, and rate limits for virtio-blk and virtio-net (cffi-visible; no #include, no #ifdef).
 * 0 / -errno.
 */
/* one token bucket as Firecracker's API gives it; size or refill_time_ms 0: no limit */
struct kvmvm_token_bucket {
    uint64_t size;
    uint64_t one_time_burst;
    uint64_t refill_time_ms;
};

/* Point the drive at base to another file (opened as the drive was: read-only or not):
   requests already running finish on the old file, later ones use the new one; the
   capacity is re-read and the guest gets a configuration-change interrupt (as Firecracker's
   PATCH /drives). -ENODEV: no virtio-blk there. */
int kvmvm_vm_virtio_blk_swap(kvmvm_vm *vm, uint64_t base, const char *path);

/* Set (or, with NULL / zero buckets, clear) the drive's bandwidth (bytes) and ops buckets,
   before or while the guest runs. */
int kvmvm_vm_virtio_blk_rate_limit(kvmvm_vm *vm, uint64_t base,
                                   const struct kvmvm_token_bucket *bandwidth,
                                   const struct kvmvm_token_bucket *ops);

/* The same for a network interface's receive (rx 1) or transmit (rx 0) direction. */
int kvmvm_vm_virtio_net_rate_limit(kvmvm_vm *vm, uint64_t base, int rx,
                                   const struct kvmvm_token_bucket *bandwidth,
                                   const struct kvmvm_token_bucket *ops);
