/* vxengine: the compiled VXLAN data plane of vxland, one C file per job:
 *   vx_table.c    the peer table, encapsulation and the receive checks (same verdicts as
 *                 vxlan/wire.py); vx_table6.c the IPv6 half of a dual-stack node (flannel-v6)
 *   vx_csum.c     the Internet checksum
 *   vx_offload.c  TCP/UDP segmentation of TUN super-packets (GSO split) and coalescing of
 *                 received segments into super-packets (GRO)
 *   vx_tx.c       the TUN -> UDP loop; vx_rx.c the UDP -> TUN loop (each run by its own
 *                 thread without the GIL); vx_rx_packet.c the outer headers of frames read
 *                 from a packet socket
 *   vx_tunnel.c   the header of a UDP tunnel GSO frame (a super-packet sent whole)
 *   vx_capture.c  the capture rings
 *   vx_sched.c    --engine-sched auto: a loop thread's policy by how densely packets come
 * vx_internal.h holds what they share and nothing outside them sees.
 */
#ifndef VXENGINE_H
#define VXENGINE_H

#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define VX_HEADROOM 22        /* VXLAN header (8) + inner Ethernet (14) */
#define VX_VNET_HDR_LEN 10    /* struct virtio_net_hdr */
#define VX_N_REASONS 32
#define VX_MAX_PACKET 65535
#define VX_MAX_SEGS 256       /* segments of one split super-packet */
#define VX_GSO_MAX_HDR 120    /* IPv4 header with options + TCP header with options */
#define VX_TX_SOCKS_MAX 32    /* source-port sockets (--outer-source-ports) */
#define VX_SCATTER_MAX_IOV (VX_MAX_PACKET / 256 + 2)   /* an MSS below 256: a plain read */

/* Verdicts; the numbers are vxlan.wire.DropReason's. */
enum {
    VX_OK = 0, VX_TOO_SHORT = 1, VX_NO_I_FLAG = 2, VX_WRONG_VNI = 3, VX_UNKNOWN_SENDER = 4,
    VX_DST_MAC_MISMATCH = 5, VX_DST_MAC_BROADCAST = 6, VX_ARP = 7, VX_BAD_ETHERTYPE = 8,
    VX_BAD_INNER_IP = 9, VX_TOO_BIG = 10, VX_NO_ROUTE = 11, VX_NOT_IP = 12, VX_SEND_FAILED = 13,
    VX_TUN_WRITE_FAILED = 14, VX_BAD_OFFLOAD = 15, VX_TTL_EXPIRED = 16,  /* 16: udp backend only */
    VX_SPOOFED_SOURCE = 17, VX_BAD_OUTER = 18, VX_CE_NOT_ECT = 19,
};

/* virtio_net_hdr (linux/virtio_net.h); host byte order as the TUN uses it. */
struct vx_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};
#define VX_VNET_F_NEEDS_CSUM 1
#define VX_VNET_F_DATA_VALID 2
#define VX_VNET_GSO_ECN 0x80
#define VX_VNET_GSO_NONE 0
#define VX_VNET_GSO_TCPV4 1
#define VX_VNET_GSO_TCPV6 4
#define VX_VNET_GSO_UDP_L4 5

typedef struct {
    uint32_t key;           /* subnet network address, host order; used != 0 */
    uint8_t used;
    uint8_t header[VX_HEADROOM];
    struct sockaddr_in addr;
} vx_peer;

typedef struct {
    uint32_t key;           /* PublicIP, network order; 0 = empty */
    uint32_t count;
} vx_sender;

/* The IPv6 half of a dual-stack node (EnableIPv6): peers by IPv6 subnet, reached at their
 * flannel-v6.<VNI> VtepMAC over the IPv6 underlay. */
typedef struct {
    uint8_t used;
    uint8_t key[16];        /* IPv6 subnet network address */
    uint8_t header[VX_HEADROOM];
    struct sockaddr_in6 addr;
} vx_peer6;

typedef struct {
    uint8_t used;
    uint8_t key[16];        /* PublicIPv6 */
    uint32_t count;
} vx_sender6;

