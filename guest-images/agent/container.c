/*
 * The container's root: the image's read-only filesystem (a virtio-blk disk), an overlay
 * whose upper layer is a tmpfs (or a scratch disk), the usual kernel filesystems, volumes
 * and read-only host directories at their paths, hostname, /etc/hosts and resolv.conf;
 * then the agent moves into it (switch root). PID 1 only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define BOOT_TIMER_GPA 0xd0000000UL     /* kvmvm's boot timer: the first write of 123 */
#define NEWROOT "/newroot"
#define LOWER "/lower"
#define RW "/rw"

void early_mounts(void)
{
    mkdir("/dev", 0755);
    mkdir("/proc", 0555);
    mkdir("/sys", 0555);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    /* loopback up: containers expect localhost to work even with --net none */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s >= 0) {
        struct ifreq ifr = { 0 };
        strcpy(ifr.ifr_name, "lo");
        if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
            ifr.ifr_flags |= IFF_UP;
            ioctl(s, SIOCSIFFLAGS, &ifr);
        }
        close(s);
    }
}

void boot_signal(void)
{
    int fd = open("/dev/mem", O_RDWR | O_SYNC | O_CLOEXEC);
    if (fd < 0)
        return;
    volatile uint8_t *p = mmap(NULL, 4096, PROT_WRITE, MAP_SHARED, fd, BOOT_TIMER_GPA);
    if (p != MAP_FAILED) {
        *p = 123;
        munmap((void *)p, 4096);
    }
    close(fd);
}

void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    reboot(RB_AUTOBOOT);   /* without ACPI power-off only halts; kvmvm boots with reboot=... */
    for (;;)
        pause();
}

static const char *fail(char *why, size_t cap, const char *what, const char *path)
{
    snprintf(why, cap, "%s %s: %s", what, path, strerror(errno));
    return why;
}

static int mkdir_p(const char *path, mode_t mode)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return errno = ENAMETOOLONG, -1;
    for (char *p = tmp + 1;; p++)
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(tmp, mode) < 0 && errno != EEXIST)
                return -1;
            if (!c)
                return 0;
            *p = c;
        }
}

/* a path under the new root; refuses "..", relative paths */
static int under_root(char *out, size_t cap, const char *path)
{
    if (path[0] != '/' || strstr(path, "/../") || !strcmp(path + strlen(path) - (strlen(path) >= 3 ? 3 : 0), "/.."))
        return -1;
    return snprintf(out, cap, NEWROOT "%s", path) < (int)cap ? 0 : -1;
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    size_t n = strlen(text);
    int rc = write(fd, text, n) == (ssize_t)n ? 0 : -1;
    close(fd);
    return rc;
}

/* /etc/hosts etc.: written to the tmpfs and bind-mounted over the image's file (podman
 * does the same), so a read-only root gets them too; created when the image lacks them */
static const char *etc_file(const char *name, const char *text, int readonly, char *why, size_t cap)
{
    char src[256], dst[256];
    snprintf(src, sizeof(src), RW "/etc/%s", name);
    snprintf(dst, sizeof(dst), NEWROOT "/etc/%s", name);
    if (write_file(src, text, 0644) < 0)
        return fail(why, cap, "writing", src);
    struct stat sb;
    if (lstat(dst, &sb) < 0 || !S_ISREG(sb.st_mode)) {
        mkdir(NEWROOT "/etc", 0755);
        if (S_ISLNK(sb.st_mode))
            unlink(dst);
        if (write_file(dst, "", 0644) < 0)
            return fail(why, cap, "creating", dst);
    }
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
        return fail(why, cap, "bind-mounting", dst);
    return NULL;
}

