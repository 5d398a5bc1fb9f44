/*
 * fs: small file-system requests, answered at once on their own stream: list a directory,
 * stat, make a directory, remove (optionally recursive), rename. Paths are absolute and
 * resolved inside the guest's root, so nothing outside the VM is reachable by construction.
 * Failures reply {"op":"error","reason":..., "code": errno}.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent.h"

#define LS_BUDGET (MAX_PAYLOAD - 4096)   /* the reply is one control frame */

static int fs_error(struct session *s, uint32_t id, const char *what, const char *path, int err)
{
    char why[4200];
    snprintf(why, sizeof(why), "%s%s%s: %s", what, *what ? " " : "", path, strerror(err));
    return send_error(s, id, why, err > 0 && err < 256 ? err : 0);
}

static int get_path(const struct jdoc *d, const char *key, char *out, size_t cap)
{
    return json_str(d, json_get(d, 0, key), out, cap) > 0 && out[0] == '/' ? 0 : -1;
}

static const char *type_name(mode_t m)
{
    return S_ISDIR(m) ? "dir" : S_ISREG(m) ? "file" : S_ISLNK(m) ? "symlink" : "other";
}

/* a name as valid UTF-8 (the host parses JSON): bad bytes become U+FFFD */
static void utf8_clean(const char *in, char *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    while (*p && o + 4 < cap) {
        int n = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
        int ok = n > 0;
        for (int i = 1; ok && i < n; i++)
            ok = (p[i] & 0xc0) == 0x80;
        if (ok) {
            memcpy(out + o, p, n);
            o += n, p += n;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3, p++;
        }
    }
    out[o] = 0;
}

static void stat_fields(struct jw *w, const struct stat *sb)
{
    jw_key_str(w, "type", type_name(sb->st_mode));
    jw_key_int(w, "size", sb->st_size);
    jw_key_int(w, "mode", sb->st_mode & 07777);
    jw_key_int(w, "mtime", sb->st_mtime);
}

static int fs_list(struct session *s, uint32_t id, const char *path)
{
    DIR *dir = opendir(path);
    if (!dir)
        return fs_error(s, id, "", path, errno);
    char *arr = malloc(LS_BUDGET + 2), *reply = malloc(MAX_PAYLOAD);
    if (!arr || !reply) {
        free(arr), free(reply), closedir(dir);
        return send_error(s, id, "out of memory", ENOMEM);
    }
    size_t len = 0;
    int n = 0, truncated = 0;
    arr[len++] = '[';
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        struct stat sb;
        if (fstatat(dirfd(dir), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
            continue;       /* removed while we looked */
        char name[1024], one[4096];
        utf8_clean(de->d_name, name, sizeof(name));
        struct jw w;
        jw_init(&w, one, sizeof(one));
        jw_obj_begin(&w);
        jw_key_str(&w, "name", name);
        stat_fields(&w, &sb);
        jw_obj_end(&w);
        if (w.err || len + w.len + 2 > LS_BUDGET) {
            truncated = 1;
            break;
        }
        if (n++)
            arr[len++] = ',';
        memcpy(arr + len, one, w.len);
        len += w.len;
    }
    closedir(dir);
    arr[len++] = ']';
    arr[len] = 0;
    struct jw w;
    jw_init(&w, reply, MAX_PAYLOAD);
    jw_obj_begin(&w);
    jw_key_str(&w, "op", "ok");
    jw_key_raw(&w, "entries", arr);
    jw_key_bool(&w, "truncated", truncated);
    jw_obj_end(&w);
    int rc = w.err ? send_error(s, id, "listing too large", E2BIG) : send_control(s, id, reply);
    free(arr);
    free(reply);
    return rc;
}

static int rm_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)ftw;
    return (flag == FTW_DP ? rmdir(p) : unlink(p)) < 0 && errno != ENOENT ? -1 : 0;
}

static int mkdir_all(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir(tmp, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

int fs_request(struct session *s, uint32_t id, const char *op, const struct jdoc *d)
{
    char path[4096], dst[4096], buf[256];
    struct stat sb;
    struct jw w;

    if (get_path(d, "path", path, sizeof(path)))
        return send_error(s, id, "path: an absolute path is required", EINVAL);
    if (!strcmp(op, "ls"))
        return fs_list(s, id, path);
    if (!strcmp(op, "stat")) {
        if (lstat(path, &sb) < 0)
            return fs_error(s, id, "", path, errno);
        jw_init(&w, buf, sizeof(buf));
        jw_obj_begin(&w);
        jw_key_str(&w, "op", "ok");
        stat_fields(&w, &sb);
        jw_obj_end(&w);
        return send_control(s, id, buf);
    }
    if (!strcmp(op, "mkdir")) {
        int parents = json_bool(d, json_get(d, 0, "parents")) == 1;
        int existed = stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
        if (!existed && (parents ? mkdir_all(path) : mkdir(path, 0755)) < 0)
            return fs_error(s, id, "mkdir", path, errno);
        jw_init(&w, buf, sizeof(buf));
        jw_obj_begin(&w);
        jw_key_str(&w, "op", "ok");
        jw_key_bool(&w, "created", !existed);
        jw_obj_end(&w);
        return send_control(s, id, buf);
    }
    if (!strcmp(op, "rm")) {
        int recursive = json_bool(d, json_get(d, 0, "recursive")) == 1;
        if (lstat(path, &sb) < 0)
            return fs_error(s, id, "", path, errno);
        int rc;
        /* no FTW_MOUNT: on overlayfs a file's st_dev is its layer's, not the directory's */
        if (S_ISDIR(sb.st_mode))
            rc = recursive ? nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) : rmdir(path);
        else
            rc = unlink(path);
        if (rc < 0)
            return fs_error(s, id, "remove", path, errno);
        return send_control(s, id, "{\"op\":\"ok\"}");
    }
    if (!strcmp(op, "mv")) {
        if (get_path(d, "dest", dst, sizeof(dst)))
            return send_error(s, id, "dest: an absolute path is required", EINVAL);
        if (rename(path, dst) < 0)
            return fs_error(s, id, "rename", path, errno);
        return send_control(s, id, "{\"op\":\"ok\"}");
    }
    return send_error(s, id, "unknown operation", 0);
}
