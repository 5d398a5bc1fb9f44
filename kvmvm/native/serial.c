/*
 * 8250/16550A UART (COM1). Output never blocks a vCPU: the vCPU puts bytes in a bounded
 * buffer that a writer thread drains to the host fd; when the host stops reading (a full
 * pipe, a paused terminal) the buffer fills and further bytes are dropped and counted.
 * Input comes from a host fd through a small reader thread. Enough of the register set
 * (FIFO, loopback, scratch, THRE/RDI interrupts) for Linux's 8250 driver.
 *
 * No thread where none could do anything: output to /dev/null is discarded as it is
 * written, and input from /dev/null (or from an fd that is not open for reading) is only
 * its end, which the guest gets when its driver opens the port, as it would from the
 * reader thread. A tiny guest's whole run costs less than starting those threads.
 */
#define _GNU_SOURCE     /* pthread_timedjoin_np */
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "seccomp_threads.h"
#include "api_state.h"

#define RX_CAP 4096
#define TX_CAP (1u << 20)       /* guest output held for a slow host fd */
#define TX_CHUNK 4096           /* one write() */
#define TX_FLUSH_NS (300ll * 1000 * 1000)   /* at the end: how long a stuck fd is waited for */
#define TX_GATHER_NS (2ll * 1000 * 1000)    /* how long the writer waits for the rest of a line */

#define IER_RDI   0x01
#define IER_THRI  0x02
#define IIR_NONE  0x01
#define IIR_THRI  0x02
#define IIR_RDI   0x04
#define IIR_FIFO  0xc0
#define LCR_DLAB  0x80
#define MCR_LOOP  0x10
#define LSR_DR    0x01
#define LSR_THRE  0x20
#define LSR_TEMT  0x40

struct serial {
    pthread_mutex_t lock;
    pthread_cond_t space;
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr;
    int thr_ipending;
    uint8_t rx[RX_CAP];
    int rx_head, rx_count;
    int irq;
    int out_fd, in_fd;
    int stop_pipe[2];
    int in_started, in_stopping;
    int in_eof_only;    /* input is only its end (/dev/null, a write-only fd): no thread */
    int in_tty, eof_sent;
    int out_null;       /* output goes to /dev/null: discarded, no thread */
    int rx_open;        /* FIFO and RX interrupts enabled: a driver is taking input */
    pthread_t in_thread;

    /* output: a ring the vCPUs fill and the writer thread drains */
    uint8_t *tx;
    uint32_t tx_head, tx_len;
    int tx_ready;       /* a line end or a chunk is buffered, or a drain asks: write now */
    pthread_cond_t tx_cond;
    pthread_t out_thread;
    int out_started, out_stopping, out_dead;
    int64_t out_deadline_ns;
    atomic_ullong *dropped;     /* the VM's counter (or a private one) */
    atomic_ullong dropped_own;
    struct kvmvm_vm *vm;        /* for the writer's seccomp filter */
};

/* vCPU side: queue one byte, or count it dropped when the host is not keeping up */
static void tx_put(struct serial *s, uint8_t b)
{
    if (s->out_fd < 0 || s->out_null)
        return;
    if (s->tx_len == TX_CAP || s->out_dead || !s->tx) {
        atomic_fetch_add_explicit(s->dropped, 1, memory_order_relaxed);
        return;
    }
    s->tx[(s->tx_head + s->tx_len) % TX_CAP] = b;
    /* the writer wakes for the first byte, then gathers the line (output_thread) */
    if (b == '\n' || s->tx_len + 1 >= TX_CHUNK)
        s->tx_ready = 1;
    if (s->tx_len++ == 0 || s->tx_ready)
        pthread_cond_signal(&s->tx_cond);
}

