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
#define OUTER_IP_OFF 14
#define OUTER_UDP_OFF (OUTER_IP_OFF + 20)
#define INNER_OFF (OUTER_UDP_OFF + 8 + VX_HEADROOM)   /* the inner IP header: 64 */

static void put16le(uint8_t *p, uint16_t v) { p[0] = v & 0xFF; p[1] = v >> 8; }

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
    uint8_t *v = out;
    memset(v, 0, VX_TUNNEL_VNET_LEN);
    v[0] = VX_VNET_F_NEEDS_CSUM;
    v[1] = (uint8_t)(VX_VNET_GSO_UDP_TUNNEL_IPV4 | vh->gso_type);   /* the inner type (and ECN) kept */
    put16le(v + 2, (uint16_t)(INNER_OFF + hdr));
    put16le(v + 4, vh->gso_size);
    put16le(v + 6, (uint16_t)(INNER_OFF + ihl));
    put16le(v + 8, vh->csum_offset);
    put16le(v + 20, OUTER_UDP_OFF);
    put16le(v + 22, INNER_OFF);
    uint8_t *eth = out + VX_TUNNEL_VNET_LEN;
    memcpy(eth, tap_mac, 6);
    memcpy(eth + 6, src_mac, 6);
    eth[12] = 0x08;
    eth[13] = 0x00;
    uint8_t *ip = eth + OUTER_IP_OFF;
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
