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

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t n)
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

static int
crc_hw_available(void)
{
    unsigned int a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
}
#define CRC_HW_NAME "sse4.2"
#elif defined(__aarch64__)
__attribute__((target("+crc"))) static uint32_t
crc_hw(uint32_t crc, const unsigned char *p, size_t n)
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

static void
crc_init(void)
{
    crc_table_init();
    if (crc_hw_available())
        crc_update = crc_hw;
}
