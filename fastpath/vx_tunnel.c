/* vx_tunnel.c: the header of a UDP tunnel GSO frame, the object a kernel vxlan device hands
 * its underlay: one whole TCP (or UDP) super-packet behind outer Ethernet/IPv4/UDP/VXLAN/inner
 * Ethernet, written into a TAP that has TUN_F_UDP_TUNNEL_GSO (Linux >= 6.17). The kernel
 * carries it whole where the egress device can (veth, NICs with tunnel offload) and cuts it
 * (skb_udp_tunnel_segment) where it cannot; the receiver sees what it would see from a kernel
 * peer. The virtio-net header is the 24-byte virtio_net_hdr_v1_hash_tunnel
 * (include/uapi/linux/virtio_net.h, Linux 6.17): the legacy 10 bytes, num_buffers, the hash
 * fields (unused), then the outer transport and inner network header offsets. Laid out as
 * ../shared/tools/probes/tunnel-gso proved on this machine kind. */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <arpa/inet.h>
#include <string.h>

#define VX_VNET_GSO_UDP_TUNNEL_IPV4 0x20
#define VX_VNET_GSO_UDP_TUNNEL_IPV6 0x40
#define VX_VNET_F_UDP_TUNNEL_CSUM 0x08   /* the outer UDP checksum is partial too */
#define OUTER_IP_OFF 14
#define OUTER_UDP_OFF (OUTER_IP_OFF + 20)
#define INNER_OFF (OUTER_UDP_OFF + 8 + VX_HEADROOM)   /* the inner IP header: 64 */

static void put16le(uint8_t *p, uint16_t v) { p[0] = v & 0xFF; p[1] = v >> 8; }

/* The virtio-net header and the outer Ethernet header of a tunnel frame, for both underlay
 * families: flags and the tunnel gso type (the inner type and ECN bit kept), header and
 * checksum offsets counted from the Ethernet header (udp_off: the outer UDP header, inner_off:
 * the inner IP header; ihl: the inner IP header's length), then the frame to the TAP. */
static void tunnel_vnet_eth(uint8_t *out, const struct vx_vnet_hdr *vh, uint8_t flags, uint8_t tunnel_type,
                            int udp_off, int inner_off, int hdr, int ihl, const uint8_t tap_mac[6],
                            const uint8_t src_mac[6], uint16_t ethertype) {
    uint8_t *v = out;
    memset(v, 0, VX_TUNNEL_VNET_LEN);
    v[0] = flags;
    v[1] = (uint8_t)(tunnel_type | vh->gso_type);
    put16le(v + 2, (uint16_t)(inner_off + hdr));
    put16le(v + 4, vh->gso_size);
    put16le(v + 6, (uint16_t)(inner_off + ihl));
    put16le(v + 8, vh->csum_offset);
    put16le(v + 20, (uint16_t)udp_off);
    put16le(v + 22, (uint16_t)inner_off);
    uint8_t *eth = out + VX_TUNNEL_VNET_LEN;
    memcpy(eth, tap_mac, 6);
    memcpy(eth + 6, src_mac, 6);
    eth[12] = (uint8_t)(ethertype >> 8);
    eth[13] = (uint8_t)ethertype;
}

/* Fills out[VX_TUNNEL_HDR_LEN]: the virtio-net header, outer Ethernet (to tap_mac), IPv4 and
 * UDP headers for the super-packet pkt (len bytes of inner IP, vh as the TUN gave it) sent to
 * dst from src:sport, the outer IPv4 ID ip_id (the kernel numbers the segments from it). The
 * VXLAN header and inner Ethernet (VX_HEADROOM bytes) follow in the caller's buffer, then pkt.
 * Returns the number of segments it stands for, or -1 if it cannot go as one frame (not a
 * TCPv4/UDP super-packet with a partial checksum, or too long for an outer IPv4 header). The
 * outer UDP checksum is 0, as a kernel vxlan device sends it over IPv4 by default. */