static void *output_thread(void *arg)
{
    struct serial *s = arg;
    uint8_t chunk[TX_CHUNK];
    sigset_t set;

    /* only the kick signal, which interrupts a write() stuck at the end */
    sigfillset(&set);
    sigdelset(&set, vm_kick_signal());
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    pthread_setname_np(pthread_self(), "serial-out");
    seccomp_thread_enter(s->vm, KVMVM_SC_SERIAL_OUT);
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->tx_len && !s->out_stopping)
            pthread_cond_wait(&s->tx_cond, &s->lock);
        /* a guest writes its console one byte per exit: give it a moment to finish the
           line, which then goes out in one write() (and one wake-up of whoever reads),
           not one per byte */
        if (s->tx_len && !s->tx_ready && !s->out_stopping) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);    /* tx_cond's clock (serial_new) */
            ts.tv_nsec += TX_GATHER_NS;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            while (!s->tx_ready && !s->out_stopping &&
                   pthread_cond_timedwait(&s->tx_cond, &s->lock, &ts) != ETIMEDOUT)
                ;
        }
        if (!s->tx_len || (s->out_stopping && kvmvm_now_ns() >= s->out_deadline_ns))
            break;
        uint32_t n = s->tx_len, first = TX_CAP - s->tx_head;
        if (n > first)
            n = first;
        if (n > TX_CHUNK)
            n = TX_CHUNK;
        memcpy(chunk, s->tx + s->tx_head, n);
        pthread_mutex_unlock(&s->lock);
        /* a blocking write: at the end, stop_output's kick interrupts it (EINTR) */
        ssize_t w = write(s->out_fd, chunk, n);
        pthread_mutex_lock(&s->lock);
        if (w < 0 && errno == EAGAIN) {     /* a non-blocking fd: wait a little */
            pthread_mutex_unlock(&s->lock);
            struct pollfd pf = { .fd = s->out_fd, .events = POLLOUT };
            poll(&pf, 1, 50);
            pthread_mutex_lock(&s->lock);
            continue;
        }
        if (w < 0 && errno != EINTR) {
            s->out_dead = 1;    /* EPIPE etc.: the reader went away; the guest does not care */
            break;
        }
        if (w > 0) {
            s->tx_head = (s->tx_head + (uint32_t)w) % TX_CAP;
            s->tx_len -= (uint32_t)w;
            if (!s->tx_len) {
                s->tx_ready = 0;
                s->tx_head = 0;     /* drained: start again at the front, so a chatty guest
                                       keeps touching the same few pages, not all 1 MiB */
            }
        }
    }
    /* what could not be written in time is dropped */
    atomic_fetch_add_explicit(s->dropped, s->tx_len, memory_order_relaxed);
    s->tx_len = 0;
    s->out_dead = 1;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* The ISA IRQ line is edge-triggered at the IOAPIC: each new interrupt condition (data
   received, THR emptied, an interrupt enabled while its condition holds) is sent as one
   pulse, as vm-superio does; a level left high would swallow every later edge.
   Caller holds s->lock. */
static void pulse_irq(struct kvmvm_device *dev, struct serial *s)
{
    int pending = ((s->ier & IER_RDI) && s->rx_count) || ((s->ier & IER_THRI) && s->thr_ipending);
    if (pending && dev->vm) {
        kvmvm_vm_irq_line(dev->vm, s->irq, 1);
        kvmvm_vm_irq_line(dev->vm, s->irq, 0);
    }
}

static void rx_push(struct serial *s, uint8_t b)
{
    if (s->rx_count == RX_CAP)
        return;
    s->rx[(s->rx_head + s->rx_count) % RX_CAP] = b;
    s->rx_count++;
}

/* Host input is held back until the guest's driver is really taking it: FIFO enabled and
   receive interrupts on, as Linux's 8250 leaves them once a tty is open. Probing (which
   sets IER to 0x0f) and start-up (which clears the FIFO and reads RBR "for luck") would
   otherwise eat it. The gate closes again while the driver turns reception off.
   Returns 1 when input became available to the guest (the caller pulses the IRQ). */
static int update_rx_gate(struct serial *s)
{
    int open = (s->ier & IER_RDI) && (s->fcr & 0x01);
    int was = s->rx_open;
    if (open && !was)
        pthread_cond_broadcast(&s->space);
    s->rx_open = open;
    /* input that is only its end: what the reader thread would deliver (input_thread) */
    if (open && s->in_eof_only && !s->eof_sent) {
        if (!s->in_tty)
            rx_push(s, 0x04);
        s->eof_sent = 1;
        return 1;
    }
    return 0;
}

