/*
 * kvmvm-agent: PID 1 of a container microVM. It connects to the host over virtio-vsock
 * (host CID 2, port 1024), says hello, mounts the image when asked (container.c), then runs
 * and watches processes (exec.c) and moves files, many at once, one stream each, with
 * credit-based flow control on every byte stream (docs/agent-protocol.md).
 *
 * `kvmvm-agent --fd N` serves the same protocol on an inherited socket as an ordinary host
 * process: the host-tier tests drive the real parser and process handling that way.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
struct sockaddr_vm_ {
    sa_family_t svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port, svm_cid;
    unsigned char svm_zero[4];
};

#define HOST_CID 2
#define OUT_HIGH (1u << 20)          /* stop reading process output above this backlog */
#define POWEROFF_GRACE_MS 2000       /* after the main exit: wait this long for the host */

static struct jdoc doc;              /* one control message at a time (large: not on the stack) */

void agent_log(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(buf) - 2)
        n = sizeof(buf) - 2;
    buf[n++] = '\n';
    if (write(2, "kvmvm-agent: ", 13) < 0 || write(2, buf, n) < 0)
        return;
}

int send_control(struct session *s, uint32_t stream, const char *json)
{
    int rc = outq_frame(&s->out, stream, T_CONTROL, 0, json, strlen(json));
    if (rc)
        agent_log("output queue full (%s)", strerror(-rc));
    return rc;
}

int send_error(struct session *s, uint32_t stream, const char *reason, int code)
{
    char buf[1024];
    struct jw w;
    jw_init(&w, buf, sizeof(buf));
    jw_obj_begin(&w);
    jw_key_str(&w, "op", "error");
    jw_key_str(&w, "reason", reason);
    if (code)
        jw_key_int(&w, "code", code);
    jw_obj_end(&w);
    return send_control(s, stream, w.err ? "{\"op\":\"error\",\"reason\":\"(reason too long)\"}" : buf);
}

static int send_ok(struct session *s, uint32_t stream, const char *key, int64_t val)
{
    char buf[128];
    struct jw w;
    jw_init(&w, buf, sizeof(buf));
    jw_obj_begin(&w);
    jw_key_str(&w, "op", "ok");
    if (key)
        jw_key_int(&w, key, val);
    jw_obj_end(&w);
    return send_control(s, stream, buf);
}

static int send_credit(struct session *s, uint32_t stream, uint8_t chan, uint32_t n)
{
    uint8_t p[4] = { n >> 24, n >> 16, n >> 8, n };
    return outq_frame(&s->out, stream, T_CREDIT, chan, p, 4);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

/* --- streams --- */

static struct stream *stream_find(struct session *s, uint32_t id)
{
    for (struct stream *st = s->streams; st; st = st->next)
        if (st->id == id)
            return st;
    return NULL;
}

struct stream *stream_new(struct session *s, uint32_t id, int kind)
{
    if (s->nstreams >= MAX_STREAMS)
        return NULL;
    struct stream *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->inbuf = malloc(WINDOW);
    if (!st->inbuf) {
        free(st);
        return NULL;
    }
    st->id = id;
    st->kind = kind;
    st->pid = -1;
    st->in_fd = st->out_fd[0] = st->out_fd[CH_OUT] = st->out_fd[CH_ERR] = -1;
    st->in_allowed = WINDOW;
    st->credit[CH_OUT] = st->credit[CH_ERR] = WINDOW;
    st->out_done[CH_OUT] = st->out_done[CH_ERR] = 1;   /* set to 0 for channels in use */
    st->next = s->streams;
    s->streams = st;
    s->nstreams++;
    return st;
}

static void stream_free(struct session *s, struct stream *st)
{
    for (struct stream **p = &s->streams; *p; p = &(*p)->next)
        if (*p == st) {
            *p = st->next;
            break;
        }
    close_fd(&st->in_fd);
    close_fd(&st->out_fd[CH_OUT]);
    close_fd(&st->out_fd[CH_ERR]);
    free(st->inbuf);
    free(st);
    s->nstreams--;
}

/* Ends a stream whose work is complete: an exec once it exited and both outputs ended,
 * a get once its file is sent. */
static void stream_progress(struct session *s, struct stream *st)
{
    if (st->kind == S_EXEC && st->exited && st->out_done[CH_OUT] && st->out_done[CH_ERR]) {
        char buf[128];
        struct jw w;
        jw_init(&w, buf, sizeof(buf));
        jw_obj_begin(&w);
        jw_key_str(&w, "op", "exit");
        if (WIFSIGNALED(st->wstatus))
            jw_key_int(&w, "signal", WTERMSIG(st->wstatus));
        else
            jw_key_int(&w, "code", WEXITSTATUS(st->wstatus));
        jw_obj_end(&w);
        send_control(s, st->id, buf);
        if (st->is_main)
            s->main_exited = 1;
        stream_free(s, st);
    } else if (st->kind == S_GET && st->out_done[CH_OUT]) {
        send_ok(s, st->id, "size", (int64_t)st->bytes);
        stream_free(s, st);
    }
}

void exec_reaped(struct session *s, pid_t pid, int wstatus)
{
    for (struct stream *st = s->streams; st; st = st->next)
        if (st->kind == S_EXEC && st->pid == pid) {
            st->exited = 1;
            st->wstatus = wstatus;
            /* the container's main process ended: the container ends (as podman stops it) */
            if (st->is_main && s->pid1)
                kill(-1, SIGKILL);
            stream_progress(s, st);
            return;
        }
}

/* --- file transfer --- */

static int mkdir_parents(const char *path)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
                return -errno;
            *p = '/';
        }
    return 0;
}

