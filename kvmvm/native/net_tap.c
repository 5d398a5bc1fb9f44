/*
 * virtio-net backend: a TAP device opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, so the
 * virtio_net_hdr travels with each frame. A full TAP queue drops the frame, as a wire would.
 */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/if_tun.h>

#include "net_backend.h"

static ssize_t tap_recv(struct net_backend *b, const struct iovec *iov, int cnt)
{
    ssize_t r = readv(b->fd, iov, cnt);
    return r < 0 ? -errno : r;
}

static ssize_t tap_send(struct net_backend *b, const struct iovec *iov, int cnt)
{
    ssize_t r = writev(b->fd, iov, cnt);
    if (r < 0) {
        b->dropped++;
        return 0;
    }
    return r;
}

static int tap_flush(struct net_backend *b)
{
    return 0;
}

static void tap_destroy(struct net_backend *b)
{
    close(b->fd);   /* a TAP that TUNSETIFF created (not persistent) goes away here */
    free(b);
}

static const struct net_backend_ops tap_ops = {
    .name = "tap",
    .recv = tap_recv,
    .send = tap_send,
    .flush = tap_flush,
    .destroy = tap_destroy,
};

struct net_backend *net_tap_open(const char *name, int *err)
{
    struct ifreq ifr;
    int hdr = NET_HDR_LEN;
    struct net_backend *b;

    if (!name || !*name || strlen(name) >= IFNAMSIZ) {
        *err = -EINVAL;
        return NULL;
    }
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    memset(&ifr, 0, sizeof(ifr));
    memcpy(ifr.ifr_name, name, strlen(name));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0 || ioctl(fd, TUNSETVNETHDRSZ, &hdr) < 0 ||
        ioctl(fd, TUNSETOFFLOAD, 0) < 0) {
        *err = -errno;
        close(fd);
        return NULL;
    }
    b = calloc(1, sizeof(*b));
    if (!b) {
        *err = -ENOMEM;
        close(fd);
        return NULL;
    }
    b->ops = &tap_ops;
    b->fd = fd;
    return b;
}
