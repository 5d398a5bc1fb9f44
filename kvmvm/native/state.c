/*
 * Snapshot state of the vCPUs and the VM through the standard KVM ioctls, as a stream of
 * sections (api_state.h; docs/snapshot-format.md). Saving needs a paused VM; loading needs
 * a VM built with the same devices and vCPUs that has not run yet. Every GET/SET that
 * fails is an error naming its section: nothing is skipped silently.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "internal.h"
#include "api_state.h"

#define MAX_MSRS 1024
#define SEC_HDR 16

struct msr_buf {
    struct kvm_msrs hdr;
    struct kvm_msr_entry e[MAX_MSRS];
};

void state_put(struct state_buf *b, uint32_t tag, uint32_t index, uint32_t version,
               const void *data, uint32_t len)
{
    uint64_t need = SEC_HDR + (((uint64_t)len + 7) & ~7ull);
    if (b->err)
        return;
    if (b->len + need > b->cap) {
        uint64_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + need)
            cap *= 2;
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->err = -ENOMEM;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    uint32_t h[4] = { tag, index, len, version };
    memcpy(b->p + b->len, h, SEC_HDR);
    if (len)        /* the END section has no data (NULL): memcpy's pointers must be valid */
        memcpy(b->p + b->len + SEC_HDR, data, len);
    memset(b->p + b->len + SEC_HDR + len, 0, need - SEC_HDR - len);
    b->len += need;
}

void kvmvm_free(void *p)
{
    free(p);
}

/* --- MSRs: the host's list, read in one batch; an MSR KVM refuses to read is left out
   (KVM_GET_MSRS stops at the first one it cannot read) --- */

static int msr_index_list(struct kvmvm_vm *vm, uint32_t *idx, int max)
{
    struct { struct kvm_msr_list l; uint32_t i[MAX_MSRS]; } ml = { .l.nmsrs = MAX_MSRS };
    if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &ml) < 0)
        return -errno;
    int n = (int)ml.l.nmsrs < max ? (int)ml.l.nmsrs : max;
    memcpy(idx, ml.i, n * sizeof(uint32_t));
    return n;
}

static int msrs_read(struct vcpu *v, const uint32_t *idx, int n, struct msr_buf *out)
{
    int got = 0;
    struct msr_buf *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    for (int start = 0; start < n;) {
        m->hdr.nmsrs = n - start;
        for (int i = start; i < n; i++) {
            m->e[i - start].index = idx[i];
            m->e[i - start].data = 0;
        }
        int r = ioctl(v->fd, KVM_GET_MSRS, m);
        if (r < 0) {
            free(m);
            return -errno;
        }
        memcpy(&out->e[got], m->e, r * sizeof(struct kvm_msr_entry));
        got += r;
        start += r + 1;     /* skip the one it stopped at */
    }
    out->hdr.nmsrs = got;
    free(m);
    return got;
}

static int xsave_size(struct kvmvm_vm *vm)
{
#ifdef KVM_CAP_XSAVE2
    int s = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    if (s > (int)sizeof(struct kvm_xsave))
        return s;
#endif
    return sizeof(struct kvm_xsave);
}

static int has_cap(struct kvmvm_vm *vm, int cap)
{
    return ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, cap) > 0;
}

static int get_xsave(struct kvmvm_vm *vm, struct vcpu *v, void *buf, int size)
{
#ifdef KVM_GET_XSAVE2
    if (size > (int)sizeof(struct kvm_xsave))
        return ioctl(v->fd, KVM_GET_XSAVE2, buf) < 0 ? -errno : 0;
#endif
    return ioctl(v->fd, KVM_GET_XSAVE, buf) < 0 ? -errno : 0;
}

/* --- save --- */

#define GET(fd, req, what, var, tag, idx) do { \
        if (ioctl(fd, req, &var) < 0) { rc = -errno; goto out; } \
        state_put(b, tag, idx, 1, &var, sizeof(var)); \
    } while (0)