static void file_start(struct session *s, uint32_t id, int kind, const struct jdoc *d)
{
    char path[4096], why[4200];
    int64_t mode = 0644;
    if (json_str(d, json_get(d, 0, "path"), path, sizeof(path)) <= 0 || path[0] != '/') {
        send_error(s, id, "path: an absolute path is required", 0);
        return;
    }
    int m = json_get(d, 0, "mode");
    if (m >= 0 && json_int(d, m, 0, 07777, &mode)) {
        send_error(s, id, "mode: an integer 0..07777 is required", 0);
        return;
    }
    struct stream *st = stream_new(s, id, kind);
    if (!st) {
        send_error(s, id, "too many streams", 0);
        return;
    }
    int fd;
    if (kind == S_PUT) {
        if (json_bool(d, json_get(d, 0, "parents")) == 1)
            mkdir_parents(path);
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, (mode_t)mode);
    } else {
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    }
    struct stat sb;
    int err = 0;
    if (fd >= 0 && kind == S_GET && (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode))) {
        close(fd);
        fd = -1;
        err = EISDIR;
        snprintf(why, sizeof(why), "%s: not a regular file", path);
        goto fail;
    }
    if (fd < 0) {
        err = errno;
        snprintf(why, sizeof(why), "%s: %s", path, strerror(err));
        goto fail;
    }
    if (kind == S_PUT) {
        if (json_get(d, 0, "mode") >= 0)
            fchmod(fd, (mode_t)mode);   /* O_CREAT's mode is masked by the umask */
        st->in_fd = fd;
    } else {
        st->out_fd[CH_OUT] = fd;
        st->out_done[CH_OUT] = 0;
    }
    return;
fail:
    send_error(s, id, why, err > 0 && err < 256 ? err : 0);   /* code: the errno */
    stream_free(s, st);
}

/* --- frames from the host --- */

static int protocol_error(struct session *s, const char *why)
{
    (void)s;
    agent_log("protocol error: %s; ending the session", why);
    return -EPROTO;
}

static void handle_control_stream0(struct session *s, const char *op)
{
    if (!strcmp(op, "setup")) {
        char why[512];
        if (!s->pid1) {
            send_error(s, 0, "setup: the agent is not the VM's init", 0);
        } else if (s->setup_done) {
            send_error(s, 0, "setup: already done", 0);
        } else if (container_setup(&doc, why, sizeof(why))) {
            send_error(s, 0, why, 0);
        } else {
            s->setup_done = 1;
            send_ok(s, 0, NULL, 0);
        }
    } else if (!strcmp(op, "ping")) {
        send_ok(s, 0, NULL, 0);
    } else if (!strcmp(op, "reseed")) {
        const char *why = s->pid1 ? reseed(&doc) : "reseed: the agent is not the VM's init";
        if (why)
            send_error(s, 0, why, 0);
        else
            send_ok(s, 0, NULL, 0);
    } else if (!strcmp(op, "poweroff")) {
        send_ok(s, 0, NULL, 0);
        s->main_exited = 1;
    } else {
        send_error(s, 0, "unknown operation", 0);
    }
}

