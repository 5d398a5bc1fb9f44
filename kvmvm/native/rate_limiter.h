/*
 * Token-bucket rate limiters as Firecracker's: a bandwidth bucket (bytes) and an ops bucket
 * (requests), each with a size, a one-time burst spent first, and a refill time for a full
 * bucket. A device asks before each request; when a bucket is short the request waits and
 * a timerfd, watched by the device's worker, says when to try again.
 */
#ifndef KVMVM_RATE_LIMITER_H
#define KVMVM_RATE_LIMITER_H
#include <pthread.h>
#include <stdint.h>

#include "internal.h"
#include "api_ratelimit.h"

struct token_bucket {
    uint64_t size;              /* 0: this bucket does not limit */
    uint64_t refill_ns;
    uint64_t burst;             /* what is left of the one-time burst */
    int64_t budget;             /* tokens now, at most size; below 0 after rl_take's debt */
    int64_t last_ns;
};

struct rate_limiter {
    pthread_mutex_t lock;
    struct token_bucket bw, ops;
    int timer_fd;               /* -1 until rl_init */
    uint64_t throttled;         /* requests that had to wait (for metrics) */
};

int rl_init(struct rate_limiter *rl);
void rl_destroy(struct rate_limiter *rl);
/* replace both buckets (full again, as Firecracker builds new ones); wakes a waiting device */
void rl_set(struct rate_limiter *rl, const struct kvmvm_token_bucket *bw,
            const struct kvmvm_token_bucket *ops);
/* 1: the request (bytes, one op) may go now and was counted; 0: wait for the timer */
int rl_consume(struct rate_limiter *rl, uint64_t bytes);
/* for a receive path that learns the size only after reading: 1 when every bucket has a
   token now (the caller then reads and calls rl_take), 0 with the timer armed */
int rl_ready(struct rate_limiter *rl);
/* take tokens already spent (a bucket may go into debt, repaid by later refills) */
void rl_take(struct rate_limiter *rl, uint64_t bytes);
/* the timer fired: clear it */
void rl_timer_ack(struct rate_limiter *rl);

#endif
