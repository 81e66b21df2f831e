/* CRC-32C (Castagnoli, reflected; init and final xor 0xffffffff), the record checksum.
 *
 * Hardware where the CPU has it (SSE4.2 ``crc32`` on x86-64, the ARMv8 CRC extension on aarch64,
 * both checked at run time), a slicing-by-8 table otherwise.  ``crc_update`` works on the raw
 * register: callers pass ``~start`` and invert the result.  Included once, by _ringfast.c;
 * ``crc_init`` runs at import, before any other thread can call in.
 */
#if defined(__x86_64__)
#include <cpuid.h>
#include <nmmintrin.h>
#elif defined(__aarch64__)
#include <arm_acle.h>
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

static uint32_t crc_table[8][256];

static void
crc_table_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
}

/* Slicing-by-8; ``crc`` is the raw register (already inverted). */
static uint32_t
crc_sw(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n && ((uintptr_t)p & 7)) {
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^ crc_table[5][(w >> 16) & 0xff] ^
              crc_table[4][(w >> 24) & 0xff] ^ crc_table[3][(w >> 32) & 0xff] ^
              crc_table[2][(w >> 40) & 0xff] ^ crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return crc;
}

/* Joining CRCs computed apart.  The raw register is linear in (register, data), so a register
 * ``a`` followed by ``n`` more bytes whose own register (started at 0) is ``b`` becomes
 * ``a * x^(8n) mod P  xor  b``: polynomial arithmetic in the reflected bit order (zlib's
 * ``crc32_combine``, for the Castagnoli polynomial).  ``crc_x2n[k]`` is x^(2^k) mod P. */
#define CRC_LANES_MIN 4096 /* below this, one chain: the join costs more than it saves */
static uint32_t crc_x2n[32];

static uint32_t
crc_mulmod(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, prod = 0;
    for (;;) {
        if (a & m) {
            prod ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ 0x82f63b78u : b >> 1;
    }
    return prod;
}

/* x^(8n) mod P */
static uint32_t
crc_x8n(size_t n)
{
    uint32_t prod = 1u << 31; /* the polynomial 1 */
    unsigned k = 3;
    while (n) {
        if (n & 1)
            prod = crc_mulmod(crc_x2n[k & 31], prod);
        n >>= 1;
        k++;
    }
    return prod;
}

static void
crc_x2n_init(void)
{
    uint32_t p = 1u << 30; /* x^1 */
    crc_x2n[0] = p;
    for (int k = 1; k < 32; k++)
        crc_x2n[k] = p = crc_mulmod(p, p);
}

/* The register after lanes a, b, c of ``lane`` bytes each, one after another (b, c from 0). */
static inline uint32_t
crc_join3(uint32_t a, uint32_t b, uint32_t c, size_t lane)
{
    uint32_t shift = crc_x8n(lane);
    return crc_mulmod(shift, crc_mulmod(shift, a) ^ b) ^ c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc_hw1(uint32_t crc, const unsigned char *p, size_t n)
{
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        n -= 8;
    }
    crc = (uint32_t)c;
    while (n--)
        crc = _mm_crc32_u8(crc, *p++);
    return crc;
}

/* Three lanes at once: the instruction's latency is three times its issue interval, so one
 * dependent chain runs at a third of the unit's speed (a 197 KB image: 21 us on one chain). */
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    if (n < CRC_LANES_MIN)
        return crc_hw1(crc, p, n);
    size_t lane = (n / 3) & ~(size_t)7;
    const unsigned char *q = p + lane, *r = q + lane;
    uint64_t a = crc, b = 0, c = 0;
    for (size_t i = 0; i < lane; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, p + i, 8);
        memcpy(&wb, q + i, 8);
        memcpy(&wc, r + i, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
    }
    return crc_hw1(crc_join3((uint32_t)a, (uint32_t)b, (uint32_t)c, lane), r + lane, n - 3 * lane);
}

static int
crc_hw_available(void)
{
    unsigned int a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
}
#define CRC_HW_NAME "sse4.2"
#elif defined(__aarch64__)
__attribute__((target("+crc"))) static uint32_t
crc_hw1(uint32_t crc, const unsigned char *p, size_t n)
{
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        crc = __crc32cd(crc, w);
        p += 8;
        n -= 8;
    }
    while (n--)
        crc = __crc32cb(crc, *p++);
    return crc;
}

/* Three lanes at once, as on x86-64. */
__attribute__((target("+crc"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t n)
{
    if (n < CRC_LANES_MIN)
        return crc_hw1(crc, p, n);
    size_t lane = (n / 3) & ~(size_t)7;
    const unsigned char *q = p + lane, *r = q + lane;
    uint32_t a = crc, b = 0, c = 0;
    for (size_t i = 0; i < lane; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, p + i, 8);
        memcpy(&wb, q + i, 8);
        memcpy(&wc, r + i, 8);
        a = __crc32cd(a, wa);
        b = __crc32cd(b, wb);
        c = __crc32cd(c, wc);
    }
    return crc_hw1(crc_join3(a, b, c, lane), r + lane, n - 3 * lane);
}

static int
crc_hw_available(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
}
#define CRC_HW_NAME "armv8-crc"
#else
#define crc_hw crc_sw
static int
crc_hw_available(void)
{
    return 0;
}
#define CRC_HW_NAME "table"
#endif

static uint32_t (*crc_update)(uint32_t, const unsigned char *, size_t) = crc_sw;

#if defined(__x86_64__)
/* ``memcpy(dst, src, n)`` and the CRC register of those bytes from 0, in one pass over ``src``
 * (three lanes, as crc_hw). */
__attribute__((target("sse4.2"))) static uint32_t
copy_crc_hw(unsigned char *dst, const unsigned char *src, size_t n)
{
    if (n < CRC_LANES_MIN) {
        memcpy(dst, src, n);
        return crc_hw1(0, dst, n);
    }
    size_t lane = (n / 3) & ~(size_t)7;
    uint64_t a = 0, b = 0, c = 0;
    for (size_t i = 0; i < lane; i += 8) {
        uint64_t wa, wb, wc;
        memcpy(&wa, src + i, 8);
        memcpy(&wb, src + lane + i, 8);
        memcpy(&wc, src + 2 * lane + i, 8);
        memcpy(dst + i, &wa, 8);
        memcpy(dst + lane + i, &wb, 8);
        memcpy(dst + 2 * lane + i, &wc, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
    }
    size_t done = 3 * lane;
    memcpy(dst + done, src + done, n - done);
    return crc_hw1(crc_join3((uint32_t)a, (uint32_t)b, (uint32_t)c, lane), dst + done, n - done);
}
#endif

static uint32_t
copy_crc(unsigned char *dst, const unsigned char *src, size_t n)
{
#if defined(__x86_64__)
    if (crc_update == crc_hw)
        return copy_crc_hw(dst, src, n);
#endif
    memcpy(dst, src, n);
    return crc_update(0, dst, n);
}

static void
crc_init(void)
{
    crc_table_init();
    crc_x2n_init();
    if (crc_hw_available())
        crc_update = crc_hw;
}