static int handle_control(struct session *s, const struct frame *f)
{
    char op[32];
    if (json_parse(&doc, (const char *)f->payload, f->len) || doc.tok[0].type != J_OBJ)
        return protocol_error(s, "control message is not a JSON object");
    if (json_str(&doc, json_get(&doc, 0, "op"), op, sizeof(op)) <= 0)
        return protocol_error(s, "control message without an op");
    if (f->stream == 0) {
        handle_control_stream0(s, op);
        return 0;
    }
    struct stream *st = stream_find(s, f->stream);
    if (!strcmp(op, "exec") || !strcmp(op, "put") || !strcmp(op, "get")) {
        if (st)
            return protocol_error(s, "request on a stream that is still open");
        if (!strcmp(op, "exec")) {
            if (s->pid1 && !s->setup_done) {
                send_error(s, f->stream, "exec before setup", 0);
                return 0;
            }
            st = stream_new(s, f->stream, S_EXEC);
            if (!st)
                send_error(s, f->stream, "too many streams", 0);
            else if (exec_start(s, st, &doc))
                stream_free(s, st);
        } else {
            file_start(s, f->stream, !strcmp(op, "put") ? S_PUT : S_GET, &doc);
        }
        return 0;
    }
    if (!strcmp(op, "ls") || !strcmp(op, "stat") || !strcmp(op, "mkdir") || !strcmp(op, "rm") ||
        !strcmp(op, "mv")) {
        if (st)
            return protocol_error(s, "request on a stream that is still open");
        fs_request(s, f->stream, op, &doc);
        return 0;
    }
    if (!strcmp(op, "signal")) {
        int64_t sig;
        if (json_int(&doc, json_get(&doc, 0, "signal"), 1, 64, &sig))
            return protocol_error(s, "signal: a number 1..64 is required");
        /* group: the process's whole session (each exec is a session leader) */
        int group = json_bool(&doc, json_get(&doc, 0, "group")) == 1;
        if (st && st->kind == S_EXEC && !st->exited && st->pid > 0)
            kill(group ? -st->pid : st->pid, (int)sig);
        return 0;
    }
    if (!strcmp(op, "resize")) {
        int64_t rows, cols;
        if (json_int(&doc, json_get(&doc, 0, "rows"), 0, 65535, &rows) ||
            json_int(&doc, json_get(&doc, 0, "cols"), 0, 65535, &cols))
            return protocol_error(s, "resize: rows and cols 0..65535 are required");
        if (st && st->tty && st->out_fd[CH_OUT] >= 0) {
            struct winsize ws = { .ws_row = rows, .ws_col = cols };
            ioctl(st->out_fd[CH_OUT], TIOCSWINSZ, &ws);
        }
        return 0;
    }
    /* a stream that ended may still get a late message: that is not the host's fault */
    if (st)
        send_error(s, f->stream, "unknown operation", 0);
    return 0;
}

static int handle_data(struct session *s, const struct frame *f)
{
    struct stream *st = stream_find(s, f->stream);
    if (f->chan != CH_IN)
        return protocol_error(s, "host data on an output channel");
    if (!st)
        return 0;      /* the stream ended while these bytes were on the way */
    if (f->len > st->in_allowed)
        return protocol_error(s, "host sent more bytes than its credit");
    st->in_allowed -= f->len;
    if (st->in_eof)
        return protocol_error(s, "host data after its EOF");
    if (st->kind == S_PUT) {
        const uint8_t *p = f->payload;
        uint32_t left = f->len;
        while (left && st->in_fd >= 0) {
            ssize_t n = write(st->in_fd, p, left);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                char why[128];
                snprintf(why, sizeof(why), "write: %s", strerror(n < 0 ? errno : EIO));
                send_error(s, st->id, why, 0);
                stream_free(s, st);
                return 0;
            }
            p += n, left -= n, st->bytes += n;
        }
        st->in_allowed += f->len;
        return send_credit(s, st->id, CH_IN, f->len);
    }
    if (st->kind != S_EXEC || st->in_fd < 0) {
        st->in_allowed += f->len;       /* nobody reads it: drop, keep the host going */
        return send_credit(s, st->id, CH_IN, f->len);
    }
    if (st->in_off + st->in_len + f->len > WINDOW) {
        memmove(st->inbuf, st->inbuf + st->in_off, st->in_len);
        st->in_off = 0;
    }
    memcpy(st->inbuf + st->in_off + st->in_len, f->payload, f->len);
    st->in_len += f->len;
    return 0;
}

