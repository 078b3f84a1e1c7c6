/* Header maps (ordered, duplicates kept, keys lowercased as Envoy does) and the pairs
 * wire format of ABI.md §6.1. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static inline uint32_t rd32(const uint8_t *p) { return (uint32_t)rd_le(p, 4); }

static inline void wr32(uint8_t *p, uint32_t v) { wr_le(p, v, 4); }

static inline uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

/* Lowercases ASCII in place, eight bytes at a time. The last word may reach up to seven
 * bytes past the name: every caller has reserved LOWER_SLACK bytes of room after the data,
 * and those bytes are written back unchanged. */
#define LOWER_SLACK 8
static void lower_in_place(uint8_t *p, size_t n) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t x = w & ~high;                      /* each byte's low 7 bits */
        uint64_t ge_a = x + ones * (0x80 - 'A');     /* high bit: byte >= 'A' */
        uint64_t gt_z = x + ones * (0x80 - 'Z' - 1); /* high bit: byte > 'Z' */
        uint64_t upper = (ge_a ^ gt_z) & ~w & high;  /* 'A'..'Z', ASCII only */
        if (n - i < 8) upper &= ~0ull >> (8 * (8 - (n - i))); /* only this name's bytes */
        if (upper) {
            w |= upper >> 2; /* + 0x20 */
            memcpy(p + i, &w, 8);
        }
    }
}

static int key_eq(const uint8_t *stored, const uint8_t *k, size_t kl) {
    if (!memcmp(stored, k, kl)) return 1; /* the usual case: asked for in lowercase */
    for (size_t i = 0; i < kl; i++)
        if (stored[i] != lower(k[i])) return 0;
    return 1;
}

/* Storage: every entry is "key\0value\0" in `bytes`, so that a map whose entries lie in
 * order without gaps (not `loose`: just parsed, or only appended to) serializes with one copy.
 * The NULs are not counted as live bytes; replaced or removed entries become garbage. */
static void compact(pw_hmap *m) {
    pw_buf nb = {0};
    if (buf_reserve(&nb, m->bytes.len - m->garbage + 1)) return; /* keep the garbage */
    for (size_t i = 0; i < m->n; i++) {
        hm_entry *e = &m->e[i];
        uint32_t ko = (uint32_t)nb.len;
        memcpy(nb.p + ko, m->bytes.p + e->ko, e->kl);
        nb.p[ko + e->kl] = 0;
        uint32_t vo = ko + e->kl + 1;
        memcpy(nb.p + vo, m->bytes.p + e->vo, e->vl);
        nb.p[vo + e->vl] = 0;
        nb.len = vo + e->vl + 1;
        e->ko = ko;
        e->vo = vo;
    }
    buf_free(&m->bytes);
    m->bytes = nb;
    m->garbage = 0;
    m->loose = 0;
}

/* Live bytes as the caps count them: names and values, without the NULs. */
static size_t live(const pw_hmap *m) { return m->bytes.len - m->garbage - 2 * m->n; }

/* A map holds at most PAIRS_MAX_COUNT entries and PAIRS_MAX_BYTES live bytes, whatever a
 * guest adds; replaced values become garbage, compacted away once they are most of it. */
static int fits(pw_hmap *m, size_t add, int new_entry) {
    if (new_entry && m->n >= PAIRS_MAX_COUNT) return 0;
    if (live(m) + add > PAIRS_MAX_BYTES) return 0;
    if (m->garbage > 4096 && m->garbage > m->bytes.len / 2) compact(m);
    return 1;
}

static int grow_entries(pw_hmap *m, size_t need) {
    if (need <= m->cap) return 0;
    size_t nc = m->cap ? m->cap : 16;
    while (nc < need) nc *= 2;
    hm_entry *ne = realloc(m->e, nc * sizeof *ne);
    if (!ne) return -1;
    m->e = ne;
    m->cap = nc;
    return 0;
}

