/* libFuzzer target for the pairs codec and header maps (hmap.c).
 *
 * The first input byte picks a mode, the rest is the case:
 *   0  hmap_parse: a well-formed blob round-trips through hmap_serialize byte for byte
 *      (keys lowercased); a malformed one leaves the map exactly as it was.
 *   1  hmap_parse_flat (count from the next byte): its verdict matches a plain model
 *      (separators, empty names, CR/LF); accepted input gives `count` entries that survive
 *      a serialize/parse round trip; rejected input leaves the map empty.
 *   2+ add / replace / remove / get sequences checked after every step against a plain
 *      reference model (an array of entries), including the compaction of removed bytes.
 * In every mode, the map's `changed` mark (the PW_S_*_HEADERS_CHANGED flags) is set by
 * exactly what changed the map: a parse that succeeded, an add, a replace, a remove that
 * found the key, a clear (a refused flat form is one); never by a refused pairs blob, a get,
 * a serialization or a compaction.
 * Any difference aborts, so libFuzzer reports it like a sanitizer finding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"

#define REQUIRE(c)                                                                 \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "fuzz_hmap: %s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                               \
        }                                                                          \
    } while (0)

static uint8_t low(uint8_t c) { return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c; }

/* ---- a reference model: entries in order, keys lowercased --------------------------- */
typedef struct {
    uint8_t *k, *v;
    size_t kl, vl;
} ent;

typedef struct {
    ent *e;
    size_t n, cap;
} model;

static uint8_t *dup_bytes(const uint8_t *p, size_t n, int lower_case) {
    uint8_t *d = malloc(n ? n : 1);
    REQUIRE(d);
    if (n) memcpy(d, p, n); /* not a byte loop: coverage tracing would dominate */
    if (lower_case)
        for (size_t i = 0; i < n; i++) d[i] = low(p[i]);
    return d;
}

static int key_is(const ent *e, const uint8_t *k, size_t kl) {
    if (e->kl != kl) return 0;
    for (size_t i = 0; i < kl; i++)
        if (e->k[i] != low(k[i])) return 0;
    return 1;
}

static void model_insert(model *m, size_t at, const uint8_t *k, size_t kl, const uint8_t *v,
                         size_t vl) {
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->e = realloc(m->e, m->cap * sizeof *m->e);
        REQUIRE(m->e);
    }
    memmove(&m->e[at + 1], &m->e[at], (m->n - at) * sizeof *m->e);
    m->e[at] = (ent){dup_bytes(k, kl, 1), dup_bytes(v, vl, 0), kl, vl};
    m->n++;
}

static void model_erase(model *m, size_t at) {
    free(m->e[at].k);
    free(m->e[at].v);
    memmove(&m->e[at], &m->e[at + 1], (m->n - at - 1) * sizeof *m->e);
    m->n--;
}

static void model_free(model *m) {
    while (m->n) model_erase(m, m->n - 1);
    free(m->e);
}

static void same_as_model(const pw_hmap *h, const model *m) {
    REQUIRE(h->n == m->n);
    for (size_t i = 0; i < m->n; i++) {
        REQUIRE(h->e[i].kl == m->e[i].kl && h->e[i].vl == m->e[i].vl);
        REQUIRE(!m->e[i].kl || !memcmp(hm_key(h, i), m->e[i].k, m->e[i].kl));
        REQUIRE(!m->e[i].vl || !memcmp(hm_val(h, i), m->e[i].v, m->e[i].vl));
        /* every stored range lies inside the byte store */
        REQUIRE((size_t)h->e[i].ko + h->e[i].kl <= h->bytes.len);
        REQUIRE((size_t)h->e[i].vo + h->e[i].vl <= h->bytes.len);
    }
    REQUIRE(h->garbage <= h->bytes.len);
}

/* ---- serialization helpers ------------------------------------------------------------ */
static uint8_t *serialize(const pw_hmap *m, size_t *n) {
    pw_buf b = {0};
    REQUIRE(!hmap_serialize(m, &b));
    REQUIRE(b.len == hmap_serialized_size(m));
    *n = b.len;
    return b.p;
}

static void prefill(pw_hmap *m) {
    REQUIRE(!hmap_add(m, (const uint8_t *)"Keep", 4, (const uint8_t *)"me", 2));
    REQUIRE(!hmap_add(m, (const uint8_t *)":path", 5, (const uint8_t *)"/", 1));
}

