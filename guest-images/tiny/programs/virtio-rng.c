/*
 * virtio-rng: read 64 random bytes twice (once direct, once indirect); print them.
 *   rng: <128 hex digits>
 *   virtio-rng: ok
 */
#include "tiny.h"
#include "tiny/virtio.h"

int main(const struct tiny_boot_info *bi)
{
	static struct vdev d;
	static struct vq q;
	uint8_t *buf = tiny_alloc(128, 64);
	struct vring_desc *table = tiny_alloc(64, 16);
	uint32_t id, len;
	int nonzero = 0;

	if (virtio_find(bi->cmdline, VIRTIO_ID_RNG, 0, &d) || virtio_init(&d, 1ull << VIRTIO_F_INDIRECT_DESC) ||
	    vq_setup(&d, &q, 0, 16)) {
		printf("FAIL no usable virtio-rng device\n");
		return 1;
	}
	virtio_driver_ok(&d);
	struct vbuf one = { (uint64_t)buf, 64, 1 };
	struct vbuf two[2] = { { (uint64_t)buf + 64, 32, 1 }, { (uint64_t)buf + 96, 32, 1 } };
	vq_add(&q, &one, 1);
	vq_kick(&q);
	if (vq_wait(&q, &id, &len, 5000) || len != 64) {
		printf("FAIL rng: no answer (status 0x%x)\n", virtio_status(&d));
		return 1;
	}
	vq_add_indirect(&q, two, 2, table);
	vq_kick(&q);
	if (vq_wait(&q, &id, &len, 5000) || len != 64) {
		printf("FAIL rng: no answer to the indirect request\n");
		return 1;
	}
	printf("rng: ");
	for (int i = 0; i < 128; i++) {
		printf("%02x", buf[i]);
		nonzero += buf[i] != 0;
	}
	printf("\n");
	if (nonzero < 64 || !memcmp(buf, buf + 64, 64)) {
		printf("FAIL rng: bytes do not look random\n");
		return 1;
	}
	printf("virtio-rng: ok\n");
	return 0;
}
