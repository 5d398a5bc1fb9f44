/* kvmvm-agent: shared state of the session, its streams, and the helpers each part uses. */
#ifndef AGENT_H
#define AGENT_H

#include <stdint.h>
#include <sys/types.h>

#include "json.h"
#include "proto.h"

enum { S_EXEC = 1, S_PUT, S_GET };

struct stream {
    struct stream *next;
    uint32_t id;
    int kind;
    pid_t pid;
    int tty, is_main;
    int in_fd;                  /* child's stdin (pipe / pty master), or the put file; -1 */
    int out_fd[3];              /* [CH_OUT], [CH_ERR]: what we read and send; -1 when done */
    uint32_t credit[3];         /* bytes we may still send on CH_OUT / CH_ERR */
    uint8_t *inbuf;             /* CH_IN bytes received, not yet written (WINDOW bytes) */
    uint32_t in_off, in_len;
    uint32_t in_allowed;        /* CH_IN bytes the host may still send */
    int in_eof;                 /* the host sent EOF on CH_IN */
    int out_done[3];            /* EOF sent on CH_OUT / CH_ERR */
    int exited, wstatus;
    uint64_t bytes;             /* put/get: file bytes so far */
};

struct session {
    int fd;
    int pid1;                   /* we are the VM's init (else: a host process for tests) */
    int hello_done;
    int setup_done;
    int main_exited;            /* the container's main process ended: power off soon */
    uint8_t *in;
    size_t in_len;
    struct outq out;
    struct stream *streams;
    int nstreams;
};

/* agent.c */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int send_control(struct session *s, uint32_t stream, const char *json);
int send_error(struct session *s, uint32_t stream, const char *reason, int code);
struct stream *stream_new(struct session *s, uint32_t id, int kind);

/* exec.c: start a process for an exec request; 0, or an error already sent */
int exec_start(struct session *s, struct stream *st, const struct jdoc *d);
void exec_reaped(struct session *s, pid_t pid, int wstatus);

/* fs.c: ls / stat / mkdir / rm / mv on stream id, answered at once */
int fs_request(struct session *s, uint32_t id, const char *op, const struct jdoc *d);

/* container.c: reseed after a restore (hostname, clock, entropy); NULL or a reason */
const char *reseed(const struct jdoc *d);

/* container.c: mount the image and switch root (PID 1 only); NULL or a reason */
const char *container_setup(const struct jdoc *d, char *why, size_t cap);
void early_mounts(void);
void boot_signal(void);
void power_off(void);

#endif