static void serial_read(struct kvmvm_device *dev, uint64_t off, uint8_t *data, uint32_t len)
{
    struct serial *s = dev->priv;
    uint8_t v = 0;
    pthread_mutex_lock(&s->lock);
    switch (off) {
    case 0:
        if (s->lcr & LCR_DLAB) {
            v = s->dll;
        } else if (s->rx_count) {
            v = s->rx[s->rx_head];
            s->rx_head = (s->rx_head + 1) % RX_CAP;
            s->rx_count--;
            pthread_cond_signal(&s->space);
        }
        break;
    case 1:
        v = (s->lcr & LCR_DLAB) ? s->dlm : s->ier;
        break;
    case 2:
        if ((s->ier & IER_RDI) && s->rx_count) {
            v = IIR_RDI;
        } else if ((s->ier & IER_THRI) && s->thr_ipending) {
            v = IIR_THRI;
            s->thr_ipending = 0;    /* reading IIR acknowledges THRE */
        } else {
            v = IIR_NONE;
        }
        if (s->fcr & 1)
            v |= IIR_FIFO;
        break;
    case 3: v = s->lcr; break;
    case 4: v = s->mcr; break;
    case 5: v = (s->rx_count ? LSR_DR : 0) | LSR_THRE | LSR_TEMT; break;
    case 6:
        if (s->mcr & MCR_LOOP)  /* loopback: CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2 */
            v = ((s->mcr & 0x02) << 3) | ((s->mcr & 0x01) << 5) |
                ((s->mcr & 0x04) << 4) | ((s->mcr & 0x08) << 4);
        else
            v = 0xb0;           /* DCD, DSR, CTS */
        break;
    case 7: v = s->scr; break;
    }
    pthread_mutex_unlock(&s->lock);
    memset(data, 0, len);
    data[0] = v;
}

static void serial_write(struct kvmvm_device *dev, uint64_t off, const uint8_t *data, uint32_t len)
{
    struct serial *s = dev->priv;
    uint8_t v = data[0];
    int event = 0;
    (void)len;
    pthread_mutex_lock(&s->lock);
    switch (off) {
    case 0:
        if (s->lcr & LCR_DLAB) {
            s->dll = v;
        } else {
            if (s->mcr & MCR_LOOP)
                rx_push(s, v);
            else
                tx_put(s, v);
            s->thr_ipending = 1;
            event = 1;
        }
        break;
    case 1:
        if (s->lcr & LCR_DLAB) {
            s->dlm = v;
        } else {
            if (!(s->ier & IER_THRI) && (v & IER_THRI))
                s->thr_ipending = 1;    /* enabling THRI with an empty THR interrupts */
            s->ier = v & 0x0f;
            update_rx_gate(s);
            event = 1;
        }
        break;
    case 2:
        s->fcr = v;
        if (v & 0x02) {
            s->rx_count = 0;
            pthread_cond_signal(&s->space);
        }
        event = update_rx_gate(s);
        break;
    case 3: s->lcr = v; break;
    case 4: s->mcr = v & 0x1f; break;
    case 7: s->scr = v; break;
    }
    if (event)
        pulse_irq(dev, s);
    pthread_mutex_unlock(&s->lock);
}