static int push(pw_hmap *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    if (kl > UINT32_MAX || vl > UINT32_MAX || !fits(m, kl + vl, 1)) return -1;
    if (grow_entries(m, m->n + 1)) return -1;
    size_t ko = m->bytes.len;
    if (ko + kl + vl + 2 > UINT32_MAX || buf_reserve(&m->bytes, ko + kl + vl + 2 + LOWER_SLACK))
        return -1;
    uint8_t *d = m->bytes.p + ko;
    if (kl) memcpy(d, k, kl);
    lower_in_place(d, kl);
    d[kl] = 0;
    if (vl) memcpy(d + kl + 1, v, vl);
    d[kl + 1 + vl] = 0;
    m->bytes.len = ko + kl + vl + 2;
    m->e[m->n++] = (hm_entry){(uint32_t)ko, (uint32_t)kl, (uint32_t)(ko + kl + 1), (uint32_t)vl};
    m->changed = 1;
    return 0;
}

int hmap_find(const pw_hmap *m, const uint8_t *k, size_t kl) {
    for (size_t i = 0; i < m->n; i++)
        if (m->e[i].kl == kl && key_eq(hm_key(m, i), k, kl)) return (int)i;
    return -1;
}

const uint8_t *hmap_get(const pw_hmap *m, const uint8_t *k, size_t kl, size_t *vl) {
    int i = hmap_find(m, k, kl);
    if (i < 0) return NULL;
    *vl = m->e[i].vl;
    return hm_val(m, (size_t)i);
}

int hmap_add(pw_hmap *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    return push(m, k, kl, v, vl);
}

static void remove_at(pw_hmap *m, size_t i) {
    m->garbage += m->e[i].kl + m->e[i].vl + 2;
    m->loose = 1;
    m->changed = 1;
    m->given = HMAP_CHANGED;
    memmove(&m->e[i], &m->e[i + 1], (m->n - i - 1) * sizeof m->e[0]);
    m->n--;
}

void hmap_remove(pw_hmap *m, const uint8_t *k, size_t kl) {
    for (size_t i = m->n; i-- > 0;)
        if (m->e[i].kl == kl && key_eq(hm_key(m, i), k, kl)) remove_at(m, i);
    if (m->garbage > 4096 && m->garbage > m->bytes.len / 2) compact(m);
}

int hmap_replace(pw_hmap *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    /* Envoy setCopy: the first entry takes the value in place, the others go. */
    int first = hmap_find(m, k, kl);
    if (first < 0) return push(m, k, kl, v, vl);
    for (size_t i = m->n; i-- > (size_t)first + 1;)
        if (m->e[i].kl == kl && key_eq(hm_key(m, i), k, kl)) remove_at(m, i);
    hm_entry *e = &m->e[first];
    if (vl > e->vl && !fits(m, vl - e->vl, 0)) return -1;
    e = &m->e[first]; /* compaction may have moved the bytes, never the entries */
    m->changed = 1;
    m->given = HMAP_CHANGED;
    if (vl <= e->vl) {
        if (vl) memmove(m->bytes.p + e->vo, v, vl);
        m->bytes.p[e->vo + vl] = 0;
        if (vl != e->vl) m->loose = 1;
        m->garbage += e->vl - vl;
        e->vl = (uint32_t)vl;
        return 0;
    }
    if (m->bytes.len + vl + 1 > UINT32_MAX || buf_reserve(&m->bytes, m->bytes.len + vl + 1)) return -1;
    uint32_t vo = (uint32_t)m->bytes.len;
    memcpy(m->bytes.p + vo, v, vl);
    m->bytes.p[vo + vl] = 0;
    m->bytes.len += vl + 1;
    m->garbage += e->vl + 1;
    m->loose = 1;
    e->vo = vo;
    e->vl = (uint32_t)vl;
    return 0;
}

void hmap_clear(pw_hmap *m) {
    m->n = 0;
    m->bytes.len = 0;
    m->garbage = 0;
    m->loose = 0;
    m->changed = 1;
    m->given = HMAP_CHANGED; /* (a parse is a clear first: only the embedding sets it again) */
}

