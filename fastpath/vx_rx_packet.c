/* vx_rx_packet.c: frames read from a packet socket with PACKET_VNET_HDR (Linux >= 3.2):
 * [virtio_net_hdr][link header: Ethernet, or none on an L3 device][IPv4][UDP][VXLAN datagram]. Unlike a UDP socket's datagrams they
 * keep what the kernel knows of their checksums (NEEDS_CSUM: a peer on this host or across a
 * virtual link left the inner checksum partial; DATA_VALID: verified) and a kernel vxlan
 * peer's tunnel super-packets arrive whole, described by the inner GSO type (the tunnel bits
 * are dropped by virtio_net_hdr_from_skb on every kernel, include/linux/virtio_net.h), as do
 * a vxland peer's UDP GSO trains (UDP_L4, its checksum start the outer UDP header). The
 * kernel's IP and UDP layers have not seen them yet, so the outer headers are checked here. */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <arpa/inet.h>
#include <string.h>

/* The outer IPv4 and UDP headers of a frame (its link header of link_len bytes first: 14 for
 * Ethernet, 0 for an L3 device such as WireGuard's; flen bytes; vh its virtio-net header):
 * VX_OK and where the VXLAN datagram lies, or VX_BAD_OUTER (malformed, a fragment, a wrong
 * checksum). */
/* The same for an IPv6 outer header (a dual-stack node's IPv6 underlay): next header UDP, no
 * extension header (a kernel vxlan device sends none; a fragment is refused as over IPv4), and
 * a UDP checksum that is not zero (RFC 8200; RFC 6935 lets a tunnel endpoint accept zero only
 * where configured to, and a kernel device does not: noudp6zerocsumrx). */
static int frame_outer6(const uint8_t *frame, int flen, int link_len, const struct vx_vnet_hdr *vh, vx_frame *f) {
    const uint8_t *ip = frame + link_len;
    if (flen < link_len + 40 + 8 || (link_len == 14 && (frame[12] != 0x86 || frame[13] != 0xDD))) return VX_BAD_OUTER;
    int super = vh->gso_type != VX_VNET_GSO_NONE;
    /* a super-packet's payload length is its whole length (or 0 past 64 KB): take what was read */
    int payload = super ? flen - link_len - 40 : (ip[4] << 8) | ip[5];
    if (ip[6] != 17 || payload < 8 || payload > flen - link_len - 40) return VX_BAD_OUTER;
    const uint8_t *udp = ip + 40;
    int ulen = super ? payload : (udp[4] << 8) | udp[5];
    if (ulen < 8 || ulen > payload || !(udp[6] | udp[7])) return VX_BAD_OUTER;
    if (!(vh->flags & (VX_VNET_F_NEEDS_CSUM | VX_VNET_F_DATA_VALID))) {
        uint64_t acc = vx_pseudo_v6(ip, 17, (uint32_t)ulen);
        if (vx_csum_fold(vx_csum_add(udp, (size_t)ulen, acc)) != 0xFFFF) return VX_BAD_OUTER;
    }
    f->v6 = 1;
    memcpy(f->saddr6, ip + 8, 16);
    memcpy(f->daddr6, ip + 24, 16);
    f->saddr = f->daddr = 0;
    f->tos = (uint8_t)(((ip[0] & 0x0F) << 4) | (ip[1] >> 4));  /* the traffic class */
    f->sport = (uint16_t)((udp[0] << 8) | udp[1]);
    f->dport = (uint16_t)((udp[2] << 8) | udp[3]);
    f->udp_off = link_len + 40;
    f->vx_off = link_len + 48;
    f->vx_len = ulen - 8;
    return VX_OK;
}

int vx_frame_outer(const uint8_t *frame, int flen, int link_len, const struct vx_vnet_hdr *vh, vx_frame *f) {
    const uint8_t *ip = frame + link_len;
    if (flen > link_len && (ip[0] >> 4) == 6) return frame_outer6(frame, flen, link_len, vh, f);
    f->v6 = 0;
    if (flen < link_len + 20 + 8 || (ip[0] >> 4) != 4) return VX_BAD_OUTER;
    if (link_len == 14 && (frame[12] != 0x08 || frame[13] != 0x00)) return VX_BAD_OUTER;
    int ihl = (ip[0] & 0x0F) * 4;
    int super = vh->gso_type != VX_VNET_GSO_NONE;
    /* a super-packet's total length is its whole length (or 0 past 64 KB): take what was read */
    int total = super ? flen - link_len : (ip[2] << 8) | ip[3];
    if (ihl < 20 || total < ihl + 8 || total > flen - link_len || ip[9] != 17) return VX_BAD_OUTER;
    if (((ip[6] & 0x3F) | ip[7]) != 0) return VX_BAD_OUTER;  /* MF or an offset: flannel never fragments */
    if (vx_csum_fold(vx_csum_add(ip, (size_t)ihl, 0)) != 0xFFFF) return VX_BAD_OUTER;
    const uint8_t *udp = ip + ihl;
    int ulen = super ? total - ihl : (udp[4] << 8) | udp[5];
    if (ulen < 8 || ulen > total - ihl) return VX_BAD_OUTER;
    /* The kernel vouches for a checksum it left partial (sent from this host or across a
     * virtual link) or verified (DATA_VALID); 0 means none (RFC 768). Else verify it here, as
     * the UDP layer would have. */
    if ((udp[6] | udp[7]) && !(vh->flags & (VX_VNET_F_NEEDS_CSUM | VX_VNET_F_DATA_VALID))) {
        uint64_t acc = vx_pseudo_v4(ip, 17, (uint16_t)ulen);
        if (vx_csum_fold(vx_csum_add(udp, (size_t)ulen, acc)) != 0xFFFF) return VX_BAD_OUTER;
    }
    memcpy(&f->saddr, ip + 12, 4);
    f->tos = ip[1];
    f->sport = (uint16_t)((udp[0] << 8) | udp[1]);
    memcpy(&f->daddr, ip + 16, 4);
    f->dport = (uint16_t)((udp[2] << 8) | udp[3]);
    f->udp_off = link_len + ihl;
    f->vx_off = link_len + ihl + 8;
    f->vx_len = ulen - 8;
    return VX_OK;
}

/* A super-packet's inner headers: their length (IP + TCP or UDP), or 0 if they do not parse.
 * An IPv6 one's next header must be TCP or UDP itself (as vx_gso_plan asks). */
int vx_frame_inner_hdr_len(const uint8_t *frame, const vx_frame *f) {
    if (f->vx_len < VX_HEADROOM + 20) return 0;
    const uint8_t *ip = frame + f->vx_off + VX_HEADROOM;
    int avail = f->vx_len - VX_HEADROOM;
    int v6 = (ip[0] >> 4) == 6;
    if (v6 && avail < 40) return 0;
    int ihl = v6 ? 40 : (ip[0] & 0x0F) * 4, proto = v6 ? ip[6] : ip[9];
    if ((!v6 && (ip[0] >> 4) != 4) || ihl < 20) return 0;
    if (proto == 6) {
        if (avail < ihl + 20) return 0;
        int doff = (ip[ihl + 12] >> 4) * 4;
        return doff >= 20 && ihl + doff <= avail ? ihl + doff : 0;
    }
    if (proto == 17) return avail >= ihl + 8 ? ihl + 8 : 0;
    return 0;
}
