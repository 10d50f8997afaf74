/* vx_offload.c: TCP/UDP segmentation of TUN super-packets (GSO split, in place or by
 * headers) and coalescing of received segments into super-packets (GRO), following the
 * kernel's net/ipv4/tcp_offload.c rules as wireguard-go's tun/offload_linux.go ports them. */
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
/* GSO split (kernel tcp_gso_segment semantics)                                              */

/* Checks a super-packet and plans its split: header length, segment count; -1 if it cannot be
 * split. IPv4, or IPv6 whose next header is TCP or UDP itself (the host's TCP sends no
 * extension headers; the kernel's ipv6_gso_segment would walk them, vxland refuses them). */
int vx_gso_plan(const uint8_t *pkt, int len, int gso_size, int max_segs, int *hdr_len) {
    int version = len > 0 ? pkt[0] >> 4 : 0;
    if (gso_size <= 0 || (version == 4 && len < 28) || (version == 6 && len < 48) || (version != 4 && version != 6))
        return -1;
    int proto = version == 6 ? pkt[6] : pkt[9];
    int ihl = version == 6 ? 40 : (pkt[0] & 0x0F) * 4;
    if (ihl < 20 || (proto != 6 && proto != 17)) return -1;
    int l4 = proto == 6 ? (ihl + 20 <= len ? (pkt[ihl + 12] >> 4) * 4 : 0) : 8;
    int hdr = ihl + l4;
    if ((proto == 6 && l4 < 20) || hdr > len || hdr > VX_GSO_MAX_HDR) return -1;
    int payload = len - hdr;
    int nseg = payload > 0 ? (payload + gso_size - 1) / gso_size : 1;
    if (nseg > max_segs) return -1;
    *hdr_len = hdr;
    return nseg;
}

/* Writes the headers of every segment: segment k's IP + L4 header at hdrs + k * hdr_stride +
 * VX_HEADROOM, its payload read (for the checksum) at pay0 + k * pay_stride. tmpl is a copy of
 * the super-packet's headers: with the in-place layout, segment 0's header is the original. */
static void gso_write(const uint8_t *tmpl, int hdr, int len, int gso_size, int nseg, const uint8_t *pay0,
                      size_t pay_stride, uint8_t *hdrs, size_t hdr_stride, int *lens) {
    int v6 = (tmpl[0] >> 4) == 6;
    int proto = v6 ? tmpl[6] : tmpl[9];
    int ihl = v6 ? 40 : (tmpl[0] & 0x0F) * 4;
    int l4 = hdr - ihl;
    int payload = len - hdr;
    uint16_t id0 = (tmpl[4] << 8) | tmpl[5];
    uint32_t seq0 = proto == 6 ? ((uint32_t)tmpl[ihl + 4] << 24) | ((uint32_t)tmpl[ihl + 5] << 16) |
                                 ((uint32_t)tmpl[ihl + 6] << 8) | tmpl[ihl + 7] : 0;
    uint8_t flags = proto == 6 ? tmpl[ihl + 13] : 0;
    for (int k = 0; k < nseg; k++) {
        int off = k * gso_size;
        int chunk = payload - off < gso_size ? payload - off : gso_size;
        if (chunk < 0) chunk = 0;
        uint8_t *s = hdrs + (size_t)k * hdr_stride + VX_HEADROOM;
        memcpy(s, tmpl, hdr);
        int total = hdr + chunk;
        if (v6) {  /* ipv6_gso_segment: the payload length; no ID, no header checksum */
            s[4] = (total - 40) >> 8; s[5] = (total - 40) & 0xFF;
        } else {
            s[2] = total >> 8; s[3] = total & 0xFF;
            uint16_t id = id0 + k;
            s[4] = id >> 8; s[5] = id & 0xFF;
            vx_ipv4_header_csum(s, ihl);
        }
        uint8_t *th = s + ihl;
        int csum_at;
        if (proto == 6) {  /* kernel tcp_gso_segment */
            uint32_t seq = seq0 + (uint32_t)off;
            th[4] = seq >> 24; th[5] = seq >> 16; th[6] = seq >> 8; th[7] = seq;
            uint8_t f = flags;
            if (k != nseg - 1) f &= (uint8_t)~(0x01 | 0x08);  /* FIN, PSH only on the last */
            if (k != 0) f &= (uint8_t)~0x80;                   /* CWR only on the first */
            th[13] = f;
            csum_at = 16;
        } else {           /* kernel __udp_gso_segment */
            th[4] = (8 + chunk) >> 8; th[5] = (8 + chunk) & 0xFF;
            csum_at = 6;
        }
        th[csum_at] = th[csum_at + 1] = 0;
        /* one pass over the payload, read where it lies */
        uint64_t acc = v6 ? vx_pseudo_v6(s, (uint8_t)proto, (uint32_t)(l4 + chunk))
                          : vx_pseudo_v4(s, (uint8_t)proto, (uint16_t)(l4 + chunk));
        acc = vx_csum_add(th, l4, acc);
        acc = vx_csum_add(pay0 + (size_t)k * pay_stride, chunk, acc);
        uint16_t csum = (uint16_t)~vx_csum_fold(acc);
        if (proto == 17 && csum == 0) csum = 0xFFFF;  /* 0 means "no checksum" in UDP */
        memcpy(th + csum_at, &csum, 2);
        lens[k] = total;
    }
}

