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
    struct sockaddr_in addr[TXQ];
    /* one sendmmsg entry per run of equal-size datagrams to one peer (UDP GSO) */
    struct mmsghdr runs[TXQ];
    struct iovec merged[2 * TXQ];   /* the runs' iovecs, neighbours in memory joined */
    int run_first[TXQ], run_cnt[TXQ];
    char run_ctl[TXQ][CMSG_SPACE(sizeof(uint16_t))];
} tx_queue;

static int same_dst(const struct sockaddr_in *a, const struct sockaddr_in *b) {
    return a->sin_addr.s_addr == b->sin_addr.s_addr && a->sin_port == b->sin_port;
}

/* Send everything queued in as few system calls as possible: runs of up to 64 equal-size
 * datagrams to one peer become one UDP_SEGMENT message (the last may be shorter), and all
 * messages go in one sendmmsg. EIO on a GSO message means the egress device cannot
 * checksum: GSO is switched off for good and the rest is resent without it. */
static void tx_flush(vx_io *io, tx_queue *q) {
    vx_core *c = io->core;
    int from = 0;
    while (from < q->n) {
        int gso = io->udp_gso && !io->gso_disabled;
        int nr = 0, nm = 0;
        for (int i = from; i < q->n;) {
            int first = i, seg = q->len[i];
            size_t total = (size_t)seg;
            i++;
            while (gso && i < q->n && i - first < GSO_MAX_DGRAMS && same_dst(&q->addr[first], &q->addr[i]) &&
                   q->len[i] <= seg && total + (size_t)q->len[i] <= GSO_MAX_BYTES) {
                total += (size_t)q->len[i];
                if (q->len[i++] < seg) break;  /* a shorter datagram ends a run */
            }
            struct msghdr *m = &q->runs[nr].msg_hdr;
            memset(m, 0, sizeof *m);
            m->msg_name = &q->addr[first];
            m->msg_namelen = sizeof q->addr[first];
            /* datagrams split in place lie back to back: one iovec for the whole run */
            struct iovec *mi = &q->merged[nm];
            int cnt = 0;
            for (int j = q->iov_at[first]; j < q->iov_at[i - 1] + q->iov_cnt[i - 1]; j++) {
                if (cnt && (uint8_t *)mi[cnt - 1].iov_base + mi[cnt - 1].iov_len == (uint8_t *)q->iov[j].iov_base)
                    mi[cnt - 1].iov_len += q->iov[j].iov_len;
                else
                    mi[cnt++] = q->iov[j];
            }
            nm += cnt;
            m->msg_iov = mi;
            m->msg_iovlen = (size_t)cnt;
            if (i - first > 1) {
                m->msg_control = q->run_ctl[nr];
                m->msg_controllen = sizeof q->run_ctl[nr];
                struct cmsghdr *cm = CMSG_FIRSTHDR(m);
                cm->cmsg_level = SOL_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t size = (uint16_t)seg;
                memcpy(CMSG_DATA(cm), &size, sizeof size);
            }
            q->run_first[nr] = first;
            q->run_cnt[nr] = i - first;
            nr++;
        }
        int done = 0, restart = -1;
        while (done < nr) {
            int r = sendmmsg(io->udp_fd, q->runs + done, (unsigned)(nr - done), 0);
            if (r < 0) {
                if (errno == EINTR) continue;
                if (errno == EIO && q->run_cnt[done] > 1) {
                    io->gso_disabled = 1;
                    restart = q->run_first[done];
                    break;
                }
                c->drops[VX_SEND_FAILED] += q->run_cnt[done];  /* skip it, keep the rest */
                done++;
                continue;
            }
            for (int k = done; k < done + r; k++) {
                for (int j = q->run_first[k]; j < q->run_first[k] + q->run_cnt[k]; j++) c->tx_bytes += q->inner[j];
                c->tx_packets += q->run_cnt[k];
                if (q->run_cnt[k] > 1) c->gso_sends++;
            }
            c->udp_sends++;
            done += r;
        }
        from = restart >= 0 ? restart : q->n;
    }
    q->n = 0;
    q->niov = 0;
}

