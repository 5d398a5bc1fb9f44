/*
 * exec: start a process as the host asked (argv, env, cwd, user, umask, rlimits, a pipe or
 * a pty for stdio), and tell the host whether it started. The child reports a failure
 * before execve through a close-on-exec pipe: 127 when the program is not found, 126 when
 * it cannot be run (podman's convention).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"

#define MAX_ARGS 4096
#define MAX_GROUPS 64
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

struct exec_req {
    char **argv, **env;
    int argc, envc;
    char cwd[4096], user[512];
    int tty, want_stdin, is_main;
    int64_t rows, cols, umask_;
    int nrl;
    struct { int res; struct rlimit rl; } rl[16];
};

struct child_err {
    int code;
    char msg[480];
};

static void free_strv(char **v, int n)
{
    if (!v)
        return;
    for (int i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* strings of JSON array `arr` into a NULL-terminated vector; count or -errno */
static int strv(const struct jdoc *d, int arr, char ***out, int extra)
{
    if (arr < 0 || d->tok[arr].type != J_ARR || d->tok[arr].size > MAX_ARGS)
        return -EINVAL;
    int n = d->tok[arr].size;
    char **v = calloc(n + extra + 1, sizeof(char *));
    if (!v)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        int t = json_elem(d, arr, i);
        if (t < 0 || d->tok[t].type != J_STR)
            goto bad;
        size_t cap = d->tok[t].end - d->tok[t].start + 1;
        v[i] = malloc(cap);
        if (!v[i] || json_str(d, t, v[i], cap) < 0)
            goto bad;
    }
    *out = v;
    return n;
bad:
    free_strv(v, n);
    return -EINVAL;
}

static const struct { const char *name; int res; } RLIMITS[] = {
    { "nofile", RLIMIT_NOFILE }, { "nproc", RLIMIT_NPROC }, { "core", RLIMIT_CORE },
    { "stack", RLIMIT_STACK }, { "memlock", RLIMIT_MEMLOCK }, { "as", RLIMIT_AS },
    { "cpu", RLIMIT_CPU }, { "fsize", RLIMIT_FSIZE }, { "data", RLIMIT_DATA },
    { "sigpending", RLIMIT_SIGPENDING }, { "msgqueue", RLIMIT_MSGQUEUE },
};

static const char *parse_req(const struct jdoc *d, struct exec_req *r)
{
    int t;
    if ((r->argc = strv(d, json_get(d, 0, "argv"), &r->argv, 0)) < 1)
        return "argv: a non-empty array of strings is required";
    t = json_get(d, 0, "env");
    if (t < 0)
        r->envc = 0, r->env = calloc(4, sizeof(char *));
    else if ((r->envc = strv(d, t, &r->env, 3)) < 0)
        return "env: an array of K=V strings is required";
    else {
        char **grown = realloc(r->env, (r->envc + 4) * sizeof(char *));
        if (!grown)
            return "out of memory";
        r->env = grown;
    }
    if (!r->env)
        return "out of memory";
    strcpy(r->cwd, "/");
    if ((t = json_get(d, 0, "cwd")) >= 0 && (json_str(d, t, r->cwd, sizeof(r->cwd)) <= 0 || r->cwd[0] != '/'))
        return "cwd: an absolute path is required";
    if ((t = json_get(d, 0, "user")) >= 0 && json_str(d, t, r->user, sizeof(r->user)) < 0)
        return "user: a string is required";
    r->tty = json_bool(d, json_get(d, 0, "tty")) == 1;
    r->want_stdin = json_bool(d, json_get(d, 0, "stdin")) == 1;
    r->is_main = json_bool(d, json_get(d, 0, "main")) == 1;
    r->rows = 24, r->cols = 80, r->umask_ = 022;
    if ((t = json_get(d, 0, "rows")) >= 0 && json_int(d, t, 0, 65535, &r->rows))
        return "rows: 0..65535";
    if ((t = json_get(d, 0, "cols")) >= 0 && json_int(d, t, 0, 65535, &r->cols))
        return "cols: 0..65535";
    if ((t = json_get(d, 0, "umask")) >= 0 && json_int(d, t, 0, 0777, &r->umask_))
        return "umask: 0..0777";
    int arr = json_get(d, 0, "rlimits");
    if (arr >= 0) {
        if (d->tok[arr].type != J_ARR || d->tok[arr].size > 16)
            return "rlimits: an array of at most 16 {type, soft, hard} objects";
        for (int i = 0; i < d->tok[arr].size; i++) {
            int o = json_elem(d, arr, i), k;
            char name[32];
            int64_t soft, hard;
            if (json_str(d, json_get(d, o, "type"), name, sizeof(name)) <= 0 ||
                json_int(d, json_get(d, o, "soft"), -1, INT64_MAX, &soft) ||
                json_int(d, json_get(d, o, "hard"), -1, INT64_MAX, &hard))
                return "rlimits: each needs type, soft and hard";
            for (k = 0; k < (int)(sizeof(RLIMITS) / sizeof(RLIMITS[0])); k++)
                if (!strcmp(RLIMITS[k].name, name))
                    break;
            if (k == (int)(sizeof(RLIMITS) / sizeof(RLIMITS[0])))
                return "rlimits: unknown type";
            r->rl[r->nrl].res = RLIMITS[k].res;
            r->rl[r->nrl].rl.rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
            r->rl[r->nrl].rl.rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
            r->nrl++;
        }
    }
    return NULL;
}

