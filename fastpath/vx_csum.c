/* vx_csum.c: the Internet checksum (RFC 1071), portable and AVX2, and the offload checksum
 * a virtio_net_hdr asks for (include/uapi/linux/virtio_net.h). */
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
/* checksums                                                                                 */

uint64_t vx_csum_add_portable(const uint8_t *p, size_t n, uint64_t acc) {
    /* 32-bit words into a 64-bit accumulator: no carry handling until the fold, and a
     * 64 KiB packet cannot overflow it. Four words per round keeps the adds independent. */
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    while (n >= 16) {
        uint32_t w[4];
        memcpy(w, p, 16);
        a0 += w[0]; a1 += w[1]; a2 += w[2]; a3 += w[3];
        p += 16; n -= 16;
    }
    acc += a0 + a1 + a2 + a3;
    while (n >= 4) { uint32_t w; memcpy(&w, p, 4); acc += w; p += 4; n -= 4; }
    if (n >= 2) { uint16_t w; memcpy(&w, p, 2); acc += w; p += 2; n -= 2; }
    if (n) {  /* the odd byte is the first (high-order) byte of a network-order word */
        uint16_t w = 0;
        memcpy(&w, p, 1);
        acc += w;
    }
    return acc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* one's-complement add of 64-bit sums: 2^64 = 1 (mod 2^16 - 1), so the carry comes back in */
static inline uint64_t add_end_around(uint64_t a, uint64_t b) {
    uint64_t r = a + b;
    return r + (r < b);
}
/* The same sum, 64 bytes a round: each 64-bit lane takes the low and the high 32-bit halves
 * of its word into two accumulators, so nothing carries until the fold. The checksum passes
 * (one per segment sent, one per segment received) were 9 % of all CPU under 4-stream TCP
 * with the portable loop (perf, 2026-11-26). A lane gains < 2^33 a round: it cannot wrap
 * below 2^31 rounds (128 GiB). */
__attribute__((target("avx2")))
static uint64_t csum_add_avx2(const uint8_t *p, size_t n, uint64_t acc) {
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFFll);
    __m256i lo0 = _mm256_setzero_si256(), hi0 = lo0, lo1 = lo0, hi1 = lo0;
    while (n >= 64) {
        __m256i v0 = _mm256_loadu_si256((const __m256i *)p);
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(p + 32));
        lo0 = _mm256_add_epi64(lo0, _mm256_and_si256(v0, low32));
        hi0 = _mm256_add_epi64(hi0, _mm256_srli_epi64(v0, 32));
        lo1 = _mm256_add_epi64(lo1, _mm256_and_si256(v1, low32));
        hi1 = _mm256_add_epi64(hi1, _mm256_srli_epi64(v1, 32));
        p += 64; n -= 64;
    }
    __m256i sum = _mm256_add_epi64(_mm256_add_epi64(lo0, hi0), _mm256_add_epi64(lo1, hi1));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, sum);
    acc = add_end_around(acc, lanes[0] + lanes[1]);
    acc = add_end_around(acc, lanes[2] + lanes[3]);
    return vx_csum_add_portable(p, n, acc);
}

static uint64_t (*csum_add_impl)(const uint8_t *, size_t, uint64_t) = vx_csum_add_portable;

/* chosen once when the module loads, before any engine thread exists */
__attribute__((constructor)) static void pick_csum_impl(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) csum_add_impl = csum_add_avx2;
}

uint64_t vx_csum_add(const uint8_t *p, size_t n, uint64_t acc) {
    /* short inputs (headers, pseudo-headers) are not worth the vector setup */
    return n < 128 ? vx_csum_add_portable(p, n, acc) : csum_add_impl(p, n, acc);
}
#else
uint64_t vx_csum_add(const uint8_t *p, size_t n, uint64_t acc) { return vx_csum_add_portable(p, n, acc); }
#endif

uint16_t vx_csum_fold(uint64_t acc) {
    acc = (acc & 0xFFFFFFFFull) + (acc >> 32);
    acc = (acc & 0xFFFFFFFFull) + (acc >> 32);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    acc = (acc & 0xFFFF) + (acc >> 16);
    return (uint16_t)acc;
}

uint64_t vx_pseudo_v4(const uint8_t *iph, uint8_t proto, uint16_t l4_len) {
    uint8_t ph[12];
    memcpy(ph, iph + 12, 8);
    ph[8] = 0; ph[9] = proto; ph[10] = l4_len >> 8; ph[11] = l4_len & 0xFF;
    return vx_csum_add(ph, 12, 0);
}

/* RFC 8200 section 8.1: source, destination, the upper-layer length (32 bits), zeros, next header. */
uint64_t vx_pseudo_v6(const uint8_t *ip6h, uint8_t proto, uint32_t l4_len) {
    uint8_t ph[8] = {l4_len >> 24, l4_len >> 16, l4_len >> 8, l4_len, 0, 0, 0, proto};
    return vx_csum_add(ph, 8, vx_csum_add(ip6h + 8, 32, 0));
}

void vx_ipv4_header_csum(uint8_t *iph, int ihl) {
    iph[10] = iph[11] = 0;
    uint16_t s = (uint16_t)~vx_csum_fold(vx_csum_add(iph, ihl, 0));
    memcpy(iph + 10, &s, 2);
}

int vx_finish_csum(uint8_t *pkt, int len, int csum_start, int csum_offset) {
    /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum; add the rest and invert. */
    if (csum_start < 0 || csum_offset < 0 || csum_start + csum_offset + 2 > len) return -1;
    uint16_t s = (uint16_t)~vx_csum_fold(vx_csum_add(pkt + csum_start, len - csum_start, 0));
    if (s == 0 && pkt[9] == 17) s = 0xFFFF;  /* UDP: 0 means "no checksum" */
    memcpy(pkt + csum_start + csum_offset, &s, 2);
    return 0;
}

/* RFC 6040 section 4.2 (include/net/inet_ecn.h INET_ECN_decapsulate): see vxengine.h. Only a
 * CE mark outside changes anything. */
int vx_ecn_verdict(const uint8_t *ip, int len, uint8_t outer_tos) {
    if ((outer_tos & 3) != 3 || len < 1) return VX_OK;
    if ((ip[0] >> 4) == 6) return len >= 40 && !((ip[1] >> 4) & 3) ? VX_CE_NOT_ECT : VX_OK;
    return len >= 20 && !(ip[1] & 3) ? VX_CE_NOT_ECT : VX_OK;
}

/* The IPv4 header checksum is updated as RFC 1624 (eqn. 3) says, for the one 16-bit word that
 * changed. */
void vx_ecn_mark(uint8_t *ip, int len, uint8_t outer_tos) {
    if ((outer_tos & 3) != 3 || len < 1) return;
    if ((ip[0] >> 4) == 6) {
        if (len >= 40) ip[1] |= 0x30;
        return;
    }
    if (len < 20 || (ip[1] & 3) == 3) return;
    uint16_t before = (uint16_t)(ip[0] << 8 | ip[1]);
    ip[1] |= 3;
    uint16_t after = (uint16_t)(ip[0] << 8 | ip[1]);
    uint32_t sum = (uint32_t)(uint16_t)~(ip[10] << 8 | ip[11]) + (uint16_t)~before + after;
    sum = (sum & 0xFFFF) + (sum >> 16);
    sum = (sum & 0xFFFF) + (sum >> 16);
    uint16_t check = (uint16_t)~sum;
    ip[10] = (uint8_t)(check >> 8);
    ip[11] = (uint8_t)check;
}
