/* SipHash-1-3: the keyed hash of the shared-data tables (shared.c, shm.c).
 *
 * A guest chooses its shared-data keys. With an unkeyed hash (FNV, as here before) it can
 * pick keys that all land in one shard and one bucket, and every later operation on that
 * store walks one long chain under the shard's lock: other VMs and threads pay for it.
 * With a key the guest cannot see (random per process, or the shm segment's own), it
 * cannot. One compression round and three finalization rounds, as CPython's own string
 * hash since 3.11 (the same function: tests/test_containment.py checks this one against
 * CPython's hash of bytes with a zero key). */
#include "internal.h"

#define ROTL(x, b) (((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND(v0, v1, v2, v3)                                                           \
    do {                                                                                   \
        v0 += v1;                                                                          \
        v1 = ROTL(v1, 13);                                                                 \
        v1 ^= v0;                                                                          \
        v0 = ROTL(v0, 32);                                                                 \
        v2 += v3;                                                                          \
        v3 = ROTL(v3, 16);                                                                 \
        v3 ^= v2;                                                                          \
        v0 += v3;                                                                          \
        v3 = ROTL(v3, 21);                                                                 \
        v3 ^= v0;                                                                          \
        v2 += v1;                                                                          \
        v1 = ROTL(v1, 17);                                                                 \
        v1 ^= v2;                                                                          \
        v2 = ROTL(v2, 32);                                                                 \
    } while (0)

uint64_t pw_hash_keyed(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n) {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ull, v1 = k1 ^ 0x646f72616e646f6dull;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ull, v3 = k1 ^ 0x7465646279746573ull;
    size_t whole = n & ~(size_t)7;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = rd_le(p + i, 8);
        v3 ^= m;
        SIPROUND(v0, v1, v2, v3);
        v0 ^= m;
    }
    /* The last 0..7 bytes, and the length's low byte on top. */
    uint64_t m = (uint64_t)(n & 0xff) << 56;
    if (n > whole) m |= rd_le(p + whole, (int)(n - whole));
    v3 ^= m;
    SIPROUND(v0, v1, v2, v3);
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    SIPROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}