/* --- the child, between fork and execve --- */

static void child_fail(int errfd, int code, const char *fmt, const char *a, const char *b)
{
    struct child_err e = { .code = code };
    snprintf(e.msg, sizeof(e.msg), fmt, a, b);
    if (write(errfd, &e, sizeof(e)) < 0)
        _exit(code);
    _exit(code);
}

static int all_digits(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* field i (0-based) of a ':'-separated line, NUL-terminated in place */
static int split_fields(char *line, char **f, int max)
{
    int n = 0;
    line[strcspn(line, "\n")] = 0;
    f[n++] = line;
    for (char *p = line; *p && n < max; p++)
        if (*p == ':') {
            *p = 0;
            f[n++] = p + 1;
        }
    return n;
}

struct ident {
    uid_t uid;
    gid_t gid;
    gid_t groups[MAX_GROUPS];
    int ngroups;
    char name[256], home[1024];
};

/* USER[:GROUP], names looked up in the (container's) /etc/passwd and /etc/group */
static const char *resolve_user(const char *spec, struct ident *id, char *why, size_t cap)
{
    char user[512], *group = NULL, line[2048], *f[8];
    snprintf(user, sizeof(user), "%s", *spec ? spec : "0");
    if ((group = strchr(user, ':')))
        *group++ = 0;
    int known = 0;
    FILE *pw = fopen("/etc/passwd", "re");
    while (pw && fgets(line, sizeof(line), pw)) {
        if (split_fields(line, f, 8) < 7)
            continue;
        if (all_digits(user) ? strcmp(f[2], user) : strcmp(f[0], user))
            continue;
        id->uid = (uid_t)strtoul(f[2], NULL, 10);
        id->gid = (gid_t)strtoul(f[3], NULL, 10);
        snprintf(id->name, sizeof(id->name), "%s", f[0]);
        snprintf(id->home, sizeof(id->home), "%s", f[5]);
        known = 1;
        break;
    }
    if (pw)
        fclose(pw);
    if (!known) {
        if (!all_digits(user)) {
            snprintf(why, cap, "unable to find user %s: no matching entries in passwd file", user);
            return why;
        }
        id->uid = (uid_t)strtoul(user, NULL, 10);
        id->gid = 0;
        strcpy(id->home, "/");
    }
    FILE *gr = fopen("/etc/group", "re");
    if (group && *group) {
        int found = all_digits(group);
        if (found)
            id->gid = (gid_t)strtoul(group, NULL, 10);
        while (!found && gr && fgets(line, sizeof(line), gr))
            if (split_fields(line, f, 4) >= 3 && !strcmp(f[0], group)) {
                id->gid = (gid_t)strtoul(f[2], NULL, 10);
                found = 1;
            }
        if (!found) {
            if (gr)
                fclose(gr);
            snprintf(why, cap, "unable to find group %s: no matching entries in group file", group);
            return why;
        }
    }
    id->groups[id->ngroups++] = id->gid;
    /* supplementary groups, as initgroups() would (only without an explicit group) */
    if (known && !(group && *group) && gr) {
        rewind(gr);
        while (fgets(line, sizeof(line), gr) && id->ngroups < MAX_GROUPS) {
            if (split_fields(line, f, 4) < 4)
                continue;
            for (char *m = strtok(f[3], ","); m; m = strtok(NULL, ","))
                if (!strcmp(m, id->name)) {
                    gid_t g = (gid_t)strtoul(f[2], NULL, 10);
                    if (g != id->gid)
                        id->groups[id->ngroups++] = g;
                    break;
                }
        }
    }
    if (gr)
        fclose(gr);
    return NULL;
}

static int mkdir_p(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1;; p++)
        if (*p == '/' || !*p) {
            char c = *p;
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -1;
            if (!c)
                return 0;
            *p = c;
        }
}

