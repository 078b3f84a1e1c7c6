/* Header maps (ordered, duplicates kept, keys lowercased as Envoy does) and the pairs
 * wire format of ABI.md §6.1. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static inline uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

static int key_eq(const uint8_t *stored, const uint8_t *k, size_t kl) {
    for (size_t i = 0; i < kl; i++)
        if (stored[i] != lower(k[i])) return 0;
    return 1;
}

static void compact(pw_hmap *m) {
    pw_buf nb = {0};
    if (buf_reserve(&nb, m->bytes.len - m->garbage + 1)) return; /* keep the garbage */
    for (size_t i = 0; i < m->n; i++) {
        hm_entry *e = &m->e[i];
        uint32_t ko = (uint32_t)nb.len;
        memcpy(nb.p + ko, m->bytes.p + e->ko, e->kl);
        nb.len += e->kl;
        uint32_t vo = (uint32_t)nb.len;
        memcpy(nb.p + vo, m->bytes.p + e->vo, e->vl);
        nb.len += e->vl;
        e->ko = ko;
        e->vo = vo;
    }
    buf_free(&m->bytes);
    m->bytes = nb;
    m->garbage = 0;
}

/* A map holds at most PAIRS_MAX_COUNT entries and PAIRS_MAX_BYTES live bytes, whatever a
 * guest adds; replaced values become garbage, compacted away once they are most of it. */
static int fits(pw_hmap *m, size_t add, int new_entry) {
    if (new_entry && m->n >= PAIRS_MAX_COUNT) return 0;
    if (m->bytes.len - m->garbage + add > PAIRS_MAX_BYTES) return 0;
    if (m->garbage > 4096 && m->garbage > m->bytes.len / 2) compact(m);
    return 1;
}

static int push(pw_hmap *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl) {
    if (kl > UINT32_MAX || vl > UINT32_MAX || !fits(m, kl + vl, 1)) return -1;
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 16;
        hm_entry *ne = realloc(m->e, nc * sizeof *ne);
        if (!ne) return -1;
        m->e = ne;
        m->cap = nc;
    }
    if (m->bytes.len + kl + vl > UINT32_MAX) return -1;
    size_t ko = m->bytes.len;
    /* One spare byte: the store is never NULL once it holds an entry, even an empty one
     * (hm_key / hm_val would offset a NULL pointer). */
    if (buf_reserve(&m->bytes, ko + kl + vl + 1)) return -1;
    for (size_t i = 0; i < kl; i++) m->bytes.p[ko + i] = lower(k[i]);
    if (vl) memcpy(m->bytes.p + ko + kl, v, vl);
    m->bytes.len = ko + kl + vl;
    m->e[m->n++] = (hm_entry){(uint32_t)ko, (uint32_t)kl, (uint32_t)(ko + kl), (uint32_t)vl};
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
    m->garbage += m->e[i].kl + m->e[i].vl;
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
    if (vl <= e->vl) {
        if (vl) memmove(m->bytes.p + e->vo, v, vl);
        m->garbage += e->vl - vl;
        e->vl = (uint32_t)vl;
        return 0;
    }
    if (m->bytes.len + vl > UINT32_MAX || buf_reserve(&m->bytes, m->bytes.len + vl)) return -1;
    uint32_t vo = (uint32_t)m->bytes.len;
    memcpy(m->bytes.p + vo, v, vl);
    m->bytes.len += vl;
    m->garbage += e->vl;
    e->vo = vo;
    e->vl = (uint32_t)vl;
    return 0;
}

void hmap_clear(pw_hmap *m) {
    m->n = 0;
    m->bytes.len = 0;
    m->garbage = 0;
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
    /* Well-formed: refill the map in place, reusing its storage. Only running out of
     * memory can fail from here on. */
    hmap_clear(m);
    off = 4 + (size_t)count * 8;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t kl = rd32(p + 4 + 8 * i), vl = rd32(p + 8 + 8 * i);
        if (push(m, p + off, kl, p + off + kl + 1, vl)) return -1;
        off += (size_t)kl + vl + 2;
    }
    return 0;
}

int hmap_parse_flat(pw_hmap *m, const uint8_t *p, size_t n, uint32_t count) {
    if (count > PAIRS_MAX_COUNT || n > PAIRS_MAX_BYTES) return -1;
    if (count == 0) {
        if (n) return -1;
        hmap_clear(m);
        return 0;
    }
    /* Exactly 2 * count - 1 separators, checked before touching the map. */
    size_t seps = 0;
    for (const uint8_t *q = p, *end = p + n; (q = memchr(q, 0, (size_t)(end - q))); q++) seps++;
    if (seps != 2 * (size_t)count - 1) return -1;
    hmap_clear(m);
    const uint8_t *q = p, *end = p + n;
    for (uint32_t i = 0; i < count; i++) {
        const uint8_t *k = q, *ke = memchr(k, 0, (size_t)(end - k));
        const uint8_t *v = ke + 1, *ve = memchr(v, 0, (size_t)(end - v));
        if (!ve) ve = end;
        if (push(m, k, (size_t)(ke - k), v, (size_t)(ve - v))) return -1;
        q = ve + 1;
    }
    return 0;
}

size_t hmap_serialized_size(const pw_hmap *m) {
    size_t n = 4;
    for (size_t i = 0; i < m->n; i++) n += 10 + (size_t)m->e[i].kl + m->e[i].vl;
    return n;
}

void hmap_serialize_to(const pw_hmap *m, uint8_t *out) {
    wr32(out, (uint32_t)m->n);
    uint8_t *lens = out + 4, *d = out + 4 + 8 * m->n;
    for (size_t i = 0; i < m->n; i++) {
        const hm_entry *e = &m->e[i];
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

int hmap_serialize(const pw_hmap *m, pw_buf *out) {
    size_t n = hmap_serialized_size(m);
    if (buf_reserve(out, n)) return -1;
    hmap_serialize_to(m, out->p);
    out->len = n;
    return 0;
}
