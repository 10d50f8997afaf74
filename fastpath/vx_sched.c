/* vx_sched.c: --engine-sched auto, the scheduling policy of a loop thread by how densely its
 * wake-ups come (see vx_internal.h). */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <sched.h>
#include <stdint.h>
#include <time.h>

void vx_sched_woken(vx_sched *s) {
    if (!s->on) return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t gap = s->last_ns ? now - s->last_ns : UINT64_MAX;
    s->last_ns = now;
    s->dense = gap < VX_SCHED_DENSE_NS ? s->dense + 1 : 0;
    int want = s->batch ? gap < VX_SCHED_SPARSE_NS : s->dense >= VX_SCHED_DENSE;
    if (want == s->batch) return;
    struct sched_param none = {0};
    /* the calling thread (pid 0); its nice value is kept across the change */
    if (sched_setscheduler(0, want ? SCHED_BATCH : SCHED_OTHER, &none) == 0) {
        s->batch = want;
        __atomic_fetch_add(s->switches, 1, __ATOMIC_RELAXED);
    } else {
        s->on = 0;  /* not allowed here (a seccomp filter, a container): keep what we have */
    }
}
