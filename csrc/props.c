/* Properties (ABI.md §6.3, §6.4, §7): paths are NUL-separated segments (one trailing NUL
 * tolerated); values are encoded as Envoy encodes them. Resolution order: what the guest
 * set on this stream (proxy_set_property), the plugin_* attributes, what the embedding
 * provided for this context and then for the whole VM, and the request/response
 * attributes computed from the stream's headers. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int seg_eq(const uint8_t *p, size_t pl, const char *s) {
    size_t n = strlen(s);
    return pl == n && memcmp(p, s, n) == 0;
}

static int put_str(pw_buf *out, const uint8_t *p, size_t n) {
    return buf_set(out, p, n) ? ST_INTERNAL_FAILURE : ST_OK;
}

static int put_i64(pw_buf *out, int64_t v) {
    uint8_t b[8];
    wr_le(b, (uint64_t)v, 8);
    return put_str(out, b, 8);
}

static int parse_i64(const uint8_t *p, size_t n, int64_t *v) {
    if (!n || n > 18) return -1;
    int64_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        r = r * 10 + (p[i] - '0');
    }
    *v = r;
    return 0;
}

/* All values of a header joined with ',' as Envoy's attribute maps do. */
static int header_joined(const pw_hmap *m, const uint8_t *k, size_t kl, pw_buf *out) {
    int found = 0;
    buf_clear(out);
    for (size_t i = 0; i < m->n; i++) {
        if (m->e[i].kl != kl || memcmp(hm_key(m, i), k, kl)) continue;
        if (found && buf_append(out, (const uint8_t *)",", 1)) return ST_INTERNAL_FAILURE;
        if (buf_append(out, hm_val(m, i), m->e[i].vl)) return ST_INTERNAL_FAILURE;
        found = 1;
    }
    return found ? ST_OK : ST_NOT_FOUND;
}

static int headers_map(const pw_hmap *m, pw_buf *out) {
    pw_hmap joined = {0};
    pw_buf v = {0};
    int st = ST_OK;
    for (size_t i = 0; i < m->n && st == ST_OK; i++) {
        if (hmap_find(&joined, hm_key(m, i), m->e[i].kl) >= 0) continue;
        st = header_joined(m, hm_key(m, i), m->e[i].kl, &v);
        if (st == ST_OK && hmap_add(&joined, hm_key(m, i), m->e[i].kl, v.p, v.len))
            st = ST_INTERNAL_FAILURE;
    }
    if (st == ST_OK && hmap_serialize(&joined, out)) st = ST_INTERNAL_FAILURE;
    hmap_free(&joined);
    buf_free(&v);
    return st;
}

static int header_value(const pw_hmap *m, const char *k, pw_buf *out) {
    return header_joined(m, (const uint8_t *)k, strlen(k), out);
}

/* Content-Length when present, else the body bytes seen (Envoy). */
static int body_size(const pw_hdir *D, pw_buf *out) {
    int64_t v;
    if (header_value(&D->headers, "content-length", out) == ST_OK &&
        !parse_i64(out->p, out->len, &v))
        return put_i64(out, v);
    return put_i64(out, (int64_t)D->body_in);
}

/* Headers (as Envoy's byteSize: names and values) plus body and trailers. */
static int total_size(const pw_hdir *D, pw_buf *out) {
    uint64_t n = D->body_in;
    for (size_t i = 0; i < D->headers.n; i++) n += D->headers.e[i].kl + D->headers.e[i].vl;
    for (size_t i = 0; i < D->trailers.n; i++) n += D->trailers.e[i].kl + D->trailers.e[i].vl;
    return put_i64(out, (int64_t)n);
}

