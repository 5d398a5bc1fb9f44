/* seccomp: per-thread system-call allowlists (seccomp.c, docs/security.md) */

/* levels, as Firecracker's --seccomp-level */
#define KVMVM_SECCOMP_OFF       0   /* no filters */
#define KVMVM_SECCOMP_BASIC     1   /* allowlist of system calls, arguments unchecked */
#define KVMVM_SECCOMP_ADVANCED  2   /* the allowlist with argument checks (the default) */

/* thread classes: each gets its own allowlist */
#define KVMVM_SC_VCPU        0
#define KVMVM_SC_WORKER      1   /* a virtio device's data path */
#define KVMVM_SC_SERIAL_OUT  2   /* the console writer */
#define KVMVM_SC_SERIAL_IN   3   /* the console reader */
#define KVMVM_SC_MAIN        4   /* the Python thread that runs, waits for and tears down the VM */
#define KVMVM_SC_SPAWNER     5   /* starts worker threads for the vCPUs */
#define KVMVM_SC_NCLASSES    6

/* the exit status of a process stopped for a forbidden system call (as Firecracker's) */
#define KVMVM_SECCOMP_EXIT_STATUS 148

/* Filter this VM's threads at level (before kvmvm_vm_start); test_hook >= 0 (a class)
   makes that class's thread make a forbidden call once its filter is in place. */
int kvmvm_vm_set_seccomp(kvmvm_vm *vm, int level, int test_hook, int py_devices);
/* Filter the calling (main) thread at level, for good (a process that ends with the VM). */
int kvmvm_seccomp_main(int level, int test_hook);
/* The calls a class adds to the common list (cls == KVMVM_SC_NCLASSES: the common list),
   as "name name ..." (docs and tests); -errno */
int kvmvm_seccomp_describe(int cls, int level, char *buf, int len);
