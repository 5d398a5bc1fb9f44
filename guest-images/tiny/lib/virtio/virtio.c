/*
 * Minimal virtio-mmio driver: devices come from virtio_mmio.device=<size>@<base>:<irq>
 * tokens on the command line; queues are polled (no interrupts).
 */
#include "tiny.h"
#include "tiny/virtio.h"

static int parse_token(const char *val, struct vdev *d)
{
	/* <size>[K|M]@<base>:<irq>[:<id>] */
	char *end;
	const char *p = strchr(val, '@');

	if (!p)
		return -1;
	d->base = strtoul(p + 1, &end, 0);
	if (*end != ':')
		return -1;
	d->irq = (int)strtoul(end + 1, &end, 0);
	d->device_id = 0;
	d->features = 0;
	return 0;
}

int virtio_scan(const char *cmdline, struct vdev *out, int max)
{
	const char *p = cmdline;
	char tok[TINY_CMDLINE_TOKEN_MAX];
	const char *key = "virtio_mmio.device=";
	size_t klen = strlen(key);
	int n = 0;

	while (n < max && cmdline_next(&p, tok, sizeof(tok)) >= 0) {
		if (strncmp(tok, key, klen) || parse_token(tok + klen, &out[n]))
			continue;
		if (mmio_read32(out[n].base + VIRTIO_MMIO_MAGIC) != 0x74726976)
			continue;
		out[n].device_id = mmio_read32(out[n].base + VIRTIO_MMIO_DEVICE_ID);
		n++;
	}
	return n;
}

int virtio_find(const char *cmdline, uint32_t device_id, int index, struct vdev *out)
{
	struct vdev all[16];
	int n = virtio_scan(cmdline, all, 16);

	for (int i = 0; i < n; i++) {
		if (all[i].device_id != device_id)
			continue;
		if (index-- == 0) {
			*out = all[i];
			return 0;
		}
	}
	return -1;
}

uint32_t virtio_status(struct vdev *d)
{
	return vreg_read(d, VIRTIO_MMIO_STATUS);
}

int virtio_init(struct vdev *d, uint64_t want)
{
	uint64_t have;

	if (vreg_read(d, VIRTIO_MMIO_VERSION) != 2)
		return -1;
	vreg_write(d, VIRTIO_MMIO_STATUS, 0);
	vreg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_S_ACK);
	vreg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER);
	vreg_write(d, VIRTIO_MMIO_DEV_FEAT_SEL, 0);
	have = vreg_read(d, VIRTIO_MMIO_DEV_FEAT);
	vreg_write(d, VIRTIO_MMIO_DEV_FEAT_SEL, 1);
	have |= (uint64_t)vreg_read(d, VIRTIO_MMIO_DEV_FEAT) << 32;
	d->features = have & (want | (1ull << VIRTIO_F_VERSION_1));
	vreg_write(d, VIRTIO_MMIO_DRV_FEAT_SEL, 0);
	vreg_write(d, VIRTIO_MMIO_DRV_FEAT, (uint32_t)d->features);
	vreg_write(d, VIRTIO_MMIO_DRV_FEAT_SEL, 1);
	vreg_write(d, VIRTIO_MMIO_DRV_FEAT, (uint32_t)(d->features >> 32));
	vreg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER | VIRTIO_S_FEATURES_OK);
	if (!(virtio_status(d) & VIRTIO_S_FEATURES_OK))
		return -1;
	return 0;
}

static void write64(struct vdev *d, uint32_t off, uint64_t v)
{
	vreg_write(d, off, (uint32_t)v);
	vreg_write(d, off + 4, (uint32_t)(v >> 32));
}