static int handle_frame(struct session *s, const struct frame *f)
{
    if (!s->hello_done) {
        int64_t v;
        if (f->type != T_HELLO)
            return protocol_error(s, "first frame is not HELLO");
        if (json_parse(&doc, (const char *)f->payload, f->len) ||
            json_int(&doc, json_get(&doc, 0, "version"), 0, 1 << 30, &v))
            return protocol_error(s, "HELLO without a version");
        if (v != PROTO_VERSION) {
            send_error(s, 0, "unsupported protocol version", 0);
            return protocol_error(s, "unsupported protocol version");
        }
        s->hello_done = 1;
        return 0;
    }
    struct stream *st;
    switch (f->type) {
    case T_HELLO:
        return protocol_error(s, "second HELLO");
    case T_CONTROL:
        return handle_control(s, f);
    case T_DATA:
        return handle_data(s, f);
    case T_EOF:
        if (f->chan != CH_IN)
            return protocol_error(s, "host EOF on an output channel");
        st = stream_find(s, f->stream);
        if (!st)
            return 0;
        st->in_eof = 1;
        if (st->kind == S_PUT) {
            int rc = close(st->in_fd);
            st->in_fd = -1;
            if (rc < 0)
                send_error(s, st->id, strerror(errno), 0);
            else
                send_ok(s, st->id, "size", (int64_t)st->bytes);
            stream_free(s, st);
        } else if (st->in_len == 0 && !st->tty) {
            close_fd(&st->in_fd);
        }
        return 0;
    case T_CREDIT: {
        uint32_t n = (uint32_t)f->payload[0] << 24 | (uint32_t)f->payload[1] << 16 |
                     (uint32_t)f->payload[2] << 8 | f->payload[3];
        if (f->chan == CH_IN)
            return protocol_error(s, "host credit for its own channel");
        st = stream_find(s, f->stream);
        if (!st)
            return 0;
        if ((uint64_t)st->credit[f->chan] + n > 0x7fffffffu)
            return protocol_error(s, "credit overflow");
        st->credit[f->chan] += n;
        return 0;
    }
    }
    return protocol_error(s, "unexpected frame");
}

/* read what the socket has; <0 ends the session */
static int session_read(struct session *s)
{
    size_t cap = HDR_LEN + MAX_PAYLOAD;
    ssize_t n = read(s->fd, s->in + s->in_len, cap - s->in_len);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -errno;
    if (n == 0)
        return -EPIPE;      /* the host closed the connection */
    s->in_len += n;
    size_t off = 0;
    for (;;) {
        struct frame f;
        size_t used;
        const char *why = NULL;
        int rc = frame_parse(s->in + off, s->in_len - off, &f, &used, &why);
        if (rc < 0)
            return protocol_error(s, why);
        if (rc == 0)
            break;
        rc = handle_frame(s, &f);
        if (rc)
            return rc;
        off += used;
    }
    memmove(s->in, s->in + off, s->in_len - off);
    s->in_len -= off;
    return 0;
}

/* --- process I/O --- */

static void pump_out(struct session *s, struct stream *st, int ch)
{
    static uint8_t buf[DATA_CHUNK];
    uint32_t want = st->credit[ch] < DATA_CHUNK ? st->credit[ch] : DATA_CHUNK;
    ssize_t n = read(st->out_fd[ch], buf, want);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 0) {
        outq_frame(&s->out, st->id, T_DATA, ch, buf, n);
        st->credit[ch] -= n;
        st->bytes += n;
        return;
    }
    /* 0 = EOF; EIO = the pty's other side is closed */
    close_fd(&st->out_fd[ch]);
    if (st->tty)
        close_fd(&st->in_fd);
    outq_frame(&s->out, st->id, T_EOF, ch, NULL, 0);
    st->out_done[ch] = 1;
    stream_progress(s, st);
}