typedef struct {
    uint8_t vni[3];
    uint8_t mac[6];
    uint32_t mask;
    int tun_mtu;
    uint16_t port;
    uint8_t strict_source;  /* --strict-source: inner source must lie in the sending VTEP's subnet */
    pthread_mutex_t lock;   /* guards the two tables. The RX loop takes it once per received batch; the TX
                             * loop once per packet read, since its reads and lookups interleave (an
                             * uncontended lock is some 20 ns beside a read()'s microsecond, and the
                             * control plane never waits behind a batch of reads) */
    vx_peer *peers;
    uint32_t peer_cap, peer_count;
    vx_sender *senders;
    uint32_t sender_cap, sender_count;
    uint8_t has_v6;         /* a second VTEP for IPv6 (vx_core_enable_v6); the rest is zero without */
    uint8_t mac6[6];
    uint8_t mask6[16];
    vx_peer6 *peers6;
    uint32_t peer6_cap, peer6_count;
    vx_sender6 *senders6;
    uint32_t sender6_cap, sender6_count;
    /* counters (read racily by /metrics: 64-bit loads do not tear on x86-64/arm64) */
    uint64_t drops[VX_N_REASONS];
    uint64_t tx_packets, tx_bytes, rx_packets, rx_bytes;
    uint64_t tun_reads, tso_packets, tso_in_place, udp_sends, gso_sends;
    uint64_t udp_recvs, gro_trains, tun_writes, coalesced;
    uint64_t super_writes;  /* super-packets received whole (packet socket) and written whole to the TUN */
    uint64_t tunnel_sends;  /* super-packets sent whole as UDP tunnel GSO frames (the TAP) */
    /* Before any check: packets read from the TUN (a TSO super-packet as its segments) and
     * datagrams received (a GRO train as its datagrams). Per side, received = forwarded +
     * the drops of that side's reasons (wire.DropReason.side), exactly. */
    uint64_t tun_received, udp_received;
} vx_core;

int vx_core_init(vx_core *c, uint32_t vni, const uint8_t mac[6], int subnet_len, int tun_mtu, uint16_t port);
void vx_core_free(vx_core *c);
int vx_set_peer(vx_core *c, uint32_t subnet, const uint8_t mac[6], uint32_t ip_net_order);
int vx_remove_peer(vx_core *c, uint32_t subnet);
/* vx_table6.c: the second VTEP (flannel-v6.<VNI>'s VtepMAC, IPv6SubnetLen) and its peers */
int vx_core_enable_v6(vx_core *c, const uint8_t mac6[6], int subnet_len6);
int vx_set_peer6(vx_core *c, const uint8_t subnet[16], const uint8_t mac[6], const uint8_t ip[16]);
int vx_remove_peer6(vx_core *c, const uint8_t subnet[16]);

void vx_lock(vx_core *c);
void vx_unlock(vx_core *c);

/* Callers hold c->lock. vx_encap routes IPv4 (an IPv6 packet: VX_NO_ROUTE, or VX_NOT_IP if
 * truncated); vx_encap6 routes IPv6 to a vx_peer6 (VX_NOT_IP for anything else). */
int vx_encap(vx_core *c, uint8_t *buf, int len, struct sockaddr_in *dest);
int vx_encap6(vx_core *c, uint8_t *buf, int len, struct sockaddr_in6 *dest);
int vx_check(vx_core *c, const uint8_t *p, int n, uint32_t sender_net_order, int *inner_len);
/* a datagram that came over the IPv6 underlay from sender6 */
int vx_check6(vx_core *c, const uint8_t *p, int n, const uint8_t sender6[16], int seg_len, int *inner_len);
/* vx_check for a super-packet: the MTU is checked against seg_len (its headers and one
 * segment's payload) instead of its whole length. */
int vx_check_super(vx_core *c, const uint8_t *p, int n, uint32_t sender_net_order, int seg_len, int *inner_len);

/* ECN across the tunnel, as RFC 6040 and the kernel's vxlan device (INET_ECN_encapsulate,
 * INET_ECN_decapsulate in include/net/inet_ecn.h). Encapsulation: the outer ECN field is the
 * inner one, CE sent as ECT(0); the outer DSCP is 0 (flannel sets no tos). Decapsulation of a
 * CE-marked outer header: the inner packet is marked CE (its IPv4 checksum updated), or
 * dropped (VX_CE_NOT_ECT) if its sender did not ask for ECN; any other outer field leaves the
 * inner one as it is. */
static inline uint8_t vx_ecn_outer(const uint8_t *ip) {
    uint8_t ecn = (ip[0] >> 4) == 6 ? (uint8_t)((ip[1] >> 4) & 3) : (uint8_t)(ip[1] & 3);
    return ecn == 3 ? 2 : ecn;
}
int vx_ecn_verdict(const uint8_t *ip, int len, uint8_t outer_tos);  /* VX_OK or VX_CE_NOT_ECT */
void vx_ecn_mark(uint8_t *ip, int len, uint8_t outer_tos);  /* for a forwarded packet, after its verdict */

/* Internet checksum (RFC 1071): partial sums over native 16-bit words, fold at the end. */
uint64_t vx_csum_add(const uint8_t *p, size_t n, uint64_t acc);  /* AVX2 where the CPU has it */
uint64_t vx_csum_add_portable(const uint8_t *p, size_t n, uint64_t acc);
uint16_t vx_csum_fold(uint64_t acc);  /* folded, not inverted, in memory order */
uint64_t vx_pseudo_v4(const uint8_t *iph, uint8_t proto, uint16_t l4_len);
uint64_t vx_pseudo_v6(const uint8_t *ip6h, uint8_t proto, uint32_t l4_len);
int vx_finish_csum(uint8_t *pkt, int len, int csum_start, int csum_offset);