static void tx_queue_add(tx_queue *q, uint8_t *a, int alen, const uint8_t *b, int blen,
                         const struct sockaddr_in *dst, int inner) {
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

int vx_run_tx(vx_io *io) {
    vx_core *c = io->core;
    /* room for the scattered layout of most shapes (vx_scatter_iov checks) */
    size_t slot_size = VX_VNET_HDR_LEN + 2 * (VX_HEADROOM + VX_MAX_PACKET) + 64;
    size_t buf_cap = slot_size - VX_VNET_HDR_LEN;
    uint8_t *slots = malloc((size_t)TX_SLOTS * slot_size);
    uint8_t *hdrs = malloc(HDR_ARENA);
    tx_queue *q = calloc(1, sizeof *q);
    struct iovec *riov = malloc(sizeof(struct iovec) * VX_SCATTER_MAX_IOV);
    int seg_lens[VX_MAX_SEGS];
    if (!slots || !hdrs || !q || !riov) { free(slots); free(hdrs); free(q); free(riov); return -1; }
    int lead = io->vnet ? VX_VNET_HDR_LEN : 0;
    /* the shape the next read is laid out for: the last super-packet's header length and MSS
     * (a host's TCP flows mostly share both); 0 = a plain read */
    int want_hlen = 0, want_mss = 0;
    /* ... used only while super-packets come: a small packet read scattered costs the kernel
     * the whole iovec array (~47 entries) for nothing */
    int last_tso = 0;
    int tun_errno = 0;
    for (;;) {
        int w = vx_wait_readable(io->tun_fd, io->stop_fd);
        if (w <= 0) break;
        vx_cap_ring *cap = CAPTURE_RING(io, cap_tx);  /* the one capture check of a batch */
        size_t hdr_used = 0;
        for (int slot = 0; slot < TX_SLOTS; ) {
            uint8_t *buf = slots + (size_t)slot * slot_size + VX_VNET_HDR_LEN;  /* headroom start */
            uint8_t *rd = buf + VX_HEADROOM - lead;
            int niov = want_mss && last_tso ? vx_scatter_iov(buf, buf_cap, lead, want_hlen, want_mss, riov,
                                                             VX_SCATTER_MAX_IOV)
                                            : 0;  /* -1: that shape does not fit a slot, a plain read */
            int hlen = want_hlen, mss = want_mss;
            ssize_t r = niov > 0 ? readv(io->tun_fd, riov, niov) : read(io->tun_fd, rd, VX_MAX_PACKET + lead);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;  /* drained */
                /* EBADFD: the TUN device was deleted under us. Polling it stays "readable"
                 * for ever, so looping on would burn a core and forward nothing: stop and say why. */
                tun_errno = errno;
                break;
            }
            c->tun_reads++;
            int len = (int)r - lead;
            if (len <= 0) continue;
            struct vx_vnet_hdr vh;
            memset(&vh, 0, sizeof vh);
            if (lead) memcpy(&vh, rd, VX_VNET_HDR_LEN);
            last_tso = vh.gso_type != VX_VNET_GSO_NONE;
            uint8_t *pkt = buf + VX_HEADROOM;
            int scattered = niov > 1 && len > hlen + mss;  /* reached past iov[0] */
            int split_gso = (vh.gso_type == VX_VNET_GSO_TCPV4 && pkt[9] == 6) ||
                            (vh.gso_type == VX_VNET_GSO_UDP_L4 && pkt[9] == 17);
            if (scattered && vh.gso_type == VX_VNET_GSO_NONE) {
                vx_scatter_compact(buf, hlen, mss, len);
                scattered = 0;
            }
            struct sockaddr_in dst;
            if (vh.gso_type == VX_VNET_GSO_NONE) {
                c->tun_received++;
                if ((vh.flags & VX_VNET_F_NEEDS_CSUM) && vx_finish_csum(pkt, len, vh.csum_start, vh.csum_offset)) {
                    c->drops[VX_BAD_OFFLOAD]++;
                    continue;
                }
                pthread_mutex_lock(&c->lock);
                int v = vx_encap(c, buf, len, &dst);
                pthread_mutex_unlock(&c->lock);
                if (cap) {
                    struct iovec one = {pkt, (size_t)len};
                    vx_cap_put(cap, VX_CAP_OVERLAY, VX_CAP_OUT, v, 0, 0, 0, 0, &one, 1, (uint32_t)len);
                }
                if (v) { c->drops[v]++; continue; }
                if (q->n == TXQ) tx_flush(io, q), hdr_used = 0;
                tx_queue_add(q, buf, VX_HEADROOM + len, NULL, 0, &dst, len);
                if (cap) {
                    struct iovec one = {buf, (size_t)(VX_HEADROOM + len)};
                    vx_cap_put(cap, VX_CAP_UNDERLAY, VX_CAP_OUT, 0, io->local_ip, io->local_port, dst.sin_addr.s_addr,
                               ntohs(dst.sin_port), &one, 1, (uint32_t)(VX_HEADROOM + len));
                }
                slot++;
                continue;
            }
            /* A TCP (or, with USO, UDP) super-packet: every segment's headers are written in
             * front of its payload where it lies, so it is read once (checksum) and copied once
             * (by the kernel); read scattered, each datagram is one piece of memory. */
            c->tso_packets++;
            if ((pkt[0] >> 4) == 6) {  /* no IPv6 overlay yet */
                c->tun_received++;
                c->drops[VX_NO_ROUTE]++;
                continue;
            }
            if (q->n + VX_MAX_SEGS > TXQ || hdr_used + (size_t)VX_MAX_SEGS * 128 > HDR_ARENA) {
                tx_flush(io, q);
                hdr_used = 0;
            }
            pthread_mutex_lock(&c->lock);
            int v = vx_encap(c, buf, len, &dst);  /* segment 0's outer header; every segment's is the same */
            pthread_mutex_unlock(&c->lock);
            if (cap) {
                struct iovec view[VX_SCATTER_MAX_IOV];
                int nv = 1;
                view[0].iov_base = pkt;
                view[0].iov_len = (size_t)len;
                if (scattered) nv = scatter_view(riov, niov, lead, len, view);
                vx_cap_put(cap, VX_CAP_OVERLAY, VX_CAP_OUT, v, 0, 0, 0, 0, view, nv, (uint32_t)len);
            }
            if (v) {
                int ph = 0, ns = vx_gso_plan(pkt, len, vh.gso_size, VX_MAX_SEGS, &ph);
                uint64_t segs = ns > 0 ? (uint64_t)ns : 1;  /* counted as the segments it carried */
                c->tun_received += segs;
                c->drops[v] += segs;
                continue;
            }
            int stride = 0, hdr = 0, inplace = 0;
            int nseg = split_gso ? vx_split_read(buf, len, vh.gso_size, scattered ? hlen : 0, scattered ? mss : 0,
                                                 hdrs + hdr_used, HDR_ARENA - hdr_used, seg_lens, &stride, &hdr,
                                                 &inplace)
                                 : -1;
            if (nseg < 0) {
                c->tun_received++;
                c->drops[VX_BAD_OFFLOAD]++;
                continue;
            }
            c->tun_received += (uint64_t)nseg;
            scattered = inplace;
            c->tso_in_place += (uint64_t)inplace;
            if (!scattered) memcpy(hdrs + hdr_used, buf, VX_HEADROOM);
            uint8_t *h0 = scattered ? buf : hdrs + hdr_used;
            for (int k = 0; k < nseg; k++) {
                uint8_t *h = h0 + (size_t)k * stride;
                if (k) memcpy(h, buf, VX_HEADROOM);
                int chunk = seg_lens[k] - hdr;
                const uint8_t *body = pkt + hdr + (size_t)k * vh.gso_size;
                if (scattered)  /* headers and payload are one piece */
                    tx_queue_add(q, h, VX_HEADROOM + seg_lens[k], NULL, 0, &dst, seg_lens[k]);
                else
                    tx_queue_add(q, h, VX_HEADROOM + hdr, body, chunk, &dst, seg_lens[k]);
                if (cap) {
                    struct iovec two[2] = {{h, (size_t)(VX_HEADROOM + hdr)}, {(void *)body, (size_t)chunk}};
                    if (scattered) two[1].iov_base = h + VX_HEADROOM + hdr;
                    vx_cap_put(cap, VX_CAP_UNDERLAY, VX_CAP_OUT, 0, io->local_ip, io->local_port, dst.sin_addr.s_addr,
                               ntohs(dst.sin_port), two, 2, (uint32_t)(VX_HEADROOM + seg_lens[k]));
                }
            }
            if (!scattered) hdr_used += (size_t)nseg * stride;
            if (lead) {  /* lay the next read out for this one's shape */
                want_hlen = hdr;
                want_mss = vh.gso_size;
            }
            slot++;
        }
        tx_flush(io, q);
        if (tun_errno) break;
    }
    free(slots);
    free(hdrs);
    free(q);
    free(riov);
    return tun_errno;
}