int vx_gso_headers(const uint8_t *pkt, int len, int gso_size, uint8_t *hdrs, size_t hdrs_cap, int *lens,
                   int max_segs, int *hdr_stride, int *hdr_len) {
    int hdr = 0;
    int nseg = vx_gso_plan(pkt, len, gso_size, max_segs, &hdr);
    if (nseg < 0) return -1;
    int step = (VX_HEADROOM + hdr + 7) & ~7;
    if ((size_t)step * nseg > hdrs_cap) return -1;
    gso_write(pkt, hdr, len, gso_size, nseg, pkt + hdr, (size_t)gso_size, hdrs, (size_t)step, lens);
    *hdr_stride = step;
    *hdr_len = hdr;
    return nseg;
}

/* The scattered TUN read: a super-packet of header length hlen and MSS mss is read so that it
 * lands already cut, segment k's payload at buf + k * S + VX_HEADROOM + hlen (S = VX_HEADROOM +
 * hlen + mss), with the room for its headers in front of it. Then every datagram of the split
 * is one piece of memory and a train of them is one iovec for sendmsg: the UDP send costs
 * ~45 ns less per iovec it does not have to walk (2 per datagram before). iov[0] also takes
 * the vnet header (lead bytes, in front of segment 0's headroom's end) and segment 0's headers. */
int vx_scatter_iov(uint8_t *buf, size_t cap, int lead, int hlen, int mss, struct iovec *iov, int max_iov) {
    if (mss <= 0 || hlen < 0) return -1;
    size_t stride = (size_t)(VX_HEADROOM + hlen + mss);
    long rest = (long)VX_MAX_PACKET - hlen - mss;  /* bytes past iov[0] */
    long pieces = 1 + (rest > 0 ? (rest + mss - 1) / mss : 0);
    if (pieces > max_iov || (size_t)pieces * stride > cap) return -1;
    iov[0].iov_base = buf + VX_HEADROOM - lead;
    iov[0].iov_len = (size_t)(lead + hlen + mss);
    for (int n = 1; n < pieces; n++) {
        iov[n].iov_base = buf + (size_t)n * stride + VX_HEADROOM + hlen;
        iov[n].iov_len = (size_t)mss;
    }
    return (int)pieces;
}

/* Undoes the scatter for a packet that did not have the guessed shape: moves the pieces
 * together behind iov[0] (each moves down, so in order is safe). */