/* GSO split of an IPv4 or IPv6 TCP or UDP super-packet into segments of gso_size payload bytes, headers only:
 * segment k's VX_HEADROOM + IP + TCP headers are written at hdrs + k * hdr_stride (checksums
 * complete), its payload stays in pkt at hdr_len + k * gso_size; lens[k] = its IP length.
 * Returns the number of segments, or -1 if the packet cannot be split. */
int vx_gso_headers(const uint8_t *pkt, int len, int gso_size, uint8_t *hdrs, size_t hdrs_cap, int *lens,
                   int max_segs, int *hdr_stride, int *hdr_len);

/* The scattered TUN read and the in-place split (see vx_offload.c). */
/* -1: the layout needs more than max_iov pieces or more than cap bytes from buf */
int vx_scatter_iov(uint8_t *buf, size_t cap, int lead, int hlen, int mss, struct iovec *iov, int max_iov);
void vx_scatter_compact(uint8_t *buf, int hlen, int mss, int len);
int vx_gso_inplace(uint8_t *buf, int len, int gso_size, int hlen, int *lens, int max_segs);
/* Splits a super-packet read into buf (its headroom start) with vx_scatter_iov(buf, VX_VNET_HDR_LEN,
 * hlen, mss), or plainly (mss = 0). *inplace = 1: segment k is one piece, headers and payload, at
 * buf + k * *stride; 0: its headers are at hdrs + k * *stride + VX_HEADROOM and its payload at
 * buf + VX_HEADROOM + *hdr + k * gso_size (a scattered packet of another shape is compacted first). */
int vx_split_read(uint8_t *buf, int len, int gso_size, int hlen, int mss, uint8_t *hdrs, size_t hdrs_cap,
                  int *lens, int *stride, int *hdr, int *inplace);

/* GRO: coalesce in-order TCP segments (IPv4 or IPv6) of one flow into a super-packet with a
 * virtio_net_hdr. Nothing is copied but the first segment's headers: the payloads are gathered by iovecs
 * pointing where they were received, so they must stay put until the train is flushed. */
#define VX_GRO_MAX_IOV (VX_MAX_SEGS + 2)
typedef struct {
    uint8_t head[VX_VNET_HDR_LEN + 128];   /* vnet header + IP + TCP headers of the train */
    struct iovec iov[VX_GRO_MAX_IOV];      /* iov[0] = head; then one payload per segment */
    int active, len, hdr_len, gso_size, count, closed;
    int udp;                               /* UDP trains too (the TUN takes USO writes) */
    int v6;                                /* a train of IPv6 TCP segments (TSO6 when written) */
    uint8_t proto, flags_or;
    uint32_t next_seq;
} vx_gro;

int vx_gro_candidate(const uint8_t *pkt, int len, int udp_ok);   /* 1: may be coalesced (checksums verified) */
int vx_gro_start(vx_gro *g, const uint8_t *pkt, int len);
int vx_gro_append(vx_gro *g, const uint8_t *pkt, int len);   /* 1: appended, 0: does not fit */
int vx_gro_finish(vx_gro *g);   /* fixes the headers and the vnet header; returns g->iov's count */
/* emit(ctx, iov, iovcnt, has_vnet_hdr, segments, inner bytes): a packet to hand to the TUN */
typedef void (*vx_emit_fn)(void *ctx, const struct iovec *iov, int iovcnt, int has_vnet, int count,
                           uint64_t bytes);
void vx_gro_push(vx_gro *g, const uint8_t *p, int len, vx_emit_fn emit, void *ctx);
void vx_gro_flush(vx_gro *g, vx_emit_fn emit, void *ctx);

/* Capture: each data-plane thread copies what it sees into its own ring (single producer);
 * a Python thread drains the rings (single consumer) and writes pcapng off the hot path.
 * A full ring loses capture records (counted), never packets. */
#define VX_CAP_SLOTS 4096
enum { VX_CAP_UNDERLAY = 0, VX_CAP_OVERLAY = 1 };
enum { VX_CAP_IN = 1, VX_CAP_OUT = 2 };
typedef struct {
    uint64_t ts_ns;             /* CLOCK_REALTIME */
    uint32_t saddr, daddr;      /* underlay records: outer IPv4 addresses, network order */
    uint16_t sport, dport;      /* underlay records: outer UDP ports, host order */
    uint8_t iface, dir, reason;
    uint8_t v6;                 /* underlay records of the IPv6 underlay: the addresses are these */
    uint32_t orig_len, cap_len;
    uint8_t saddr6[16], daddr6[16];
} vx_cap_hdr;
typedef struct {
    uint8_t *slots;
    uint32_t slot_size;         /* sizeof(vx_cap_hdr) + snap length */
    uint64_t head, tail;        /* head: producer, tail: consumer (atomic acquire/release) */
    uint64_t lost;
} vx_cap_ring;

