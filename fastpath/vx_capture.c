/* vx_capture.c: the capture rings (one producer, one consumer each) and the table lock. */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------- */
/* capture rings                                                                             */

int vx_cap_init(vx_cap_ring *r, uint32_t snaplen) {
    memset(r, 0, sizeof *r);
    r->slot_size = (uint32_t)((sizeof(vx_cap_hdr) + snaplen + 7) & ~7u);
    r->slots = malloc((size_t)VX_CAP_SLOTS * r->slot_size);
    return r->slots ? 0 : -1;
}

void vx_cap_free(vx_cap_ring *r) {
    free(r->slots);
    r->slots = NULL;
}

/* The next slot with its time, kind and data filled in (addresses left to the caller), or
 * NULL when the ring is full (counted). vx_cap_commit publishes it. */
static vx_cap_hdr *cap_fill(vx_cap_ring *r, int iface, int dir, int reason, const struct iovec *iov, int iovcnt,
                            uint32_t orig_len) {
    uint64_t head = r->head;
    if (head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) >= VX_CAP_SLOTS) { r->lost++; return NULL; }
    uint8_t *slot = r->slots + (size_t)(head % VX_CAP_SLOTS) * r->slot_size;
    vx_cap_hdr *h = (vx_cap_hdr *)slot;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->ts_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    h->iface = (uint8_t)iface; h->dir = (uint8_t)dir; h->reason = (uint8_t)reason; h->v6 = 0;
    h->orig_len = orig_len;
    uint32_t room = r->slot_size - (uint32_t)sizeof *h, got = 0;
    for (int i = 0; i < iovcnt && got < room; i++) {
        uint32_t n = (uint32_t)iov[i].iov_len < room - got ? (uint32_t)iov[i].iov_len : room - got;
        memcpy(slot + sizeof *h + got, iov[i].iov_base, n);
        got += n;
    }
    h->cap_len = got;
    return h;
}

static void cap_commit(vx_cap_ring *r) {
    __atomic_store_n(&r->head, r->head + 1, __ATOMIC_RELEASE);
}

void vx_cap_put(vx_cap_ring *r, int iface, int dir, int reason, uint32_t saddr, uint16_t sport, uint32_t daddr,
                uint16_t dport, const struct iovec *iov, int iovcnt, uint32_t orig_len) {
    vx_cap_hdr *h = cap_fill(r, iface, dir, reason, iov, iovcnt, orig_len);
    if (!h) return;
    h->saddr = saddr; h->daddr = daddr; h->sport = sport; h->dport = dport;
    cap_commit(r);
}

void vx_cap_put6(vx_cap_ring *r, int dir, int reason, const uint8_t saddr6[16], uint16_t sport,
                 const uint8_t daddr6[16], uint16_t dport, const struct iovec *iov, int iovcnt, uint32_t orig_len) {
    vx_cap_hdr *h = cap_fill(r, VX_CAP_UNDERLAY, dir, reason, iov, iovcnt, orig_len);
    if (!h) return;
    h->saddr = h->daddr = 0;
    h->v6 = 1;
    memcpy(h->saddr6, saddr6, 16);
    memcpy(h->daddr6, daddr6, 16);
    h->sport = sport; h->dport = dport;
    cap_commit(r);
}

uint64_t vx_cap_available(vx_cap_ring *r) {
    return __atomic_load_n(&r->head, __ATOMIC_ACQUIRE) - r->tail;
}

const vx_cap_hdr *vx_cap_peek(vx_cap_ring *r, uint64_t i) {
    return (const vx_cap_hdr *)(r->slots + (size_t)((r->tail + i) % VX_CAP_SLOTS) * r->slot_size);
}

void vx_cap_release(vx_cap_ring *r, uint64_t n) {
    __atomic_store_n(&r->tail, r->tail + n, __ATOMIC_RELEASE);
}

void vx_lock(vx_core *c) { pthread_mutex_lock(&c->lock); }
void vx_unlock(vx_core *c) { pthread_mutex_unlock(&c->lock); }
