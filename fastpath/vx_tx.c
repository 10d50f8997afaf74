/* vx_tx.c: the TUN -> UDP loop: scattered reads, encapsulation in place, sendmmsg with
 * UDP GSO runs. */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Datagrams waiting to be sent: each is one or two iovecs (headers, then payload in place). */
typedef struct {
    int n, niov;
    struct iovec iov[2 * TXQ];
    int iov_at[TXQ], iov_cnt[TXQ], len[TXQ], inner[TXQ];
    uint8_t sock[TXQ];              /* which of the source-port sockets sends it (its flow's), or SOCK6 */
    uint8_t ecn[TXQ];               /* its outer ECN field (vx_ecn_outer); a run has one */
    uint64_t socks_used;            /* bit s: some datagram goes by socket s */
    vx_dest addr[TXQ];
    int ord[TXQ];                   /* the send order: grouped by socket, queue order within one */
    /* one sendmmsg entry per run of equal-size datagrams to one peer (UDP GSO) */
    struct mmsghdr runs[TXQ];
    struct iovec merged[2 * TXQ];   /* the runs' iovecs, neighbours in memory joined */
    int run_first[TXQ], run_cnt[TXQ];   /* positions in ord */
    char run_ctl[TXQ][CMSG_SPACE(sizeof(uint16_t)) + CMSG_SPACE(sizeof(int))];
} tx_queue;

/* A queue's socket index: 0..VX_TX_SOCKS_MAX-1 the IPv4 underlay's source-port sockets (or
 * udp_fd when there are none), SOCK6 + i the IPv6 underlay's (or udp6_fd). */
#define SOCK6 VX_TX_SOCKS_MAX

static int sock_fd(const vx_io *io, int s) {
    if (s >= SOCK6) return io->n_tx_socks6 > 1 ? io->tx_socks6[s - SOCK6] : io->udp6_fd;
    return io->n_tx_socks > 1 ? io->tx_socks[s] : io->udp_fd;
}

/* The outer UDP source port of what socket s sends, host order. */
static uint16_t sock_port(const vx_io *io, int s) {
    if (s >= SOCK6) return io->n_tx_socks6 > 1 ? io->tx_ports6[s - SOCK6] : io->local_port;
    return io->n_tx_socks > 1 ? io->tx_ports[s] : io->local_port;
}

static int same_dst(const vx_dest *a, const vx_dest *b) {
    if (a->in.sin_family != b->in.sin_family) return 0;
    if (a->in.sin_family == AF_INET6)
        return a->in6.sin6_port == b->in6.sin6_port && !memcmp(&a->in6.sin6_addr, &b->in6.sin6_addr, 16);
    return a->in.sin_addr.s_addr == b->in.sin_addr.s_addr && a->in.sin_port == b->in.sin_port;
}

/* Messages for positions [from, end) of q->ord: with ``gso``, runs of up to 64 equal-size
 * datagrams to one peer (the last may be shorter) become one UDP_SEGMENT message. Returns
 * the number of messages in q->runs. */