int vx_tunnel_header(uint8_t *out, const uint8_t *pkt, int len, const struct vx_vnet_hdr *vh, const uint8_t tap_mac[6],
                     const uint8_t src_mac[6], uint32_t src, uint16_t sport, const struct sockaddr_in *dst,
                     uint16_t ip_id, int *hdr_len) {
    int inner_gso = vh->gso_type & ~VX_VNET_GSO_ECN;
    int hdr = 0, nseg = vx_gso_plan(pkt, len, vh->gso_size, VX_MAX_SEGS, &hdr);
    int ihl = (pkt[0] & 0x0F) * 4;
    if (nseg < 1 || !(vh->flags & VX_VNET_F_NEEDS_CSUM) || vh->csum_start != ihl) return -1;
    if (!((inner_gso == VX_VNET_GSO_TCPV4 && pkt[9] == 6) || (inner_gso == VX_VNET_GSO_UDP_L4 && pkt[9] == 17)))
        return -1;
    int outer_len = 20 + 8 + VX_HEADROOM + len;
    if (outer_len > 0xFFFF) return -1;
    tunnel_vnet_eth(out, vh, VX_VNET_F_NEEDS_CSUM, VX_VNET_GSO_UDP_TUNNEL_IPV4, OUTER_UDP_OFF, INNER_OFF, hdr, ihl,
                    tap_mac, src_mac, 0x0800);
    uint8_t *ip = out + VX_TUNNEL_VNET_LEN + OUTER_IP_OFF;
    ip[0] = 0x45;
    ip[1] = vx_ecn_outer(pkt);  /* RFC 6040: the inner ECN field, CE as ECT(0) */
    ip[2] = outer_len >> 8;
    ip[3] = outer_len & 0xFF;
    ip[4] = ip_id >> 8;
    ip[5] = ip_id & 0xFF;
    ip[6] = ip[7] = 0;  /* no DF, as the UDP path and a kernel vxlan device without df set */
    ip[8] = 64;
    ip[9] = 17;
    ip[10] = ip[11] = 0;
    memcpy(ip + 12, &src, 4);
    memcpy(ip + 16, &dst->sin_addr.s_addr, 4);
    vx_ipv4_header_csum(ip, 20);
    uint8_t *udp = ip + 20;
    int udp_len = outer_len - 20;
    udp[0] = sport >> 8;
    udp[1] = sport & 0xFF;
    memcpy(udp + 2, &dst->sin_port, 2);
    udp[4] = udp_len >> 8;
    udp[5] = udp_len & 0xFF;
    udp[6] = udp[7] = 0;
    *hdr_len = hdr;
    return nseg;
}

/* The same over the IPv6 underlay (a dual-stack node's IPv6 peers): outer Ethernet/IPv6/UDP
 * (VX_TUNNEL_HDR6_LEN). Over IPv6 the outer UDP checksum must be set (a kernel vxlan receiver
 * refuses zero: noudp6zerocsumrx, RFC 6935), so the frame asks for it partial, as the kernel
 * vxlan device's own IPv6 GSO skbs carry it (udp6_set_csum): the field holds the pseudo-header
 * sum, and the kernel finishes it per segment (the TAP needs TUN_F_UDP_TUNNEL_GSO_CSUM). The
 * inner packet may be IPv4 or IPv6 (TSO4, TSO6 or UDP). */
int vx_tunnel_header6(uint8_t *out, const uint8_t *pkt, int len, const struct vx_vnet_hdr *vh, const uint8_t tap_mac[6],
                      const uint8_t src_mac[6], const uint8_t src6[16], uint16_t sport, const struct sockaddr_in6 *dst,
                      int *hdr_len) {
    int inner_gso = vh->gso_type & ~VX_VNET_GSO_ECN;
    int hdr = 0, nseg = vx_gso_plan(pkt, len, vh->gso_size, VX_MAX_SEGS, &hdr);
    int v6 = (pkt[0] >> 4) == 6, ihl = v6 ? 40 : (pkt[0] & 0x0F) * 4, proto = v6 ? pkt[6] : pkt[9];
    if (nseg < 1 || !(vh->flags & VX_VNET_F_NEEDS_CSUM) || vh->csum_start != ihl) return -1;
    int tcp_type = v6 ? VX_VNET_GSO_TCPV6 : VX_VNET_GSO_TCPV4;
    if (!((inner_gso == tcp_type && proto == 6) || (inner_gso == VX_VNET_GSO_UDP_L4 && proto == 17))) return -1;
    int udp_len = 8 + VX_HEADROOM + len;
    if (udp_len > 0xFFFF) return -1;
    const int ip_off = 14, udp_off = ip_off + 40, inner_off = udp_off + 8 + VX_HEADROOM;
    tunnel_vnet_eth(out, vh, VX_VNET_F_NEEDS_CSUM | VX_VNET_F_UDP_TUNNEL_CSUM, VX_VNET_GSO_UDP_TUNNEL_IPV6, udp_off,
                    inner_off, hdr, ihl, tap_mac, src_mac, 0x86DD);
    uint8_t *ip = out + VX_TUNNEL_VNET_LEN + ip_off;
    uint8_t tclass = vx_ecn_outer(pkt);  /* RFC 6040: the inner ECN field, CE as ECT(0); no DSCP, no flow label */
    ip[0] = (uint8_t)(0x60 | (tclass >> 4));
    ip[1] = (uint8_t)((tclass & 0x0F) << 4);
    ip[2] = ip[3] = 0;
    ip[4] = udp_len >> 8;
    ip[5] = udp_len & 0xFF;
    ip[6] = 17;
    ip[7] = 64;
    memcpy(ip + 8, src6, 16);
    memcpy(ip + 24, &dst->sin6_addr, 16);
    uint8_t *udp = ip + 40;
    udp[0] = sport >> 8;
    udp[1] = sport & 0xFF;
    memcpy(udp + 2, &dst->sin6_port, 2);
    udp[4] = udp_len >> 8;
    udp[5] = udp_len & 0xFF;
    uint16_t ps = vx_csum_fold(vx_pseudo_v6(ip, 17, (uint32_t)udp_len));  /* partial: the pseudo-header sum */
    memcpy(udp + 6, &ps, 2);
    *hdr_len = hdr;
    return nseg;
}