static const char *env_get(char **env, const char *key)
{
    size_t n = strlen(key);
    for (; *env; env++)
        if (!strncmp(*env, key, n) && (*env)[n] == '=')
            return *env + n + 1;
    return NULL;
}

static void env_add(char **env, int *envc, const char *key, const char *val)
{
    if (env_get(env, key))
        return;
    size_t n = strlen(key) + strlen(val) + 2;
    char *kv = malloc(n);
    if (!kv)
        return;
    snprintf(kv, n, "%s=%s", key, val);
    env[(*envc)++] = kv;
    env[*envc] = NULL;
}

static void run_child(struct exec_req *r, int errfd, int fds[3], int tty)
{
    char why[480];
    struct ident id = { 0 };
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    if (tty && ioctl(fds[0], TIOCSCTTY, 0) < 0)
        child_fail(errfd, 126, "cannot set the controlling terminal: %s%s", strerror(errno), "");
    for (int i = 0; i < 3; i++)
        if (dup2(fds[i], i) < 0)
            child_fail(errfd, 126, "dup2: %s%s", strerror(errno), "");
    umask((mode_t)r->umask_);
    for (int i = 0; i < r->nrl; i++)
        if (setrlimit(r->rl[i].res, &r->rl[i].rl) < 0)
            child_fail(errfd, 126, "setrlimit: %s%s", strerror(errno), "");
    if (resolve_user(r->user, &id, why, sizeof(why)))
        child_fail(errfd, 126, "%s%s", why, "");
    if (chdir(r->cwd) < 0 && (errno != ENOENT || mkdir_p(r->cwd) < 0 || chdir(r->cwd) < 0))
        child_fail(errfd, 126, "cannot change to the working directory %s: %s", r->cwd, strerror(errno));
    if (getuid() == 0) {
        if (setgroups(id.ngroups, id.groups) < 0 || setgid(id.gid) < 0 || setuid(id.uid) < 0)
            child_fail(errfd, 126, "cannot switch to user %s: %s", *r->user ? r->user : "root", strerror(errno));
    }
    env_add(r->env, &r->envc, "PATH", DEFAULT_PATH);
    env_add(r->env, &r->envc, "HOME", *id.home ? id.home : "/");
    if (tty)
        env_add(r->env, &r->envc, "TERM", "xterm");

    const char *file = r->argv[0];
    if (strchr(file, '/')) {
        execve(file, r->argv, r->env);
        child_fail(errfd, errno == ENOENT ? 127 : 126, "%s: %s", file, strerror(errno));
    }
    const char *path = env_get(r->env, "PATH");
    int eacces = 0, last = ENOENT;
    char full[4096];
    for (const char *p = path; p && *p;) {
        const char *c = strchr(p, ':');
        size_t n = c ? (size_t)(c - p) : strlen(p);
        if (n + strlen(file) + 2 < sizeof(full)) {
            snprintf(full, sizeof(full), "%.*s/%s", (int)n, n ? p : ".", file);
            execve(full, r->argv, r->env);
            if (errno == EACCES)
                eacces = 1;
            else if (errno != ENOENT && errno != ENOTDIR)
                last = errno;
        }
        p = c ? c + 1 : NULL;
    }
    if (eacces)
        child_fail(errfd, 126, "%s: %s", file, strerror(EACCES));
    if (last != ENOENT)
        child_fail(errfd, 126, "%s: %s", file, strerror(last));
    child_fail(errfd, 127, "%s: executable file not found in $PATH%s", file, "");
}