static void fuzz_parse(const uint8_t *d, size_t n) {
    pw_hmap m = {0};
    prefill(&m);
    size_t bl;
    uint8_t *before = serialize(&m, &bl);
    m.changed = 0;
    if (hmap_parse(&m, d, n) == 0) {
        REQUIRE(m.changed);
        size_t ol;
        uint8_t *out = serialize(&m, &ol);
        if (n == 0 || (n == 1 && d[0] == 0)) {
            REQUIRE(m.n == 0 && ol == 4);
        } else {
            REQUIRE(ol == n);
            /* identical except that keys come back lowercased */
            size_t off = 4 + 8 * m.n;
            REQUIRE(!memcmp(out, d, off));
            for (size_t i = 0; i < m.n; i++) {
                for (size_t j = 0; j < m.e[i].kl; j++) REQUIRE(out[off + j] == low(d[off + j]));
                off += m.e[i].kl;
                REQUIRE(out[off] == 0 && d[off] == 0);
                off++;
                REQUIRE(!m.e[i].vl || !memcmp(out + off, d + off, m.e[i].vl));
                off += m.e[i].vl;
                REQUIRE(out[off] == 0 && d[off] == 0);
                off++;
            }
            REQUIRE(off == n);
            /* and parsing the output again is a fixed point */
            pw_hmap again = {0};
            REQUIRE(!hmap_parse(&again, out, ol));
            size_t al;
            uint8_t *out2 = serialize(&again, &al);
            REQUIRE(al == ol && !memcmp(out2, out, ol));
            free(out2);
            hmap_free(&again);
        }
        free(out);
    } else {
        size_t al;
        uint8_t *after = serialize(&m, &al);
        REQUIRE(al == bl && !memcmp(after, before, bl)); /* untouched on failure */
        REQUIRE(!m.changed);
        free(after);
    }
    free(before);
    hmap_free(&m);
}

static void fuzz_flat(const uint8_t *d, size_t n) {
    if (!n) return;
    uint32_t count = d[0];
    if (count == 255) count = PAIRS_MAX_COUNT + 1; /* the limit itself */
    d++, n--;
    pw_hmap m = {0};
    prefill(&m);
    m.changed = 0;
    int r = hmap_parse_flat(&m, d, n, count);
    /* The model: 2 * count - 1 NUL separators (-1 otherwise), then no empty name and no
     * CR or LF in any field (-2 otherwise). */
    size_t seps = 0;
    int unfit = 0;
    for (size_t i = 0, from = 0; i <= n; i++) {
        if (i < n && d[i] != 0) {
            unfit |= d[i] == '\r' || d[i] == '\n';
            continue;
        }
        unfit |= !(seps & 1) && i == from; /* field `seps` is a name when even */
        if (i < n) seps++;
        from = i + 1;
    }
    int want = count > PAIRS_MAX_COUNT ? -1 : count == 0 ? (n ? -1 : 0)
             : seps != 2 * (size_t)count - 1 ? -1 : unfit ? -2 : 0;
    REQUIRE(r == want);
    if (r == 0) {
        REQUIRE(m.n == count);
        REQUIRE(m.changed);
        /* the stored bytes are exactly the input's, keys lowercased */
        size_t off = 0;
        for (size_t i = 0; i < m.n; i++) {
            for (size_t j = 0; j < m.e[i].kl; j++) REQUIRE(hm_key(&m, i)[j] == low(d[off + j]));
            off += m.e[i].kl + 1;
            REQUIRE(!m.e[i].vl || !memcmp(hm_val(&m, i), d + off, m.e[i].vl));
            off += m.e[i].vl + 1;
        }
        REQUIRE(count == 0 ? n == 0 : off == n + 1);
        size_t ol;
        uint8_t *out = serialize(&m, &ol);
        pw_hmap again = {0};
        REQUIRE(!hmap_parse(&again, out, ol));
        REQUIRE(again.n == m.n);
        hmap_free(&again);
        free(out);
    } else {
        REQUIRE(m.n == 0 && m.bytes.len == 0);
    }
    hmap_free(&m);
}

/* Operations: op byte, then key length (small), key bytes, value length, value seed. Long
 * values are a repeated byte so that a short input can push garbage past the compaction
 * threshold. */