static int tx_build_runs(tx_queue *q, int from, int end, int gso) {
    int nr = 0, nm = 0;
    const int *o = q->ord;
    for (int p = from; p < end;) {
        int first = p, seg = q->len[o[p]];
        size_t total = (size_t)seg;
        p++;
        while (gso && p < end && p - first < GSO_MAX_DGRAMS && same_dst(&q->addr[o[first]], &q->addr[o[p]]) &&
               q->ecn[o[p]] == q->ecn[o[first]] && q->len[o[p]] <= seg && total + (size_t)q->len[o[p]] <= GSO_MAX_BYTES) {
            total += (size_t)q->len[o[p]];
            if (q->len[o[p++]] < seg) break;  /* a shorter datagram ends a run */
        }
        struct msghdr *m = &q->runs[nr].msg_hdr;
        memset(m, 0, sizeof *m);
        int v6 = q->addr[o[first]].in.sin_family == AF_INET6;
        m->msg_name = &q->addr[o[first]];
        m->msg_namelen = v6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
        /* datagrams split in place lie back to back: one iovec for the whole run */
        struct iovec *mi = &q->merged[nm];
        int cnt = 0;
        for (int r = first; r < p; r++) {
            for (int j = q->iov_at[o[r]]; j < q->iov_at[o[r]] + q->iov_cnt[o[r]]; j++) {
                if (cnt && (uint8_t *)mi[cnt - 1].iov_base + mi[cnt - 1].iov_len == (uint8_t *)q->iov[j].iov_base)
                    mi[cnt - 1].iov_len += q->iov[j].iov_len;
                else
                    mi[cnt++] = q->iov[j];
            }
        }
        nm += cnt;
        m->msg_iov = mi;
        m->msg_iovlen = (size_t)cnt;
        int ecn = q->ecn[o[first]];
        if (p - first > 1 || ecn) {
            /* UDP_SEGMENT for a run; IP_TOS (IPV6_TCLASS over IPv6) for an ECN-capable one
             * (ip_cmsg_send, ip6_datagram_send_ctl: the outer header's field for this message;
             * without it the socket's, 0) */
            m->msg_control = q->run_ctl[nr];
            m->msg_controllen = (p - first > 1 ? CMSG_SPACE(sizeof(uint16_t)) : 0) + (ecn ? CMSG_SPACE(sizeof(int)) : 0);
            struct cmsghdr *cm = CMSG_FIRSTHDR(m);
            if (p - first > 1) {
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t size = (uint16_t)seg;
                memcpy(CMSG_DATA(cm), &size, sizeof size);
                cm = CMSG_NXTHDR(m, cm);
            }
            if (ecn) {
                cm->cmsg_level = v6 ? IPPROTO_IPV6 : IPPROTO_IP;
                cm->cmsg_type = v6 ? IPV6_TCLASS : IP_TOS;
                cm->cmsg_len = CMSG_LEN(sizeof(int));
                memcpy(CMSG_DATA(cm), &ecn, sizeof ecn);
            }
        }
        q->run_first[nr] = first;
        q->run_cnt[nr] = p - first;
        nr++;
    }
    return nr;
}

/* sendmmsg the nr messages on fd, counting what went. EIO on a GSO message means the egress
 * device cannot checksum: GSO is switched off for good and the position to resend from is
 * returned; -1 when all went (or were dropped and counted). */
static int tx_send_runs(vx_io *io, tx_queue *q, int nr, int fd) {
    vx_core *c = io->core;
    int done = 0;
    while (done < nr) {
        int r = sendmmsg(fd, q->runs + done, (unsigned)(nr - done), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EIO && q->run_cnt[done] > 1) {
                io->gso_disabled = 1;
                return q->run_first[done];
            }
            c->drops[VX_SEND_FAILED] += q->run_cnt[done];  /* skip it, keep the rest */
            done++;
            continue;
        }
        for (int k = done; k < done + r; k++) {
            for (int p = q->run_first[k]; p < q->run_first[k] + q->run_cnt[k]; p++) c->tx_bytes += q->inner[q->ord[p]];
            c->tx_packets += q->run_cnt[k];
            if (q->run_cnt[k] > 1) c->gso_sends++;
        }
        c->udp_sends++;
        done += r;
    }
    return -1;
}

/* Send positions [from, end) of q->ord on fd in as few system calls as possible. */
static void tx_send_group(vx_io *io, tx_queue *q, int from, int end, int fd) {
    while (from < end) {
        int restart = tx_send_runs(io, q, tx_build_runs(q, from, end, io->udp_gso && !io->gso_disabled), fd);
        from = restart >= 0 ? restart : end;
    }
}

/* Send everything queued: one group per socket (a flow's datagrams stay in order on its
 * source-port socket, of the IPv4 or the IPv6 underlay), each in one sendmmsg where it can. */
static void tx_flush(vx_io *io, tx_queue *q) {
    if (!(q->socks_used & (q->socks_used - 1))) {  /* one socket in use */
        for (int i = 0; i < q->n; i++) q->ord[i] = i;
        if (q->n) tx_send_group(io, q, 0, q->n, sock_fd(io, __builtin_ctzll(q->socks_used)));
    } else {
        int at = 0;
        for (int s = 0; s < 2 * VX_TX_SOCKS_MAX; s++) {
            if (!(q->socks_used & (1ull << s))) continue;
            int from = at;
            for (int i = 0; i < q->n; i++)
                if (q->sock[i] == s) q->ord[at++] = i;
            tx_send_group(io, q, from, at, sock_fd(io, s));
        }
    }
    q->n = 0;
    q->niov = 0;
    q->socks_used = 0;
}

