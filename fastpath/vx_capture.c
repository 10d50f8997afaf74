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

void vx_cap_put(vx_cap_ring *r, int iface, int dir, int reason, uint32_t saddr, uint16_t sport, uint32_t daddr,
                uint16_t dport, const struct iovec *iov, int iovcnt, uint32_t orig_len) {
    uint64_t head = r->head;
    if (head - __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE) >= VX_CAP_SLOTS) { r->lost++; return; }
    uint8_t *slot = r->slots + (size_t)(head % VX_CAP_SLOTS) * r->slot_size;
    vx_cap_hdr *h = (vx_cap_hdr *)slot;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->ts_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    h->saddr = saddr; h->daddr = daddr; h->sport = sport; h->dport = dport;
    h->iface = (uint8_t)iface; h->dir = (uint8_t)dir; h->reason = (uint8_t)reason; h->pad = 0;
    h->orig_len = orig_len;
    uint32_t room = r->slot_size - (uint32_t)sizeof *h, got = 0;
    for (int i = 0; i < iovcnt && got < room; i++) {
        uint32_t n = (uint32_t)iov[i].iov_len < room - got ? (uint32_t)iov[i].iov_len : room - got;
        memcpy(slot + sizeof *h + got, iov[i].iov_base, n);
        got += n;
    }
    h->cap_len = got;
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
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
