/*
 * seccomp: one system-call allowlist per thread class (vCPU, virtio worker, console
 * writer, console reader, main, spawner), compiled to BPF once (libseccomp) and installed
 * by each thread on itself as it starts (no TSYNC: the classes differ). A call outside the list traps (SIGSYS); the handler
 * writes one line naming the call and the thread class and ends the process with
 * KVMVM_SECCOMP_EXIT_STATUS. Level 1 checks call numbers, level 2 also arguments
 * (ioctl requests, socket families, fcntl commands, mmap/mprotect without PROT_EXEC,
 * clone only for threads, tgkill only within this process). docs/security.md lists why.
 *
 * Seccomp filters are inherited by new threads and only ever narrow, so worker threads
 * are not created by the (filtered) vCPU that activates the device but by a spawner
 * thread whose list is the worker's plus what creating a thread takes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <linux/filter.h>
#include <malloc.h>
#include <sys/sysinfo.h>
#include <linux/seccomp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include "internal.h"
#include "seccomp_threads.h"

static const char *const class_names[KVMVM_SC_NCLASSES] = {
    "vcpu", "worker", "serial-writer", "serial-reader", "main", "spawner",
};

/* for the SIGSYS line; initial-exec: a dlopen'ed library's TLS is otherwise allocated by
   malloc on a thread's first access, which may be in the handler (not async-signal-safe) */
static __thread int my_class __attribute__((tls_model("initial-exec"))) = -1;
#define NR_NAMES 512
static const char *sc_names[NR_NAMES];  /* resolved before any filter: the handler cannot allocate */

/* --- the lists --- */
static const char *const common_calls[] = {
    "read", "write", "close", "futex", "exit", "exit_group", "rt_sigreturn",
    "rt_sigprocmask", "madvise", "munmap", "brk", "clock_gettime", "clock_nanosleep",
    "nanosleep", "gettid", "getpid", "sched_yield", "restart_syscall", "mmap", "mprotect",
    "tgkill", NULL,
};
static const char *const vcpu_calls[] = {
    /* KVM_RUN; device activation from an MMIO write: eventfds, ioeventfd/irqfd, the
       worker's epoll set; a reset joins the worker */
    "ioctl", "eventfd2", "epoll_create1", "epoll_ctl", NULL,
};
static const char *const worker_calls[] = {
    "epoll_wait", "epoll_ctl", "poll", "readv", "writev", "preadv", "pwritev", "fdatasync",
    "getrandom", "socket", "connect", "accept4", "sendto", "shutdown", "ioctl",
    "sendmsg",             /* passt's stream backend (net_stream.c): frames gathered in one call */
    "timerfd_settime",     /* the rate limiters (rate_limiter.c) re-arm their timers */
    NULL,
};
static const char *const serial_out_calls[] = { "poll", NULL };
static const char *const serial_in_calls[] = { "poll", "ioctl", NULL };
/* a new thread starting, and filtering itself (no_new_privs, then the filter) */
static const char *const thread_start_calls[] = {
    "clone", "set_robust_list", "rseq", "sigaltstack", "prctl", "seccomp", NULL,
};
/* CPython running, waiting for and tearing down the VM, then printing and exiting:
   read-only opens (imports, /proc), no exec, no new sockets, no namespaces */
static const char *const main_calls[] = {
    "ioctl", "openat", "fcntl", "lseek", "fstat", "newfstatat", "getdents64", "getcwd",
    "readlink", "pread64", "rt_sigaction", "sigaltstack", "poll", "getrandom", "dup",
    "mremap", "unlink", "epoll_ctl", "kill",
    "wait4",        /* reaping the VM's passt (kvmvm/net/passt.py) after the VM ends */
    NULL,
};