static void pump_in(struct session *s, struct stream *st)
{
    ssize_t n = write(st->in_fd, st->inbuf + st->in_off, st->in_len);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n < 0) {
        /* the process closed its stdin: drop what is left, keep granting */
        n = st->in_len;
        close_fd(&st->in_fd);
    }
    st->in_off += n;
    st->in_len -= n;
    st->in_allowed += n;
    send_credit(s, st->id, CH_IN, n);
    if (st->in_len == 0) {
        st->in_off = 0;
        if (st->in_eof && !st->tty)
            close_fd(&st->in_fd);
    }
}

static void reap(struct session *s, int sfd)
{
    struct signalfd_siginfo si;
    while (read(sfd, &si, sizeof(si)) > 0)
        ;
    int ws;
    pid_t pid;
    while ((pid = waitpid(-1, &ws, WNOHANG)) > 0)
        exec_reaped(s, pid, ws);
}

/*
 * Linux gives up a vsock connect() after 2 s of guest time; on a loaded host (many VMs, a
 * nested or emulated one) the answer can take longer, and the host may then accept the
 * attempt we gave up on (we answer its late completion with a reset: the host drops that
 * connection and takes the next, see kvmvm/agent/accept.py). A longer wait makes that rare.
 */
#define CONNECT_TIMEOUT_S 20
#define CONNECT_TRIES_S   60        /* give up (power off) after this long */
#ifndef SO_VM_SOCKETS_CONNECT_TIMEOUT
#define SO_VM_SOCKETS_CONNECT_TIMEOUT 6     /* struct timeval (the 64-bit "old" one) */
#endif

static long now_ms(void);

static int vsock_connect(void)
{
    long give_up = now_ms() + CONNECT_TRIES_S * 1000L;
    for (int i = 0;; i++) {
        int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            agent_log("vsock socket: %s", strerror(errno));
            return -1;
        }
        struct timeval tv = { .tv_sec = CONNECT_TIMEOUT_S };
        if (setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof(tv)) < 0 && i == 0)
            agent_log("vsock connect timeout: %s (the kernel's 2 s stays)", strerror(errno));
        struct sockaddr_vm_ a = { .svm_family = AF_VSOCK, .svm_port = AGENT_VSOCK_PORT, .svm_cid = HOST_CID };
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
            return fd;
        int e = errno;
        close(fd);
        if (now_ms() >= give_up) {
            agent_log("connecting to the host (vsock port %d): %s; %d tries", AGENT_VSOCK_PORT, strerror(e), i + 1);
            return -1;
        }
        if (e == ETIMEDOUT)
            agent_log("connecting to the host (vsock port %d) timed out; trying again", AGENT_VSOCK_PORT);
        usleep(25000);
    }
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* serves the session until it ends: 0 (power off after the main process), or -errno */
static int serve(struct session *s, int sfd)
{
    struct pollfd pfd[2 + 3 * MAX_STREAMS];
    struct stream *who[2 + 3 * MAX_STREAMS];
    int what[2 + 3 * MAX_STREAMS];
    long deadline = 0;

    for (;;) {
        int rc = outq_flush(&s->out, s->fd);
        if (rc < 0)
            return rc;
        if (s->main_exited && !deadline)
            deadline = now_ms() + POWEROFF_GRACE_MS;
        int n = 0;
        pfd[n] = (struct pollfd){ .fd = s->fd, .events = POLLIN | (s->out.len ? POLLOUT : 0) };
        who[n++] = NULL;
        pfd[n] = (struct pollfd){ .fd = sfd, .events = POLLIN };
        who[n++] = NULL;
        for (struct stream *st = s->streams; st; st = st->next) {
            for (int ch = CH_OUT; ch <= CH_ERR; ch++)
                if (st->out_fd[ch] >= 0 && st->credit[ch] && s->out.len < OUT_HIGH) {
                    pfd[n] = (struct pollfd){ .fd = st->out_fd[ch], .events = POLLIN };
                    who[n] = st, what[n++] = ch;
                }
            if (st->kind == S_EXEC && st->in_fd >= 0 && st->in_len) {
                pfd[n] = (struct pollfd){ .fd = st->in_fd, .events = POLLOUT };
                who[n] = st, what[n++] = CH_IN;
            }
        }
        int timeout = -1;
        if (deadline) {
            long left = deadline - now_ms();
            if (left <= 0)
                return 0;
            timeout = (int)left;
        }
        rc = poll(pfd, n, timeout);
        if (rc < 0 && errno != EINTR)
            return -errno;
        if (rc <= 0)
            continue;
        if (pfd[1].revents)
            reap(s, sfd);
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR))
            if ((rc = session_read(s)) < 0)
                return rc;
        /* streams may have ended above: look each one up again before using it */
        for (int i = 2; i < n; i++) {
            if (!pfd[i].revents)
                continue;
            struct stream *st;
            for (st = s->streams; st && st != who[i]; st = st->next)
                ;
            if (!st)
                continue;
            if (what[i] == CH_IN) {
                if (st->in_fd == pfd[i].fd)
                    pump_in(s, st);
            } else if (st->out_fd[what[i]] == pfd[i].fd) {
                pump_out(s, st, what[i]);
            }
        }
    }
}

