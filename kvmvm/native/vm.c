/*
 * The VM: /dev/kvm, the VM fd, guest RAM slots, vCPU threads, and how a VM stops.
 */
#define _GNU_SOURCE     /* pthread_timedjoin_np */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "seccomp_threads.h"

#define TSS_ADDR       0xfffbd000ULL
#define IDENTITY_ADDR  0xfffbc000ULL

int64_t kvmvm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

void *pages_alloc(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void pages_free(void *p, size_t len)
{
    if (p)
        munmap(p, len);
}

static int kick_signal(void) { return SIGRTMIN + 2; }

int vm_kick_signal(void) { return kick_signal(); }

#define JOIN_BUSY 1
#define JOIN_DONE 2

static void kick_handler(int sig) { (void)sig; }

static void kick_handler_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kick_handler;   /* no SA_RESTART: KVM_RUN returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(kick_signal(), &sa, NULL);
}

static void install_kick_handler(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, kick_handler_init);
}

static int check_ext(int kvm_fd, int cap)
{
    int r = ioctl(kvm_fd, KVM_CHECK_EXTENSION, cap);
    return r < 0 ? 0 : r;
}

/* The in-kernel irqchip (PIC + IOAPIC + LAPICs); without one, no PIT either. */
static void vm_add_irqchip(struct kvmvm_vm *vm)
{
    if (vm->caps.irqchip && ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        vm->caps.irqchip = 0;
    if (!vm->caps.irqchip)
        vm->caps.pit2 = 0;
}

static kvmvm_vm *vm_new(const char *dev_path, int *err, int irqchip_now)
{
    struct kvmvm_vm *vm = calloc(1, sizeof(*vm));
    int e = 0;

    if (!vm) { e = -ENOMEM; goto fail; }
    vm->kvm_fd = vm->vm_fd = -1;
    bus_init_embedded(&vm->pio);
    bus_init_embedded(&vm->mmio);
    pthread_mutex_init(&vm->lock, NULL);
    pthread_cond_init(&vm->cond, NULL);
    pthread_cond_init(&vm->pause_cond, NULL);
    pthread_mutex_init(&vm->pause_lock, NULL);

    vm->kvm_fd = open(dev_path ? dev_path : "/dev/kvm", O_RDWR | O_CLOEXEC);
    if (vm->kvm_fd < 0) { e = -errno; goto fail; }
    vm->caps.api_version = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
    if (vm->caps.api_version != KVM_API_VERSION) { e = -ENOTSUP; goto fail; }
    vm->caps.irqchip = check_ext(vm->kvm_fd, KVM_CAP_IRQCHIP);
    vm->caps.pit2 = check_ext(vm->kvm_fd, KVM_CAP_PIT2);
    vm->caps.irqfd = check_ext(vm->kvm_fd, KVM_CAP_IRQFD);
    vm->caps.ioeventfd = check_ext(vm->kvm_fd, KVM_CAP_IOEVENTFD);
    vm->caps.immediate_exit = check_ext(vm->kvm_fd, KVM_CAP_IMMEDIATE_EXIT);
    vm->caps.max_vcpus = check_ext(vm->kvm_fd, KVM_CAP_MAX_VCPUS);
    if (vm->caps.max_vcpus <= 0)
        vm->caps.max_vcpus = check_ext(vm->kvm_fd, KVM_CAP_NR_VCPUS);
    vm->caps.nr_memslots = check_ext(vm->kvm_fd, KVM_CAP_NR_MEMSLOTS);

    vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
    if (vm->vm_fd < 0) { e = -errno; goto fail; }
    fcntl(vm->vm_fd, F_SETFD, FD_CLOEXEC);
    /* Intel VMX needs these two pages below 4 GiB; harmless elsewhere */
    ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)TSS_ADDR);
    uint64_t ident = IDENTITY_ADDR;
    ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &ident);
    if (irqchip_now)
        vm_add_irqchip(vm);
    install_kick_handler();
    vm->t_created_ns = kvmvm_now_ns();
    return vm;
fail:
    if (err)
        *err = e;
    kvmvm_vm_free(vm);
    return NULL;
}

kvmvm_vm *kvmvm_vm_new(const char *dev_path, int *err)
{
    return vm_new(dev_path, err, 1);
}

#define PREP_MAX_REGIONS 4