/* --- the agent's side --- */

static void set_nonblock_cloexec(int fd)
{
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
}

int exec_start(struct session *s, struct stream *st, const struct jdoc *d)
{
    struct exec_req r = { 0 };
    int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 }, ep[2] = { -1, -1 };
    int master = -1, slave = -1, rc = -1;
    char buf[160];
    const char *bad = parse_req(d, &r);
    if (bad) {
        send_error(s, st->id, bad, 125);
        goto out;
    }
    if (pipe2(ep, O_CLOEXEC) < 0)
        goto sys;
    int fds[3];
    if (r.tty) {
        struct winsize ws = { .ws_row = r.rows, .ws_col = r.cols };
        if (openpty(&master, &slave, NULL, NULL, &ws) < 0)
            goto sys;
        set_nonblock_cloexec(master);
        fcntl(slave, F_SETFD, FD_CLOEXEC);
        fds[0] = fds[1] = fds[2] = slave;
    } else {
        if (r.want_stdin ? pipe2(in, O_CLOEXEC) < 0 : (in[0] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
            goto sys;
        if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
            goto sys;
        fds[0] = in[0], fds[1] = out[1], fds[2] = err[1];
    }
    pid_t pid = fork();
    if (pid < 0)
        goto sys;
    if (pid == 0) {
        close(ep[0]);
        run_child(&r, ep[1], fds, r.tty);
    }
    close(ep[1]);
    ep[1] = -1;
    struct child_err ce;
    ssize_t n;
    do
        n = read(ep[0], &ce, sizeof(ce));
    while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof(ce)) {
        int ws;
        waitpid(pid, &ws, 0);
        ce.msg[sizeof(ce.msg) - 1] = 0;
        send_error(s, st->id, ce.msg, ce.code);
        goto out;
    }
    st->pid = pid;
    st->tty = r.tty;
    st->is_main = r.is_main;
    st->out_done[CH_OUT] = 0;
    if (r.tty) {
        st->out_fd[CH_OUT] = master;
        st->in_fd = dup(master);
        if (st->in_fd >= 0)
            set_nonblock_cloexec(st->in_fd);
        master = -1;
        outq_frame(&s->out, st->id, T_EOF, CH_ERR, NULL, 0);  /* a tty has one output */
    } else {
        st->out_done[CH_ERR] = 0;
        st->out_fd[CH_OUT] = out[0], out[0] = -1;
        st->out_fd[CH_ERR] = err[0], err[0] = -1;
        set_nonblock_cloexec(st->out_fd[CH_OUT]);
        set_nonblock_cloexec(st->out_fd[CH_ERR]);
        if (r.want_stdin) {
            st->in_fd = in[1], in[1] = -1;
            set_nonblock_cloexec(st->in_fd);
        }
    }
    snprintf(buf, sizeof(buf), "{\"op\":\"started\",\"pid\":%d}", (int)pid);
    send_control(s, st->id, buf);
    rc = 0;
    goto out;
sys:
    snprintf(buf, sizeof(buf), "cannot start the process: %s", strerror(errno));
    send_error(s, st->id, buf, 125);
out:
    int all[] = { in[0], in[1], out[0], out[1], err[0], err[1], ep[0], ep[1], master, slave };
    for (unsigned i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i] >= 0)
            close(all[i]);
    free_strv(r.argv, r.argc);
    free_strv(r.env, r.envc);
    return rc;
}