int vx_cap_init(vx_cap_ring *r, uint32_t snaplen);
void vx_cap_free(vx_cap_ring *r);
void vx_cap_put(vx_cap_ring *r, int iface, int dir, int reason, uint32_t saddr, uint16_t sport, uint32_t daddr,
                uint16_t dport, const struct iovec *iov, int iovcnt, uint32_t orig_len);
/* the same for a datagram of the IPv6 underlay (a dual-stack node's) */
void vx_cap_put6(vx_cap_ring *r, int dir, int reason, const uint8_t saddr6[16], uint16_t sport,
                 const uint8_t daddr6[16], uint16_t dport, const struct iovec *iov, int iovcnt, uint32_t orig_len);
/* the consumer's view: records from tail to head; release them with vx_cap_release */
uint64_t vx_cap_available(vx_cap_ring *r);
const vx_cap_hdr *vx_cap_peek(vx_cap_ring *r, uint64_t i);
void vx_cap_release(vx_cap_ring *r, uint64_t n);

/* I/O loops; each returns when stop_fd becomes readable. */
typedef struct {
    vx_core *core;
    int tun_fd, udp_fd, stop_fd;
    int udp6_fd;                /* >= 0: the IPv6 underlay's socket (a dual-stack node): IPv6 peers' datagrams
                                 * leave and arrive by it; the RX loop reads it beside udp_fd or pkt_fd */
    int pkt6_fd;                /* >= 0: receive the IPv6 underlay from this packet socket instead of udp6_fd */
    uint8_t local_ip6[16];      /* the IPv6 underlay address (the IPv6 packet socket's frames must be for it) */
    int pkt_fd;                 /* >= 0: receive from this packet socket (PACKET_VNET_HDR) instead of udp_fd */
    int n_tx_socks;             /* > 1: send each flow by one of these sockets, bound to source ports of their own */
    int tx_socks[VX_TX_SOCKS_MAX];
    uint16_t tx_ports[VX_TX_SOCKS_MAX];  /* their ports, host order (capture records) */
    int n_tx_socks6;            /* the same for the IPv6 underlay (> 1: instead of udp6_fd) */
    int tx_socks6[VX_TX_SOCKS_MAX];
    uint16_t tx_ports6[VX_TX_SOCKS_MAX];
    int vnet, udp_gso, udp_gro, tun_uso;
    volatile int gso_disabled;  /* set after EIO: egress lacks checksum offload */
    volatile int capture;       /* read once per batch; rings must be set before it is 1 */
    int sched_auto;             /* --engine-sched auto: each loop picks SCHED_OTHER or SCHED_BATCH (vx_sched.c) */
    uint64_t sched_switches;    /* policy changes made by the two loops */
    vx_cap_ring *cap_tx, *cap_rx;
    int tap_fd;                 /* >= 0: TCP/UDP super-packets leave whole, as UDP tunnel GSO frames written
                                 * into this TAP (vx_tunnel.c), instead of as UDP_SEGMENT trains */
    uint8_t tap_mac[6];         /* the TAP's address: the frames' destination */
    int tap_csum;               /* the TAP takes a partial outer UDP checksum (TUN_F_UDP_TUNNEL_GSO_CSUM):
                                 * IPv6 peers' super-packets can go whole too */
    volatile int tunnel_errno;  /* the TAP refused a frame with this errno: tunnel GSO is off for good */
    uint16_t tunnel_ip_id;      /* the outer IPv4 ID of the next tunnel frame */
    uint32_t local_ip;          /* network order: the outer source (tunnel frames, capture records) */
    uint16_t local_port;
} vx_io;

/* The I/O loops run until stop_fd is written: 0. -1: no memory for their buffers. vx_run_tx
 * returns an errno (> 0) when reading the TUN fails for good (EBADFD: the device was deleted). */
int vx_run_tx(vx_io *io);
int vx_run_rx(vx_io *io);

/* A reload's bridge (vx_bridge.c): fork a child that, once go_fd is written (after the
 * daemon's loops stopped), runs both loops on io's descriptors and tables at priority ``nice``
 * until stop_fd is written, then writes done_fd and exits (all three eventfds); of the rest it
 * keeps only ``extra`` open (at most VX_BRIDGE_EXTRA_MAX). The caller must be the thread that
 * writes the tables and later calls execve. The child's PID, or -1 with errno. */
#define VX_BRIDGE_EXTRA_MAX 8
pid_t vx_bridge(vx_io *io, int stop_fd, int go_fd, int done_fd, int nice, const int *extra, int n_extra);

#endif