struct kvmvm_prep {
    pthread_t thread;
    char *dev_path;
    int n;
    uint64_t gpa[PREP_MAX_REGIONS], size[PREP_MAX_REGIONS];
    int pit, seccomp_level;
    kvmvm_vm *vm;
    int err;
    int nr_ram;
};

static void *prep_thread(void *arg)
{
    struct kvmvm_prep *p = arg;
    sigset_t all;

    sigfillset(&all);       /* Ctrl-C and friends go to Python's main thread */
    pthread_sigmask(SIG_SETMASK, &all, NULL);
    /* The RAM before the irqchip: creating the irqchip leaves the VM's SRCU busy for a
       while (milliseconds, more under load), and a memory slot registered meanwhile waits
       for it; registered first, it does not. What else waits for it (a PIT below, virtio
       notifiers, the VM's release) comes later, overlapping the caller's own work. */
    p->vm = vm_new(p->dev_path, &p->err, 0);
    for (int i = 0; p->vm && i < p->n; i++) {
        if (kvmvm_vm_add_ram(p->vm, p->gpa[i], p->size[i]) < 0)
            break;      /* the caller adds the rest itself, and reports the error */
        p->nr_ram = i + 1;
    }
    if (p->vm)
        vm_add_irqchip(p->vm);
    if (p->seccomp_level > KVMVM_SECCOMP_OFF)
        seccomp_precompile(p->seccomp_level);   /* failures: reported by set_seccomp */
    if (p->vm && p->pit)
        kvmvm_vm_add_pit(p->vm);    /* on failure the caller's own add_pit reports it */
    return NULL;
}

kvmvm_prep *kvmvm_vm_prepare(const char *dev_path, const uint64_t *gpa, const uint64_t *size, int n,
                             int pit, int seccomp_level)
{
    struct kvmvm_prep *p = calloc(1, sizeof(*p));

    if (!p || n < 0 || n > PREP_MAX_REGIONS || !(p->dev_path = strdup(dev_path ? dev_path : "/dev/kvm")))
        goto fail;
    p->n = n;
    p->pit = pit;
    p->seccomp_level = seccomp_level;
    memcpy(p->gpa, gpa, n * sizeof(*gpa));
    memcpy(p->size, size, n * sizeof(*size));
    if (pthread_create(&p->thread, NULL, prep_thread, p) == 0)
        return p;
fail:
    if (p)
        free(p->dev_path);
    free(p);
    return NULL;
}

kvmvm_vm *kvmvm_vm_prepared(kvmvm_prep *p, int *err, int *nr_ram)
{
    pthread_join(p->thread, NULL);
    kvmvm_vm *vm = p->vm;
    if (err)
        *err = p->err;
    if (nr_ram)
        *nr_ram = p->nr_ram;
    free(p->dev_path);
    free(p);
    return vm;
}

int kvmvm_vm_caps(kvmvm_vm *vm, struct kvmvm_caps *caps)
{
    *caps = vm->caps;
    return 0;
}

int kvmvm_vm_add_ram(kvmvm_vm *vm, uint64_t gpa, uint64_t size)
{
    return vm_register_ram(vm, kvmvm_gmem_add(&vm->mem, gpa, size));
}

/* Hand a just-added guest-memory region (slot, or -errno) to KVM; on failure the region
   is unmapped again. */
int vm_register_ram(struct kvmvm_vm *vm, int slot)
{
    if (slot < 0)
        return slot;
    struct gmem_region *r = &vm->mem.r[slot];
    uint64_t gpa = r->gpa, size = r->size;
    struct kvm_userspace_memory_region region = {
        .slot = slot,
        .guest_phys_addr = gpa,
        .memory_size = size,
        .userspace_addr = (uint64_t)(uintptr_t)r->hva,
    };
    if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
        int e = -errno;
        munmap(r->map, r->map_len);
        if (r->fd >= 0)
            close(r->fd);
        vm->mem.nr--;
        return e;
    }
    return slot;
}

int kvmvm_vm_mem_write(kvmvm_vm *vm, uint64_t gpa, const void *buf, uint64_t len)
{
    return kvmvm_gmem_write(&vm->mem, gpa, buf, len);
}

int kvmvm_vm_mem_read(kvmvm_vm *vm, uint64_t gpa, void *buf, uint64_t len)
{
    return kvmvm_gmem_read(&vm->mem, gpa, buf, len);
}

int kvmvm_vm_load_file(kvmvm_vm *vm, uint64_t gpa, int fd, uint64_t offset, uint64_t len, int map)
{
    if (vm->started)
        return -EBUSY;      /* remapping under a running vCPU is never needed */
    return kvmvm_gmem_load_file(&vm->mem, gpa, fd, offset, len, map);
}