void vx_scatter_compact(uint8_t *buf, int hlen, int mss, int len) {
    size_t stride = (size_t)(VX_HEADROOM + hlen + mss);
    long left = (long)len - (hlen + mss);  /* bytes past iov[0] */
    uint8_t *to = buf + VX_HEADROOM + hlen + mss;
    for (int k = 1; left > 0; k++) {
        size_t n = left < mss ? (size_t)left : (size_t)mss;
        memmove(to, buf + (size_t)k * stride + VX_HEADROOM + hlen, n);
        to += n;
        left -= (long)n;
    }
}

/* Splits a super-packet read with vx_scatter_iov(buf, _, hlen, gso_size): headers written in
 * the room in front of each payload. -1 if its shape is not the one the read was laid out
 * for (the caller compacts it and splits it the ordinary way). */
int vx_gso_inplace(uint8_t *buf, int len, int gso_size, int hlen, int *lens, int max_segs) {
    const uint8_t *pkt = buf + VX_HEADROOM;
    int hdr = 0;
    int nseg = vx_gso_plan(pkt, len, gso_size, max_segs, &hdr);
    if (nseg < 0 || hdr != hlen) return -1;
    uint8_t tmpl[VX_GSO_MAX_HDR];
    memcpy(tmpl, pkt, (size_t)hdr);
    size_t stride = (size_t)(VX_HEADROOM + hlen + gso_size);
    gso_write(tmpl, hdr, len, gso_size, nseg, buf + VX_HEADROOM + hdr, stride, buf, stride, lens);
    return nseg;
}

int vx_split_read(uint8_t *buf, int len, int gso_size, int hlen, int mss, uint8_t *hdrs, size_t hdrs_cap,
                  int *lens, int *stride, int *hdr, int *inplace) {
    uint8_t *pkt = buf + VX_HEADROOM;
    *inplace = 0;
    if (mss && len > hlen + mss) {  /* it reached past iov[0]: it lies scattered */
        if (gso_size == mss) {
            int n = vx_gso_inplace(buf, len, gso_size, hlen, lens, VX_MAX_SEGS);
            if (n >= 0) {
                *inplace = 1;
                *stride = VX_HEADROOM + hlen + mss;
                *hdr = hlen;
                return n;
            }
        }
        vx_scatter_compact(buf, hlen, mss, len);  /* not the guessed shape */
    }
    return vx_gso_headers(pkt, len, gso_size, hdrs, hdrs_cap, lens, VX_MAX_SEGS, stride, hdr);
}

/* ---------------------------------------------------------------------------------------- */
/* GRO (kernel tcp_gro_receive rules, as wireguard-go's tcpPacketsCanCoalesce)               */

static int ipv4_plain(const uint8_t *p, int len) {
    /* IPv4 without options, not a fragment, lengths agree, header checksum right */
    if (len < 28 || p[0] != 0x45 || ((p[2] << 8) | p[3]) != len) return 0;
    if ((p[6] & 0x3F) || p[7]) return 0;
    return vx_csum_fold(vx_csum_add(p, 20, 0)) == 0xFFFF;
}

/* IPv6 with TCP right behind its header (no extension header), the payload length agreeing
 * (ipv6_gro_receive; TCP only: UDP trains are not coalesced, see vx_rx.c) */
static int ipv6_tcp_plain(const uint8_t *p, int len) {
    return len >= 60 && (p[0] >> 4) == 6 && p[6] == 6 && ((p[4] << 8) | p[5]) == len - 40;
}