static void *input_thread(void *arg)
{
    struct kvmvm_device *dev = arg;
    struct serial *s = dev->priv;
    uint8_t buf[256];
    int eof_sent = 0;
    seccomp_thread_enter(dev->vm, KVMVM_SC_SERIAL_IN);
    int is_tty = isatty(s->in_fd);

    for (;;) {
        /* after end of input only the stop pipe is watched */
        struct pollfd pf[2] = { { .fd = s->stop_pipe[0], .events = POLLIN },
                                { .fd = s->in_fd, .events = POLLIN } };
        if (poll(pf, eof_sent ? 1 : 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[0].revents)
            break;
        if (eof_sent || !pf[1].revents)
            continue;
        ssize_t n = read(s->in_fd, buf, sizeof(buf));
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        pthread_mutex_lock(&s->lock);
        while (!s->rx_open && !s->in_stopping)     /* see update_rx_gate */
            pthread_cond_wait(&s->space, &s->lock);
        if (n <= 0) {
            /* end of piped input: Ctrl-D, so a shell on the guest console sees EOF */
            if (!is_tty)
                rx_push(s, 0x04);
            eof_sent = 1;
        }
        for (ssize_t i = 0; i < n; i++) {
            while (s->rx_count == RX_CAP && !s->in_stopping)
                pthread_cond_wait(&s->space, &s->lock);
            if (s->in_stopping)
                break;
            rx_push(s, buf[i]);
        }
        pulse_irq(dev, s);
        int stopping = s->in_stopping;
        pthread_mutex_unlock(&s->lock);
        if (stopping)
            break;
    }
    return NULL;
}

static int start_input(struct serial *s, struct kvmvm_device *dev)
{
    if (s->in_fd < 0 || s->in_started || s->in_eof_only)
        return 0;
    if (pipe(s->stop_pipe) < 0)
        return -errno;
    int rc = pthread_create(&s->in_thread, NULL, input_thread, dev);
    if (rc) {
        close(s->stop_pipe[0]);
        close(s->stop_pipe[1]);
        return -rc;
    }
    s->in_started = 1;
    return 0;
}

static int start_output(struct serial *s)
{
    if (s->out_fd < 0 || s->out_started || s->out_null)
        return 0;
    s->tx = pages_alloc(TX_CAP);
    if (!s->tx)
        return -ENOMEM;
    int rc = pthread_create(&s->out_thread, NULL, output_thread, s);
    if (rc) {
        pages_free(s->tx, TX_CAP);
        s->tx = NULL;
        return -rc;
    }
    s->out_started = 1;
    return 0;
}

int serial_start(struct kvmvm_device *dev)
{
    struct serial *s = dev->priv;
    int rc = start_output(s);
    if (rc == 0)
        rc = start_input(s, dev);
    return rc;
}

static void stop_input(struct serial *s)
{
    if (!s->in_started)
        return;
    pthread_mutex_lock(&s->lock);
    s->in_stopping = 1;
    pthread_cond_broadcast(&s->space);
    pthread_mutex_unlock(&s->lock);
    (void)!write(s->stop_pipe[1], "x", 1);
    pthread_join(s->in_thread, NULL);
    close(s->stop_pipe[0]);
    close(s->stop_pipe[1]);
    s->in_started = 0;
}

/* flush what the guest wrote, for at most TX_FLUSH_NS when the host fd is stuck */
static void stop_output(struct serial *s)
{
    if (!s->out_started)
        return;
    pthread_mutex_lock(&s->lock);
    s->out_stopping = 1;
    s->out_deadline_ns = kvmvm_now_ns() + TX_FLUSH_NS;
    pthread_cond_broadcast(&s->tx_cond);
    pthread_mutex_unlock(&s->lock);
    struct timespec ts;
    for (;;) {      /* a write() blocked on a full terminal is interrupted by the kick */
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        if (pthread_timedjoin_np(s->out_thread, NULL, &ts) == 0)
            break;
        pthread_mutex_lock(&s->lock);
        int late = kvmvm_now_ns() >= s->out_deadline_ns;
        pthread_mutex_unlock(&s->lock);
        if (late)
            pthread_kill(s->out_thread, vm_kick_signal());
    }
    s->out_started = 0;
}

void serial_stop(struct kvmvm_device *dev)
{
    struct serial *s = dev->priv;
    stop_input(s);
    stop_output(s);
}

static void serial_destroy(struct kvmvm_device *dev)
{
    struct serial *s = dev->priv;
    serial_stop(dev);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->space);
    pthread_cond_destroy(&s->tx_cond);
    pages_free(s->tx, TX_CAP);
    free(s);
    free(dev);
}

static const struct device_ops serial_ops = {
    .read = serial_read,
    .write = serial_write,
    .destroy = serial_destroy,
};

static int is_dev_null(int fd)
{
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3);
}

/* An fd from which nothing but its end can ever be read: /dev/null, or one not open for
   reading (the reader thread's read() would fail at once, which it takes as the end). */
static int input_is_eof_only(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 || (fl & O_ACCMODE) == O_WRONLY || is_dev_null(fd);
}