static void tx_queue_add(tx_queue *q, uint8_t *a, int alen, const uint8_t *b, int blen,
                         const vx_dest *dst, int inner, int sock, uint8_t ecn) {
    int i = q->n++;
    q->iov_at[i] = q->niov;
    q->iov_cnt[i] = blen ? 2 : 1;
    q->iov[q->niov].iov_base = a;
    q->iov[q->niov++].iov_len = (size_t)alen;
    if (blen) {
        q->iov[q->niov].iov_base = (void *)b;
        q->iov[q->niov++].iov_len = (size_t)blen;
    }
    q->len[i] = alen + blen;
    q->inner[i] = inner;
    q->addr[i] = *dst;
    q->sock[i] = (uint8_t)sock;
    q->ecn[i] = ecn;
    q->socks_used |= 1ull << sock;
}

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* A hash of an inner packet's flow: its addresses, protocol, and its ports unless it is a
 * fragment (IPv4) or its transport header is not the first (IPv6 with extension headers). */
static uint32_t flow_hash(const uint8_t *pkt, int len) {
    uint32_t h;
    if ((pkt[0] >> 4) == 6) {
        if (len < 40) return 0;
        h = pkt[6];
        for (int i = 8; i < 40; i += 4) h = (h ^ be32(pkt + i)) * 0x9E3779B1u;
        if ((pkt[6] == 6 || pkt[6] == 17) && len >= 44) h ^= be32(pkt + 40) * 0x85EBCA6Bu;
    } else {
        if (len < 20) return 0;
        h = be32(pkt + 12) * 0x9E3779B1u;
        h ^= be32(pkt + 16) + pkt[9];
        int ihl = (pkt[0] & 0x0F) * 4;
        if ((pkt[9] == 6 || pkt[9] == 17) && !(((pkt[6] & 0x1F) | pkt[7])) && len >= ihl + 4)
            h ^= be32(pkt + ihl) * 0x85EBCA6Bu;
    }
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    return h;
}

/* Which socket carries this inner packet: one of its underlay's source-port sockets, picked
 * by a hash of its flow, as the kernel's udp_flow_src_port spreads flows over source ports for
 * ECMP and the receivers' RSS (RFC 7348 section 5); inner IPv6 goes over the IPv6 underlay. */
static int flow_socket(const vx_io *io, const uint8_t *pkt, int len) {
    int v6 = (pkt[0] >> 4) == 6, n = v6 ? io->n_tx_socks6 : io->n_tx_socks;
    int base = v6 ? SOCK6 : 0;
    return n > 1 ? base + (int)(flow_hash(pkt, len) % (uint32_t)n) : base;
}

/* The overlay capture record of a super-packet read scattered: its pieces, without the vnet header. */
static int scatter_view(const struct iovec *riov, int niov, int lead, int len, struct iovec *out) {
    int n = 0;
    size_t left = (size_t)len;
    for (int i = 0; i < niov && left; i++) {
        size_t skip = i == 0 ? (size_t)lead : 0;
        size_t take = riov[i].iov_len - skip < left ? riov[i].iov_len - skip : left;
        out[n].iov_base = (uint8_t *)riov[i].iov_base + skip;
        out[n++].iov_len = take;
        left -= take;
    }
    return n;
}

/* The TX loop's buffers and what it remembers between reads. */
typedef struct {
    vx_io *io;
    tx_queue *q;
    uint8_t *slots, *hdrs;      /* TX_SLOTS read buffers; the arena of split segments' headers */
    struct iovec *riov;         /* the scattered read's iovecs */
    size_t slot_size, buf_cap, hdr_used;
    int lead;                   /* the vnet header's length in front of a read, or 0 */
    /* the shape the next read is laid out for: the last super-packet's header length and MSS
     * (a host's TCP flows mostly share both); 0 = a plain read */
    int want_hlen, want_mss;
    /* ... used only while super-packets come: a small packet read scattered costs the kernel
     * the whole iovec array (~47 entries) for nothing */
    int last_tso;
    vx_cap_ring *cap;           /* this drain's capture ring, or NULL */
    int seg_lens[VX_MAX_SEGS];
} tx_loop;

/* One TUN read as it landed. */
typedef struct {
    uint8_t *buf;               /* the slot's headroom start; the packet is at buf + VX_HEADROOM */
    int len, niov, hlen, mss;
    int scattered;              /* the packet reached past the read's first iovec */
    struct vx_vnet_hdr vh;
} tx_read;