static const unsigned long vcpu_ioctls[] = {
    KVM_RUN, KVM_GET_REGS, KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, KVM_IOEVENTFD, KVM_IRQFD, 0,
};
static const unsigned long worker_ioctls[] = { KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, SIOCOUTQ, 0 };
static const unsigned long serial_in_ioctls[] = { KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, TCGETS, 0 };
static const unsigned long main_ioctls[] = {
    /* the terminal (isatty, raw mode and its restore); device teardown */
    TCGETS, TCSETS, TCSETSW, TCSETSF, TIOCGWINSZ, FIONBIO, FIOCLEX,
    KVM_IOEVENTFD, KVM_IRQFD, KVM_IRQ_LINE, KVM_IRQ_LINE_STATUS, 0,
};
static const int main_fcntls[] = {
    F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC, F_DUPFD, -1,
};

static const char *const *class_calls[KVMVM_SC_NCLASSES] = {
    [KVMVM_SC_VCPU] = vcpu_calls,
    [KVMVM_SC_WORKER] = worker_calls,
    [KVMVM_SC_SERIAL_OUT] = serial_out_calls,
    [KVMVM_SC_SERIAL_IN] = serial_in_calls,
    [KVMVM_SC_MAIN] = main_calls,
    [KVMVM_SC_SPAWNER] = worker_calls,
};
static const unsigned long *const class_ioctls[KVMVM_SC_NCLASSES] = {
    [KVMVM_SC_VCPU] = vcpu_ioctls,
    [KVMVM_SC_WORKER] = worker_ioctls,
    [KVMVM_SC_SERIAL_IN] = serial_in_ioctls,
    [KVMVM_SC_MAIN] = main_ioctls,
    [KVMVM_SC_SPAWNER] = worker_ioctls,
};

/* --- building a filter --- */

static int in_list(const char *const *l, const char *name)
{
    for (; l && *l; l++)
        if (!strcmp(*l, name))
            return 1;
    return 0;
}

/* Add `name` to ctx with level-2 argument checks where they apply. */
static int allow(scmp_filter_ctx ctx, int cls, int level, const char *name)
{
    int nr = seccomp_syscall_resolve_name(name);
    int rc = 0;
    if (nr == __NR_SCMP_ERROR)
        return 0;       /* not on this architecture (e.g. open on arm64) */
    if (level < KVMVM_SECCOMP_ADVANCED)
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    if (!strcmp(name, "ioctl")) {
        const unsigned long *l = class_ioctls[cls];
        for (; l && *l && rc == 0; l++)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                  SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, *l));
        return rc;
    }
    if (!strcmp(name, "fcntl")) {
        for (const int *c = main_fcntls; *c >= 0 && rc == 0; c++)
            rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A1(SCMP_CMP_EQ, *c));
        return rc;
    }
    if (!strcmp(name, "socket"))    /* vsock's host side: Unix sockets only */
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
    if (!strcmp(name, "mmap") || !strcmp(name, "mprotect"))     /* never executable */
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
    if (!strcmp(name, "clone"))     /* threads, not processes */
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD));
    if (!strcmp(name, "tgkill"))    /* signals to this process's own threads */
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, getpid()));
    if (!strcmp(name, "prctl")) {   /* a new thread names itself, then filters itself */
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, PR_SET_NAME));
        return rc ? rc : seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                          SCMP_A0(SCMP_CMP_EQ, PR_SET_NO_NEW_PRIVS));
    }
    if (!strcmp(name, "seccomp"))
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                SCMP_A0(SCMP_CMP_EQ, SECCOMP_SET_MODE_FILTER));
    if (!strcmp(name, "kill"))      /* Python's signal tests send to itself */
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1, SCMP_A0(SCMP_CMP_EQ, getpid()));
    if (!strcmp(name, "openat"))    /* read-only: no creating, truncating or writing */
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                SCMP_A2(SCMP_CMP_MASKED_EQ, O_ACCMODE | O_CREAT | O_TRUNC, O_RDONLY));
    if (!strcmp(name, "open"))
        return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 1,
                                SCMP_A1(SCMP_CMP_MASKED_EQ, O_ACCMODE | O_CREAT | O_TRUNC, O_RDONLY));
    return seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
}

static int add_list(scmp_filter_ctx ctx, int cls, int level, const char *const *l)
{
    for (; l && *l; l++) {
        int rc = allow(ctx, cls, level, *l);
        if (rc < 0 && rc != -EEXIST)
            return rc;
    }
    return 0;
}