int kvmvm_vm_create_vcpus(kvmvm_vm *vm, int n)
{
    if (n < 1 || n > KVMVM_MAX_VCPUS || vm->nr_vcpus)
        return -EINVAL;
    if (vm->caps.max_vcpus > 0 && n > vm->caps.max_vcpus)
        return -E2BIG;
    if (n > 1 && !vm->caps.irqchip)
        return -ENOTSUP;    /* APs need an in-kernel LAPIC to be started */
    vm->nr_vcpus_planned = n;
    int run_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        return run_size < 0 ? -errno : -EINVAL;
    for (int i = 0; i < n; i++) {
        struct vcpu *v = &vm->vcpus[i];
        v->id = i;
        v->vm = vm;
        v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, i);
        if (v->fd < 0)
            return -errno;
        fcntl(v->fd, F_SETFD, FD_CLOEXEC);
        vm->nr_vcpus = i + 1;
        v->run_size = run_size;
        v->run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
        if (v->run == MAP_FAILED) {
            v->run = NULL;
            return -errno;
        }
        int rc = vcpu_setup_cpuid(vm, v);
        if (rc < 0)
            return rc;
        rc = vcpu_setup_common(vm, v);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int kvmvm_vm_boot_regs(kvmvm_vm *vm, int vcpu, const struct kvmvm_boot_regs *r)
{
    if (vcpu < 0 || vcpu >= vm->nr_vcpus)
        return -EINVAL;
    return vcpu_setup_boot(vm, &vm->vcpus[vcpu], r);
}

static int add_device(struct kvmvm_bus *bus, uint64_t base, uint64_t len, struct kvmvm_device *dev)
{
    if (!dev)
        return -ENOMEM;
    int rc = bus_insert(bus, base, len, dev);
    if (rc < 0 && dev->ops->destroy)
        dev->ops->destroy(dev);
    return rc;
}

int kvmvm_vm_add_py_device(kvmvm_vm *vm, int bus, uint64_t base, uint64_t len, uint64_t handle)
{
    struct kvmvm_device *dev = pydev_new(handle);
    if (dev)
        dev->vm = vm;
    return add_device(bus == KVMVM_BUS_PIO ? &vm->pio : &vm->mmio, base, len, dev);
}

int kvmvm_vm_add_serial(kvmvm_vm *vm, uint16_t port, int irq, int out_fd, int in_fd)
{
    if (vm->serial)
        return -EEXIST;
    struct kvmvm_device *dev = serial_new(vm, irq, out_fd, in_fd);
    int rc = add_device(&vm->pio, port, 8, dev);
    if (rc == 0)
        vm->serial = dev;
    return rc;
}

int kvmvm_vm_add_pit(kvmvm_vm *vm)
{
    struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };

    if (!vm->caps.pit2)
        return -ENOTSUP;
    if (vm->has_pit)
        return -EEXIST;
    if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
        return -errno;
    vm->has_pit = 1;
    return 0;
}

int kvmvm_vm_add_debug_exit(kvmvm_vm *vm, uint16_t port, uint16_t size)
{
    return add_device(&vm->pio, port, size ? size : 1, debug_exit_new(vm));
}

int kvmvm_vm_add_i8042(kvmvm_vm *vm)
{
    /* 0x60 data, 0x64 status/command: one device over 0x60-0x64 */
    return add_device(&vm->pio, 0x60, 5, i8042_new(vm));
}

int kvmvm_vm_add_boot_timer(kvmvm_vm *vm, uint64_t gpa)
{
    return add_device(&vm->mmio, gpa, 0x1000, boot_timer_new(vm));
}

int kvmvm_vm_add_acpi_pm(kvmvm_vm *vm, uint16_t port)
{
    return add_device(&vm->pio, port, 2, acpi_pm_new(vm));
}

int kvmvm_vm_add_pvpanic(kvmvm_vm *vm, uint16_t port)
{
    return add_device(&vm->pio, port, 1, pvpanic_new(vm));
}

int kvmvm_vm_irq_line(kvmvm_vm *vm, int irq, int level)
{
    if (!vm->caps.irqchip)
        return -ENOTSUP;
    struct kvm_irq_level l = { .irq = irq, .level = level };
    return ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0 ? -errno : 0;
}

