/* vx_internal.h: what the engine's C files share and nothing outside them sees. */
#ifndef VX_INTERNAL_H
#define VX_INTERNAL_H

#include "vxengine.h"

#include <errno.h>
#include <poll.h>

/* The capture hook: one load and one branch per batch while capture is off. The
 * _fastpath_nocapture build compiles it out, so that bench can measure what the hook costs. */
#ifdef VX_NO_CAPTURE
#define CAPTURE_RING(io, ring) ((vx_cap_ring *)NULL)
#else
#define CAPTURE_RING(io, ring) ((io)->capture ? (io)->ring : NULL)
#endif

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define TX_SLOTS 64         /* TUN reads per drain */
#define TXQ 1024             /* datagrams queued per flush (sendmmsg's limit is 1024) */
#define HDR_ARENA (TXQ * 128)
#define RX_MSGS 32
#define RX_BUF (65536 + 128)   /* a datagram, or a packet-socket frame: vnet header, Ethernet, 64 KB of IP */
#define GSO_MAX_DGRAMS 64    /* UDP_MAX_SEGMENTS */
#define GSO_MAX_BYTES (65535 - 20 - 8)

/* The tables' hash (open addressing, linear probing). */
static inline uint32_t hash32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}

/* Deletion from a linear-probing table by backward shift, so that no probe chain breaks:
 * later entries of the chain move into the hole unless their home slot lies after it.
 * One definition per table type (C has no generics); OCCUPIED and CLEAR name the slot test,
 * HOME the hash of an entry's key. */
#define DEFINE_SHIFT_DELETE(name, type, OCCUPIED, CLEAR, HOME)                                  \
    static void name(type *t, uint32_t cap, uint32_t i) {                                        \
        uint32_t j = i;                                                                          \
        for (;;) {                                                                               \
            CLEAR(t[i]);                                                                         \
            for (;;) {                                                                           \
                j = (j + 1) & (cap - 1);                                                         \
                if (!OCCUPIED(t[j])) return;                                                     \
                uint32_t home = HOME(t[j]) & (cap - 1);                                          \
                if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) break;           \
            }                                                                                    \
            t[i] = t[j];                                                                         \
            i = j;                                                                               \
        }                                                                                        \
    }

/* vx_table.c: the checks a received frame gets whatever underlay family it came over, up to
 * the inner packet's length (VX_OK) or a verdict; *ethertype: the inner frame's type. */
int vx_check_frame(vx_core *c, const uint8_t *p, int n, int sender_known, const uint8_t own_mac[6], int *total,
                   int *ethertype);
/* the last checks: --strict-source (owner_ok: the inner source's subnet is the sender's) and the MTU */
int vx_check_finish(vx_core *c, int owner_ok, int total, int seg_len, int *inner_len);
/* vx_table6.c: the IPv6 peer whose subnet holds addr, or NULL */
const vx_peer6 *vx_peer6_for(const vx_core *c, const uint8_t addr[16]);

/* vx_csum.c */
void vx_ipv4_header_csum(uint8_t *iph, int ihl);
/* vx_offload.c: segments a super-packet splits into, and its header length (-1: cannot) */
int vx_gso_plan(const uint8_t *pkt, int len, int gso_size, int max_segs, int *hdr_len);

/* vx_tunnel.c: a UDP tunnel GSO frame's header (virtio-net header, outer Ethernet, IPv4, UDP) */
#define VX_TUNNEL_VNET_LEN 24
#define VX_TUNNEL_HDR_LEN (VX_TUNNEL_VNET_LEN + 14 + 20 + 8)
int vx_tunnel_header(uint8_t *out, const uint8_t *pkt, int len, const struct vx_vnet_hdr *vh, const uint8_t tap_mac[6],
                     const uint8_t src_mac[6], uint32_t src, uint16_t sport, const struct sockaddr_in *dst,
                     uint16_t ip_id, int *hdr_len);
