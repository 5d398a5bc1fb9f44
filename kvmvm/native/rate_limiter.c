/*
 * Token buckets (rate_limiter.h). Tokens refill continuously at size / refill_time; a
 * request larger than the bucket goes when the bucket is full and empties it.
 */
#include <errno.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "internal.h"
#include "rate_limiter.h"

static void tb_set(struct token_bucket *b, const struct kvmvm_token_bucket *c)
{
    memset(b, 0, sizeof(*b));
    if (!c || c->size == 0 || c->refill_time_ms == 0)
        return;         /* Firecracker: a zero size or refill time means no limit */
    b->size = c->size;
    b->refill_ns = c->refill_time_ms * 1000000ull;
    b->burst = c->one_time_burst;
    b->budget = (int64_t)c->size;
    b->last_ns = kvmvm_now_ns();
}

static void tb_refill(struct token_bucket *b, int64_t now)
{
    if (!b->size || now <= b->last_ns)
        return;
    uint64_t dt = (uint64_t)(now - b->last_ns);
    /* 128-bit products: no overflow for any size and elapsed time */
    unsigned __int128 add = (unsigned __int128)dt * b->size / b->refill_ns;
    if (add == 0)
        return;
    unsigned __int128 room = (unsigned __int128)((int64_t)b->size - b->budget);
    if (add >= room) {
        b->budget = (int64_t)b->size;
        b->last_ns = now;
        return;
    }
    /* advance last_ns by exactly the time those tokens took, keeping the remainder */
    b->last_ns += (int64_t)(add * b->refill_ns / b->size);
    b->budget += (int64_t)add;
}

/* 0 when n tokens are there now, else the nanoseconds until they are */
static uint64_t tb_wait(const struct token_bucket *b, uint64_t n)
{
    if (!b->size || n <= b->burst)
        return 0;
    n -= b->burst;
    if (n > b->size)
        n = b->size;        /* over-sized: wait for a full bucket */
    if (b->budget >= (int64_t)n)
        return 0;
    return (uint64_t)((unsigned __int128)(uint64_t)((int64_t)n - b->budget) * b->refill_ns / b->size) + 1;
}

static void tb_take(struct token_bucket *b, uint64_t n)
{
    if (!b->size)
        return;
    uint64_t from_burst = n < b->burst ? n : b->burst;
    b->burst -= from_burst;
    n -= from_burst;
    b->budget -= (int64_t)n;
}

int rl_init(struct rate_limiter *rl)
{
    memset(rl, 0, sizeof(*rl));
    pthread_mutex_init(&rl->lock, NULL);
    rl->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    return rl->timer_fd < 0 ? -errno : 0;
}

void rl_destroy(struct rate_limiter *rl)
{
    if (rl->timer_fd >= 0)
        close(rl->timer_fd);
    rl->timer_fd = -1;
    pthread_mutex_destroy(&rl->lock);
}

static void arm(struct rate_limiter *rl, uint64_t ns)
{
    struct itimerspec its = { 0 };
    its.it_value.tv_sec = (time_t)(ns / 1000000000ull);
    its.it_value.tv_nsec = (long)(ns % 1000000000ull);
    if (timerfd_settime(rl->timer_fd, 0, &its, NULL) < 0) { /* cannot happen with a valid fd */ }
}

void rl_set(struct rate_limiter *rl, const struct kvmvm_token_bucket *bw,
            const struct kvmvm_token_bucket *ops)
{
    pthread_mutex_lock(&rl->lock);
    tb_set(&rl->bw, bw);
    tb_set(&rl->ops, ops);
    arm(rl, 1);             /* a request waiting on the old buckets: look again now */
    pthread_mutex_unlock(&rl->lock);
}

int rl_consume(struct rate_limiter *rl, uint64_t bytes)
{
    int ok;
    pthread_mutex_lock(&rl->lock);
    if (!rl->bw.size && !rl->ops.size) {
        pthread_mutex_unlock(&rl->lock);
        return 1;
    }
    int64_t now = kvmvm_now_ns();
    tb_refill(&rl->bw, now);
    tb_refill(&rl->ops, now);
    uint64_t w1 = tb_wait(&rl->bw, bytes), w2 = tb_wait(&rl->ops, 1);
    ok = w1 == 0 && w2 == 0;
    if (ok) {
        tb_take(&rl->bw, bytes);
        tb_take(&rl->ops, 1);
    } else {
        rl->throttled++;
        arm(rl, w1 > w2 ? w1 : w2);
    }
    pthread_mutex_unlock(&rl->lock);
    return ok;
}

int rl_ready(struct rate_limiter *rl)
{
    pthread_mutex_lock(&rl->lock);
    int ok = 1;
    if (rl->bw.size || rl->ops.size) {
        int64_t now = kvmvm_now_ns();
        tb_refill(&rl->bw, now);
        tb_refill(&rl->ops, now);
        uint64_t w1 = tb_wait(&rl->bw, 1), w2 = tb_wait(&rl->ops, 1);
        ok = w1 == 0 && w2 == 0;
        if (!ok) {
            rl->throttled++;
            arm(rl, w1 > w2 ? w1 : w2);
        }
    }
    pthread_mutex_unlock(&rl->lock);
    return ok;
}

void rl_take(struct rate_limiter *rl, uint64_t bytes)
{
    pthread_mutex_lock(&rl->lock);
    tb_take(&rl->bw, bytes);
    tb_take(&rl->ops, 1);
    pthread_mutex_unlock(&rl->lock);
}

void rl_timer_ack(struct rate_limiter *rl)
{
    uint64_t n;
    if (read(rl->timer_fd, &n, sizeof(n)) < 0) { /* EAGAIN: nothing pending */ }
}
