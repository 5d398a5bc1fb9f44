/*
 * virtio-mmio devices (cffi-visible; no #include, no #ifdef). 0 / -errno like api.h.
 */
#define KVMVM_VIRTIO_NO_IOEVENTFD 1   /* QueueNotify through the MMIO exit path */
#define KVMVM_VIRTIO_NO_IRQFD     2   /* interrupts through KVM_IRQ_LINE */

#define KVMVM_VIRTIO_ID_NET   1
#define KVMVM_VIRTIO_ID_BLK   2
#define KVMVM_VIRTIO_ID_RNG   4
#define KVMVM_VIRTIO_ID_VSOCK 19

struct kvmvm_virtio_info {
    uint32_t device_id;
    uint32_t status;          /* the virtio status register (64 = DEVICE_NEEDS_RESET) */
    uint32_t isr;
    uint32_t ioeventfd;       /* 1 when notifications bypass the exit path */
    uint32_t irqfd;           /* 1 when interrupts go through KVM_IRQFD */
    uint32_t broken;
    uint64_t driver_features;
    uint64_t kicks;
    uint64_t requests;
    uint64_t interrupts;
    uint64_t bytes_in;        /* host -> guest */
    uint64_t bytes_out;       /* guest -> host */
    char broken_why[96];
};

int kvmvm_vm_add_virtio_rng(kvmvm_vm *vm, uint64_t base, int irq, int flags);
/* mode: KVMVM_BLK_* bits. A direct drive whose file system cannot do O_DIRECT: -EOPNOTSUPP */
#define KVMVM_BLK_RO     1
#define KVMVM_BLK_DIRECT 2
int kvmvm_vm_add_virtio_blk(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                            const char *path, int mode, const char *serial);
int kvmvm_vm_add_virtio_net(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                            const char *tap, const uint8_t *mac);
/* virtio-net over a connected stream socket (passt --fd): the device dups fd */
int kvmvm_vm_add_virtio_net_stream(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                                   int fd, const uint8_t *mac);
/* the device completes inbound handshakes that passt (2023 snapshots) leaves without their
 * final ACK (net_handshake.c); call before the VM runs. -ENODEV: no virtio-net at base */
int kvmvm_vm_virtio_net_ack_handshakes(kvmvm_vm *vm, uint64_t base);
int kvmvm_vm_add_virtio_vsock(kvmvm_vm *vm, uint64_t base, int irq, int flags,
                              uint64_t cid, const char *uds_path);
int kvmvm_vm_virtio_info(kvmvm_vm *vm, uint64_t base, struct kvmvm_virtio_info *out);

/* a stand-alone virtqueue over a stand-alone guest memory (unit tests drive it) */
typedef struct kvmvm_virtq kvmvm_virtq;
struct kvmvm_virtq_seg {
    uint64_t addr;
    uint32_t len;
    uint32_t write;
};
kvmvm_virtq *kvmvm_virtq_new(kvmvm_gmem *gm, uint16_t size, uint64_t desc, uint64_t avail,
                             uint64_t used, int *err);
void kvmvm_virtq_free(kvmvm_virtq *q);
/* number of segments (> 0) and *head; 0 when empty; -errno for a malformed chain */
int kvmvm_virtq_pop(kvmvm_virtq *q, struct kvmvm_virtq_seg *segs, int max, uint32_t *head);
int kvmvm_virtq_push(kvmvm_virtq *q, uint32_t head, uint32_t len);
