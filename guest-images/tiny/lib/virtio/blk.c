/* virtio-blk requests for tiny guests: header, data segments, status byte. */
#include "tiny.h"
#include "tiny/vblk.h"

int vblk_open(struct vblk *b, const char *cmdline, int index)
{
	if (virtio_find(cmdline, VIRTIO_ID_BLK, index, &b->dev))
		return -1;
	if (virtio_init(&b->dev, (1ull << VBLK_F_RO) | (1ull << VBLK_F_FLUSH) |
				 (1ull << VIRTIO_F_INDIRECT_DESC)))
		return -1;
	if (vq_setup(&b->dev, &b->q, 0, 128))
		return -1;
	b->capacity = mmio_read32(b->dev.base + VIRTIO_MMIO_CONFIG) |
		      ((uint64_t)mmio_read32(b->dev.base + VIRTIO_MMIO_CONFIG + 4) << 32);
	b->ro = !!(b->dev.features & (1ull << VBLK_F_RO));
	b->hdr = tiny_alloc(sizeof(*b->hdr), 16);
	b->status = tiny_alloc(1, 1);
	b->itable = tiny_alloc(16 * 64, 16);
	if (!b->hdr || !b->status || !b->itable)
		return -1;
	virtio_driver_ok(&b->dev);
	return 0;
}

int vblk_req(struct vblk *b, uint32_t type, uint64_t sector, void *buf, uint32_t len,
	     int nseg, int indirect)
{
	struct vbuf v[64];
	uint32_t id, ulen;
	int n = 0, write = type != VBLK_T_OUT;

	if (nseg < 1)
		nseg = 1;
	if (nseg > 60)
		nseg = 60;
	b->hdr->type = type;
	b->hdr->reserved = 0;
	b->hdr->sector = sector;
	*b->status = 0xff;
	v[n++] = (struct vbuf){ (uint64_t)b->hdr, sizeof(*b->hdr), 0 };
	if (len) {
		uint32_t per = len / nseg, off = 0;

		for (int i = 0; i < nseg; i++) {
			uint32_t l = i + 1 == nseg ? len - off : per;

			v[n++] = (struct vbuf){ (uint64_t)buf + off, l, write };
			off += l;
		}
	}
	v[n++] = (struct vbuf){ (uint64_t)b->status, 1, 1 };
	if (indirect)
		vq_add_indirect(&b->q, v, n, b->itable);
	else
		vq_add(&b->q, v, n);
	vq_kick(&b->q);
	if (vq_wait(&b->q, &id, &ulen, 5000))
		return -1;
	return *b->status;
}
