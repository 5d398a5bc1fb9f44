/*
 * eiofs: a FUSE filesystem with one file, /disk.img, held in memory, whose reads and writes
 * fail with EIO when they touch [BAD, BAD+LEN) (bytes). A real host-side I/O error for the
 * block-device fault tests (tests/integration/test_faults.py), where device-mapper's
 * dm-error is not available. Runs in the foreground, single-threaded, with direct I/O (no
 * page cache between the VMM and these answers). On SIGTERM it unmounts and writes
 * "eiofs: R reads W writes E errors" to stderr.
 *
 *   eiofs MOUNTPOINT SIZE BAD LEN
 * Build: cc eiofs.c $(pkg-config --cflags --libs fuse3)   (Debian: libfuse3-dev)
 */
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fuse.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char NAME[] = "/disk.img";
static char *data;
static off_t size, bad, bad_len;
static unsigned long reads, writes, errors;

static int touches_bad(off_t off, size_t n)
{
    return off < bad + bad_len && off + (off_t)n > bad;
}

static int e_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
    memset(st, 0, sizeof(*st));
    if (strcmp(path, "/") == 0) {
        st->st_mode = S_IFDIR | 0755;
        st->st_nlink = 2;
    } else if (strcmp(path, NAME) == 0) {
        st->st_mode = S_IFREG | 0644;
        st->st_nlink = 1;
        st->st_size = size;
    } else {
        return -ENOENT;
    }
    return 0;
}

static int e_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off,
                     struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
    if (strcmp(path, "/") != 0)
        return -ENOENT;
    fill(buf, ".", NULL, 0, 0);
    fill(buf, "..", NULL, 0, 0);
    fill(buf, NAME + 1, NULL, 0, 0);
    return 0;
}

static int e_open(const char *path, struct fuse_file_info *fi)
{
    if (strcmp(path, NAME) != 0)
        return -ENOENT;
    fi->direct_io = 1;
    return 0;
}

static int e_read(const char *path, char *buf, size_t n, off_t off, struct fuse_file_info *fi)
{
    reads++;
    if (touches_bad(off, n)) {
        errors++;
        return -EIO;
    }
    if (off >= size)
        return 0;
    if ((off_t)n > size - off)
        n = size - off;
    memcpy(buf, data + off, n);
    return (int)n;
}

static int e_write(const char *path, const char *buf, size_t n, off_t off,
                   struct fuse_file_info *fi)
{
    writes++;
    if (touches_bad(off, n)) {
        errors++;
        return -EIO;
    }
    if (off >= size || (off_t)n > size - off)
        return -ENOSPC;
    memcpy(data + off, buf, n);
    return (int)n;
}

static int e_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
    return 0;
}

static int e_truncate(const char *path, off_t len, struct fuse_file_info *fi)
{
    return len == size ? 0 : -EPERM;
}

static const struct fuse_operations ops = {
    .getattr = e_getattr,
    .readdir = e_readdir,
    .open = e_open,
    .read = e_read,
    .write = e_write,
    .fsync = e_fsync,
    .truncate = e_truncate,
};

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: eiofs MOUNTPOINT SIZE BAD LEN\n");
        return 2;
    }
    size = strtoll(argv[2], NULL, 0);
    bad = strtoll(argv[3], NULL, 0);
    bad_len = strtoll(argv[4], NULL, 0);
    data = calloc(1, size);
    if (!data || size <= 0)
        return 2;
    memcpy(data, "eiofs-disk", 10);
    char *fargv[] = { argv[0], "-f", "-s", "-o", "default_permissions", argv[1], NULL };
    int r = fuse_main(6, fargv, &ops, NULL);
    fprintf(stderr, "eiofs: %lu reads %lu writes %lu errors\n", reads, writes, errors);
    return r;
}