/* ... over the IPv6 underlay: outer Ethernet, IPv6 and UDP (its checksum partial) */
#define VX_TUNNEL_HDR6_LEN (VX_TUNNEL_VNET_LEN + 14 + 40 + 8)
int vx_tunnel_header6(uint8_t *out, const uint8_t *pkt, int len, const struct vx_vnet_hdr *vh, const uint8_t tap_mac[6],
                      const uint8_t src_mac[6], const uint8_t src6[16], uint16_t sport, const struct sockaddr_in6 *dst,
                      int *hdr_len);

/* vx_rx_packet.c: a frame read from the packet socket, after its virtio-net header */
typedef struct {
    int v6;                     /* the outer header is IPv6 (a dual-stack node's IPv6 packet socket) */
    uint8_t saddr6[16], daddr6[16];  /* ... its addresses; saddr and daddr are then 0 */
    uint32_t saddr, daddr;      /* outer source and destination, network order */
    uint16_t sport, dport;      /* outer ports, host order */
    int udp_off;                /* the outer UDP header: frame + udp_off */
    int vx_off, vx_len;         /* the VXLAN datagram (or a UDP GSO train of them): frame + vx_off, vx_len bytes */
    uint8_t tos;                /* the outer IPv4 TOS byte or IPv6 traffic class (its ECN field: vx_ecn_verdict) */
} vx_frame;
int vx_frame_outer(const uint8_t *frame, int flen, int link_len, const struct vx_vnet_hdr *vh, vx_frame *f);
int vx_frame_inner_hdr_len(const uint8_t *frame, const vx_frame *f);

/* --engine-sched auto: a loop thread runs SCHED_OTHER while its wake-ups are sparse, so that a
 * packet preempts whatever runs (as the kernel's softirq does: no time slice to wait for on a
 * busy host), and SCHED_BATCH while they come densely, so that packets pile up into batches
 * instead of each preempting the application (at 50k pps: 16 us of daemon CPU per packet
 * SCHED_OTHER, 6-8 us SCHED_BATCH, 2-core VM, 2026-11-30). Dense: VX_SCHED_DENSE wake-ups in a
 * row, each under VX_SCHED_DENSE_NS after the one before; a wake-up VX_SCHED_SPARSE_NS or more
 * after the last switches back (a ping every 10 ms; longer than a busy CPU's time slice, 3-4 ms,
 * so that dense traffic delayed by one stays batched). */
#define VX_SCHED_DENSE_NS 250000
#define VX_SCHED_SPARSE_NS 8000000
#define VX_SCHED_DENSE 8
typedef struct {
    int on;                 /* auto mode */
    int batch;              /* the thread is SCHED_BATCH now */
    int dense;              /* dense wake-ups in a row */
    uint64_t last_ns;
    uint64_t *switches;     /* io->sched_switches, shared by the two loops */
} vx_sched;
void vx_sched_woken(vx_sched *s);

/* A datagram's destination: an IPv4 or (a dual-stack node's IPv6 peers) an IPv6 address. */
typedef union {
    struct sockaddr_in in;
    struct sockaddr_in6 in6;
} vx_dest;

/* The RX loop: which of fd and fd6 (if >= 0) are readable (bits 1 and 2), 0 when stop_fd is, -1 on error. */
static inline int vx_wait_readable2(int fd, int fd6, int stop_fd) {
    struct pollfd pf[3] = {{stop_fd, POLLIN, 0}, {fd, POLLIN, 0}, {fd6, POLLIN, 0}};
    for (;;) {
        int r = poll(pf, fd6 >= 0 ? 3 : 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (pf[0].revents) return 0;
        int ready = (pf[1].revents & (POLLIN | POLLERR | POLLHUP) ? 1 : 0) |
                    (fd6 >= 0 && (pf[2].revents & (POLLIN | POLLERR | POLLHUP)) ? 2 : 0);
        if (ready) return ready;
    }
}

/* Both loops: 1 when fd is readable, 0 when stop_fd is, -1 on error. */
static inline int vx_wait_readable(int fd, int stop_fd) {
    struct pollfd pf[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    for (;;) {
        int r = poll(pf, 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        if (pf[1].revents) return 0;
        if (pf[0].revents & (POLLIN | POLLERR | POLLHUP)) return 1;
    }
}

#endif