/* The filter of a class; py: the class may also run Python (slow-path devices). */
static int build(scmp_filter_ctx *out, int cls, int level, int py)
{
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
    int rc;
    if (!ctx)
        return -ENOMEM;
    /* a binary tree of call numbers, not a list: each thread installs its filter as it
       starts, and the kernel runs the filter over every call number then (its cache of
       always-allowed calls); a tree makes that, and each later check, shorter */
    (void)seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
    rc = add_list(ctx, cls, level, common_calls);
    if (!rc)
        rc = add_list(ctx, cls, level, class_calls[cls]);
    if (!rc && (cls == KVMVM_SC_SPAWNER || cls == KVMVM_SC_MAIN || py))
        rc = add_list(ctx, cls, level, thread_start_calls);
    if (!rc && py)
        rc = add_list(ctx, KVMVM_SC_MAIN, level, main_calls);
    /* clone3's flags live in memory a filter cannot read: ENOSYS makes glibc use clone */
    if (!rc && (cls == KVMVM_SC_SPAWNER || cls == KVMVM_SC_MAIN || py))
        rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
    if (rc < 0) {
        seccomp_release(ctx);
        return rc;
    }
    *out = ctx;
    return 0;
}

/* --- the report --- */

static void put(char **p, char *end, const char *s)
{
    while (*s && *p < end)
        *(*p)++ = *s++;
}

static void put_num(char **p, char *end, long v)
{
    char tmp[24];
    int n = 0;
    if (v < 0) { put(p, end, "-"); v = -v; }
    do { tmp[n++] = '0' + v % 10; v /= 10; } while (v && n < (int)sizeof(tmp));
    while (n && *p < end)
        *(*p)++ = tmp[--n];
}

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
    char line[192], *p = line, *end = line + sizeof(line) - 1;
    int nr = si->si_syscall;
    const char *name = nr >= 0 && nr < NR_NAMES ? sc_names[nr] : NULL;
    (void)sig; (void)uc;
    put(&p, end, "kvmvm: seccomp: the ");
    put(&p, end, my_class >= 0 ? class_names[my_class] : "unfiltered");
    put(&p, end, " thread made a forbidden system call: ");
    put(&p, end, name ? name : "?");
    put(&p, end, " (");
    put_num(&p, end, nr);
    put(&p, end, "); stopping (exit status ");
    put_num(&p, end, KVMVM_SECCOMP_EXIT_STATUS);
    put(&p, end, ")\n");
    (void)!write(2, line, p - line);
    _exit(KVMVM_SECCOMP_EXIT_STATUS);
}

static void prepare_once(void)
{
    /* glibc's malloc sizes its arena limit from /sys/devices/system/cpu/online the first time
       a thread needs a ninth arena: a filtered thread must not be the one to open it. The
       same limit glibc would compute (8 per CPU), fixed now while opening is allowed. */
    mallopt(M_ARENA_MAX, 8 * (get_nprocs() > 0 ? get_nprocs() : 1));
    for (int i = 0; i < NR_NAMES; i++)
        sc_names[i] = seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, i);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSYS, &sa, NULL);
}

static void prepare(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, prepare_once);
}

static void forbidden_call(void)
{
    /* what a compromised thread might try first: a network socket */
    syscall(SYS_socket, AF_INET, SOCK_STREAM, 0);
}

/* --- compiled programs: built once per process (and level), loaded by each thread with
   one system call, so a starting thread neither allocates nor runs libseccomp --- */

struct prog {
    struct sock_fprog fprog;
    int rc;             /* 0 once built, -errno if it could not be */
};

static pthread_mutex_t progs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct prog progs[KVMVM_SECCOMP_ADVANCED + 1][2][KVMVM_SC_NCLASSES];
static pid_t progs_pid;     /* the level-2 lists name this process's pid (tgkill, kill) */