int hmap_fields_ok(const pw_hmap *m) {
    for (size_t i = 0; i < m->n; i++)
        if (!m->e[i].kl) return 0;
    if (m->loose || m->garbage) { /* not as parsed: look at each field */
        for (size_t i = 0; i < m->n; i++) {
            const uint8_t *k = hm_key(m, i), *v = hm_val(m, i);
            size_t kl = m->e[i].kl, vl = m->e[i].vl;
            if (memchr(k, 0, kl) || memchr(k, '\r', kl) || memchr(k, '\n', kl) ||
                memchr(v, 0, vl) || memchr(v, '\r', vl) || memchr(v, '\n', vl))
                return 0;
        }
        return 1;
    }
    /* As parsed: no CR or LF anywhere in the stored form, and no NUL inside a field: each
     * field then ends exactly at its own terminator. */
    const uint8_t *p = m->bytes.p;
    size_t n = m->bytes.len;
    if (n && (memchr(p, '\r', n) || memchr(p, '\n', n))) return 0;
    for (size_t i = 0; i < m->n; i++)
        if (strlen((const char *)hm_key(m, i)) != m->e[i].kl ||
            strlen((const char *)hm_val(m, i)) != m->e[i].vl)
            return 0;
    return 1;
}

void hmap_free(pw_hmap *m) {
    free(m->e);
    buf_free(&m->bytes);
    memset(m, 0, sizeof *m);
}

int hmap_parse(pw_hmap *m, const uint8_t *p, size_t n) {
    /* Empty map: size 0, a lone NUL byte, or N = 0. */
    if (n == 0 || (n == 1 && p[0] == 0)) {
        hmap_clear(m);
        return 0;
    }
    if (n < 4 || n > PAIRS_MAX_BYTES) return -1;
    uint32_t count = rd32(p);
    if (count > PAIRS_MAX_COUNT || (size_t)count * 8 > n - 4) return -1;
    size_t need = 4 + (size_t)count * 8;
    for (uint32_t i = 0; i < count; i++)
        need += (size_t)rd32(p + 4 + 8 * i) + rd32(p + 8 + 8 * i) + 2;
    if (need != n) return -1;
    /* Validate every terminator before touching the map. */
    size_t off = 4 + (size_t)count * 8;
    for (uint32_t i = 0; i < count; i++) {
        off += rd32(p + 4 + 8 * i);
        if (p[off++] != 0) return -1;
        off += rd32(p + 8 + 8 * i);
        if (p[off++] != 0) return -1;
    }
    /* Well-formed: the names and values are already laid out as this map stores them
     * ("k\0v\0..."): one copy, then the entries and the names' lowercasing. Only running
     * out of memory can fail from here on (the map is then empty). */
    hmap_clear(m);
    size_t head = 4 + (size_t)count * 8, data = n - head;
    if (grow_entries(m, count) || buf_reserve(&m->bytes, data + LOWER_SLACK)) return -1;
    memcpy(m->bytes.p, p + head, data);
    m->bytes.len = data;
    uint32_t o = 0;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t kl = rd32(p + 4 + 8 * i), vl = rd32(p + 8 + 8 * i);
        m->e[i] = (hm_entry){o, kl, o + kl + 1, vl};
        lower_in_place(m->bytes.p + o, kl);
        o += kl + vl + 2;
    }
    m->n = count;
    m->changed = 1;
    return 0;
}

/* The flat form "k\0v\0...k\0v" (an embedding's request and response headers), parsed in
 * one pass over blocks of bytes: each block is loaded once, checked for CR and LF, stored,
 * and its NULs (a handful per request) end the fields; upper-case letters in names are
 * lowered. Names and values are short: a call per field (memchr, strlen, a lowercasing
 * loop) or a branch per byte would cost more than the bytes themselves. With SSE2 (every
 * x86-64) a block is 16 bytes whose NULs, CR/LF and upper-case letters come out of three
 * compares as bit masks; elsewhere it is a 64-bit word taken apart with SWAR arithmetic. */

/* Where the flat parse is: the entries being filled, the field the next byte is in (a
 * name when even), where it began, the last separator's field, anything unfit seen. */
typedef struct {
    hm_entry *e;
    uint32_t f, from, last;
    uint64_t bad;
} flat_state;