enum { READ_DRAINED = 0, READ_PACKET = 1, READ_EMPTY = 2 };

/* Read one packet into slot ``slot``, laid out for the expected super-packet shape. READ_*,
 * or -errno when the TUN failed for good. */
static int tx_read_one(tx_loop *t, int slot, tx_read *rd) {
    vx_io *io = t->io;
    uint8_t *buf = t->slots + (size_t)slot * t->slot_size + VX_VNET_HDR_LEN;  /* headroom start */
    uint8_t *at = buf + VX_HEADROOM - t->lead;
    int niov = t->want_mss && t->last_tso ? vx_scatter_iov(buf, t->buf_cap, t->lead, t->want_hlen, t->want_mss,
                                                           t->riov, VX_SCATTER_MAX_IOV)
                                          : 0;  /* -1: that shape does not fit a slot, a plain read */
    ssize_t r = niov > 0 ? readv(io->tun_fd, t->riov, niov) : read(io->tun_fd, at, VX_MAX_PACKET + t->lead);
    if (r < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return READ_DRAINED;
        /* EBADFD: the TUN device was deleted under us. Polling it stays "readable" for ever,
         * so looping on would burn a core and forward nothing: stop and say why. */
        return -errno;
    }
    io->core->tun_reads++;
    rd->buf = buf;
    rd->len = (int)r - t->lead;
    if (rd->len <= 0) return READ_EMPTY;
    rd->niov = niov;
    rd->hlen = t->want_hlen;
    rd->mss = t->want_mss;
    memset(&rd->vh, 0, sizeof rd->vh);
    if (t->lead) memcpy(&rd->vh, at, VX_VNET_HDR_LEN);
    t->last_tso = rd->vh.gso_type != VX_VNET_GSO_NONE;
    rd->scattered = niov > 1 && rd->len > rd->hlen + rd->mss;
    return READ_PACKET;
}

/* A packet of its own (no GSO): finish its checksum if asked, encapsulate, queue. 1 if it
 * took its slot (queued), 0 if dropped. */
static int tx_plain(tx_loop *t, tx_read *rd) {
    vx_io *io = t->io;
    vx_core *c = io->core;
    uint8_t *buf = rd->buf, *pkt = buf + VX_HEADROOM;
    int len = rd->len;
    if (rd->scattered) vx_scatter_compact(buf, rd->hlen, rd->mss, len);
    c->tun_received++;
    if ((rd->vh.flags & VX_VNET_F_NEEDS_CSUM) && vx_finish_csum(pkt, len, rd->vh.csum_start, rd->vh.csum_offset)) {
        c->drops[VX_BAD_OFFLOAD]++;
        return 0;
    }
    vx_dest dst;
    int v6 = (pkt[0] >> 4) == 6;  /* to an IPv6 peer over the IPv6 underlay (vx_table6.c) */
    pthread_mutex_lock(&c->lock);
    int v = v6 ? vx_encap6(c, buf, len, &dst.in6) : vx_encap(c, buf, len, &dst.in);
    pthread_mutex_unlock(&c->lock);
    if (t->cap) {
        struct iovec one = {pkt, (size_t)len};
        vx_cap_put(t->cap, VX_CAP_OVERLAY, VX_CAP_OUT, v, 0, 0, 0, 0, &one, 1, (uint32_t)len);
    }
    if (v) { c->drops[v]++; return 0; }
    if (t->q->n == TXQ) tx_flush(io, t->q), t->hdr_used = 0;
    int sock = flow_socket(io, pkt, len);
    tx_queue_add(t->q, buf, VX_HEADROOM + len, NULL, 0, &dst, len, sock, vx_ecn_outer(pkt));
    if (t->cap) {
        struct iovec one = {buf, (size_t)(VX_HEADROOM + len)};
        if (v6)
            vx_cap_put6(t->cap, VX_CAP_OUT, 0, io->local_ip6, sock_port(io, sock), dst.in6.sin6_addr.s6_addr,
                        ntohs(dst.in6.sin6_port), &one, 1, (uint32_t)(VX_HEADROOM + len));
        else
            vx_cap_put(t->cap, VX_CAP_UNDERLAY, VX_CAP_OUT, 0, io->local_ip, sock_port(io, sock),
                       dst.in.sin_addr.s_addr, ntohs(dst.in.sin_port), &one, 1, (uint32_t)(VX_HEADROOM + len));
    }
    return 1;
}