static int vcpu_save(struct kvmvm_vm *vm, struct vcpu *v, struct state_buf *b,
                     const uint32_t *msr_idx, int nmsr)
{
    int rc = 0, i = v->id;
    struct kvm_regs regs;
    struct kvm_sregs sregs;
    struct kvm_lapic_state lapic;
    struct kvm_vcpu_events events;
    struct kvm_debugregs dregs;
    struct kvm_mp_state mp;
    struct kvm_xcrs xcrs;
    struct kvm_fpu fpu;
    struct msr_buf *msrs = calloc(1, sizeof(*msrs));
    void *xs = NULL;

    if (!msrs)
        return -ENOMEM;
    GET(v->fd, KVM_GET_REGS, "regs", regs, KVMVM_SEC_REGS, i);
    GET(v->fd, KVM_GET_SREGS, "sregs", sregs, KVMVM_SEC_SREGS, i);
    if (has_cap(vm, KVM_CAP_XSAVE)) {
        int size = xsave_size(vm);
        xs = calloc(1, size);
        if (!xs) { rc = -ENOMEM; goto out; }
        if ((rc = get_xsave(vm, v, xs, size)) < 0)
            goto out;
        state_put(b, KVMVM_SEC_XSAVE, i, 1, xs, size);
    } else {
        GET(v->fd, KVM_GET_FPU, "fpu", fpu, KVMVM_SEC_FPU, i);
    }
    if (has_cap(vm, KVM_CAP_XCRS))
        GET(v->fd, KVM_GET_XCRS, "xcrs", xcrs, KVMVM_SEC_XCRS, i);
    if ((rc = msrs_read(v, msr_idx, nmsr, msrs)) < 0)
        goto out;
    rc = 0;
    state_put(b, KVMVM_SEC_MSRS, i, 1, msrs,
              sizeof(struct kvm_msrs) + msrs->hdr.nmsrs * sizeof(struct kvm_msr_entry));
    if (vm->caps.irqchip)
        GET(v->fd, KVM_GET_LAPIC, "lapic", lapic, KVMVM_SEC_LAPIC, i);
    GET(v->fd, KVM_GET_VCPU_EVENTS, "events", events, KVMVM_SEC_EVENTS, i);
    GET(v->fd, KVM_GET_DEBUGREGS, "debugregs", dregs, KVMVM_SEC_DEBUGREGS, i);
    if (vm->caps.irqchip)
        GET(v->fd, KVM_GET_MP_STATE, "mp_state", mp, KVMVM_SEC_MPSTATE, i);
out:
    free(xs);
    free(msrs);
    return rc;
}

static int vm_save(struct kvmvm_vm *vm, struct state_buf *b)
{
    int rc = 0;
    if (vm->caps.irqchip) {
        for (uint32_t chip = 0; chip < 3; chip++) {
            struct kvm_irqchip c = { .chip_id = chip };
            if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &c) < 0)
                return -errno;
            state_put(b, KVMVM_SEC_IRQCHIP, chip, 1, &c, sizeof(c));
        }
    }
    if (vm->has_pit) {     /* only a VM that made one (Linux guests: --pit auto) */
        struct kvm_pit_state2 pit;
        GET(vm->vm_fd, KVM_GET_PIT2, "pit2", pit, KVMVM_SEC_PIT2, 0);
    }
    struct kvm_clock_data clk;
    memset(&clk, 0, sizeof(clk));
    GET(vm->vm_fd, KVM_GET_CLOCK, "clock", clk, KVMVM_SEC_CLOCK, 0);
    if (vm->nr_vcpus && has_cap(vm, KVM_CAP_GET_TSC_KHZ)) {
        int khz = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
        if (khz > 0)
            state_put(b, KVMVM_SEC_TSC_KHZ, 0, 1, &khz, sizeof(khz));
    }
out:
    return rc;
}