static void fuzz_ops(const uint8_t *d, size_t n) {
    pw_hmap h = {0};
    model m = {0};
    static uint8_t val[1 << 13];
    size_t i = 0;
    /* `given`: what the embedding handed in stays first and unchanged while only adds
     * follow (a zeroed map was handed nothing); the round trip below hands it in anew. */
    size_t given = 0;
    int given_ok = 1;
    while (i + 3 <= n) {
        uint8_t op = d[i++] % 6;
        size_t kl = d[i++] % 8;
        if (i + kl > n) break;
        const uint8_t *k = d + i;
        i += kl;
        size_t vl = 0;
        const uint8_t *v = val;
        if (i < n) {
            uint8_t s = d[i++];
            vl = (s & 0x80) ? (size_t)(s & 0x7f) * 64 : s; /* up to 8 KiB */
            uint8_t fill = i < n ? d[i++] : 0;
            memset(val, fill, vl);
            if (vl && i < n) val[0] = d[i++];
        }
        h.changed = 0;
        int changes = 1; /* does this op change the map? */
        switch (op) {
        case 0: /* add */
            REQUIRE(!hmap_add(&h, k, kl, v, vl));
            model_insert(&m, m.n, k, kl, v, vl);
            break;
        case 1: { /* replace: the first takes the value, later duplicates go (Envoy setCopy) */
            REQUIRE(!hmap_replace(&h, k, kl, v, vl));
            size_t first = m.n;
            for (size_t j = 0; j < m.n; j++)
                if (key_is(&m.e[j], k, kl)) {
                    first = j;
                    break;
                }
            if (first == m.n) {
                model_insert(&m, m.n, k, kl, v, vl);
            } else {
                given_ok = 0;
                for (size_t j = m.n; j-- > first + 1;)
                    if (key_is(&m.e[j], k, kl)) model_erase(&m, j);
                free(m.e[first].v);
                m.e[first].v = dup_bytes(v, vl, 0);
                m.e[first].vl = vl;
            }
            break;
        }
        case 2: /* remove every entry of the key */
            hmap_remove(&h, k, kl);
            changes = 0;
            for (size_t j = m.n; j-- > 0;)
                if (key_is(&m.e[j], k, kl)) {
                    model_erase(&m, j);
                    changes = 1;
                    given_ok = 0;
                }
            break;
        case 3: { /* get: the first entry's value, or nothing */
            size_t got_l = 0;
            const uint8_t *got = hmap_get(&h, k, kl, &got_l);
            const ent *want = NULL;
            for (size_t j = 0; j < m.n && !want; j++)
                if (key_is(&m.e[j], k, kl)) want = &m.e[j];
            REQUIRE(!got == !want);
            if (want) REQUIRE(got_l == want->vl && (!got_l || !memcmp(got, want->v, got_l)));
            changes = 0;
            break;
        }
        case 4: { /* round trip through the wire format into a fresh map */
            size_t ol;
            uint8_t *out = serialize(&h, &ol);
            pw_hmap again = {0};
            int rc = hmap_parse(&again, out, ol);
            /* only the codec's own limits may refuse what the map holds */
            REQUIRE(rc == 0 || h.n > PAIRS_MAX_COUNT || ol > PAIRS_MAX_BYTES);
            if (!rc) same_as_model(&again, &m);
            hmap_free(&again);
            free(out);
            changes = 0;
            h.given = h.n; /* as http.c's parse_in marks a map the embedding hands in */
            given = m.n;
            given_ok = 1;
            break;
        }
        case 5: /* clear */
            hmap_clear(&h);
            model_free(&m);
            m = (model){0};
            given_ok = 0;
            break;
        }
        REQUIRE(h.changed == changes);
        same_as_model(&h, &m);
        REQUIRE(h.given == (given_ok ? given : HMAP_CHANGED));
        if (given_ok) { /* what was added since: the model's entries from `given` on */
            pw_buf added = {0};
            REQUIRE(!hmap_serialize_from(&h, given, &added));
            pw_hmap again = {0};
            model tail = {0};
            for (size_t j = given; j < m.n; j++)
                model_insert(&tail, tail.n, m.e[j].k, m.e[j].kl, m.e[j].v, m.e[j].vl);
            int rc = hmap_parse(&again, added.p, added.len);
            REQUIRE(rc == 0 || m.n - given > PAIRS_MAX_COUNT || added.len > PAIRS_MAX_BYTES);
            if (!rc) same_as_model(&again, &tail);
            hmap_free(&again);
            model_free(&tail);
            buf_free(&added);
        }
    }
    hmap_free(&h);
    model_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    /* A private copy: the codec must not read past what it is given (ASan sees it). */
    uint8_t *d = malloc(size - 1 ? size - 1 : 1);
    if (!d) return 0;
    memcpy(d, data + 1, size - 1);
    switch (data[0] % 4) {
    case 0: fuzz_parse(d, size - 1); break;
    case 1: fuzz_flat(d, size - 1); break;
    default: fuzz_ops(d, size - 1); break;
    }
    free(d);
    return 0;
}
