/*
 * Where virtio-net's frames go: a TAP device (net_tap.c) or a stream socket speaking
 * QEMU's/passt's protocol (net_stream.c). The device (virtio_net.c) hands a backend one
 * frame at a time, always with the NET_HDR_LEN-byte virtio_net_hdr in front, and watches
 * the backend's fd: EPOLLIN for input, EPOLLOUT while the backend is congested.
 */
#ifndef KVMVM_NET_BACKEND_H
#define KVMVM_NET_BACKEND_H

#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define NET_HDR_LEN    12       /* virtio_net_hdr_v1 (virtio 1.x always has num_buffers) */
#define NET_FRAME_MAX  65550    /* an Ethernet frame of the largest MTU TAP allows */
#define NET_IOV_MAX    1024     /* what readv/writev/sendmsg take */

struct net_backend;

struct net_backend_ops {
    const char *name;
    /* One frame into iov, header first: its length with the header; -EAGAIN when none is
     * ready; -EPIPE when the peer is gone for good (stop watching the fd). */
    ssize_t (*recv)(struct net_backend *b, const struct iovec *iov, int cnt);
    /* One frame out; iov[0] is the header: >= 0 when taken (sent, queued or dropped),
     * -EAGAIN when the backend cannot take it now (try again after EPOLLOUT). */
    ssize_t (*send)(struct net_backend *b, const struct iovec *iov, int cnt);
    /* EPOLLOUT came: 0 when nothing is pending any more, -EAGAIN otherwise. */
    int (*flush)(struct net_backend *b);
    /* Optional: how much of what was sent the peer has not read yet (0: it has read all),
     * or -errno. */
    ssize_t (*unread)(struct net_backend *b);
    void (*destroy)(struct net_backend *b);
};

struct net_backend {
    const struct net_backend_ops *ops;
    int fd;                     /* non-blocking, owned by the backend */
    uint64_t dropped;           /* frames dropped (too large, peer gone) */
};

/* An open fd with TAP's framing (vnet header first), e.g. a socketpair in the fuzzers;
 * NULL and *err = -ENOMEM on failure (the fd stays the caller's then). */
struct net_backend *net_tap_from_fd(int fd, int *err);
/* A TAP opened (or created) by name; NULL and *err = -errno on failure. */
struct net_backend *net_tap_open(const char *name, int *err);
/* A connected SOCK_STREAM socket (passt --fd, QEMU -netdev stream): 4-byte big-endian
 * length before each frame, no virtio_net_hdr. Takes the fd on success. */
struct net_backend *net_stream_new(int fd, int *err);

#endif