/* Queue a split super-packet's nseg segments: each datagram is its outer headers (a copy of
 * segment 0's) and its piece of payload, one piece of memory when split in place. */
static void tx_queue_segments(tx_loop *t, tx_read *rd, const vx_dest *dst, int nseg, int stride, int hdr,
                              int inplace) {
    vx_io *io = t->io;
    uint8_t *buf = rd->buf, *pkt = buf + VX_HEADROOM;
    int v6 = dst->in.sin_family == AF_INET6;
    int sock = flow_socket(io, pkt, rd->len);  /* every segment is of one flow */
    uint16_t sport = sock_port(io, sock);
    uint8_t ecn = vx_ecn_outer(pkt);  /* every segment has the super-packet's IP header */
    if (!inplace) memcpy(t->hdrs + t->hdr_used, buf, VX_HEADROOM);
    uint8_t *h0 = inplace ? buf : t->hdrs + t->hdr_used;
    for (int k = 0; k < nseg; k++) {
        uint8_t *h = h0 + (size_t)k * stride;
        if (k) memcpy(h, buf, VX_HEADROOM);
        int seg = t->seg_lens[k], chunk = seg - hdr;
        const uint8_t *body = pkt + hdr + (size_t)k * rd->vh.gso_size;
        if (inplace)  /* headers and payload are one piece */
            tx_queue_add(t->q, h, VX_HEADROOM + seg, NULL, 0, dst, seg, sock, ecn);
        else
            tx_queue_add(t->q, h, VX_HEADROOM + hdr, body, chunk, dst, seg, sock, ecn);
        if (t->cap) {
            struct iovec two[2] = {{h, (size_t)(VX_HEADROOM + hdr)}, {(void *)body, (size_t)chunk}};
            if (inplace) two[1].iov_base = h + VX_HEADROOM + hdr;
            if (v6)
                vx_cap_put6(t->cap, VX_CAP_OUT, 0, io->local_ip6, sport, dst->in6.sin6_addr.s6_addr,
                            ntohs(dst->in6.sin6_port), two, 2, (uint32_t)(VX_HEADROOM + seg));
            else
                vx_cap_put(t->cap, VX_CAP_UNDERLAY, VX_CAP_OUT, 0, io->local_ip, sport, dst->in.sin_addr.s_addr,
                           ntohs(dst->in.sin_port), two, 2, (uint32_t)(VX_HEADROOM + seg));
        }
    }
    if (!inplace) t->hdr_used += (size_t)nseg * stride;
}

/* The overlay record of a super-packet, in its pieces when read scattered. Out of line: its
 * iovec array would enlarge tx_super's stack frame for every packet, capture on or off. */
static __attribute__((noinline)) void capture_super_out(tx_loop *t, tx_read *rd, int verdict) {
    struct iovec view[VX_SCATTER_MAX_IOV];
    int nv = 1;
    view[0].iov_base = rd->buf + VX_HEADROOM;
    view[0].iov_len = (size_t)rd->len;
    if (rd->scattered) nv = scatter_view(t->riov, rd->niov, t->lead, rd->len, view);
    vx_cap_put(t->cap, VX_CAP_OVERLAY, VX_CAP_OUT, verdict, 0, 0, 0, 0, view, nv, (uint32_t)rd->len);
}

/* The underlay records of a super-packet sent whole: the datagrams the wire carries once the
 * kernel (or the NIC) has cut it, as the split path would have sent them, built for the
 * capture alone (headers in the arena, which nothing queued uses now; payloads where they lie). */