int vx_gro_candidate(const uint8_t *p, int len, int udp_ok) {
    int v6 = ipv6_tcp_plain(p, len);
    if (!v6 && !ipv4_plain(p, len)) return 0;
    int ihl = v6 ? 40 : 20, proto = v6 ? 6 : p[9];
    if (proto == 6) {
        if (len < ihl + 20) return 0;
        int thl = (p[ihl + 12] >> 4) * 4;
        if (thl < 20 || ihl + thl >= len) return 0;                /* needs payload */
        uint8_t f = p[ihl + 13];
        if (!(f & 0x10) || (f & ~(0x10 | 0x08))) return 0;         /* ACK, maybe PSH, nothing else */
    } else if (proto == 17 && udp_ok) {
        if (((p[24] << 8) | p[25]) != len - 20 || len == 28) return 0;  /* UDP length, some payload */
        if (!p[26] && !p[27]) return 1;  /* sent without a checksum: nothing to verify */
    } else {
        return 0;
    }
    /* the packet's own checksum: the kernel trusts what we hand it after coalescing */
    uint64_t acc = v6 ? vx_pseudo_v6(p, 6, (uint32_t)(len - 40))
                      : vx_pseudo_v4(p, (uint8_t)proto, (uint16_t)(len - 20));
    return vx_csum_fold(vx_csum_add(p + ihl, len - ihl, acc)) == 0xFFFF;
}

int vx_gro_start(vx_gro *g, const uint8_t *p, int len) {
    int v6 = (p[0] >> 4) == 6, ihl = v6 ? 40 : 20;
    g->v6 = v6;
    g->proto = v6 ? p[6] : p[9];
    int l4 = g->proto == 6 ? (p[ihl + 12] >> 4) * 4 : 8;
    g->active = 1;
    g->len = len;
    g->hdr_len = ihl + l4;
    g->gso_size = len - g->hdr_len;
    g->count = 1;
    g->closed = g->proto == 6 && (p[ihl + 13] & 0x08);  /* PSH ends a train */
    g->flags_or = g->proto == 6 ? p[ihl + 13] : 0;
    memcpy(g->head + VX_VNET_HDR_LEN, p, g->hdr_len);
    g->iov[0].iov_base = g->head;
    g->iov[0].iov_len = VX_VNET_HDR_LEN + g->hdr_len;
    g->iov[1].iov_base = (void *)(p + g->hdr_len);
    g->iov[1].iov_len = g->gso_size;
    if (g->proto == 6) {
        const uint8_t *t = p + ihl;
        uint32_t seq = ((uint32_t)t[4] << 24) | ((uint32_t)t[5] << 16) | ((uint32_t)t[6] << 8) | t[7];
        g->next_seq = seq + (uint32_t)g->gso_size;
    }
    return 1;
}

int vx_gro_append(vx_gro *g, const uint8_t *p, int len) {
    const uint8_t *h = g->head + VX_VNET_HDR_LEN;
    int v6 = (p[0] >> 4) == 6, ihl = v6 ? 40 : 20;
    if (!g->active || g->closed || g->count + 1 >= VX_GRO_MAX_IOV || v6 != g->v6 || (v6 ? p[6] : p[9]) != g->proto)
        return 0;
    int l4 = g->proto == 6 ? (p[ihl + 12] >> 4) * 4 : 8;
    int payload = len - ihl - l4;
    if (ihl + l4 != g->hdr_len || payload > g->gso_size || g->len + payload > VX_MAX_PACKET) return 0;
    if (v6) {
        /* addresses, ports; version, traffic class and flow label; hop limit (ipv6_gro_receive) */
        if (memcmp(p + 8, h + 8, 32) || memcmp(p + 40, h + 40, 4) || memcmp(p, h, 4) || p[7] != h[7]) return 0;
    } else {
        if (memcmp(p + 12, h + 12, 8) || memcmp(p + 20, h + 20, 4)) return 0;   /* addresses, ports */
        if (p[1] != h[1] || p[8] != h[8] || (p[6] & 0x40) != (h[6] & 0x40)) return 0;  /* TOS, TTL, DF */
    }
    if (g->proto == 6) {
        const uint8_t *t = p + ihl, *ht = h + ihl;
        uint32_t seq = ((uint32_t)t[4] << 24) | ((uint32_t)t[5] << 16) | ((uint32_t)t[6] << 8) | t[7];
        if (seq != g->next_seq) return 0;
        /* ack, window, urgent pointer and options must be equal (timestamps included) */
        if (memcmp(t + 8, ht + 8, 4) || memcmp(t + 14, ht + 14, 2) || memcmp(t + 18, ht + 18, l4 - 18)) return 0;
        g->next_seq += (uint32_t)payload;
        g->flags_or |= t[13];
        if (t[13] & 0x08) g->closed = 1;  /* PSH ends it */
    } else if ((!p[26] && !p[27]) != (!h[26] && !h[27])) {
        return 0;  /* with and without checksums do not mix */
    }
    g->count++;
    g->iov[g->count].iov_base = (void *)(p + ihl + l4);
    g->iov[g->count].iov_len = (size_t)payload;
    g->len += payload;
    if (payload < g->gso_size) g->closed = 1;  /* a short segment ends it */
    return 1;
}

