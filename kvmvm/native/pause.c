/*
 * Pause and resume: every vCPU leaves KVM_RUN and parks at the top of its loop, then
 * every virtio worker parks between batches, so neither guest state nor guest memory
 * changes until resume. A stop request wakes parked vCPUs (a paused VM stops at once).
 */
#include <errno.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <time.h>

#include "internal.h"
#include "api_state.h"

static int kick_signal(void) { return SIGRTMIN + 2; }   /* the same one vm.c installs */

void vcpu_park(struct vcpu *v)
{
    struct kvmvm_vm *vm = v->vm;
    /* Re-enter once with immediate_exit: KVM completes a pending PIO/MMIO read (the
       register state would otherwise be mid-instruction) and returns EINTR at once. */
    v->run->immediate_exit = 1;
    while (ioctl(v->fd, KVM_RUN, 0) == 0 && !atomic_load(&vm->stopping)) {
        if (vcpu_handle_exit(v))
            break;
    }
    pthread_mutex_lock(&vm->lock);
    vm->nr_parked++;
    pthread_cond_broadcast(&vm->pause_cond);
    while (atomic_load(&vm->pause_req) && !atomic_load(&vm->stopping))
        pthread_cond_wait(&vm->pause_cond, &vm->lock);
    vm->nr_parked--;
    if (!atomic_load(&vm->stopping))
        v->run->immediate_exit = 0;
    pthread_cond_broadcast(&vm->pause_cond);
    pthread_mutex_unlock(&vm->lock);
}

int kvmvm_vm_paused(kvmvm_vm *vm)
{
    return vm->paused;
}

int kvmvm_vm_pause(kvmvm_vm *vm, int64_t timeout_ms)
{
    struct timespec ts;
    int rc = 0;

    if (vm->paused)
        return 0;
    if (!vm->caps.immediate_exit)
        return -ENOTSUP;
    pthread_mutex_lock(&vm->lock);
    if (atomic_load(&vm->stopping)) {
        pthread_mutex_unlock(&vm->lock);
        return -ESHUTDOWN;
    }
    atomic_store(&vm->pause_req, 1);
    pthread_mutex_unlock(&vm->lock);
    if (vm->started) {
        for (int i = 0; i < vm->nr_vcpus; i++)
            vm->vcpus[i].run->immediate_exit = 1;
        for (int i = 0; i < vm->nr_vcpus; i++)
            if (vm->vcpus[i].thread_started)
                pthread_kill(vm->vcpus[i].thread, kick_signal());
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += timeout_ms / 1000;
        ts.tv_nsec += (timeout_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_mutex_lock(&vm->lock);
        while (vm->nr_parked < vm->nr_vcpus && !atomic_load(&vm->stopping) && rc == 0)
            rc = pthread_cond_timedwait(&vm->pause_cond, &vm->lock, &ts);
        if (atomic_load(&vm->stopping))
            rc = ESHUTDOWN;
        pthread_mutex_unlock(&vm->lock);
        if (rc) {
            kvmvm_vm_resume(vm);
            return -rc;
        }
    }
    virtio_park_all(vm, 1);
    vm->paused = 1;
    return 0;
}

int kvmvm_vm_resume(kvmvm_vm *vm)
{
    if (vm->paused)
        virtio_park_all(vm, 0);
    vm->paused = 0;
    pthread_mutex_lock(&vm->lock);
    atomic_store(&vm->pause_req, 0);
    pthread_cond_broadcast(&vm->pause_cond);
    pthread_mutex_unlock(&vm->lock);
    return 0;
}