static int request_attr(pw_http *h, const uint8_t *s, size_t sl, const uint8_t *rest, size_t rl,
                        int has_rest, pw_buf *out) {
    const pw_hmap *m = &h->d[0].headers;
    if (!h->d[0].headers_in) return ST_NOT_FOUND;
    if (seg_eq(s, sl, "headers")) {
        if (has_rest) return header_joined(m, rest, rl, out);
        return headers_map(m, out);
    }
    if (has_rest) return ST_NOT_FOUND;
    if (seg_eq(s, sl, "path")) return header_value(m, ":path", out);
    if (seg_eq(s, sl, "method")) return header_value(m, ":method", out);
    if (seg_eq(s, sl, "host")) return header_value(m, ":authority", out);
    if (seg_eq(s, sl, "scheme")) return header_value(m, ":scheme", out);
    if (seg_eq(s, sl, "referer")) return header_value(m, "referer", out);
    if (seg_eq(s, sl, "useragent")) return header_value(m, "user-agent", out);
    if (seg_eq(s, sl, "id")) return header_value(m, "x-request-id", out);
    if (seg_eq(s, sl, "url_path") || seg_eq(s, sl, "query")) {
        int st = header_value(m, ":path", out);
        if (st != ST_OK) return st;
        uint8_t *q = out->len ? memchr(out->p, '?', out->len) : NULL; /* p may be NULL */
        if (seg_eq(s, sl, "url_path")) {
            if (q) out->len = (size_t)(q - out->p);
            return ST_OK;
        }
        if (!q) return put_str(out, NULL, 0);
        size_t start = (size_t)(q - out->p) + 1, end = out->len;
        uint8_t *frag = memchr(out->p + start, '#', end - start);
        if (frag) end = (size_t)(frag - out->p);
        buf_drain_front(out, start);
        out->len = end - start;
        return ST_OK;
    }
    if (seg_eq(s, sl, "size")) return body_size(&h->d[0], out);
    if (seg_eq(s, sl, "total_size")) return total_size(&h->d[0], out);
    if (seg_eq(s, sl, "time")) return put_i64(out, (int64_t)h->start_ns);
    return ST_NOT_FOUND;
}

static int response_attr(pw_http *h, const uint8_t *s, size_t sl, const uint8_t *rest,
                         size_t rl, int has_rest, pw_buf *out) {
    const pw_hmap *m = &h->d[1].headers;
    if (seg_eq(s, sl, "code_details") && !has_rest) {
        if (!h->local_reply) return ST_NOT_FOUND;
        return put_str(out, h->lr_details.p, h->lr_details.len);
    }
    if (!h->d[1].headers_in) return ST_NOT_FOUND;
    if (seg_eq(s, sl, "headers"))
        return has_rest ? header_joined(m, rest, rl, out) : headers_map(m, out);
    if (seg_eq(s, sl, "trailers")) {
        if (!h->d[1].trailers_in) return ST_NOT_FOUND;
        return has_rest ? header_joined(&h->d[1].trailers, rest, rl, out)
                        : headers_map(&h->d[1].trailers, out);
    }
    if (has_rest) return ST_NOT_FOUND;
    if (seg_eq(s, sl, "size")) return body_size(&h->d[1], out);
    if (seg_eq(s, sl, "total_size")) return total_size(&h->d[1], out);
    if (seg_eq(s, sl, "code")) {
        int64_t v;
        int st = header_value(m, ":status", out);
        if (st != ST_OK) return st;
        return parse_i64(out->p, out->len, &v) ? ST_NOT_FOUND : put_i64(out, v);
    }
    return ST_NOT_FOUND;
}

int props_get(pw_vm *vm, pw_ctx *c, const uint8_t *path, size_t pl, pw_buf *out) {
    if (pl && path[pl - 1] == 0) pl--;
    if (!pl) return ST_NOT_FOUND;
    const pw_prop *p;
    if (c && (p = prop_find(c->filter_state, path, pl))) return put_str(out, p->value.p, p->value.len);
    const uint8_t *nul = memchr(path, 0, pl);
    size_t sl = nul ? (size_t)(nul - path) : pl;
    pw_root *r = (c && c->root) ? c->root->r : NULL;
    if (!nul && r) {
        if (seg_eq(path, sl, "plugin_name")) return put_str(out, r->name.p, r->name.len);
        if (seg_eq(path, sl, "plugin_root_id")) return put_str(out, r->root_id.p, r->root_id.len);
    }
    if (!nul && seg_eq(path, sl, "plugin_vm_id")) return put_str(out, vm->vm_id.p, vm->vm_id.len);
    if ((c && (p = prop_find(c->host_props, path, pl))) || (p = prop_find(vm->host_props, path, pl)))
        return put_str(out, p->value.p, p->value.len);
    if (!c || c->kind != CTX_HTTP) return ST_NOT_FOUND;
    /* request.X / response.X[.key] */
    if (!nul) return ST_NOT_FOUND;
    const uint8_t *s = nul + 1;
    size_t rem = pl - sl - 1;
    const uint8_t *nul2 = memchr(s, 0, rem);
    size_t s2 = nul2 ? (size_t)(nul2 - s) : rem;
    const uint8_t *rest = nul2 ? nul2 + 1 : NULL;
    size_t rl = nul2 ? rem - s2 - 1 : 0;
    if (rest && memchr(rest, 0, rl)) return ST_NOT_FOUND;
    if (seg_eq(path, sl, "request")) return request_attr(c->h, s, s2, rest, rl, rest != NULL, out);
    if (seg_eq(path, sl, "response")) return response_attr(c->h, s, s2, rest, rl, rest != NULL, out);
    return ST_NOT_FOUND;
}

