/*
 * The 8250 UART: any sequence of reads and writes at its eight ports (DLAB, FIFO control,
 * loopback, scratch, interrupt enables), with its output writer thread running.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "env.h"

static int sink = -1;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_in in = { data, size };

    /* console output into a file emptied for each input: /dev/null would be discarded as
       written, with no writer thread (serial.c), and a pipe would fill */
    if (sink < 0 && (sink = memfd_create("fuzz-uart-out", MFD_CLOEXEC)) < 0)
        abort();
    if (ftruncate(sink, 0) < 0 || lseek(sink, 0, SEEK_SET) < 0)
        abort();
    struct kvmvm_vm *vm = fuzz_vm_new();
    if (kvmvm_vm_add_serial(vm, 0x3f8, 4, in_u8(&in) & 1 ? sink : -1, -1) < 0)
        abort();
    if (in_u8(&in) & 1)
        serial_start(vm->serial);
    for (int op = 0; op < 1024 && in.n > 0; op++) {
        uint8_t k = in_u8(&in);
        uint8_t v = in_u8(&in);
        uint32_t len = 1u << ((k >> 4) & 3);
        uint8_t buf[8] = { v, v, v, v, v, v, v, v };
        bus_dispatch(&vm->pio, 0x3f8 + (k & 7), (k >> 3) & 1, buf, len);
    }
    fuzz_vm_free(vm);
    return 0;
}
