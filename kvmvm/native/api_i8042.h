/*
 * The i8042 keyboard controller (cffi-visible; no #include, no #ifdef). 0 / -errno.
 */
/* Queue Ctrl+Alt+Del key presses and releases (scancode set 2) and raise IRQ 1, as
   Firecracker's SendCtrlAltDel does; -ENODEV when the VM has no i8042. */
int kvmvm_vm_i8042_ctrl_alt_del(kvmvm_vm *vm);