int vx_gro_finish(vx_gro *g) {
    struct vx_vnet_hdr vh;
    memset(&vh, 0, sizeof vh);
    uint8_t *p = g->head + VX_VNET_HDR_LEN;
    int ihl = g->v6 ? 40 : 20;
    if (g->count > 1) {
        if (g->v6) {
            p[4] = (g->len - 40) >> 8; p[5] = (g->len - 40) & 0xFF;  /* payload length; no header checksum */
        } else {
            p[2] = g->len >> 8; p[3] = g->len & 0xFF;
            vx_ipv4_header_csum(p, 20);
        }
        int csum_at = 16;
        if (g->proto == 6) {
            p[ihl + 13] = g->flags_or;
            vh.gso_type = g->v6 ? VX_VNET_GSO_TCPV6 : VX_VNET_GSO_TCPV4;
        } else {
            p[24] = (g->len - 20) >> 8; p[25] = (g->len - 20) & 0xFF;
            csum_at = 6;
            vh.gso_type = VX_VNET_GSO_UDP_L4;
        }
        /* CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum (not inverted) */
        uint16_t ps = vx_csum_fold(g->v6 ? vx_pseudo_v6(p, g->proto, (uint32_t)(g->len - 40))
                                         : vx_pseudo_v4(p, g->proto, (uint16_t)(g->len - 20)));
        memcpy(p + ihl + csum_at, &ps, 2);
        vh.flags = VX_VNET_F_NEEDS_CSUM;
        vh.hdr_len = (uint16_t)g->hdr_len;
        vh.gso_size = (uint16_t)g->gso_size;
        vh.csum_start = (uint16_t)ihl;
        vh.csum_offset = (uint16_t)csum_at;
    }
    memcpy(g->head, &vh, VX_VNET_HDR_LEN);
    g->active = 0;
    return g->count + 1;
}

void vx_gro_flush(vx_gro *g, vx_emit_fn emit, void *ctx) {
    if (!g->active) return;
    int count = g->count;
    uint64_t bytes = (uint64_t)g->len + (uint64_t)(count - 1) * g->hdr_len;  /* as the segments came */
    int n = vx_gro_finish(g);
    emit(ctx, g->iov, n, 1, count, bytes);
}

void vx_gro_push(vx_gro *g, const uint8_t *p, int len, vx_emit_fn emit, void *ctx) {
    /* only a segment whose own checksums verified may join a train; anything else is
     * passed on alone, as received, for the kernel to judge (and drop if corrupt) */
    if (!vx_gro_candidate(p, len, g->udp)) {
        vx_gro_flush(g, emit, ctx);
        struct iovec one = {(void *)p, (size_t)len};
        emit(ctx, &one, 1, 0, 1, (uint64_t)len);
        return;
    }
    if (vx_gro_append(g, p, len)) return;
    vx_gro_flush(g, emit, ctx);
    vx_gro_start(g, p, len);
}