int props_set(pw_vm *vm, pw_ctx *c, const uint8_t *path, size_t pl, const uint8_t *v, size_t vl) {
    (void)vm;
    if (pl && path[pl - 1] == 0) pl--;
    if (!pl) return ST_BAD_ARGUMENT;
    /* Envoy keeps these in the stream's filter state; a root context has none. */
    if (!c || c->kind == CTX_ROOT) return ST_NOT_FOUND;
    /* What Envoy does (its context.cc setProperty and the filter-state object behind it):
     * each property is one object in the stream's filter state, made at the stream's first
     * set from the description the plugin's root context declared for that name (or a
     * writable default). An object described read-only accepts its first value and
     * refuses every later set with BAD_ARGUMENT, keeping the value. A declaration made
     * from a stream context stays on that stream in Envoy, where this lookup never goes:
     * only the root's declarations count. */
    pw_prop *p = (pw_prop *)prop_find(c->filter_state, path, pl);
    if (p) {
        if (p->readonly) return ST_BAD_ARGUMENT;
        return buf_set(&p->value, v, vl) ? ST_INTERNAL_FAILURE : ST_OK;
    }
    int readonly = c->root && prop_find(c->root->r->readonly_props, path, pl) != NULL;
    if (prop_set(&c->filter_state, path, pl, v, vl)) return ST_INTERNAL_FAILURE;
    c->filter_state->readonly = readonly; /* prop_set puts a new entry first */
    return ST_OK;
}

/* Envoy records a declaration on the context the running callback was called for (not
 * the effective one a plugin may have switched to), and only a root's declarations are
 * consulted: from any other context this binds nothing. */
int pw_vm_declare_readonly(pw_vm *vm, const uint8_t *path, size_t path_len) {
    if (vm->closed) return PW_ERR_CLOSED;
    if (!pthread_equal(vm->owner, pthread_self())) return PW_ERR_THREAD;
    if (path_len && path[path_len - 1] == 0) path_len--;
    pw_ctx *c = vm->cur;
    if (!c || c->kind != CTX_ROOT) return PW_OK;
    if (prop_find(c->r->readonly_props, path, path_len)) return PW_OK;
    return prop_set(&c->r->readonly_props, path, path_len, NULL, 0) ? PW_ERR : PW_OK;
}

/* ---- the API ------------------------------------------------------------------------- */
/* Both may also run while the VM waits in a foreign function (the embedding's built-ins
 * read and set the calling stream's properties): they never call into the guest. */
int pw_set_host_property(pw_vm *vm, uint32_t ctx, const uint8_t *path, size_t path_len,
                         const uint8_t *value, size_t value_len) {
    if (vm->closed) return PW_ERR_CLOSED;
    if (!pthread_equal(vm->owner, pthread_self())) return PW_ERR_THREAD;
    if (path_len && path[path_len - 1] == 0) path_len--;
    pw_prop **list = &vm->host_props;
    if (ctx) {
        pw_ctx *c = ctx_get(vm, ctx);
        if (!c) return PW_ERR_NO_CONTEXT;
        list = &c->host_props;
    }
    return prop_set(list, path, path_len, value, value_len) ? PW_ERR : PW_OK;
}

int pw_get_property(pw_vm *vm, uint32_t ctx, const uint8_t *path, size_t path_len,
                    const uint8_t **out, size_t *out_len) {
    if (vm->closed) return -PW_ERR_CLOSED;
    if (!pthread_equal(vm->owner, pthread_self())) return -PW_ERR_THREAD;
    pw_ctx *c = ctx ? ctx_get(vm, ctx) : NULL;
    if (ctx && !c) return -PW_ERR_NO_CONTEXT;
    int st = props_get(vm, c, path, path_len, &vm->scratch);
    *out = vm->scratch.p;
    *out_len = st == ST_OK ? vm->scratch.len : 0;
    return st;
}
