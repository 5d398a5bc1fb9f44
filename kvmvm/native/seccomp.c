/*
 * seccomp filters for kvmvm's device threads: the virtio workers and the console writer
 * run only kvmvm's C code on guest-controlled input, so each gets an allowlist of exactly
 * the system calls that code makes (socket() only for AF_UNIX, ioctl() only KVM_IRQ_LINE).
 * A thread that makes any other call gets SIGSYS; the handler prints one line naming the
 * thread and the call's number and ends the process with status 159 (128 + SIGSYS).
 * vCPU threads and the main thread are not filtered: the Python slow path runs on them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static __thread char thread_name[16];

static const int device_calls[] = {
    /* data path */
    SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(readv), SCMP_SYS(writev),
    SCMP_SYS(pread64), SCMP_SYS(pwrite64), SCMP_SYS(preadv), SCMP_SYS(pwritev),
    SCMP_SYS(preadv2), SCMP_SYS(pwritev2), SCMP_SYS(fdatasync), SCMP_SYS(fsync),
    SCMP_SYS(getrandom), SCMP_SYS(close),
    SCMP_SYS(sendto), SCMP_SYS(recvfrom), SCMP_SYS(sendmsg), SCMP_SYS(recvmsg),
    SCMP_SYS(accept4), SCMP_SYS(connect), SCMP_SYS(shutdown),
    /* waiting */
    SCMP_SYS(epoll_wait), SCMP_SYS(epoll_pwait), SCMP_SYS(epoll_ctl), SCMP_SYS(poll),
    SCMP_SYS(ppoll), SCMP_SYS(futex), SCMP_SYS(clock_gettime), SCMP_SYS(clock_nanosleep),
    SCMP_SYS(nanosleep), SCMP_SYS(gettimeofday), SCMP_SYS(sched_yield),
    /* memory (malloc) and the thread's own life */
    SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(madvise), SCMP_SYS(mprotect), SCMP_SYS(brk),
    SCMP_SYS(mremap), SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(rt_sigreturn),
    SCMP_SYS(rt_sigprocmask), SCMP_SYS(restart_syscall), SCMP_SYS(sigaltstack),
    SCMP_SYS(gettid), SCMP_SYS(getpid), SCMP_SYS(tgkill),
};

static void on_sigsys(int sig, siginfo_t *si, void *uc)
{
    static atomic_int reported;
    char line[160];
    (void)sig; (void)uc;
    if (atomic_exchange(&reported, 1))      /* one line, whichever thread came first */
        syscall(SYS_exit_group, 128 + SIGSYS);
    int n = snprintf(line, sizeof(line),
                     "kvmvm: seccomp: thread %s made a forbidden system call %d; stopping "
                     "(--seccomp-level 0 turns the filters off)\n",
                     thread_name[0] ? thread_name : "?", si->si_syscall);
    if (n > 0 && write(2, line, (size_t)n) < 0) { /* nothing more to do */ }
    syscall(SYS_exit_group, 128 + SIGSYS);
}

static void install_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigsys;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSYS, &sa, NULL);
}

/* Load the device-thread filter on the calling thread: 0, or -errno. */
int seccomp_device_thread(const char *name)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, install_handler);
    snprintf(thread_name, sizeof(thread_name), "%s", name);
    sigset_t sys;       /* a blocked SIGSYS would kill without a word */
    sigemptyset(&sys);
    sigaddset(&sys, SIGSYS);
    pthread_sigmask(SIG_UNBLOCK, &sys, NULL);

    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_TRAP);
    int rc = ctx ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < sizeof(device_calls) / sizeof(device_calls[0]); i++)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, device_calls[i], 0);
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_EQ, AF_UNIX));
    if (rc == 0)
        rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
                              SCMP_A1(SCMP_CMP_EQ, KVM_IRQ_LINE));
    if (rc == 0)
        rc = seccomp_load(ctx);    /* sets no_new_privs for this thread */
    if (ctx)
        seccomp_release(ctx);
    /* a test hook: prove that a forbidden call from a device thread is stopped */
    if (rc == 0 && getenv("KVMVM_SECCOMP_SELFTEST"))
        syscall(SYS_getppid);
    return rc;
}

int kvmvm_vm_set_seccomp(kvmvm_vm *vm, int level)
{
    if (level < 0 || level > 1)
        return -EINVAL;
    vm->seccomp_level = level;
    return 0;
}
