/* vx_table.c: the peer and sender tables (open addressing, backward-shift deletion) and
 * the verdicts that read them: vx_encap and vx_check mirror vxlan/wire.py line by line. */
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
/* tables                                                                                    */

static vx_peer *peer_slot(vx_peer *t, uint32_t cap, uint32_t key) {
    uint32_t i = hash32(key) & (cap - 1);
    while (t[i].used && t[i].key != key) i = (i + 1) & (cap - 1);
    return &t[i];
}

static vx_sender *sender_slot(vx_sender *t, uint32_t cap, uint32_t key) {
    uint32_t i = hash32(key) & (cap - 1);
    while (t[i].key && t[i].key != key) i = (i + 1) & (cap - 1);
    return &t[i];
}

static int grow_peers(vx_core *c) {
    uint32_t cap = c->peer_cap * 2;
    vx_peer *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    for (uint32_t i = 0; i < c->peer_cap; i++)
        if (c->peers[i].used) *peer_slot(t, cap, c->peers[i].key) = c->peers[i];
    free(c->peers);
    c->peers = t;
    c->peer_cap = cap;
    return 0;
}

static int grow_senders(vx_core *c) {
    uint32_t cap = c->sender_cap * 2;
    vx_sender *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    for (uint32_t i = 0; i < c->sender_cap; i++)
        if (c->senders[i].key) *sender_slot(t, cap, c->senders[i].key) = c->senders[i];
    free(c->senders);
    c->senders = t;
    c->sender_cap = cap;
    return 0;
}

int vx_core_init(vx_core *c, uint32_t vni, const uint8_t mac[6], int subnet_len, int tun_mtu, uint16_t port) {
    memset(c, 0, sizeof *c);
    c->vni[0] = vni >> 16; c->vni[1] = vni >> 8; c->vni[2] = vni;
    memcpy(c->mac, mac, 6);
    c->mask = subnet_len ? (uint32_t)(0xFFFFFFFFull << (32 - subnet_len)) : 0;
    c->tun_mtu = tun_mtu;
    c->port = port;
    c->peer_cap = 64;
    c->sender_cap = 64;
    c->peers = calloc(c->peer_cap, sizeof *c->peers);
    c->senders = calloc(c->sender_cap, sizeof *c->senders);
    if (!c->peers || !c->senders) return -1;
    pthread_mutex_init(&c->lock, NULL);
    return 0;
}

void vx_core_free(vx_core *c) {
    free(c->peers);
    free(c->senders);
    free(c->peers6);
    free(c->senders6);
    c->peers = NULL;
    c->senders = NULL;
    c->peers6 = NULL;
    c->senders6 = NULL;
    pthread_mutex_destroy(&c->lock);
}

#define PEER_USED(e) ((e).used)
#define PEER_CLEAR(e) ((e).used = 0)
#define SENDER_USED(e) ((e).key)
#define SENDER_CLEAR(e) ((e).key = 0)
#define KEY_HOME(e) hash32((e).key)
DEFINE_SHIFT_DELETE(peer_table_delete, vx_peer, PEER_USED, PEER_CLEAR, KEY_HOME)
DEFINE_SHIFT_DELETE(sender_table_delete, vx_sender, SENDER_USED, SENDER_CLEAR, KEY_HOME)

static void sender_unref(vx_core *c, uint32_t ip) {
    vx_sender *s = sender_slot(c->senders, c->sender_cap, ip);
    if (!s->key || --s->count) return;
    c->sender_count--;
    sender_table_delete(c->senders, c->sender_cap, (uint32_t)(s - c->senders));
}

static void peer_delete(vx_core *c, vx_peer *p) {
    c->peer_count--;
    peer_table_delete(c->peers, c->peer_cap, (uint32_t)(p - c->peers));
}