void vm_request_stop(struct kvmvm_vm *vm, const struct kvmvm_stop_info *info)
{
    pthread_mutex_lock(&vm->lock);
    int first = !atomic_load(&vm->stopping);
    if (first) {
        vm->stop = *info;
        vm->t_end_ns = kvmvm_now_ns();
        atomic_store(&vm->stopping, 1);
    }
    pthread_mutex_unlock(&vm->lock);
    if (!first)
        return;
    /* immediate_exit first, then the signal: a vCPU about to enter KVM_RUN sees the
       flag, one inside it is interrupted by the signal. Without the capability the field
       means nothing to KVM; kvmvm_vm_wait then repeats the signal until each vCPU is out. */
    for (int i = 0; i < vm->nr_vcpus && vm->caps.immediate_exit; i++) {
        struct vcpu *v = &vm->vcpus[i];
        if (v->run)
            v->run->immediate_exit = 1;
    }
    for (int i = 0; i < vm->nr_vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        if (v->thread_started && !pthread_equal(v->thread, pthread_self()))
            pthread_kill(v->thread, kick_signal());
    }
    pthread_mutex_lock(&vm->lock);
    pthread_cond_broadcast(&vm->cond);
    pthread_cond_broadcast(&vm->pause_cond);    /* parked vCPUs end too */
    pthread_mutex_unlock(&vm->lock);
}

void vm_stop_simple(struct kvmvm_vm *vm, int reason, uint64_t code, int vcpu)
{
    struct kvmvm_stop_info info = { .reason = reason, .code = code, .vcpu = vcpu };
    vm_request_stop(vm, &info);
}

void kvmvm_vm_stop(kvmvm_vm *vm, int reason, uint64_t code)
{
    vm_stop_simple(vm, reason, code, -1);
}

static void *vcpu_thread(void *arg)
{
    struct vcpu *v = arg;
    struct kvmvm_vm *vm = v->vm;
    sigset_t set;

    /* only the kick signal reaches a vCPU thread; Ctrl-C and friends go to Python */
    sigfillset(&set);
    sigdelset(&set, kick_signal());
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    char name[16];
    snprintf(name, sizeof(name), "vcpu%d", v->id);
    pthread_setname_np(pthread_self(), name);
    seccomp_thread_enter(vm, KVMVM_SC_VCPU);

    while (!atomic_load(&vm->stopping)) {
        if (atomic_load(&vm->pause_req)) {
            vcpu_park(v);
            continue;
        }
        long long zero = 0;
        atomic_compare_exchange_strong(&vm->t_first_run_ns, &zero, kvmvm_now_ns());
        int rc = ioctl(v->fd, KVM_RUN, 0);
        if (rc < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                atomic_fetch_add_explicit(&vm->exits_intr, 1, memory_order_relaxed);
                /* a pause that gave up (timeout) leaves immediate_exit set on vCPUs that
                   had not parked: without this they would spin here and the guest freeze.
                   A pause requested meanwhile is seen at the top of the loop. */
                if (v->run->immediate_exit && !atomic_load(&vm->pause_req) && !atomic_load(&vm->stopping))
                    v->run->immediate_exit = 0;
                continue;
            }
            vm_stop_simple(vm, KVMVM_STOP_ERROR, errno, v->id);
            break;
        }
        if (vcpu_handle_exit(v))
            break;
    }
    return NULL;
}

int kvmvm_vm_start(kvmvm_vm *vm)
{
    if (vm->started || vm->nr_vcpus == 0)
        return -EINVAL;
    vm->started = 1;
    /* the spawner creates virtio workers for the vCPUs: none without a virtio device */
    int src = virtio_any(vm) ? seccomp_spawner_start(vm) : 0;
    if (src < 0)
        return src;
    if (vm->serial) {
        int rc = serial_start(vm->serial);
        if (rc < 0)
            return rc;
    }
    for (int i = 0; i < vm->nr_vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        int rc = pthread_create(&v->thread, NULL, vcpu_thread, v);
        if (rc) {
            vm_stop_simple(vm, KVMVM_STOP_ERROR, rc, i);
            return -rc;
        }
        v->thread_started = 1;
    }
    return 0;
}

/* Join one vCPU thread, kicking it again every 20 ms: a signal that came just before
   it entered KVM_RUN (no immediate_exit) must not leave it running. */
static void join_vcpu(struct vcpu *v)
{
    for (;;) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        if (pthread_timedjoin_np(v->thread, NULL, &ts) == 0)
            return;
        pthread_kill(v->thread, kick_signal());
    }
}

