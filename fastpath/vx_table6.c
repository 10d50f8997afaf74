/* vx_table6.c: the IPv6 half of a dual-stack node (flannel's EnableIPv6, flannel-v6.<VNI>):
 * its second VTEP (a VtepMAC of its own), peers by IPv6 subnet reached over the IPv6 underlay
 * and the senders among them; vx_encap6 and vx_check6 mirror vxlan/wire.py's IPv6 branches.
 * Tables as vx_table.c's (open addressing, backward-shift deletion), keyed by 16 bytes. */
#define _GNU_SOURCE
#include "vx_internal.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static uint32_t hash128(const uint8_t k[16]) {
    uint64_t a, b;
    memcpy(&a, k, 8);
    memcpy(&b, k + 8, 8);
    a ^= b * 0x9e3779b97f4a7c15ULL;
    return hash32((uint32_t)(a ^ (a >> 32)));
}

static vx_peer6 *peer6_slot(vx_peer6 *t, uint32_t cap, const uint8_t key[16]) {
    uint32_t i = hash128(key) & (cap - 1);
    while (t[i].used && memcmp(t[i].key, key, 16) != 0) i = (i + 1) & (cap - 1);
    return &t[i];
}

static vx_sender6 *sender6_slot(vx_sender6 *t, uint32_t cap, const uint8_t key[16]) {
    uint32_t i = hash128(key) & (cap - 1);
    while (t[i].used && memcmp(t[i].key, key, 16) != 0) i = (i + 1) & (cap - 1);
    return &t[i];
}

#define USED6(e) ((e).used)
#define CLEAR6(e) ((e).used = 0)
#define HOME6(e) hash128((e).key)
DEFINE_SHIFT_DELETE(peer6_table_delete, vx_peer6, USED6, CLEAR6, HOME6)
DEFINE_SHIFT_DELETE(sender6_table_delete, vx_sender6, USED6, CLEAR6, HOME6)

int vx_core_enable_v6(vx_core *c, const uint8_t mac6[6], int subnet_len6) {
    if (subnet_len6 < 1 || subnet_len6 > 128) return -1;
    c->peer6_cap = c->sender6_cap = 64;
    c->peers6 = calloc(c->peer6_cap, sizeof *c->peers6);
    c->senders6 = calloc(c->sender6_cap, sizeof *c->senders6);
    if (!c->peers6 || !c->senders6) return -1;
    memcpy(c->mac6, mac6, 6);
    for (int i = 0; i < 16; i++) {
        int bits = subnet_len6 - 8 * i;
        c->mask6[i] = bits >= 8 ? 0xFF : bits <= 0 ? 0 : (uint8_t)(0xFF << (8 - bits));
    }
    c->has_v6 = 1;
    return 0;
}

static int grow_peers6(vx_core *c) {
    uint32_t cap = c->peer6_cap * 2;
    vx_peer6 *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    for (uint32_t i = 0; i < c->peer6_cap; i++)
        if (c->peers6[i].used) *peer6_slot(t, cap, c->peers6[i].key) = c->peers6[i];
    free(c->peers6);
    c->peers6 = t;
    c->peer6_cap = cap;
    return 0;
}

static int grow_senders6(vx_core *c) {
    uint32_t cap = c->sender6_cap * 2;
    vx_sender6 *t = calloc(cap, sizeof *t);
    if (!t) return -1;
    for (uint32_t i = 0; i < c->sender6_cap; i++)
        if (c->senders6[i].used) *sender6_slot(t, cap, c->senders6[i].key) = c->senders6[i];
    free(c->senders6);
    c->senders6 = t;
    c->sender6_cap = cap;
    return 0;
}

static void sender6_unref(vx_core *c, const uint8_t ip[16]) {
    vx_sender6 *s = sender6_slot(c->senders6, c->sender6_cap, ip);
    if (!s->used || --s->count) return;
    c->sender6_count--;
    sender6_table_delete(c->senders6, c->sender6_cap, (uint32_t)(s - c->senders6));
}