/* The NUL at offset `at` ends field f; -1: a separator too many. */
static inline __attribute__((always_inline)) int flat_end_field(flat_state *st, uint32_t at) {
    uint32_t f = st->f;
    if (f == st->last) return -1;
    if (f & 1) {
        st->e[f >> 1].vo = st->from;
        st->e[f >> 1].vl = at - st->from;
    } else {
        st->e[f >> 1].ko = st->from;
        st->e[f >> 1].kl = at - st->from;
        st->bad |= at == st->from; /* an empty name */
    }
    st->f = f + 1;
    st->from = at + 1;
    return 0;
}

#if defined(__SSE2__) && !defined(PW_FLAT_SWAR) /* (PW_FLAT_SWAR: the portable path, fuzzed too) */
#include <emmintrin.h>

/* The 16 (or, for the last block, k) bytes of the flat form at p + i, copied to b + i;
 * -1: a separator too many. Bit j of each mask is byte j. */
static inline __attribute__((always_inline)) int flat_block(flat_state *st, const uint8_t *p,
                                                            uint8_t *b, uint32_t i, uint32_t k) {
    __m128i v;
    if (k == 16) {
        v = _mm_loadu_si128((const __m128i *)(p + i));
        _mm_storeu_si128((__m128i *)(b + i), v);
    } else { /* bytes past the end: 0xff, not NUL, CR, LF or a letter */
        uint8_t t[16];
        memset(t, 0xff, sizeof t);
        memcpy(t, p + i, k);
        memcpy(b + i, t, k);
        v = _mm_loadu_si128((const __m128i *)t);
    }
    uint32_t z = (uint32_t)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()));
    st->bad |= (uint32_t)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\r')),
                                                         _mm_cmpeq_epi8(v, _mm_set1_epi8('\n'))));
    /* 'A'..'Z': moved to -128..-103 as signed bytes, the only bytes that land below -102. */
    uint32_t upper = (uint32_t)_mm_movemask_epi8(
        _mm_cmplt_epi8(_mm_add_epi8(v, _mm_set1_epi8((char)(0x80 - 'A'))), _mm_set1_epi8(-102)));
    if (upper) { /* rare in names (HTTP/2 and ASGI send them lower case), common in values */
        /* Bit j: the parity of the NULs before byte j; byte j is in field f + that count. */
        uint32_t before = z << 1;
        before ^= before << 1;
        before ^= before << 2;
        before ^= before << 4;
        before ^= before << 8;
        for (uint32_t x = upper & (st->f & 1 ? before : ~before); x; x &= x - 1)
            b[i + (uint32_t)__builtin_ctz(x)] |= 0x20;
    }
    for (; z; z &= z - 1)
        if (flat_end_field(st, i + (uint32_t)__builtin_ctz(z))) return -1;
    return 0;
}
#define FLAT_BLOCK 16
#else
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define LE64(x) __builtin_bswap64(x) /* byte j of a word is the j-th byte in memory */
#else
#define LE64(x) (x)
#endif

static inline uint64_t zero_bytes(uint64_t w) { /* 0x80 in each byte of w that is 0 */
    const uint64_t low7 = 0x7f7f7f7f7f7f7f7full;
    return ~(((w & low7) + low7) | w | low7); /* exact: no carry crosses a byte */
}

/* k (1..8) bytes of the flat form at p + i, copied to b + i; -1: a separator too many.
 * Inlined with k = 8 in the loop, so the word moves with one load and one store. */
static inline __attribute__((always_inline)) int flat_block(flat_state *st, const uint8_t *p,
                                                            uint8_t *b, uint32_t i, uint32_t k) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t w = ~0ull; /* bytes past the end: not NUL, CR, LF or a letter */
    memcpy(&w, p + i, k);
    w = LE64(w);
    uint64_t z = zero_bytes(w);
    st->bad |= zero_bytes(w ^ (ones * '\r')) | zero_bytes(w ^ (ones * '\n'));
    /* Byte j is in field f + (NULs in bytes 0..j): a name's when that is even. */
    uint64_t seen = (z >> 7) * ones; /* byte j: the NULs in bytes 0..j (at most 8) */
    uint64_t name = ((seen ^ (st->f & 1 ? ones : 0)) & ones) ^ ones;
    uint64_t x = w & ~high;
    uint64_t upper = ((x + ones * (0x80 - 'A')) ^ (x + ones * (0x80 - 'Z' - 1))) & ~w & high;
    w |= (upper & (name << 7)) >> 2; /* 'A'..'Z' in names: + 0x20 */
    w = LE64(w);
    memcpy(b + i, &w, k);
    for (; z; z &= z - 1) /* each NUL ends field f */
        if (flat_end_field(st, i + ((uint32_t)__builtin_ctzll(z) >> 3))) return -1;
    return 0;
}
#define FLAT_BLOCK 8
#endif