static void deadline_after(struct timespec *ts, int64_t timeout_ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    if (timeout_ms >= 0) {
        ts->tv_sec += timeout_ms / 1000;
        ts->tv_nsec += (timeout_ms % 1000) * 1000000L;
        if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
    }
}

/* Wait for the VM to stop: 0 and *out filled when it has, 1 when timeout_ms ran out
   first (timeout_ms < 0: wait for ever). The first caller after the stop joins the vCPU
   threads and stops the console; any other caller returns only once that is done. */
int kvmvm_vm_wait(kvmvm_vm *vm, int64_t timeout_ms, struct kvmvm_stop_info *out)
{
    struct timespec ts;
    deadline_after(&ts, timeout_ms);
    pthread_mutex_lock(&vm->lock);
    for (;;) {
        int stopped = atomic_load(&vm->stopping);
        if (stopped && vm->joined != JOIN_BUSY)
            break;
        int rc = timeout_ms < 0 ? pthread_cond_wait(&vm->cond, &vm->lock)
                                : pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
        if (rc == ETIMEDOUT && !(atomic_load(&vm->stopping) && vm->joined != JOIN_BUSY)) {
            pthread_mutex_unlock(&vm->lock);
            return 1;
        }
    }
    if (out)
        *out = vm->stop;
    if (vm->joined == JOIN_DONE) {
        pthread_mutex_unlock(&vm->lock);
        return 0;
    }
    vm->joined = JOIN_BUSY;
    pthread_mutex_unlock(&vm->lock);
    for (int i = 0; i < vm->nr_vcpus; i++)
        if (vm->vcpus[i].thread_started)
            join_vcpu(&vm->vcpus[i]);
    if (vm->serial)
        serial_stop(vm->serial);
    pthread_mutex_lock(&vm->lock);
    vm->joined = JOIN_DONE;
    pthread_cond_broadcast(&vm->cond);
    pthread_mutex_unlock(&vm->lock);
    return 0;
}

int kvmvm_vm_stats(kvmvm_vm *vm, struct kvmvm_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->exits = atomic_load(&vm->exits);
    st->exits_io = atomic_load(&vm->exits_io);
    st->exits_mmio = atomic_load(&vm->exits_mmio);
    st->exits_intr = atomic_load(&vm->exits_intr);
    st->exits_other = atomic_load(&vm->exits_other);
    st->io_unhandled = atomic_load(&vm->io_unhandled);
    st->mmio_unhandled = atomic_load(&vm->mmio_unhandled);
    st->py_calls = atomic_load(&vm->py_calls);
    st->serial_dropped = atomic_load(&vm->serial_dropped);
    st->t_created_ns = vm->t_created_ns;
    st->t_first_run_ns = atomic_load(&vm->t_first_run_ns);
    st->t_boot_signal_ns = atomic_load(&vm->t_boot_signal_ns);
    st->t_end_ns = vm->t_end_ns;
    return 0;
}

void kvmvm_vm_free(kvmvm_vm *vm)
{
    if (!vm)
        return;
    if (vm->started) {
        kvmvm_vm_stop(vm, KVMVM_STOP_REQUESTED, 0);
        kvmvm_vm_wait(vm, -1, NULL);
    }
    bus_destroy_devices(&vm->pio);
    bus_destroy_devices(&vm->mmio);
    seccomp_spawner_stop(vm);
    for (int i = 0; i < vm->nr_vcpus; i++) {
        struct vcpu *v = &vm->vcpus[i];
        if (v->run)
            munmap(v->run, v->run_size);
        if (v->fd >= 0)
            close(v->fd);
    }
    if (vm->vm_fd >= 0)
        close(vm->vm_fd);
    if (vm->kvm_fd >= 0)
        close(vm->kvm_fd);
    /* guest RAM goes last: no vCPU or device can touch it any more */
    for (int i = 0; i < vm->mem.nr; i++) {
        munmap(vm->mem.r[i].map, vm->mem.r[i].map_len);
        if (vm->mem.r[i].fd >= 0)
            close(vm->mem.r[i].fd);
    }
    pthread_cond_destroy(&vm->pause_cond);
    pthread_mutex_destroy(&vm->pause_lock);
    pthread_rwlock_destroy(&vm->pio.lock);
    pthread_rwlock_destroy(&vm->mmio.lock);
    free(vm);
}