static void peer6_delete(vx_core *c, vx_peer6 *p) {
    uint8_t ip[16];
    memcpy(ip, &p->addr.sin6_addr, 16);
    c->peer6_count--;
    peer6_table_delete(c->peers6, c->peer6_cap, (uint32_t)(p - c->peers6));
    sender6_unref(c, ip);
}

int vx_remove_peer6(vx_core *c, const uint8_t subnet[16]) {
    if (!c->has_v6) return 0;
    pthread_mutex_lock(&c->lock);
    vx_peer6 *p = peer6_slot(c->peers6, c->peer6_cap, subnet);
    if (p->used) peer6_delete(c, p);
    pthread_mutex_unlock(&c->lock);
    return 0;
}

int vx_set_peer6(vx_core *c, const uint8_t subnet[16], const uint8_t mac[6], const uint8_t ip[16]) {
    int rc = 0;
    if (!c->has_v6) return -1;
    pthread_mutex_lock(&c->lock);
    vx_peer6 *p = peer6_slot(c->peers6, c->peer6_cap, subnet);
    if (p->used) peer6_delete(c, p);
    if ((c->peer6_count + 1) * 2 > c->peer6_cap && grow_peers6(c)) { rc = -1; goto out; }
    if ((c->sender6_count + 1) * 2 > c->sender6_cap && grow_senders6(c)) { rc = -1; goto out; }
    p = peer6_slot(c->peers6, c->peer6_cap, subnet);
    memset(p, 0, sizeof *p);
    p->used = 1;
    memcpy(p->key, subnet, 16);
    uint8_t *h = p->header;  /* RFC 7348 §5, between the two flannel-v6 VtepMACs, type IPv6 */
    h[0] = 0x08; h[4] = c->vni[0]; h[5] = c->vni[1]; h[6] = c->vni[2];
    memcpy(h + 8, mac, 6);
    memcpy(h + 14, c->mac6, 6);
    h[20] = 0x86; h[21] = 0xDD;
    p->addr.sin6_family = AF_INET6;
    p->addr.sin6_port = htons(c->port);
    memcpy(&p->addr.sin6_addr, ip, 16);
    c->peer6_count++;
    vx_sender6 *s = sender6_slot(c->senders6, c->sender6_cap, ip);
    if (!s->used) { s->used = 1; memcpy(s->key, ip, 16); s->count = 0; c->sender6_count++; }
    s->count++;
out:
    pthread_mutex_unlock(&c->lock);
    return rc;
}

const vx_peer6 *vx_peer6_for(const vx_core *c, const uint8_t addr[16]) {
    if (!c->has_v6) return NULL;
    uint8_t key[16];
    for (int i = 0; i < 16; i++) key[i] = addr[i] & c->mask6[i];
    const vx_peer6 *p = peer6_slot(c->peers6, c->peer6_cap, key);
    return p->used ? p : NULL;
}

int vx_encap6(vx_core *c, uint8_t *buf, int len, struct sockaddr_in6 *dest) {
    const uint8_t *ip = buf + VX_HEADROOM;
    if (len < 40 || (ip[0] >> 4) != 6) return VX_NOT_IP;
    const vx_peer6 *p = vx_peer6_for(c, ip + 24);
    if (!p) return VX_NO_ROUTE;
    memcpy(buf, p->header, VX_HEADROOM);
    if (dest) *dest = p->addr;
    return VX_OK;
}

int vx_check6(vx_core *c, const uint8_t *p, int n, const uint8_t sender6[16], int seg_len, int *inner_len) {
    int total = 0, ethertype = 0;
    int known = c->has_v6 && sender6_slot(c->senders6, c->sender6_cap, sender6)->used;
    /* over the IPv6 underlay the frame is for flannel-v6's VtepMAC (a node without one: no
     * sender is known, so the MAC is never compared) */
    int v = vx_check_frame(c, p, n, known, c->mac6, &total, &ethertype);
    if (v) return v;
    int owner_ok = 0;
    if (c->strict_source && ethertype == 0x86DD) {
        const vx_peer6 *owner = vx_peer6_for(c, p + VX_HEADROOM + 8);
        owner_ok = owner && memcmp(&owner->addr.sin6_addr, sender6, 16) == 0;
    }
    return vx_check_finish(c, owner_ok, total, seg_len, inner_len);
}
