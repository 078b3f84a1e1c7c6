/* libFuzzer target for property paths (props.c): the attribute lookups a guest reaches
 * with proxy_get_property / proxy_set_property, on a VM and contexts built in C alone (no
 * wasm runs here, so no wasmtime is needed).
 *
 * Input: a flags byte, then length-prefixed chunks (one length byte each):
 *   request headers (flat form, count from the flags), response headers, response
 *   trailers, a host property path and value, a filter-state path and value, then any
 *   number of paths to read.
 * Checks: every answer lies in its buffer; a value set with proxy_set_property on a stream
 * reads back unchanged; a lookup never changes what the next identical lookup answers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../internal.h"

#define REQUIRE(c)                                                                 \
    do {                                                                           \
        if (!(c)) {                                                                \
            fprintf(stderr, "fuzz_props: %s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
            abort();                                                               \
        }                                                                          \
    } while (0)

typedef struct {
    const uint8_t *p;
    size_t n;
} cursor;

/* The next chunk: a length byte then that many bytes (fewer at the end of the input). */
static const uint8_t *chunk(cursor *c, size_t *len) {
    if (!c->n) {
        *len = 0;
        return NULL;
    }
    size_t l = c->p[0];
    c->p++, c->n--;
    if (l > c->n) l = c->n;
    const uint8_t *r = c->p;
    c->p += l, c->n -= l;
    *len = l;
    return r;
}

/* A private copy of a chunk, so ASan sees any read past it. */
static uint8_t *copy(const uint8_t *p, size_t n) {
    uint8_t *d = malloc(n ? n : 1);
    if (d && n) memcpy(d, p, n);
    return d;
}

static uint32_t nuls_plus_one(const uint8_t *p, size_t n) {
    uint32_t k = 1;
    for (size_t i = 0; i < n; i++) k += p[i] == 0;
    return k;
}

/* Flat headers from a chunk: as many pairs as its NULs allow ("k\0v\0k\0v"). */
static void load_headers(pw_hmap *m, const uint8_t *p, size_t n) {
    if (!n) return;
    uint32_t seps = nuls_plus_one(p, n) - 1;
    if (seps % 2 == 1) hmap_parse_flat(m, p, n, (seps + 1) / 2);
    else hmap_parse(m, p, n); /* otherwise try it as the pairs format */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t flags = data[0];
    cursor cur = {data + 1, size - 1};

    pw_vm vm;
    memset(&vm, 0, sizeof vm);
    vm.owner = pthread_self();
    buf_set(&vm.vm_id, (const uint8_t *)"fuzz-vm", 7);

    pw_ctx root, stream;
    pw_root r;
    pw_http h;
    memset(&root, 0, sizeof root);
    memset(&stream, 0, sizeof stream);
    memset(&r, 0, sizeof r);
    memset(&h, 0, sizeof h);
    buf_set(&r.name, (const uint8_t *)"fuzz-plugin", 11);
    buf_set(&r.root_id, (const uint8_t *)"root", 4);
    root.id = 1, root.kind = CTX_ROOT, root.root = &root, root.r = &r, root.created = 1;
    stream.id = 2, stream.kind = (flags & 1) ? CTX_TCP : CTX_HTTP, stream.root = &root;
    stream.h = &h, stream.created = 1;
    if (flags & 2) stream.root = NULL; /* a stream whose root was deleted */

    size_t n;
    const uint8_t *p = chunk(&cur, &n);
    if (p) load_headers(&h.d[0].headers, p, n);
    h.d[0].headers_in = (flags & 4) != 0;
    h.d[0].body_in = flags & 8 ? 1u << 20 : 0;
    p = chunk(&cur, &n);
    if (p) load_headers(&h.d[1].headers, p, n);
    h.d[1].headers_in = (flags & 16) != 0;
    p = chunk(&cur, &n);
    if (p) load_headers(&h.d[1].trailers, p, n);
    h.d[1].trailers_in = (flags & 32) != 0;
    if (flags & 64) {
        h.local_reply = 1;
        buf_set(&h.lr_details, (const uint8_t *)"via_fuzz", 8);
    }

    /* A host property for the VM or the stream, through the public API. */
    size_t hpl, hvl;
    const uint8_t *hp = chunk(&cur, &hpl), *hv = chunk(&cur, &hvl);
    if (hp) {
        uint8_t *cp = copy(hp, hpl), *cv = copy(hv, hvl);
        prop_set((flags & 128) ? &stream.host_props : &vm.host_props, cp, hpl, cv, hvl);
        free(cp);
        free(cv);
    }

    pw_ctx *ctxs[3] = {NULL, &root, &stream};
    pw_buf out = {0}, again = {0};

    /* Filter state: what is set reads back as it was set. */
    size_t spl, svl;
    const uint8_t *sp = chunk(&cur, &spl), *sv = chunk(&cur, &svl);
    if (sp) {
        uint8_t *cp = copy(sp, spl), *cv = copy(sv, svl);
        pw_ctx *c = ctxs[spl % 3];
        int st = props_set(&vm, c, cp, spl, cv, svl);
        size_t eff = spl && cp[spl - 1] == 0 ? spl - 1 : spl;
        if (!eff) REQUIRE(st == ST_BAD_ARGUMENT);
        else if (!c || c->kind == CTX_ROOT) REQUIRE(st == ST_NOT_FOUND);
        else {
            REQUIRE(st == ST_OK);
            REQUIRE(props_get(&vm, c, cp, spl, &out) == ST_OK);
            REQUIRE(out.len == svl && (!svl || !memcmp(out.p, cv, svl)));
        }
        free(cp);
        free(cv);
    }

    /* Reads: answers lie in the buffer and do not depend on what was asked before. */
    for (int i = 0; cur.n; i++) {
        size_t pl;
        const uint8_t *path = chunk(&cur, &pl);
        uint8_t *cp = copy(path, pl);
        pw_ctx *c = ctxs[(unsigned)i % 3];
        int st = props_get(&vm, c, cp, pl, &out);
        REQUIRE(st == ST_OK || st == ST_NOT_FOUND || st == ST_INTERNAL_FAILURE);
        REQUIRE(out.len <= out.cap);
        if (st == ST_OK) {
            volatile uint8_t sum = 0; /* touch every byte of the answer */
            for (size_t j = 0; j < out.len; j++) sum ^= out.p[j];
            (void)sum;
            int st2 = props_get(&vm, c, cp, pl, &again);
            REQUIRE(st2 == ST_OK && again.len == out.len &&
                    (!out.len || !memcmp(again.p, out.p, out.len)));
        }
        /* and the public API agrees with the hostcall path */
        const uint8_t *o;
        size_t ol;
        int pst = pw_get_property(&vm, c ? c->id : 0, cp, pl, &o, &ol);
        if (c == &stream || c == NULL) {
            /* ctx_get finds no table here, so only the VM-level lookup is comparable */
            if (!c) REQUIRE(pst == st);
        }
        free(cp);
    }

    buf_free(&out);
    buf_free(&again);
    buf_free(&vm.scratch);
    buf_free(&vm.vm_id);
    prop_free_all(&vm.host_props);
    prop_free_all(&stream.host_props);
    prop_free_all(&stream.filter_state);
    buf_free(&r.name);
    buf_free(&r.root_id);
    http_free(&h);
    return 0;
}