static int compile(struct prog *p, int cls, int level, int py)
{
    scmp_filter_ctx ctx;
    int rc = build(&ctx, cls, level, py);
    if (rc < 0)
        return rc;
    int fd = memfd_create("kvmvm-seccomp", MFD_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto out;
    }
    rc = seccomp_export_bpf(ctx, fd);
    off_t len = rc < 0 ? -1 : lseek(fd, 0, SEEK_END);
    if (rc == 0 && (len <= 0 || len % sizeof(struct sock_filter) || len > 65535 * 8))
        rc = -EINVAL;
    if (rc == 0) {
        p->fprog.filter = malloc(len);
        if (!p->fprog.filter)
            rc = -ENOMEM;
        else if (pread(fd, p->fprog.filter, len, 0) != len)
            rc = -EIO;
        p->fprog.len = len / sizeof(struct sock_filter);
    }
    close(fd);
out:
    seccomp_release(ctx);
    return rc;
}

/* The program of (cls, level, py), compiled on first use; NULL and *err on failure. */
static const struct sock_fprog *program(int cls, int level, int py, int *err)
{
    struct prog *p = &progs[level][!!py][cls];
    pthread_mutex_lock(&progs_lock);
    if (progs_pid != getpid()) {    /* a forked child compiles its own */
        memset(progs, 0, sizeof(progs));
        progs_pid = getpid();
    }
    if (!p->fprog.filter && p->rc == 0)
        p->rc = compile(p, cls, level, py);
    pthread_mutex_unlock(&progs_lock);
    *err = p->rc;
    return p->rc < 0 ? NULL : &p->fprog;
}

/* Install the class's filter on the calling thread; -errno */
static int install(int cls, int level, int py, int hook)
{
    sigset_t sys;
    int rc;
#ifdef KVMVM_ASAN_BUILD
    /* the AddressSanitizer build (scripts/asan.sh, never installed) runs no filters: its
       runtime makes system calls of its own (sched_getaffinity, /proc reads) that no
       allowlist of kvmvm's names; the asan tier checks memory safety, test_seccomp the lists */
    (void)py;
    if (hook != cls)
        return 0;
#endif
    const struct sock_fprog *f = program(cls, level, py, &rc);
    if (!f)
        return rc;
    /* a blocked SIGSYS would kill silently: the kernel then uses the default action */
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    pthread_sigmask(SIG_UNBLOCK, &sys, NULL);
    my_class = cls;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, f) < 0)
        return -errno;
    if (hook == cls)
        forbidden_call();
    return 0;
}

void seccomp_thread_enter(struct kvmvm_vm *vm, int cls)
{
    if (!vm || vm->seccomp_level <= KVMVM_SECCOMP_OFF)
        return;
    int rc = install(cls, vm->seccomp_level, cls == KVMVM_SC_VCPU && vm->seccomp_py,
                     vm->seccomp_hook);
    if (rc < 0) {   /* never run unfiltered when filters were asked for */
        char line[128];
        int n = snprintf(line, sizeof(line), "kvmvm: seccomp: cannot filter the %s thread: %s\n",
                         class_names[cls], strerror(-rc));
        (void)!write(2, line, n);
        _exit(1);
    }
}

void seccomp_precompile(int level)
{
    int rc;
    if (level <= KVMVM_SECCOMP_OFF || level > KVMVM_SECCOMP_ADVANCED)
        return;
    for (int c = 0; c < KVMVM_SC_NCLASSES; c++)
        (void)program(c, level, 0, &rc);
    prepare();
}

int kvmvm_vm_set_seccomp(kvmvm_vm *vm, int level, int test_hook, int py_devices)
{
    if (level < KVMVM_SECCOMP_OFF || level > KVMVM_SECCOMP_ADVANCED || vm->started)
        return -EINVAL;
    /* every program is compiled before anything runs under one */
    for (int c = 0; level && c < KVMVM_SC_NCLASSES; c++) {
        int rc;
        if (!program(c, level, c == KVMVM_SC_VCPU && py_devices, &rc))
            return rc;
    }
    if (level)
        prepare();
    vm->seccomp_level = level;
    vm->seccomp_hook = test_hook;
    vm->seccomp_py = py_devices;
    return 0;
}

int kvmvm_seccomp_main(int level, int test_hook)
{
    if (level < KVMVM_SECCOMP_OFF || level > KVMVM_SECCOMP_ADVANCED)
        return -EINVAL;
    if (!level)
        return 0;
    prepare();
    return install(KVMVM_SC_MAIN, level, 0, test_hook);
}