static __attribute__((noinline)) void capture_tunnel_segments(tx_loop *t, tx_read *rd, const vx_dest *dst,
                                                              uint16_t sport) {
    uint8_t *pkt = rd->buf + VX_HEADROOM;
    int stride = 0, hdr = 0;
    int nseg = vx_gso_headers(pkt, rd->len, rd->vh.gso_size, t->hdrs, HDR_ARENA, t->seg_lens, VX_MAX_SEGS, &stride,
                              &hdr);
    for (int k = 0; k < nseg; k++) {
        uint8_t *h = t->hdrs + (size_t)k * stride;
        memcpy(h, rd->buf, VX_HEADROOM);
        struct iovec two[2] = {{h, (size_t)(VX_HEADROOM + hdr)},
                               {pkt + hdr + (size_t)k * rd->vh.gso_size, (size_t)(t->seg_lens[k] - hdr)}};
        if (dst->in.sin_family == AF_INET6)
            vx_cap_put6(t->cap, VX_CAP_OUT, 0, t->io->local_ip6, sport, dst->in6.sin6_addr.s6_addr,
                        ntohs(dst->in6.sin6_port), two, 2, (uint32_t)(VX_HEADROOM + t->seg_lens[k]));
        else
            vx_cap_put(t->cap, VX_CAP_UNDERLAY, VX_CAP_OUT, 0, t->io->local_ip, sport, dst->in.sin_addr.s_addr,
                       ntohs(dst->in.sin_port), two, 2, (uint32_t)(VX_HEADROOM + t->seg_lens[k]));
    }
}

/* A super-packet sent whole: one UDP tunnel GSO frame written into the TAP (vx_tunnel.c), the
 * kernel routes it out and cuts it only if the egress device cannot carry it. 1: sent (or
 * dropped and counted), the slot is free again (the write copied it); 0: it cannot go so,
 * split it. What was queued is sent first, so that a flow's packets stay in order. An IPv6
 * peer's frame has an outer IPv6 header (and needs the TAP's outer checksum offload). */
static int tx_tunnel(tx_loop *t, tx_read *rd, const vx_dest *dst) {
    vx_io *io = t->io;
    vx_core *c = io->core;
    uint8_t *pkt = rd->buf + VX_HEADROOM;
    int v6 = dst->in.sin_family == AF_INET6;
    if (v6 && !io->tap_csum) return 0;
    uint16_t sport = sock_port(io, flow_socket(io, pkt, rd->len));  /* the port its small packets leave from */
    uint8_t hdr[VX_TUNNEL_HDR6_LEN];
    int seg_hdr = 0;
    int nseg = v6 ? vx_tunnel_header6(hdr, pkt, rd->len, &rd->vh, io->tap_mac, c->mac, io->local_ip6, sport, &dst->in6,
                                      &seg_hdr)
                  : vx_tunnel_header(hdr, pkt, rd->len, &rd->vh, io->tap_mac, c->mac, io->local_ip, sport, &dst->in,
                                     io->tunnel_ip_id, &seg_hdr);
    if (nseg < 1) return 0;
    if (t->q->n) tx_flush(io, t->q), t->hdr_used = 0;
    struct iovec iov[2] = {{hdr, v6 ? VX_TUNNEL_HDR6_LEN : VX_TUNNEL_HDR_LEN},
                           {rd->buf, (size_t)(VX_HEADROOM + rd->len)}};
    ssize_t w;
    do w = writev(io->tap_fd, iov, 2); while (w < 0 && errno == EINTR);
    if (w < 0 && (errno == EINVAL || errno == EOPNOTSUPP)) {  /* the kernel cannot take it: split from now on */
        io->tunnel_errno = errno;
        return 0;
    }
    c->tun_received += (uint64_t)nseg;
    if (w < 0) {
        c->drops[VX_SEND_FAILED] += (uint64_t)nseg;
        return 1;
    }
    if (!v6) io->tunnel_ip_id += (uint16_t)nseg;
    c->tunnel_sends++;
    c->tx_packets += (uint64_t)nseg;
    c->tx_bytes += (uint64_t)rd->len + (uint64_t)(nseg - 1) * (uint64_t)seg_hdr;
    if (t->cap) capture_tunnel_segments(t, rd, dst, sport);
    return 1;
}

/* A TCP (or, with USO, UDP) super-packet: every segment's headers are written in front of
 * its payload where it lies, so it is read once (checksum) and copied once (by the kernel);
 * read scattered, each datagram is one piece of memory. 1 if it took its slot. */