int vq_setup(struct vdev *d, struct vq *q, int index, uint16_t size)
{
	uint32_t max;

	vreg_write(d, VIRTIO_MMIO_QUEUE_SEL, index);
	max = vreg_read(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
	if (max == 0)
		return -1;
	if (size > max)
		size = max;
	q->dev = d;
	q->index = index;
	q->size = size;
	q->desc = tiny_alloc(16u * size, 4096);
	q->avail = tiny_alloc(6 + 2u * size, 4096);
	q->used = tiny_alloc(6 + 8u * size, 4096);
	q->next_desc = q->last_used = 0;
	if (!q->desc || !q->avail || !q->used)
		return -1;
	vreg_write(d, VIRTIO_MMIO_QUEUE_NUM, size);
	write64(d, VIRTIO_MMIO_QUEUE_DESC, (uint64_t)q->desc);
	write64(d, VIRTIO_MMIO_QUEUE_AVAIL, (uint64_t)q->avail);
	write64(d, VIRTIO_MMIO_QUEUE_USED, (uint64_t)q->used);
	vreg_write(d, VIRTIO_MMIO_QUEUE_READY, 1);
	return 0;
}

void virtio_driver_ok(struct vdev *d)
{
	vreg_write(d, VIRTIO_MMIO_STATUS, VIRTIO_S_ACK | VIRTIO_S_DRIVER |
		   VIRTIO_S_FEATURES_OK | VIRTIO_S_DRIVER_OK);
}

void vq_publish(struct vq *q, uint16_t head)
{
	uint16_t idx = q->avail[1];

	q->avail[2 + idx % q->size] = head;
	mb();
	q->avail[1] = idx + 1;
	mb();
}

static void fill(struct vring_desc *t, const struct vbuf *b, int n, uint16_t first,
		 uint16_t size)
{
	for (int i = 0; i < n; i++) {
		uint16_t at = (first + i) % size;

		t[at].addr = b[i].addr;
		t[at].len = b[i].len;
		t[at].flags = (b[i].write ? VRING_F_WRITE : 0) |
			      (i + 1 < n ? VRING_F_NEXT : 0);
		t[at].next = (first + i + 1) % size;
	}
}

int vq_add(struct vq *q, const struct vbuf *b, int n)
{
	uint16_t head = q->next_desc % q->size;

	fill(q->desc, b, n, head, q->size);
	q->next_desc = (head + n) % q->size;
	vq_publish(q, head);
	return head;
}

int vq_add_indirect(struct vq *q, const struct vbuf *b, int n, struct vring_desc *table)
{
	uint16_t head = q->next_desc % q->size;

	fill(table, b, n, 0, (uint16_t)n);
	q->desc[head].addr = (uint64_t)table;
	q->desc[head].len = 16u * n;
	q->desc[head].flags = VRING_F_INDIRECT;
	q->desc[head].next = 0;
	q->next_desc = (head + 1) % q->size;
	vq_publish(q, head);
	return head;
}

void vq_add_at(struct vq *q, uint16_t at, const struct vbuf *b)
{
	at %= q->size;
	q->desc[at].addr = b->addr;
	q->desc[at].len = b->len;
	q->desc[at].flags = b->write ? VRING_F_WRITE : 0;
	q->desc[at].next = 0;
	vq_publish(q, at);
}

void vq_kick(struct vq *q)
{
	vreg_write(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

int vq_poll(struct vq *q, uint32_t *id, uint32_t *len)
{
	volatile uint16_t *uidx = (volatile uint16_t *)(q->used + 2);
	volatile uint32_t *e;

	if (*uidx == q->last_used)
		return 0;
	rmb();
	e = (volatile uint32_t *)(q->used + 4 + 8 * (q->last_used % q->size));
	if (id)
		*id = e[0];
	if (len)
		*len = e[1];
	q->last_used++;
	return 1;
}

uint64_t tiny_ms_to_tsc(unsigned int ms)
{
	return (uint64_t)ms * 3000000ull;	/* <= 3 GHz: never shorter than asked */
}

int vq_wait(struct vq *q, uint32_t *id, uint32_t *len, unsigned int max_ms)
{
	uint64_t end = rdtsc() + tiny_ms_to_tsc(max_ms);
	unsigned int n = 0;

	for (;;) {
		if (vq_poll(q, id, len))
			return 0;
		/* every so often: give up on a broken device or when time is out */
		if ((++n & 255) == 0) {
			if (virtio_status(q->dev) & VIRTIO_S_NEEDS_RESET)
				return -1;
			if (rdtsc() > end)
				return -1;
		}
		cpu_relax();
	}
}