static const char *dev_nodes(char *why, size_t cap)
{
    static const struct { const char *name; int maj, min; mode_t mode; } nodes[] = {
        { "null", 1, 3, 0666 }, { "zero", 1, 5, 0666 }, { "full", 1, 7, 0666 },
        { "random", 1, 8, 0666 }, { "urandom", 1, 9, 0666 }, { "tty", 5, 0, 0666 },
    };
    if (mount("tmpfs", NEWROOT "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k") < 0)
        return fail(why, cap, "mounting tmpfs on", "/dev");
    for (unsigned i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
        char p[64];
        snprintf(p, sizeof(p), NEWROOT "/dev/%s", nodes[i].name);
        if (mknod(p, S_IFCHR | nodes[i].mode, makedev(nodes[i].maj, nodes[i].min)) < 0)
            return fail(why, cap, "mknod", p);
        chmod(p, nodes[i].mode);
    }
    mkdir(NEWROOT "/dev/pts", 0755);
    mkdir(NEWROOT "/dev/shm", 01777);
    mkdir(NEWROOT "/dev/mqueue", 0755);
    if (mount("devpts", NEWROOT "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5") < 0)
        return fail(why, cap, "mounting devpts on", "/dev/pts");
    if (mount("shm", NEWROOT "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k") < 0)
        return fail(why, cap, "mounting tmpfs on", "/dev/shm");
    mount("mqueue", NEWROOT "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    if (symlink("pts/ptmx", NEWROOT "/dev/ptmx") < 0 || symlink("/proc/self/fd", NEWROOT "/dev/fd") < 0 ||
        symlink("/proc/self/fd/0", NEWROOT "/dev/stdin") < 0 || symlink("/proc/self/fd/1", NEWROOT "/dev/stdout") < 0 ||
        symlink("/proc/self/fd/2", NEWROOT "/dev/stderr") < 0)
        return fail(why, cap, "symlink in", "/dev");
    return NULL;
}

/* the /dev/vdX whose virtio-blk serial (kvmvm's drive id=) is `serial` */
static int find_by_serial(const char *serial, char *dev, size_t cap)
{
    for (int i = 0; i < 26 * 27; i++) {
        char name[8], path[64], got[32] = { 0 };
        if (i < 26)
            snprintf(name, sizeof(name), "vd%c", 'a' + i);
        else
            snprintf(name, sizeof(name), "vd%c%c", 'a' + (i / 26 - 1), 'a' + i % 26);
        snprintf(path, sizeof(path), "/sys/block/%s/serial", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (i >= 26)
                break;
            continue;
        }
        ssize_t n = read(fd, got, sizeof(got) - 1);
        close(fd);
        if (n > 0 && got[n - 1] == '\n')
            got[n - 1] = 0;
        if (n > 0 && !strcmp(got, serial)) {
            snprintf(dev, cap, "/dev/%s", name);
            return 0;
        }
    }
    return -1;
}

/* the fields of a {"dev" | "serial", "type", "path", "ro"} object; NULL or a reason */
static const char *disk_fields(const struct jdoc *d, int o, char *dev, char *type, char *path, int *ro)
{
    char serial[32];
    int t = json_get(d, o, "serial");
    if (t >= 0) {
        if (json_str(d, t, serial, sizeof(serial)) <= 0 || find_by_serial(serial, dev, 64) < 0)
            return "no disk with that serial";
    } else if (json_str(d, json_get(d, o, "dev"), dev, 64) <= 0 || strncmp(dev, "/dev/vd", 7) || strchr(dev + 5, '/')) {
        return "a disk needs dev (/dev/vdX) or serial";
    }
    if (json_str(d, json_get(d, o, "type"), type, 16) <= 0 ||
        (strcmp(type, "ext4") && strcmp(type, "erofs")))
        return "a disk needs type ext4 or erofs";
    if (path && json_str(d, json_get(d, o, "path"), path, 4096) <= 0)
        return "a mount needs a path";
    *ro = json_bool(d, json_get(d, o, "ro")) == 1;
    return NULL;
}

/* nameserver lines from /proc/net/pnp (kernel IP autoconfiguration), or 0 */
static int read_pnp(char *out, size_t cap)
{
    int fd = open("/proc/net/pnp", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n <= 0)
        return 0;
    out[n] = 0;
    return strstr(out, "nameserver") ? (int)n : 0;
}