struct kvmvm_device *serial_new(struct kvmvm_vm *vm, int irq, int out_fd, int in_fd)
{
    struct kvmvm_device *dev = calloc(1, sizeof(*dev));
    struct serial *s = calloc(1, sizeof(*s));
    if (!dev || !s) {
        free(dev);
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->space, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);  /* the writer's gathering wait */
    pthread_cond_init(&s->tx_cond, &ca);
    pthread_condattr_destroy(&ca);
    s->dropped = vm ? &vm->serial_dropped : &s->dropped_own;
    s->vm = vm;
    s->irq = irq;
    s->out_fd = out_fd;
    s->in_fd = in_fd;
    s->out_null = is_dev_null(out_fd);
    if (in_fd >= 0 && input_is_eof_only(in_fd)) {
        s->in_eof_only = 1;
        s->in_tty = isatty(in_fd);
    }
    s->mcr = 0x08;      /* OUT2 */
    dev->name = "serial";
    dev->ops = &serial_ops;
    dev->vm = vm;
    dev->priv = s;
    return dev;
}

/* Pause: let the writer thread put out what the guest already wrote (at most timeout_ms:
   a console nobody reads must not hold a pause up), so a paused VM's output is complete. */
void serial_drain_output(struct kvmvm_device *dev, int timeout_ms)
{
    struct serial *s = dev->priv;
    int64_t end = kvmvm_now_ns() + (int64_t)timeout_ms * 1000000;
    struct timespec ts = { 0, 1000000 };
    pthread_mutex_lock(&s->lock);
    s->tx_ready = 1;        /* no gathering: out with it */
    pthread_cond_signal(&s->tx_cond);
    while (s->tx_len && !s->out_dead && s->out_started && kvmvm_now_ns() < end) {
        pthread_mutex_unlock(&s->lock);
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
}

/* --- snapshot state: registers and the receive FIFO (version 1) --- */

struct serial_state {
    uint8_t ier, lcr, mcr, scr, dll, dlm, fcr, thr_ipending;
    uint32_t rx_count;
    uint8_t rx[RX_CAP];
};

int serial_save(struct kvmvm_device *dev, struct state_buf *b)
{
    struct serial *s = dev->priv;
    struct serial_state *st = calloc(1, sizeof(*st));
    if (!st)
        return -ENOMEM;
    pthread_mutex_lock(&s->lock);
    st->ier = s->ier;
    st->lcr = s->lcr;
    st->mcr = s->mcr;
    st->scr = s->scr;
    st->dll = s->dll;
    st->dlm = s->dlm;
    st->fcr = s->fcr;
    st->thr_ipending = (uint8_t)s->thr_ipending;
    st->rx_count = (uint32_t)s->rx_count;
    for (int i = 0; i < s->rx_count; i++)
        st->rx[i] = s->rx[(s->rx_head + i) % RX_CAP];
    pthread_mutex_unlock(&s->lock);
    state_put(b, KVMVM_SEC_SERIAL, 0, 1, st, sizeof(*st));
    free(st);
    return 0;
}

int serial_load(struct kvmvm_device *dev, const void *data, uint32_t len)
{
    struct serial *s = dev->priv;
    struct serial_state *st = malloc(sizeof(*st));
    if (!st)
        return -ENOMEM;
    if (len != sizeof(*st)) {
        free(st);
        return -EBADMSG;
    }
    memcpy(st, data, sizeof(*st));
    if (st->rx_count > RX_CAP) {
        free(st);
        return -EBADMSG;
    }
    pthread_mutex_lock(&s->lock);
    s->ier = st->ier & 0x0f;
    s->lcr = st->lcr;
    s->mcr = st->mcr & 0x1f;
    s->scr = st->scr;
    s->dll = st->dll;
    s->dlm = st->dlm;
    s->fcr = st->fcr;
    s->thr_ipending = !!st->thr_ipending;
    s->rx_head = 0;
    s->rx_count = (int)st->rx_count;
    memcpy(s->rx, st->rx, st->rx_count);
    update_rx_gate(s);      /* with eof-only input, its end once the gate is open */
    pulse_irq(dev, s);      /* an interrupt condition that held at the snapshot holds again */
    pthread_mutex_unlock(&s->lock);
    free(st);
    return 0;
}