int hmap_parse_flat(pw_hmap *m, const uint8_t *p, size_t n, uint32_t count) {
    hmap_clear(m);
    if (count > PAIRS_MAX_COUNT || n > PAIRS_MAX_BYTES) return -1;
    if (count == 0) return n ? -1 : 0;
    if (grow_entries(m, count) || buf_reserve(&m->bytes, n + 1)) return -1;
    flat_state st = {m->e, 0, 0, 2 * count - 1, 0};
    uint8_t *b = m->bytes.p;
    uint32_t len = (uint32_t)n, i = 0;
    for (; i + FLAT_BLOCK <= len; i += FLAT_BLOCK)
        if (flat_block(&st, p, b, i, FLAT_BLOCK)) goto malformed;
    if (i < len && flat_block(&st, p, b, i, len - i)) goto malformed;
    if (st.f != st.last) goto malformed;
    st.e[count - 1].vo = st.from;
    st.e[count - 1].vl = len - st.from;
    b[len] = 0;
    if (st.bad) {
        hmap_clear(m);
        return -2;
    }
    m->bytes.len = n + 1;
    m->n = count;
    return 0;
malformed:
    hmap_clear(m);
    return -1;
}

size_t hmap_serialized_size(const pw_hmap *m) {
    size_t n = 4;
    for (size_t i = 0; i < m->n; i++) n += 10 + (size_t)m->e[i].kl + m->e[i].vl;
    return n;
}

/* Entries [from, from + count) in the pairs format at out, entry by entry. */
static void serialize_entries(const pw_hmap *m, size_t from, size_t count, uint8_t *out) {
    wr32(out, (uint32_t)count);
    uint8_t *lens = out + 4, *d = out + 4 + 8 * count;
    for (size_t i = 0; i < count; i++) {
        const hm_entry *e = &m->e[from + i];
        wr32(lens + 8 * i, e->kl);
        wr32(lens + 8 * i + 4, e->vl);
        if (e->kl) memcpy(d, m->bytes.p + e->ko, e->kl);
        d += e->kl;
        *d++ = 0;
        if (e->vl) memcpy(d, m->bytes.p + e->vo, e->vl);
        d += e->vl;
        *d++ = 0;
    }
}

void hmap_serialize_to(const pw_hmap *m, uint8_t *out) {
    if (!m->loose && m->garbage == 0) { /* stored exactly as the format lays them out */
        uint8_t *lens = out + 4, *d = out + 4 + 8 * m->n;
        wr32(out, (uint32_t)m->n);
        for (size_t i = 0; i < m->n; i++) {
            wr32(lens + 8 * i, m->e[i].kl);
            wr32(lens + 8 * i + 4, m->e[i].vl);
        }
        if (m->bytes.len) memcpy(d, m->bytes.p, m->bytes.len);
        return;
    }
    serialize_entries(m, 0, m->n, out);
}

int hmap_serialize_from(const pw_hmap *m, size_t from, pw_buf *out) {
    size_t count = from < m->n ? m->n - from : 0, n = 4;
    for (size_t i = 0; i < count; i++) n += 10 + (size_t)m->e[from + i].kl + m->e[from + i].vl;
    if (buf_reserve(out, n)) return -1;
    serialize_entries(m, from, count, out->p);
    out->len = n;
    return 0;
}

int hmap_serialize(const pw_hmap *m, pw_buf *out) {
    size_t n = hmap_serialized_size(m);
    if (buf_reserve(out, n)) return -1;
    hmap_serialize_to(m, out->p);
    out->len = n;
    return 0;
}