const char *container_setup(const struct jdoc *d, char *why, size_t cap)
{
    char dev[64], type[16], path[4096], target[4200], text[16384];
    int ro, t;
    const char *bad;
    int readonly = json_bool(d, json_get(d, 0, "readonly")) == 1;

    /* the image: read-only, always */
    if ((bad = disk_fields(d, json_get(d, 0, "rootfs"), dev, type, NULL, &ro)))
        return snprintf(why, cap, "rootfs: %s", bad), why;
    mkdir(LOWER, 0755);
    mkdir(RW, 0755);
    mkdir(NEWROOT, 0755);
    if (mount(dev, LOWER, type, MS_RDONLY, NULL) < 0)
        return fail(why, cap, "mounting the image", dev);

    /* the writable layer: a tmpfs, or a scratch disk (ext4) */
    t = json_get(d, 0, "scratch");
    if (t >= 0) {
        if ((bad = disk_fields(d, t, dev, type, NULL, &ro)))
            return snprintf(why, cap, "scratch: %s", bad), why;
        if (mount(dev, RW, type, 0, NULL) < 0)
            return fail(why, cap, "mounting the scratch disk", dev);
    } else if (mount("tmpfs", RW, "tmpfs", 0, "mode=0755") < 0) {
        return fail(why, cap, "mounting tmpfs on", RW);
    }
    if (mkdir_p(RW "/upper", 0755) < 0 || mkdir_p(RW "/work", 0755) < 0 || mkdir_p(RW "/etc", 0755) < 0)
        return fail(why, cap, "mkdir in", RW);
    /* an overlay also with --read-only: mount points and /etc files can be made, then the
     * root is remounted read-only at the end */
    if (mount("overlay", NEWROOT, "overlay", 0,
              "lowerdir=" LOWER ",upperdir=" RW "/upper,workdir=" RW "/work") < 0)
        return fail(why, cap, "mounting the overlay on", NEWROOT);

    /* kernel filesystems (podman's set) */
    static const char *dirs[] = { "/proc", "/sys", "/dev", "/tmp", "/run", "/etc" };
    for (unsigned i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(target, sizeof(target), NEWROOT "%s", dirs[i]);
        mkdir(target, !strcmp(dirs[i], "/tmp") ? 01777 : 0755);
    }
    if (mount("proc", NEWROOT "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        return fail(why, cap, "mounting", "/proc");
    if (mount("sysfs", NEWROOT "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, NULL) < 0)
        return fail(why, cap, "mounting", "/sys");
    mount("cgroup2", NEWROOT "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    if ((bad = dev_nodes(why, cap)))
        return bad;
    if (readonly) {
        /* podman --read-only keeps /tmp, /var/tmp and /run writable (tmpfs); the root is
         * made read-only below, after the last file is written */
        static const char *tmps[] = { "/tmp", "/var/tmp", "/run" };
        for (unsigned i = 0; i < 3; i++) {
            snprintf(target, sizeof(target), NEWROOT "%s", tmps[i]);
            struct stat sb;
            if (stat(target, &sb) == 0 && S_ISDIR(sb.st_mode) &&
                mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
                return fail(why, cap, "mounting tmpfs on", tmps[i]);
        }
    }

    /* volumes and read-only host directories, in the order given */
    int arr = json_get(d, 0, "mounts");
    if (arr >= 0 && d->tok[arr].type == J_ARR) {
        for (int i = 0; i < d->tok[arr].size; i++) {
            if ((bad = disk_fields(d, json_elem(d, arr, i), dev, type, path, &ro)))
                return snprintf(why, cap, "mounts: %s", bad), why;
            if (under_root(target, sizeof(target), path) < 0)
                return snprintf(why, cap, "mounts: bad path %s", path), why;
            if (mkdir_p(target, 0755) < 0)
                return fail(why, cap, "creating the mount point", path);
            if (mount(dev, target, type, ro ? MS_RDONLY : 0, NULL) < 0)
                return fail(why, cap, "mounting a volume on", path);
        }
    }

    /* name and address files */
    char host[65] = "kvmvm";
    if ((t = json_get(d, 0, "hostname")) >= 0 && json_str(d, t, host, sizeof(host)) <= 0)
        return snprintf(why, cap, "hostname: 1..64 characters"), why;
    if (sethostname(host, strlen(host)) < 0)
        return fail(why, cap, "sethostname", host);
    /* the VM is the container's own network namespace: any user may bind a port below
       1024 in it, as Docker sets for every container (ip_unprivileged_port_start=0) */
    write_file("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0\n", 0644);
    snprintf(text, sizeof(text), "%s\n", host);
    if ((bad = etc_file("hostname", text, readonly, why, cap)))
        return bad;
    if ((t = json_get(d, 0, "hosts")) < 0 || json_str(d, t, text, sizeof(text)) < 0)
        snprintf(text, sizeof(text), "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n", host);
    if ((bad = etc_file("hosts", text, readonly, why, cap)))
        return bad;
    if ((t = json_get(d, 0, "resolv")) >= 0) {
        if (json_str(d, t, text, sizeof(text)) < 0)
            return snprintf(why, cap, "resolv: a string is required"), why;
        if ((bad = etc_file("resolv.conf", text, readonly, why, cap)))
            return bad;
    } else if (read_pnp(text, sizeof(text)) > 0) {
        /* the kernel's DHCP (ip=dhcp) learnt name servers: /proc/net/pnp is resolv.conf syntax */
        if ((bad = etc_file("resolv.conf", text, readonly, why, cap)))
            return bad;
    }

    if (readonly && mount(NULL, NEWROOT, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL) < 0)
        return fail(why, cap, "remounting read-only", "/");

    /* switch root: the initramfs stays underneath, holding nothing but this program */
    if (chdir(NEWROOT) < 0 || mount(NEWROOT, "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
        return fail(why, cap, "switching root to", NEWROOT);
    return NULL;
}

/* After a restore from a snapshot: a new identity for this copy of the VM. The kernel's
 * RNG is also reseeded by the VM generation ID; the host's bytes are mixed in as well. */
const char *reseed(const struct jdoc *d)
{
    static char why[160];
    char host[256], hex[1025];
    int64_t ns;
    int t;
    if ((t = json_get(d, 0, "entropy")) >= 0) {
        int n = json_str(d, t, hex, sizeof(hex));
        if (n <= 0 || n % 2)
            return "reseed: entropy must be hex, at most 512 bytes";
        uint8_t bytes[512];
        for (int i = 0; i < n / 2; i++) {
            unsigned v;
            if (sscanf(hex + 2 * i, "%2x", &v) != 1)
                return "reseed: entropy must be hex, at most 512 bytes";
            bytes[i] = (uint8_t)v;
        }
        int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, bytes, n / 2) != n / 2) {
            snprintf(why, sizeof(why), "reseed: writing /dev/urandom: %s", strerror(errno));
            if (fd >= 0)
                close(fd);
            return why;
        }
        close(fd);
    }
    if ((t = json_get(d, 0, "time_ns")) >= 0) {
        if (json_int(d, t, 0, INT64_MAX, &ns))
            return "reseed: time_ns must be a non-negative integer";
        struct timespec ts = { .tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000 };
        if (clock_settime(CLOCK_REALTIME, &ts) < 0) {
            snprintf(why, sizeof(why), "reseed: setting the clock: %s", strerror(errno));
            return why;
        }
    }
    if ((t = json_get(d, 0, "hostname")) >= 0) {
        if (json_str(d, t, host, sizeof(host)) <= 0 || strlen(host) > 64)
            return "reseed: hostname must be 1..64 bytes";
        if (sethostname(host, strlen(host)) < 0) {
            snprintf(why, sizeof(why), "reseed: sethostname: %s", strerror(errno));
            return why;
        }
    }
    return NULL;
}