static void send_hello(struct session *s)
{
    char hello[320];
    snprintf(hello, sizeof(hello),
             "{\"version\":%d,\"agent\":\"kvmvm-agent/1\",\"window\":%u,\"max_frame\":%u,"
             "\"capabilities\":[\"exec\",\"tty\",\"signal\",\"resize\",\"files\",\"setup\",\"multi-exec\","
             "\"fs\",\"reseed\",\"reconnect\"]}",
             PROTO_VERSION, WINDOW, MAX_PAYLOAD);
    outq_frame(&s->out, 0, T_HELLO, 0, hello, strlen(hello));
}

/* The connection ended by a vsock transport reset (the host restored a snapshot of this VM:
 * its old connection is gone), not by the host closing it (which ends the VM). */
static int transport_reset(struct session *s)
{
    int err = 0;
    socklen_t len = sizeof(err);
    return getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == ECONNRESET;
}

/* Forget the old connection and its streams; their processes keep running (as orphans of
 * the session: their output has nowhere to go). The new host session starts with HELLO. */
static void session_detach(struct session *s)
{
    close_fd(&s->fd);
    while (s->streams)
        stream_free(s, s->streams);
    outq_free(&s->out);
    s->in_len = 0;
    s->hello_done = 0;
}

int main(int argc, char **argv)
{
    struct session s = { .fd = -1 };
    s.pid1 = getpid() == 1;
    signal(SIGPIPE, SIG_IGN);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGCHLD);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    int sfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);

    if (s.pid1) {
        early_mounts();
        boot_signal();
        s.fd = vsock_connect();
        if (s.fd < 0)
            power_off();
    } else if (argc == 3 && !strcmp(argv[1], "--fd")) {
        s.fd = atoi(argv[2]);
        fcntl(s.fd, F_SETFD, FD_CLOEXEC);
    } else {
        fprintf(stderr, "usage: kvmvm-agent --fd N   (as the VM's init it takes no arguments)\n");
        return 2;
    }
    fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL) | O_NONBLOCK);
    s.in = malloc(HDR_LEN + MAX_PAYLOAD);
    if (!s.in || sfd < 0) {
        agent_log("out of memory at start");
        return 1;
    }
    send_hello(&s);
    while (serve(&s, sfd) < 0 && s.pid1 && s.setup_done && transport_reset(&s)) {
        agent_log("the host's vsock transport was reset (a snapshot was restored): reconnecting");
        session_detach(&s);
        if ((s.fd = vsock_connect()) < 0)
            break;
        fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL) | O_NONBLOCK);
        send_hello(&s);
    }

    /* the session ended: nothing may outlive it */
    if (s.pid1) {
        kill(-1, SIGKILL);
        power_off();
    }
    for (struct stream *st = s.streams; st; st = st->next)
        if (st->kind == S_EXEC && st->pid > 0 && !st->exited)
            kill(st->pid, SIGKILL);
    while (s.streams)
        stream_free(&s, s.streams);
    outq_free(&s.out);
    free(s.in);
    return 0;
}
