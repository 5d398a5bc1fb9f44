/* seccomp.c: per-thread allowlists, and the spawner that starts worker threads. */
#ifndef KVMVM_SECCOMP_THREADS_H
#define KVMVM_SECCOMP_THREADS_H

#include <pthread.h>

#include "internal.h"
#include "api_seccomp.h"

struct kvmvm_vm;

/* First thing a C thread does (after setting its signal mask): filter itself as class
   cls when the VM asked for filters. A filter that cannot be installed ends the process. */
void seccomp_thread_enter(struct kvmvm_vm *vm, int cls);
/* pthread_create for threads a filtered thread needs (workers): through the VM's spawner. */
int thread_spawn(struct kvmvm_vm *vm, pthread_t *t, void *(*fn)(void *), void *arg);
int seccomp_spawner_start(struct kvmvm_vm *vm);
/* Compile every class's filter for level now (any thread; kvmvm_vm_set_seccomp then finds
   them built): kvmvm_vm_prepare's thread does it while the caller starts up. */
void seccomp_precompile(int level);
void seccomp_spawner_stop(struct kvmvm_vm *vm);

#endif