int kvmvm_seccomp_describe(int cls, int level, char *buf, int len)
{
    const char *const *lists[2] = { NULL, NULL };
    int n = 0;
    if (cls < 0 || cls > KVMVM_SC_NCLASSES || len < 1)
        return -EINVAL;
    lists[0] = cls == KVMVM_SC_NCLASSES ? common_calls : class_calls[cls];
    if (cls == KVMVM_SC_SPAWNER || cls == KVMVM_SC_MAIN)
        lists[1] = thread_start_calls;
    buf[0] = 0;
    for (int i = 0; i < 2; i++)
        for (const char *const *l = lists[i]; l && *l; l++) {
            if (i > 0 && in_list(lists[0], *l))
                continue;
            int w = snprintf(buf + n, len - n, "%s%s", n ? " " : "", *l);
            if (w < 0 || w >= len - n)
                return -ENOSPC;
            n += w;
        }
    (void)level;
    return n;
}

/* --- the spawner: creates worker threads on behalf of filtered threads --- */

struct spawn_req {
    pthread_t *thread;
    void *(*fn)(void *);
    void *arg;
    int done, rc;
    struct spawn_req *next;
};

struct spawner {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct spawn_req *head;
    int stop;
    pthread_t thread;
};

static void *spawner_main(void *arg)
{
    struct kvmvm_vm *vm = arg;
    struct spawner *sp = vm->spawner;
    sigset_t set;
    sigfillset(&set);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    seccomp_thread_enter(vm, KVMVM_SC_SPAWNER);
    pthread_mutex_lock(&sp->lock);
    for (;;) {
        while (!sp->head && !sp->stop)
            pthread_cond_wait(&sp->cond, &sp->lock);
        if (!sp->head)
            break;
        struct spawn_req *r = sp->head;
        sp->head = r->next;
        r->rc = pthread_create(r->thread, NULL, r->fn, r->arg);
        r->done = 1;
        pthread_cond_broadcast(&sp->cond);
    }
    pthread_mutex_unlock(&sp->lock);
    return NULL;
}

int seccomp_spawner_start(struct kvmvm_vm *vm)
{
    if (vm->seccomp_level <= KVMVM_SECCOMP_OFF || vm->spawner)
        return 0;
    struct spawner *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return -ENOMEM;
    pthread_mutex_init(&sp->lock, NULL);
    pthread_cond_init(&sp->cond, NULL);
    vm->spawner = sp;
    int rc = pthread_create(&sp->thread, NULL, spawner_main, vm);
    if (rc) {
        vm->spawner = NULL;
        free(sp);
        return -rc;
    }
    return 0;
}

void seccomp_spawner_stop(struct kvmvm_vm *vm)
{
    struct spawner *sp = vm->spawner;
    if (!sp)
        return;
    pthread_mutex_lock(&sp->lock);
    sp->stop = 1;
    pthread_cond_broadcast(&sp->cond);
    pthread_mutex_unlock(&sp->lock);
    pthread_join(sp->thread, NULL);
    vm->spawner = NULL;
    free(sp);
}

int thread_spawn(struct kvmvm_vm *vm, pthread_t *t, void *(*fn)(void *), void *arg)
{
    struct spawner *sp = vm ? vm->spawner : NULL;
    /* a filtered thread cannot create one: refuse rather than die on the filter */
    if (!sp && vm && vm->started && vm->seccomp_level > KVMVM_SECCOMP_OFF)
        return EPERM;
    if (!sp)
        return pthread_create(t, NULL, fn, arg);
    struct spawn_req r = { .thread = t, .fn = fn, .arg = arg };
    pthread_mutex_lock(&sp->lock);
    if (sp->stop) {
        pthread_mutex_unlock(&sp->lock);
        return EAGAIN;
    }
    r.next = sp->head;
    sp->head = &r;
    pthread_cond_broadcast(&sp->cond);
    while (!r.done)
        pthread_cond_wait(&sp->cond, &sp->lock);
    pthread_mutex_unlock(&sp->lock);
    return r.rc;
}