int kvmvm_vm_save_state(kvmvm_vm *vm, uint8_t **out, uint64_t *len)
{
    struct state_buf b = { 0 };
    uint32_t *idx = calloc(MAX_MSRS, sizeof(uint32_t));
    int rc, nmsr;

    *out = NULL;
    *len = 0;
    if (vm->started && !vm->paused) {
        free(idx);
        return -EBUSY;
    }
    if (!idx)
        return -ENOMEM;
    nmsr = msr_index_list(vm, idx, MAX_MSRS);
    rc = nmsr < 0 ? nmsr : 0;
    /* VM-wide first: restore sets the clock before vCPU MSRs (kvmclock) */
    if (rc == 0)
        rc = vm_save(vm, &b);
    for (int i = 0; i < vm->nr_vcpus && rc == 0; i++)
        rc = vcpu_save(vm, &vm->vcpus[i], &b, idx, nmsr);
    if (rc == 0 && vm->serial)
        rc = serial_save(vm->serial, &b);
    if (rc == 0)
        rc = virtio_save_all(vm, &b);
    if (rc == 0) {
        state_put(&b, KVMVM_SEC_END, 0, 1, NULL, 0);
        rc = b.err;
    }
    free(idx);
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

/* --- load --- */

struct sec {
    uint32_t tag, index, len, version;
    const uint8_t *data;
};

static int set_sized(int fd, unsigned long req, const struct sec *s, size_t size)
{
    if (s->len != size)
        return -EBADMSG;
    void *tmp = malloc(size);      /* aligned copy: the stream is only 8-byte aligned */
    if (!tmp)
        return -ENOMEM;
    memcpy(tmp, s->data, size);
    int rc = ioctl(fd, req, tmp) < 0 ? -errno : 0;
    free(tmp);
    return rc;
}

static int load_msrs(struct vcpu *v, const struct sec *s)
{
    struct kvm_msrs h;
    if (s->len < sizeof(h))
        return -EBADMSG;
    memcpy(&h, s->data, sizeof(h));
    if (h.nmsrs > MAX_MSRS || s->len != sizeof(h) + h.nmsrs * sizeof(struct kvm_msr_entry))
        return -EBADMSG;
    struct msr_buf *m = malloc(sizeof(*m));
    if (!m)
        return -ENOMEM;
    memcpy(m, s->data, s->len);
    int r = ioctl(v->fd, KVM_SET_MSRS, m);
    int rc = r < 0 ? -errno : (uint32_t)r != h.nmsrs ? -EINVAL : 0;
    free(m);
    return rc;
}

static const char *sec_name(uint32_t tag)
{
    switch (tag) {
    case KVMVM_SEC_REGS: return "vCPU registers (KVM_SET_REGS)";
    case KVMVM_SEC_SREGS: return "vCPU special registers (KVM_SET_SREGS)";
    case KVMVM_SEC_FPU: return "vCPU FPU (KVM_SET_FPU)";
    case KVMVM_SEC_XSAVE: return "vCPU XSAVE (KVM_SET_XSAVE)";
    case KVMVM_SEC_XCRS: return "vCPU XCRs (KVM_SET_XCRS)";
    case KVMVM_SEC_MSRS: return "vCPU MSRs (KVM_SET_MSRS)";
    case KVMVM_SEC_LAPIC: return "vCPU LAPIC (KVM_SET_LAPIC)";
    case KVMVM_SEC_EVENTS: return "vCPU events (KVM_SET_VCPU_EVENTS)";
    case KVMVM_SEC_DEBUGREGS: return "vCPU debug registers (KVM_SET_DEBUGREGS)";
    case KVMVM_SEC_MPSTATE: return "vCPU MP state (KVM_SET_MP_STATE)";
    case KVMVM_SEC_IRQCHIP: return "PIC/IOAPIC (KVM_SET_IRQCHIP)";
    case KVMVM_SEC_PIT2: return "PIT (KVM_SET_PIT2)";
    case KVMVM_SEC_CLOCK: return "kvmclock (KVM_SET_CLOCK)";
    case KVMVM_SEC_TSC_KHZ: return "TSC frequency (KVM_SET_TSC_KHZ)";
    case KVMVM_SEC_SERIAL: return "serial port state";
    case KVMVM_SEC_VIRTIO: return "virtio device state";
    default: return "unknown section";
    }
}

/* vCPU sections in the order KVM needs them: sregs (APIC base) before the LAPIC, the
   LAPIC before MSRs (TSC deadline), MP state and pending events last */
static const uint32_t vcpu_order[] = {
    KVMVM_SEC_REGS, KVMVM_SEC_SREGS, KVMVM_SEC_FPU, KVMVM_SEC_XSAVE, KVMVM_SEC_XCRS,
    KVMVM_SEC_DEBUGREGS, KVMVM_SEC_LAPIC, KVMVM_SEC_MSRS, KVMVM_SEC_MPSTATE, KVMVM_SEC_EVENTS,
};

static int load_vcpu_sec(struct kvmvm_vm *vm, struct vcpu *v, const struct sec *s)
{
    switch (s->tag) {
    case KVMVM_SEC_REGS: return set_sized(v->fd, KVM_SET_REGS, s, sizeof(struct kvm_regs));
    case KVMVM_SEC_SREGS: return set_sized(v->fd, KVM_SET_SREGS, s, sizeof(struct kvm_sregs));
    case KVMVM_SEC_FPU: return set_sized(v->fd, KVM_SET_FPU, s, sizeof(struct kvm_fpu));
    case KVMVM_SEC_XSAVE:
        if (s->len < sizeof(struct kvm_xsave) || s->len > (uint32_t)xsave_size(vm))
            return -EBADMSG;
        {
            /* KVM_SET_XSAVE reads as much as the host's XSAVE area is */
            int size = xsave_size(vm);
            void *tmp = calloc(1, size);
            if (!tmp)
                return -ENOMEM;
            memcpy(tmp, s->data, s->len);
            int rc = ioctl(v->fd, KVM_SET_XSAVE, tmp) < 0 ? -errno : 0;
            free(tmp);
            return rc;
        }
    case KVMVM_SEC_XCRS: return set_sized(v->fd, KVM_SET_XCRS, s, sizeof(struct kvm_xcrs));
    case KVMVM_SEC_DEBUGREGS:
        return set_sized(v->fd, KVM_SET_DEBUGREGS, s, sizeof(struct kvm_debugregs));
    case KVMVM_SEC_LAPIC:
        return set_sized(v->fd, KVM_SET_LAPIC, s, sizeof(struct kvm_lapic_state));
    case KVMVM_SEC_MSRS: return load_msrs(v, s);
    case KVMVM_SEC_MPSTATE:
        return set_sized(v->fd, KVM_SET_MP_STATE, s, sizeof(struct kvm_mp_state));
    case KVMVM_SEC_EVENTS:
        return set_sized(v->fd, KVM_SET_VCPU_EVENTS, s, sizeof(struct kvm_vcpu_events));
    }
    return -EBADMSG;
}

static int parse(const uint8_t *buf, uint64_t len, struct sec *out, int max)
{
    uint64_t off = 0;
    int n = 0;
    while (off + SEC_HDR <= len) {
        uint32_t h[4];
        memcpy(h, buf + off, SEC_HDR);
        uint64_t padded = ((uint64_t)h[2] + 7) & ~7ull;
        if (padded > len - off - SEC_HDR || n >= max)
            return -EBADMSG;
        out[n] = (struct sec){ h[0], h[1], h[2], h[3], buf + off + SEC_HDR };
        off += SEC_HDR + padded;
        if (h[0] == KVMVM_SEC_END)
            return n;
        n++;
    }
    return -EBADMSG;    /* no END section: truncated */
}

#define MAX_SECS (KVMVM_MAX_VCPUS * 12 + 64)

int kvmvm_vm_load_state(kvmvm_vm *vm, const uint8_t *buf, uint64_t len, const char **what)
{
    struct sec *secs = calloc(MAX_SECS, sizeof(*secs));
    int n, rc = 0;

    *what = "state stream";
    if (!secs)
        return -ENOMEM;
    if (vm->started) {
        rc = -EBUSY;
        goto out;
    }
    n = parse(buf, len, secs, MAX_SECS);
    if (n < 0) {
        rc = n;
        goto out;
    }
    for (int k = 0; k < n; k++) {
        if (secs[k].version != 1) {
            *what = sec_name(secs[k].tag);
            rc = -EPROTO;
            goto out;
        }
        if (secs[k].tag < KVMVM_SEC_IRQCHIP && (int)secs[k].index >= vm->nr_vcpus) {
            rc = -EBADMSG;
            goto out;
        }
    }
    /* VM-wide: TSC rate, irqchip, PIT, clock */
    for (int k = 0; k < n && rc == 0; k++) {
        struct sec *s = &secs[k];
        *what = sec_name(s->tag);
        switch (s->tag) {
        case KVMVM_SEC_TSC_KHZ: {
            int khz;
            if (s->len != sizeof(khz)) { rc = -EBADMSG; break; }
            memcpy(&khz, s->data, sizeof(khz));
            for (int i = 0; i < vm->nr_vcpus && rc == 0; i++) {
                int cur = ioctl(vm->vcpus[i].fd, KVM_GET_TSC_KHZ, 0);
                if (cur != khz && ioctl(vm->vcpus[i].fd, KVM_SET_TSC_KHZ, khz) < 0)
                    rc = -errno;
            }
            break;
        }
        case KVMVM_SEC_IRQCHIP:
            if (!vm->caps.irqchip) { rc = -ENOTSUP; break; }
            rc = set_sized(vm->vm_fd, KVM_SET_IRQCHIP, s, sizeof(struct kvm_irqchip));
            break;
        case KVMVM_SEC_PIT2:
            if (!vm->has_pit) { rc = -ENOTSUP; break; }
            rc = set_sized(vm->vm_fd, KVM_SET_PIT2, s, sizeof(struct kvm_pit_state2));
            break;
        case KVMVM_SEC_CLOCK: {
            struct kvm_clock_data c;
            if (s->len != sizeof(c)) { rc = -EBADMSG; break; }
            memcpy(&c, s->data, sizeof(c));
            c.flags = 0;    /* the saved value only: realtime/host_tsc belong to the old host */
            rc = ioctl(vm->vm_fd, KVM_SET_CLOCK, &c) < 0 ? -errno : 0;
            break;
        }
        }
    }
    /* vCPUs, section kinds in dependency order */
    for (int i = 0; i < vm->nr_vcpus && rc == 0; i++) {
        for (size_t o = 0; o < sizeof(vcpu_order) / sizeof(vcpu_order[0]) && rc == 0; o++) {
            for (int k = 0; k < n && rc == 0; k++) {
                struct sec *s = &secs[k];
                if (s->tag != vcpu_order[o] || (int)s->index != i)
                    continue;
                *what = sec_name(s->tag);
                rc = load_vcpu_sec(vm, &vm->vcpus[i], s);
            }
        }
    }
    /* devices last: a virtio device may start its worker and raise an interrupt */
    for (int k = 0; k < n && rc == 0; k++) {
        struct sec *s = &secs[k];
        *what = sec_name(s->tag);
        if (s->tag == KVMVM_SEC_SERIAL)
            rc = vm->serial ? serial_load(vm->serial, s->data, s->len) : -ENODEV;
        else if (s->tag == KVMVM_SEC_VIRTIO)
            rc = virtio_load(vm, s->index, s->data, s->len);
    }
out:
    free(secs);
    return rc;
}

int kvmvm_vm_vcpu_cpuid(kvmvm_vm *vm, int vcpu, struct kvmvm_cpuid_entry *out, int max)
{
    struct { struct kvm_cpuid2 h; struct kvm_cpuid_entry2 e[256]; } c = { .h.nent = 256 };
    if (vcpu < 0 || vcpu >= vm->nr_vcpus)
        return -EINVAL;
    if (ioctl(vm->vcpus[vcpu].fd, KVM_GET_CPUID2, &c) < 0)
        return -errno;
    int n = (int)c.h.nent < max ? (int)c.h.nent : max;
    for (int i = 0; i < n; i++) {
        struct kvm_cpuid_entry2 *e = &c.e[i];
        out[i] = (struct kvmvm_cpuid_entry){ e->function, e->index, e->flags,
                                             e->eax, e->ebx, e->ecx, e->edx };
    }
    return n;
}

/* --- which of these ioctls this /dev/kvm answers --- */

int kvmvm_vm_state_probe(kvmvm_vm *vm, struct kvmvm_state_support *o)
{
    memset(o, 0, sizeof(*o));
    if (vm->nr_vcpus < 1)
        return -EINVAL;
    struct vcpu *v = &vm->vcpus[0];
#define TRY(field, fd, req, type) do { type t; memset(&t, 0, sizeof(t)); \
        o->field = ioctl(fd, req, &t) < 0 ? -errno : 0; } while (0)
    TRY(regs, v->fd, KVM_GET_REGS, struct kvm_regs);
    TRY(sregs, v->fd, KVM_GET_SREGS, struct kvm_sregs);
    TRY(fpu, v->fd, KVM_GET_FPU, struct kvm_fpu);
    if (has_cap(vm, KVM_CAP_XSAVE)) {
        int size = xsave_size(vm);
        void *xs = calloc(1, size);
        o->xsave = xs ? get_xsave(vm, v, xs, size) : -ENOMEM;
        free(xs);
    } else {
        o->xsave = -ENOTSUP;
    }
    if (has_cap(vm, KVM_CAP_XCRS))
        TRY(xcrs, v->fd, KVM_GET_XCRS, struct kvm_xcrs);
    else
        o->xcrs = -ENOTSUP;
    TRY(lapic, v->fd, KVM_GET_LAPIC, struct kvm_lapic_state);
    TRY(events, v->fd, KVM_GET_VCPU_EVENTS, struct kvm_vcpu_events);
    TRY(debugregs, v->fd, KVM_GET_DEBUGREGS, struct kvm_debugregs);
    TRY(mpstate, v->fd, KVM_GET_MP_STATE, struct kvm_mp_state);
    {
        struct kvm_irqchip c = { .chip_id = 2 };
        o->irqchip = ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &c) < 0 ? -errno : 0;
    }
    TRY(pit2, vm->vm_fd, KVM_GET_PIT2, struct kvm_pit_state2);
    TRY(clock, vm->vm_fd, KVM_GET_CLOCK, struct kvm_clock_data);
    o->tsc_khz = ioctl(v->fd, KVM_GET_TSC_KHZ, 0) < 0 ? -errno : 0;
    o->immediate_exit = vm->caps.immediate_exit ? 0 : -ENOTSUP;
#undef TRY
    uint32_t *idx = calloc(MAX_MSRS, sizeof(uint32_t));
    struct msr_buf *m = calloc(1, sizeof(*m));
    if (idx && m) {
        int n = msr_index_list(vm, idx, MAX_MSRS);
        o->nr_msrs = n;
        o->msrs = n < 0 ? n : 0;
        if (n > 0) {
            int got = msrs_read(v, idx, n, m);
            o->nr_msrs_ok = got;
            if (got < 0)
                o->msrs = got;
        }
    }
    free(idx);
    free(m);
    return 0;
}