int vx_remove_peer(vx_core *c, uint32_t subnet) {
    pthread_mutex_lock(&c->lock);
    vx_peer *p = peer_slot(c->peers, c->peer_cap, subnet);
    if (p->used) {
        uint32_t ip = p->addr.sin_addr.s_addr;
        peer_delete(c, p);
        sender_unref(c, ip);
    }
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int vx_set_peer(vx_core *c, uint32_t subnet, const uint8_t mac[6], uint32_t ip) {
    int rc = 0;
    pthread_mutex_lock(&c->lock);
    vx_peer *p = peer_slot(c->peers, c->peer_cap, subnet);
    if (p->used) {
        uint32_t old = p->addr.sin_addr.s_addr;
        peer_delete(c, p);
        sender_unref(c, old);
    }
    if ((c->peer_count + 1) * 2 > c->peer_cap && grow_peers(c)) { rc = -1; goto out; }
    if ((c->sender_count + 1) * 2 > c->sender_cap && grow_senders(c)) { rc = -1; goto out; }
    p = peer_slot(c->peers, c->peer_cap, subnet);
    memset(p, 0, sizeof *p);
    p->used = 1;
    p->key = subnet;
    uint8_t *h = p->header;  /* RFC 7348 §5: flags I, reserved 0, VNI, reserved 0 */
    h[0] = 0x08; h[4] = c->vni[0]; h[5] = c->vni[1]; h[6] = c->vni[2];
    memcpy(h + 8, mac, 6);
    memcpy(h + 14, c->mac, 6);
    h[20] = 0x08; h[21] = 0x00;
    p->addr.sin_family = AF_INET;
    p->addr.sin_port = htons(c->port);
    p->addr.sin_addr.s_addr = ip;
    c->peer_count++;
    vx_sender *s = sender_slot(c->senders, c->sender_cap, ip);
    if (!s->key) { s->key = ip; s->count = 0; c->sender_count++; }
    s->count++;
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* verdicts (vxlan/wire.py Codec.encap_batch / Codec._check)                                 */

int vx_encap(vx_core *c, uint8_t *buf, int len, struct sockaddr_in *dest) {
    if (len < 1) return VX_NOT_IP;
    const uint8_t *ip = buf + VX_HEADROOM;
    int version = ip[0] >> 4;
    if (version == 6) return len < 40 ? VX_NOT_IP : VX_NO_ROUTE;  /* IPv6 overlays: the reference only, yet */
    if (version != 4 || len < 20) return VX_NOT_IP;
    uint32_t dst = ((uint32_t)ip[16] << 24) | ((uint32_t)ip[17] << 16) | ((uint32_t)ip[18] << 8) | ip[19];
    vx_peer *p = peer_slot(c->peers, c->peer_cap, dst & c->mask);
    if (!p->used) return VX_NO_ROUTE;
    memcpy(buf, p->header, VX_HEADROOM);
    if (dest) *dest = p->addr;
    return VX_OK;
}

int vx_check(vx_core *c, const uint8_t *p, int n, uint32_t sender, int *inner_len) {
    return vx_check_super(c, p, n, sender, 0, inner_len);
}

int vx_check_frame(vx_core *c, const uint8_t *p, int n, int sender_known, const uint8_t own_mac[6], int *total,
                   int *ethertype_out) {
    if (n < VX_HEADROOM) return VX_TOO_SHORT;
    if (!(p[0] & 0x08)) return VX_NO_I_FLAG;
    /* reserved bits are ignored on receipt (RFC 7348 §5) */
    if (memcmp(p + 4, c->vni, 3) != 0) return VX_WRONG_VNI;
    if (!sender_known) return VX_UNKNOWN_SENDER;
    if (memcmp(p + 8, own_mac, 6) != 0) return (p[8] & 1) ? VX_DST_MAC_BROADCAST : VX_DST_MAC_MISMATCH;
    int ethertype = (p[20] << 8) | p[21];
    int avail = n - VX_HEADROOM;
    const uint8_t *ip = p + VX_HEADROOM;
    if (ethertype == 0x0800) {
        if (avail < 20 || (ip[0] >> 4) != 4) return VX_BAD_INNER_IP;
        int header_len = (ip[0] & 0x0F) * 4;
        *total = (ip[2] << 8) | ip[3];
        if (header_len < 20 || *total < header_len || *total > avail) return VX_BAD_INNER_IP;
    } else if (ethertype == 0x86DD) {
        /* extension headers and fragments go through as they are, as the kernel's vxlan lets them */
        if (avail < 40 || (ip[0] >> 4) != 6) return VX_BAD_INNER_IP;
        *total = 40 + ((ip[4] << 8) | ip[5]);
        if (*total > avail) return VX_BAD_INNER_IP;
    } else if (ethertype == 0x0806) {
        return VX_ARP;
    } else {
        return VX_BAD_ETHERTYPE;
    }
    *ethertype_out = ethertype;
    return VX_OK;
}

int vx_check_finish(vx_core *c, int owner_ok, int total, int seg_len, int *inner_len) {
    if (c->strict_source && !owner_ok) return VX_SPOOFED_SOURCE;
    if ((seg_len ? seg_len : total) > c->tun_mtu) return VX_TOO_BIG;
    *inner_len = total;
    return VX_OK;
}

int vx_check_super(vx_core *c, const uint8_t *p, int n, uint32_t sender, int seg_len, int *inner_len) {
    int total = 0, ethertype = 0;
    int v = vx_check_frame(c, p, n, sender_slot(c->senders, c->sender_cap, sender)->key != 0, c->mac, &total,
                           &ethertype);
    if (v) return v;
    int owner_ok = 0;
    if (c->strict_source && ethertype == 0x0800) {
        /* The inner source must be in a subnet whose lease names this sender as its VTEP (an
         * IPv6 source: a flannel-v6 VTEP, never this IPv4 sender). Off: one load, one branch. */
        const uint8_t *ip = p + VX_HEADROOM;
        uint32_t src = ((uint32_t)ip[12] << 24) | ((uint32_t)ip[13] << 16) | ((uint32_t)ip[14] << 8) | ip[15];
        const vx_peer *owner = peer_slot(c->peers, c->peer_cap, src & c->mask);
        owner_ok = owner->used && owner->addr.sin_addr.s_addr == sender;
    }
    return vx_check_finish(c, owner_ok, total, seg_len, inner_len);
}