static int tx_super(tx_loop *t, tx_read *rd) {
    vx_io *io = t->io;
    vx_core *c = io->core;
    uint8_t *buf = rd->buf, *pkt = buf + VX_HEADROOM;
    int len = rd->len;
    c->tso_packets++;
    if (t->q->n + VX_MAX_SEGS > TXQ || t->hdr_used + (size_t)VX_MAX_SEGS * 128 > HDR_ARENA) {
        tx_flush(io, t->q);
        t->hdr_used = 0;
    }
    vx_dest dst;
    int v6 = (pkt[0] >> 4) == 6;
    pthread_mutex_lock(&c->lock);
    /* segment 0's outer header; every segment's is the same */
    int v = v6 ? vx_encap6(c, buf, len, &dst.in6) : vx_encap(c, buf, len, &dst.in);
    pthread_mutex_unlock(&c->lock);
    if (t->cap) capture_super_out(t, rd, v);
    if (v) {
        int ph = 0, ns = vx_gso_plan(pkt, len, rd->vh.gso_size, VX_MAX_SEGS, &ph);
        uint64_t segs = ns > 0 ? (uint64_t)ns : 1;  /* counted as the segments it carried */
        c->tun_received += segs;
        c->drops[v] += segs;
        return 0;
    }
    if (io->tap_fd >= 0 && !io->tunnel_errno && !rd->scattered && tx_tunnel(t, rd, &dst)) return 0;
    int proto = v6 ? pkt[6] : pkt[9];  /* (IPv6: no extension header, or vx_gso_plan refuses it) */
    int split_gso = (rd->vh.gso_type == (v6 ? VX_VNET_GSO_TCPV6 : VX_VNET_GSO_TCPV4) && proto == 6) ||
                    (rd->vh.gso_type == VX_VNET_GSO_UDP_L4 && proto == 17);
    int stride = 0, hdr = 0, inplace = 0;
    int nseg = split_gso ? vx_split_read(buf, len, rd->vh.gso_size, rd->scattered ? rd->hlen : 0,
                                         rd->scattered ? rd->mss : 0, t->hdrs + t->hdr_used, HDR_ARENA - t->hdr_used,
                                         t->seg_lens, &stride, &hdr, &inplace)
                         : -1;
    if (nseg < 0) {
        c->tun_received++;
        c->drops[VX_BAD_OFFLOAD]++;
        return 0;
    }
    c->tun_received += (uint64_t)nseg;
    c->tso_in_place += (uint64_t)inplace;
    tx_queue_segments(t, rd, &dst, nseg, stride, hdr, inplace);
    if (t->lead && (io->tap_fd < 0 || io->tunnel_errno)) {  /* lay the next read out for this one's shape */
        t->want_hlen = hdr;
        t->want_mss = rd->vh.gso_size;
    }
    return 1;
}

int vx_run_tx(vx_io *io) {
    /* room for the scattered layout of most shapes (vx_scatter_iov checks) */
    tx_loop t = {.io = io, .slot_size = VX_VNET_HDR_LEN + 2 * (VX_HEADROOM + VX_MAX_PACKET) + 64,
                 .lead = io->vnet ? VX_VNET_HDR_LEN : 0};
    t.buf_cap = t.slot_size - VX_VNET_HDR_LEN;
    t.slots = malloc((size_t)TX_SLOTS * t.slot_size);
    t.hdrs = malloc(HDR_ARENA);
    t.q = calloc(1, sizeof *t.q);
    t.riov = malloc(sizeof(struct iovec) * VX_SCATTER_MAX_IOV);
    int tun_errno = 0;
    tx_read rd = {0};
    vx_sched sched = {.on = io->sched_auto, .switches = &io->sched_switches};
    while (t.slots && t.hdrs && t.q && t.riov && vx_wait_readable(io->tun_fd, io->stop_fd) > 0) {
        vx_sched_woken(&sched);
        t.cap = CAPTURE_RING(io, cap_tx);  /* the one capture check of a batch */
        t.hdr_used = 0;
        for (int slot = 0; slot < TX_SLOTS;) {
            int got = tx_read_one(&t, slot, &rd);
            if (got == READ_DRAINED) break;
            if (got < 0) { tun_errno = -got; break; }
            if (got == READ_EMPTY) continue;
            slot += rd.vh.gso_type == VX_VNET_GSO_NONE ? tx_plain(&t, &rd) : tx_super(&t, &rd);
        }
        tx_flush(io, t.q);
        if (tun_errno) break;
    }
    int failed = !t.slots || !t.hdrs || !t.q || !t.riov;
    free(t.slots);
    free(t.hdrs);
    free(t.q);
    free(t.riov);
    return failed ? -1 : tun_errno;
}
