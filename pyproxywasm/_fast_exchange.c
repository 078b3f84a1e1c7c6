/* The adapters' common exchange through one filter, as StreamBase methods: each side of
 * a request is one C call instead of the dozens of Python calls the general path makes.
 *
 *   asgi_start(scope, props, extra)     the scope's request headers (Envoy's pseudo-headers
 *   wsgi_start(environ, props)          first) and the stream's properties into the core,
 *                                       the stream created: (flags, end_stream, is_grpc)
 *   asgi_app_scope(scope, pending)      the app's scope / environ: the client's own when
 *   wsgi_app_environ(environ)           the filter left the headers alone (the core's
 *                                       PW_S_REQ_HEADERS_CHANGED), else rebuilt from them
 *   asgi_respond(status, headers, body, end, head, resp_in)
 *   wsgi_respond(status, headers, body, end, head, resp_in)
 *                                       the app's response start and first body into the
 *                                       filter, and what it forwards back out ready for
 *                                       the server, content-length made true
 *
 * Each returns None before touching the stream when its input is not what it takes (a
 * field with a NUL, a non-ASCII WSGI string, an unexpected type, more than 64 headers):
 * the caller then takes the general Python path, which handles everything. When the
 * filter did anything but let the exchange through (paused, answered, reset, failed, made
 * trailers), the respond calls hand the flags back with no output, and the general path
 * goes on from the stream's state. What the core reports as an error is raised through
 * the subclass's _raise (the start calls return it: the chain fails the stream closed).
 *
 * Borrowed pointers: the core's answers from pw_http_read stay valid until the next call
 * on the VM that serializes a map (a body read does not), and every call here runs on the
 * VM's own thread with the GIL held between them; field bytes borrowed from Python objects
 * are copied into one buffer before the core is called (the core may release the GIL,
 * see CORE_CALL in _fast.h). */
#include "_fast.h"

#include "../csrc/pw.h"

/* Interned names and constant values, made once at import (exchange_init). */
static PyObject *k_method, *k_raw_path, *k_query_string, *k_server, *k_scheme, *k_http_version,
    *k_headers, *k_extensions, *k_pyproxywasm, *k_end_stream;
static PyObject *k_request_method, *k_request_uri, *k_raw_uri, *k_http_host, *k_server_name,
    *k_server_port, *k_url_scheme, *k_server_protocol, *k_content_type, *k_content_length,
    *k_http_content_type, *k_http_content_length, *k_script_name, *k_path_info, *k_query_string_env;
static PyObject *b_host, *b_content_length, *s_http_prefix, *s_comma;
/* Python helpers for the rare edits (set_helpers): a filter that rewrote :path. */
static PyObject *asgi_path_fn, *wsgi_path_fn;

#define MAX_PROPS 64

int exchange_init(void) {
#define INTERN(var, text) if (!(var = PyUnicode_InternFromString(text))) return -1
    INTERN(k_method, "method");
    INTERN(k_raw_path, "raw_path");
    INTERN(k_query_string, "query_string");
    INTERN(k_server, "server");
    INTERN(k_scheme, "scheme");
    INTERN(k_http_version, "http_version");
    INTERN(k_headers, "headers");
    INTERN(k_extensions, "extensions");
    INTERN(k_pyproxywasm, "pyproxywasm");
    INTERN(k_end_stream, "end_stream");
    INTERN(k_request_method, "REQUEST_METHOD");
    INTERN(k_request_uri, "REQUEST_URI");
    INTERN(k_raw_uri, "RAW_URI");
    INTERN(k_http_host, "HTTP_HOST");
    INTERN(k_server_name, "SERVER_NAME");
    INTERN(k_server_port, "SERVER_PORT");
    INTERN(k_url_scheme, "wsgi.url_scheme");
    INTERN(k_server_protocol, "SERVER_PROTOCOL");
    INTERN(k_content_type, "CONTENT_TYPE");
    INTERN(k_content_length, "CONTENT_LENGTH");
    INTERN(k_http_content_type, "HTTP_CONTENT_TYPE");
    INTERN(k_http_content_length, "HTTP_CONTENT_LENGTH");
    INTERN(k_script_name, "SCRIPT_NAME");
    INTERN(k_path_info, "PATH_INFO");
    INTERN(k_query_string_env, "QUERY_STRING");
    INTERN(s_http_prefix, "HTTP_");
    INTERN(s_comma, ",");
#undef INTERN
    if (!(b_host = PyBytes_FromStringAndSize("host", 4)) ||
        !(b_content_length = PyBytes_FromStringAndSize("content-length", 14)))
        return -1;
    return 0;
}

/* set_helpers(asgi_path, wsgi_path): asgi_path(scope, path) and wsgi_path(environ, path)
 * apply a :path the filter rewrote (percent-decoding, SCRIPT_NAME) in Python. */
PyObject *set_helpers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_helpers(asgi_path, wsgi_path)");
        return NULL;
    }
    PyObject *old[2] = {asgi_path_fn, wsgi_path_fn};
    Py_INCREF(args[0]);
    Py_INCREF(args[1]);
    asgi_path_fn = args[0];
    wsgi_path_fn = args[1];
    Py_XDECREF(old[0]);
    Py_XDECREF(old[1]);
    Py_RETURN_NONE;
}

/* ---- a byte buffer: on the stack while small ------------------------------------------ */
typedef struct {
    char *p;
    size_t len, cap;
    char stack[STACK_BYTES];
} wbuf;

static void wb_init(wbuf *b) {
    b->p = b->stack;
    b->len = 0;
    b->cap = sizeof b->stack;
}

static void wb_free(wbuf *b) {
    if (b->p != b->stack) free(b->p);
}

static int wb_reserve(wbuf *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap * 2;
    while (cap < b->len + more) cap *= 2;
    char *p = b->p == b->stack ? malloc(cap) : realloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    if (b->p == b->stack) memcpy(p, b->stack, b->len);
    b->p = p;
    b->cap = cap;
    return 0;
}

static int wb_put(wbuf *b, const void *d, size_t n) {
    if (wb_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

/* One field of the flat form, NUL-terminated: 1 when it holds a NUL itself (the flat form
 * cannot carry it), -1 out of memory. */
static int put_field(wbuf *b, const char *p, size_t n) {
    if (n && memchr(p, 0, n)) return 1;
    if (wb_reserve(b, n + 1)) return -1;
    if (n) memcpy(b->p + b->len, p, n);
    b->p[b->len + n] = 0;
    b->len += n + 1;
    return 0;
}

/* A non-negative number in decimal into out (room for 20 digits); its length. */
static size_t decimal(char *out, unsigned long long v) {
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

static int is_ascii(const char *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] & 0x80) return 0;
    return 1;
}

/* bytes.strip() != b"0": a content-length that announces a body. */
static int announces_body(const char *v, size_t n) {
    static const char ws[] = " \t\n\r\x0b\x0c";
    while (n && memchr(ws, v[0], sizeof ws - 1)) v++, n--;
    while (n && memchr(ws, v[n - 1], sizeof ws - 1)) n--;
    return !(n == 1 && v[0] == '0');
}

/* An exact str's UTF-8 (borrowed); NULL (no exception) for anything else. */
static const char *str_of(PyObject *o, Py_ssize_t *n) {
    if (!o || !PyUnicode_CheckExact(o)) return NULL;
    const char *p = PyUnicode_AsUTF8AndSize(o, n);
    if (!p) PyErr_Clear();
    return p;
}

/* An exact bytes object's data (borrowed); NULL for anything else. */
static const char *bytes_of(PyObject *o, Py_ssize_t *n) {
    char *p;
    if (!o || !PyBytes_CheckExact(o) || PyBytes_AsStringAndSize(o, &p, n)) {
        PyErr_Clear();
        return NULL;
    }
    return p;
}

/* Item i of an exact list or tuple (borrowed). */
static inline PyObject *seq_item(PyObject *seq, int is_list, Py_ssize_t i) {
    return is_list ? PyList_GetItem(seq, i) : PyTuple_GetItem(seq, i);
}

/* A (name, value) pair from an exact list or tuple of two; 0 if it is not one. */
static int pair_of(PyObject *o, PyObject **k, PyObject **v) {
    int pl = PyList_CheckExact(o);
    if (!pl && !PyTuple_CheckExact(o)) return 0;
    if ((pl ? PyList_Size(o) : PyTuple_Size(o)) != 2) return 0;
    *k = seq_item(o, pl, 0);
    *v = seq_item(o, pl, 1);
    return 1;
}

/* The stream's properties as (path, value) bytes pairs from up to two sequences, copied
 * into `b`: 1 when they are not that, -1 on error. */
static int gather_props(wbuf *b, PyObject *const *seqs, int nseq, size_t *lens, int *count) {
    *count = 0;
    for (int j = 0; j < nseq; j++) {
        PyObject *seq = seqs[j];
        if (seq == Py_None) continue;
        int is_list = PyList_CheckExact(seq);
        if (!is_list && !PyTuple_CheckExact(seq)) return 1;
        Py_ssize_t n = is_list ? PyList_Size(seq) : PyTuple_Size(seq);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *k, *v;
            const char *kp, *vp;
            Py_ssize_t kl, vl;
            if (*count >= MAX_PROPS || !pair_of(seq_item(seq, is_list, i), &k, &v) ||
                !(kp = bytes_of(k, &kl)) || !(vp = bytes_of(v, &vl)))
                return 1;
            if (wb_put(b, kp, (size_t)kl) || wb_put(b, vp, (size_t)vl)) return -1;
            lens[2 * *count] = (size_t)kl;
            lens[2 * *count + 1] = (size_t)vl;
            ++*count;
        }
    }
    return 0;
}

/* Creates the stream, sets its properties and delivers its request headers, in one
 * CORE_CALL: the core's flags, or a negative error. */
static int start_stream(Stream *s, const wbuf *h, int count, int eos, const wbuf *pb,
                        const size_t *plens, int np) {
    void *vm = (void *)(uintptr_t)s->vma;
    uint32_t id = 0, root = s->root;
    const uint8_t *hp = (const uint8_t *)h->p;
    size_t hl = h->len ? h->len - 1 : 0; /* no NUL after the last value */
    int f;
    CORE_CALL({
        if (np) {
            int rc = core_new(vm, root, &id);
            if (rc) {
                f = -rc;
            } else {
                /* As the general path: a property the core refuses is not an error here. */
                const uint8_t *p = (const uint8_t *)pb->p;
                for (int i = 0; i < np; i++) {
                    size_t kl = plens[2 * i], vl = plens[2 * i + 1];
                    core_set_prop(vm, id, p, kl, p + kl, vl);
                    p += kl + vl;
                }
                f = core_headers(vm, id, PW_DIR_REQUEST, hp, hl, count, eos);
            }
        } else {
            f = core_start(vm, root, hp, hl, count, eos, &id);
        }
    });
    s->id = id;
    if (f >= 0) s->flags = f;
    return f;
}

static PyObject *start_result(int f, int eos, int grpc) {
    PyObject *fo = PyLong_FromLong(f);
    if (!fo) return NULL;
    PyObject *t = PyTuple_Pack(3, fo, eos ? Py_True : Py_False, grpc ? Py_True : Py_False);
    Py_DECREF(fo);
    return t;
}

/* ---- ASGI request in ------------------------------------------------------------------ */

/* The scope's request headers in the flat form: 0 done, 1 not this path, -1 error. Envoy's
 * :authority is the Host header (HTTP/1), else the server's address. */
static int asgi_request(PyObject *scope, wbuf *b, int *count, int *eos, int *grpc) {
    Py_ssize_t ml, rl, ql = 0, sl, vl, hl = 0;
    const char *m = str_of(PyDict_GetItemWithError(scope, k_method), &ml);
    const char *raw = bytes_of(PyDict_GetItemWithError(scope, k_raw_path), &rl);
    if (!m || !raw || !rl) return 1;
    PyObject *qo = PyDict_GetItemWithError(scope, k_query_string);
    const char *q = "";
    if (qo && qo != Py_None && !(q = bytes_of(qo, &ql))) return 1;
    PyObject *so = PyDict_GetItemWithError(scope, k_scheme);
    const char *scheme = so ? str_of(so, &sl) : (sl = 4, "http");
    PyObject *vo = PyDict_GetItemWithError(scope, k_http_version);
    const char *ver = vo ? str_of(vo, &vl) : (vl = 3, "1.1");
    PyObject *headers = PyDict_GetItemWithError(scope, k_headers);
    if (!scheme || !ver || !headers || PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    int is_list = PyList_CheckExact(headers);
    if (!is_list && !PyTuple_CheckExact(headers)) return 1;
    Py_ssize_t n = is_list ? PyList_Size(headers) : PyTuple_Size(headers);
    int has_body = !((vl == 3 && (!memcmp(ver, "1.1", 3) || !memcmp(ver, "1.0", 3))));
    *grpc = 0;
    const char *host = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        const char *kp, *vp;
        Py_ssize_t kl, vlen;
        if (!pair_of(seq_item(headers, is_list, i), &k, &v) || !(kp = bytes_of(k, &kl)) ||
            !(vp = bytes_of(v, &vlen)))
            return 1;
        if (kl == 4 && !memcmp(kp, "host", 4)) {
            if (!host) host = vp, hl = vlen;
        } else if (kl == 14 && !memcmp(kp, "content-length", 14)) {
            if (announces_body(vp, (size_t)vlen)) has_body = 1;
        } else if (kl == 17 && !memcmp(kp, "transfer-encoding", 17)) {
            has_body = 1;
        } else if (kl == 12 && !memcmp(kp, "content-type", 12) && vlen >= 16 &&
                   !memcmp(vp, "application/grpc", 16)) {
            *grpc = 1;
        }
    }
    char addr[320];
    if (!host) {
        host = "";
        PyObject *server = PyDict_GetItemWithError(scope, k_server);
        if (server && server != Py_None) {
            PyObject *sh, *sp;
            if (!pair_of(server, &sh, &sp)) return 1;
            if (sp != Py_None) {
                Py_ssize_t shl;
                const char *shp = str_of(sh, &shl);
                if (!shp || !PyLong_CheckExact(sp) || shl > 256) return 1;
                long port = PyLong_AsLong(sp);
                if (port == -1 && PyErr_Occurred()) {
                    PyErr_Clear();
                    return 1;
                }
                int w = snprintf(addr, sizeof addr, "%.*s:%ld", (int)shl, shp, port);
                if (w < 0 || (size_t)w >= sizeof addr) return 1;
                host = addr;
                hl = w;
            }
        }
    }
    int r;
    if ((r = put_field(b, ":method", 7)) || (r = put_field(b, m, (size_t)ml)) ||
        (r = put_field(b, ":path", 5)))
        return r;
    if (rl && memchr(raw, 0, (size_t)rl)) return 1;
    if (wb_put(b, raw, (size_t)rl)) return -1;
    if (ql) {
        if (wb_put(b, "?", 1)) return -1;
        if ((r = put_field(b, q, (size_t)ql))) return r;
    } else if (wb_put(b, "", 1)) {
        return -1;
    }
    if ((r = put_field(b, ":authority", 10)) || (r = put_field(b, host, (size_t)hl)) ||
        (r = put_field(b, ":scheme", 7)) || (r = put_field(b, scheme, (size_t)sl)))
        return r;
    int c = 4;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        const char *kp, *vp;
        Py_ssize_t kl, vlen;
        pair_of(seq_item(headers, is_list, i), &k, &v);
        kp = bytes_of(k, &kl);
        vp = bytes_of(v, &vlen);
        if (kl == 4 && !memcmp(kp, "host", 4)) continue;
        if ((r = put_field(b, kp, (size_t)kl)) || (r = put_field(b, vp, (size_t)vlen))) return r;
        c++;
    }
    *count = c;
    *eos = !has_body;
    return 0;
}

/* The request side of asgi_start / wsgi_start: the headers `request` reads from `src`
 * (a scope or an environ) and the stream's properties, delivered in one core call; None
 * when the input asks for the general path (r > 0), NULL with an exception on error. */
typedef int (*request_reader)(PyObject *src, wbuf *b, int *count, int *eos, int *grpc);

static PyObject *start_from(Stream *s, request_reader request, PyObject *src,
                            PyObject *const *props, int nprops) {
    wbuf h, pb;
    size_t plens[2 * MAX_PROPS];
    int count = 0, eos = 0, grpc = 0, np = 0;
    wb_init(&h);
    wb_init(&pb);
    int r = request(src, &h, &count, &eos, &grpc);
    if (!r) r = gather_props(&pb, props, nprops, plens, &np);
    PyObject *out = NULL;
    if (r > 0) {
        out = Py_None;
        Py_INCREF(out);
    } else if (r == 0) {
        out = start_result(start_stream(s, &h, count, eos, &pb, plens, np), eos, grpc);
    }
    wb_free(&h);
    wb_free(&pb);
    return out;
}

/* asgi_start(scope, props, extra): see the top of this file. */
PyObject *s_asgi_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Stream *s = (Stream *)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "asgi_start(scope, props, extra)");
        return NULL;
    }
    if (s->id || !PyDict_CheckExact(args[0])) Py_RETURN_NONE;
    return start_from(s, asgi_request, args[0], args + 1, 2);
}

/* ---- the core's serialized maps ------------------------------------------------------- */
typedef struct {
    const uint8_t *lens, *d, *end;
    uint32_t n, i;
} pairs_it;

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A map as the core serializes it (ABI.md §6.1); an unreadable one is empty. */
static void pairs_open(pairs_it *it, const uint8_t *p, size_t len) {
    it->n = it->i = 0;
    if (len < 4) return;
    uint32_t n = rd32(p);
    if ((size_t)n > (len - 4) / 8) return;
    it->n = n;
    it->lens = p + 4;
    it->d = p + 4 + 8 * (size_t)n;
    it->end = p + len;
}

static int pairs_next(pairs_it *it, const char **k, size_t *kl, const char **v, size_t *vl) {
    if (it->i >= it->n) return 0;
    size_t a = rd32(it->lens + 8 * it->i), b = rd32(it->lens + 8 * it->i + 4);
    if ((size_t)(it->end - it->d) < a + b + 2) return 0;
    *k = (const char *)it->d;
    *kl = a;
    *v = (const char *)it->d + a + 1;
    *vl = b;
    it->d += a + b + 2;
    it->i++;
    return 1;
}

/* A map of the stream (PW_R_*_HEADERS); an error reads as an empty map, as the general
 * path's reads do. */
static void read_map(Stream *s, int what, pairs_it *it) {
    const uint8_t *p = NULL;
    size_t len = 0;
    if (core_read((void *)(uintptr_t)s->vma, s->id, what, &p, &len) < 0) len = 0;
    pairs_open(it, p, len);
}

/* The body the filter forwarded since the last take (PW_R_*_BODY), as bytes. */
static PyObject *take_body(Stream *s, int what) {
    const uint8_t *p = NULL;
    size_t len = 0;
    if (core_read((void *)(uintptr_t)s->vma, s->id, what, &p, &len) < 0) len = 0;
    return PyBytes_FromStringAndSize(len ? (const char *)p : "", (Py_ssize_t)len);
}

static PyObject *pair_new(PyObject *k, PyObject *v) {
    if (!k || !v) {
        Py_XDECREF(k);
        Py_XDECREF(v);
        return NULL;
    }
    PyObject *t = PyTuple_Pack(2, k, v);
    Py_DECREF(k);
    Py_DECREF(v);
    return t;
}

static PyObject *bytes_pair(const char *k, size_t kl, const char *v, size_t vl) {
    return pair_new(PyBytes_FromStringAndSize(k, (Py_ssize_t)kl),
                    PyBytes_FromStringAndSize(v, (Py_ssize_t)vl));
}

static PyObject *latin1_pair(const char *k, size_t kl, const char *v, size_t vl) {
    return pair_new(PyUnicode_DecodeLatin1(k, (Py_ssize_t)kl, NULL),
                    PyUnicode_DecodeLatin1(v, (Py_ssize_t)vl, NULL));
}

static int list_add(PyObject *list, PyObject *item) {
    if (!item) return -1;
    int rc = PyList_Append(list, item);
    Py_DECREF(item);
    return rc;
}

static int eq(const char *a, size_t al, const char *b, size_t bl) {
    return al == bl && (!al || !memcmp(a, b, al));
}

static int eq_nocase(const char *a, size_t al, const char *lower, size_t bl) {
    if (al != bl) return 0;
    for (size_t i = 0; i < al; i++) {
        char c = a[i];
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (c != lower[i]) return 0;
    }
    return 1;
}

/* Reusing the caller's own pairs: the tuple at items[j] when it holds (k, v) (names
 * compared exactly, or case-insensitively with nocase: the core lowercased the map's),
 * advancing j past it (and past any Host entries first, when skip_host: the map has those
 * as :authority); NULL when it is not that pair. Fields must be exact bytes (ASGI) or str
 * (WSGI, as_str). */
typedef struct {
    PyObject *items;
    int is_list, as_str, skip_host, nocase;
    Py_ssize_t n, j;
} reuse_it;

static void reuse_init(reuse_it *r, PyObject *items, int as_str, int skip_host, int nocase) {
    r->items = items;
    r->is_list = items && PyList_CheckExact(items);
    r->n = !items ? 0 : r->is_list ? PyList_Size(items) : PyTuple_CheckExact(items) ? PyTuple_Size(items) : 0;
    r->as_str = as_str;
    r->skip_host = skip_host;
    r->nocase = nocase;
    r->j = 0;
}

static const char *exact_field(PyObject *o, int as_str, Py_ssize_t *n) {
    return as_str ? (o && PyUnicode_CheckExact(o) ? str_of(o, n) : NULL) : bytes_of(o, n);
}

static PyObject *reuse_pair(reuse_it *r, const char *k, size_t kl, const char *v, size_t vl) {
    while (r->j < r->n) {
        PyObject *t = seq_item(r->items, r->is_list, r->j);
        if (!PyTuple_CheckExact(t) || PyTuple_Size(t) != 2) return NULL;
        Py_ssize_t tkl, tvl;
        const char *tk = exact_field(PyTuple_GetItem(t, 0), r->as_str, &tkl);
        if (!tk) return NULL;
        if (r->skip_host && eq_nocase(tk, (size_t)tkl, "host", 4)) {
            r->j++;
            continue;
        }
        const char *tv = exact_field(PyTuple_GetItem(t, 1), r->as_str, &tvl);
        if (!tv || !(r->nocase ? eq_nocase(tk, (size_t)tkl, k, kl) : eq(tk, (size_t)tkl, k, kl)) ||
            !eq(tv, (size_t)tvl, v, vl))
            return NULL;
        r->j++;
        Py_INCREF(t);
        return t;
    }
    return NULL;
}

/* {**ext, "pyproxywasm": {"end_stream": end}} into d["extensions"]. */
static int set_extensions(PyObject *d, PyObject *scope, int end) {
    PyObject *ext = PyDict_GetItemWithError(scope, k_extensions);
    if (!ext && PyErr_Occurred()) return -1;
    PyObject *ne = (ext && PyDict_Check(ext)) ? PyDict_Copy(ext) : PyDict_New();
    PyObject *mine = ne ? PyDict_New() : NULL;
    int rc = -1;
    if (mine && !PyDict_SetItem(mine, k_end_stream, end ? Py_True : Py_False) &&
        !PyDict_SetItem(ne, k_pyproxywasm, mine) && !PyDict_SetItem(d, k_extensions, ne))
        rc = 0;
    Py_XDECREF(mine);
    Py_XDECREF(ne);
    return rc;
}

/* ---- ASGI: the app's scope ------------------------------------------------------------ */

/* Is the :path the filter forwarded the one the scope gave (raw_path[?query_string])? */
static int same_asgi_path(PyObject *scope, const char *p, size_t pl) {
    Py_ssize_t rl, ql = 0;
    const char *raw = bytes_of(PyDict_GetItemWithError(scope, k_raw_path), &rl);
    PyObject *qo = PyDict_GetItemWithError(scope, k_query_string);
    const char *q = "";
    PyErr_Clear();
    if (!raw || (qo && qo != Py_None && !(q = bytes_of(qo, &ql)))) return 0;
    if (!ql) return eq(p, pl, raw, (size_t)rl);
    return pl == (size_t)(rl + 1 + ql) && !memcmp(p, raw, (size_t)rl) && p[rl] == '?' &&
           !memcmp(p + rl + 1, q, (size_t)ql);
}

/* Does the str at scope[key] (absent: None) differ from these bytes? */
static int str_differs(PyObject *scope, PyObject *key, const char *v, size_t vl) {
    Py_ssize_t n;
    const char *cur = str_of(PyDict_GetItemWithError(scope, key), &n);
    PyErr_Clear();
    return !cur || !eq(cur, (size_t)n, v, vl);
}

static int set_utf8(PyObject *d, PyObject *key, const char *v, size_t vl) {
    PyObject *o = PyUnicode_DecodeUTF8(v, (Py_ssize_t)vl, NULL); /* bytes.decode() */
    if (!o) return -1;
    int rc = PyDict_SetItem(d, key, o);
    Py_DECREF(o);
    return rc;
}

/* A list without its content-length entries, then the true one. */
static PyObject *with_length(PyObject *headers, Py_ssize_t len, int str_pairs) {
    Py_ssize_t n = PyList_Size(headers);
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kv = PyList_GetItem(headers, i), *k, *v;
        const char *kp;
        Py_ssize_t kl;
        if (pair_of(kv, &k, &v) && !field(k, &kp, &kl) && eq_nocase(kp, (size_t)kl, "content-length", 14))
            continue;
        if (PyList_Append(out, kv)) goto fail;
    }
    char num[24];
    size_t w = decimal(num, (unsigned long long)len);
    if (list_add(out, str_pairs ? latin1_pair("content-length", 14, num, w)
                                : bytes_pair("content-length", 14, num, w)))
        goto fail;
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static int has_length(PyObject *headers) {
    Py_ssize_t n = PyList_Size(headers);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        const char *kp;
        Py_ssize_t kl;
        if (pair_of(PyList_GetItem(headers, i), &k, &v) && !field(k, &kp, &kl) &&
            eq_nocase(kp, (size_t)kl, "content-length", 14))
            return 1;
    }
    return 0;
}

/* The request headers the filter added after the ones the embedding gave (the core's
 * PW_R_REQ_HEADERS_ADDED), when adding is all it did and they are plain: ASCII names of
 * 1 to 256 bytes, none a pseudo-header, host or content-* (which the adapters' rebuilds
 * treat specially). 1 and *it over them; 0 otherwise. */
static int plain_additions(Stream *s, pairs_it *it) {
    const uint8_t *p = NULL;
    size_t len = 0;
    if (core_read((void *)(uintptr_t)s->vma, s->id, PW_R_REQ_HEADERS_ADDED, &p, &len) < 0 || !p) return 0;
    pairs_open(it, p, len);
    pairs_it check = *it;
    const char *k, *v;
    size_t kl, vl;
    while (pairs_next(&check, &k, &kl, &v, &vl))
        if (!kl || kl > 256 || !is_ascii(k, kl) || k[0] == ':' || eq(k, kl, "host", 4) ||
            eq(k, kl, "content-type", 12) || eq(k, kl, "content-length", 14))
            return 0;
    return 1;
}

/* When the filter only added plain request headers, the app's headers are the client's
 * own list with the added pairs after it, with no read of the others: 1 done (d's headers
 * and extensions set), 0 when that is not the case (the general rebuild then does all),
 * -1 on error. */
static int added_headers(Stream *s, PyObject *scope, PyObject *d, int ended) {
    pairs_it it;
    const char *k, *v;
    size_t kl, vl;
    if (!plain_additions(s, &it)) return 0;
    PyObject *orig = PyDict_GetItemWithError(scope, k_headers);
    if (!orig || !PyList_CheckExact(orig)) {
        PyErr_Clear();
        return 0;
    }
    /* The rebuild would give the Host header first, from :authority: the client's list is
     * the same only when its one host entry is first. (And an ended request's true
     * content-length is the rebuild's to say.) */
    Py_ssize_t n = PyList_Size(orig);
    if (!n) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *hk, *hv;
        const char *kp;
        Py_ssize_t hkl;
        if (!pair_of(PyList_GetItem(orig, i), &hk, &hv) || field(hk, &kp, &hkl)) return 0;
        int host = eq(kp, (size_t)hkl, "host", 4);
        if (host != (i == 0)) return 0; /* the host entry first, and only there */
        if (ended && eq_nocase(kp, (size_t)hkl, "content-length", 14)) return 0;
    }
    PyObject *list = PyList_GetSlice(orig, 0, n);
    if (!list) return -1;
    while (pairs_next(&it, &k, &kl, &v, &vl))
        if (list_add(list, bytes_pair(k, kl, v, vl))) {
            Py_DECREF(list);
            return -1;
        }
    int rc = PyDict_SetItem(d, k_headers, list);
    Py_DECREF(list);
    return rc || set_extensions(d, scope, ended) ? -1 : 1;
}

/* asgi_app_scope(scope, pending) -> (app_scope, body): the scope the app is called with,
 * and the request body already known for it (pending, or all of it when the request
 * ended with the headers). Headers the filter left alone are the client's own list. */
PyObject *s_asgi_app_scope(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Stream *s = (Stream *)self;
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "asgi_app_scope(scope: dict, pending: bytes)");
        return NULL;
    }
    PyObject *scope = args[0], *body = args[1];
    int f = s->flags, ended = (f & PW_S_REQ_ENDED) != 0;
    PyObject *d = PyDict_Copy(scope);
    if (!d) return NULL;
    Py_INCREF(body);
    if (ended && !PyBytes_Size(body)) {
        Py_DECREF(body);
        if (!(body = take_body(s, PW_R_REQ_BODY))) goto fail;
    }
    if (!(f & PW_S_REQ_HEADERS_CHANGED) && !PyBytes_Size(body)) {
        if (set_extensions(d, scope, ended)) goto fail;
        goto done;
    }
    if (!PyBytes_Size(body)) {
        int r = added_headers(s, scope, d, ended);
        if (r < 0) goto fail;
        if (r) goto done;
    }
    {
        pairs_it it;
        const char *k, *v, *method = NULL, *path = NULL, *auth = NULL, *scheme = NULL;
        size_t kl, vl, ml = 0, pl = 0, al = 0, sl = 0;
        PyObject *regular = PyList_New(0);
        if (!regular) goto fail;
        /* The client's own pairs are reused where the filter left them as they were. */
        PyObject *orig = PyDict_GetItemWithError(scope, k_headers);
        reuse_it ru;
        reuse_init(&ru, orig, 0, 1, 0);
        read_map(s, PW_R_REQ_HEADERS, &it);
        while (pairs_next(&it, &k, &kl, &v, &vl)) {
            if (kl && k[0] == ':') {
                if (eq(k, kl, ":method", 7)) method = v, ml = vl;
                else if (eq(k, kl, ":path", 5)) path = v, pl = vl;
                else if (eq(k, kl, ":authority", 10)) auth = v, al = vl;
                else if (eq(k, kl, ":scheme", 7)) scheme = v, sl = vl;
                continue;
            }
            PyObject *t = reuse_pair(&ru, k, kl, v, vl);
            if (list_add(regular, t ? t : bytes_pair(k, kl, v, vl))) {
                Py_DECREF(regular);
                goto fail;
            }
        }
        int rc = 0;
        if (auth && al) {
            reuse_it rh;
            reuse_init(&rh, orig, 0, 0, 0);
            PyObject *t = reuse_pair(&rh, "host", 4, auth, al), *hv = NULL;
            if (!t) {
                hv = PyBytes_FromStringAndSize(auth, (Py_ssize_t)al);
                t = hv ? PyTuple_Pack(2, b_host, hv) : NULL;
            }
            Py_XDECREF(hv);
            rc = !t || PyList_Insert(regular, 0, t);
            Py_XDECREF(t);
        }
        if (!rc && method && str_differs(scope, k_method, method, ml))
            rc = set_utf8(d, k_method, method, ml);
        if (!rc && path && !same_asgi_path(scope, path, pl)) {
            PyObject *po = PyBytes_FromStringAndSize(path, (Py_ssize_t)pl);
            PyObject *r = po && asgi_path_fn ? PyObject_CallFunctionObjArgs(asgi_path_fn, d, po, NULL) : NULL;
            rc = !r;
            Py_XDECREF(r);
            Py_XDECREF(po);
        }
        if (!rc && scheme && str_differs(scope, k_scheme, scheme, sl))
            rc = set_utf8(d, k_scheme, scheme, sl);
        if (!rc && ended && (PyBytes_Size(body) || has_length(regular))) {
            /* The whole body the app will read is known: say its true length. */
            PyObject *fixed = with_length(regular, PyBytes_Size(body), 0);
            if (fixed) {
                Py_DECREF(regular);
                regular = fixed;
            } else {
                rc = -1;
            }
        }
        if (!rc) rc = PyDict_SetItem(d, k_headers, regular);
        Py_DECREF(regular);
        /* Whether a body follows is the stream's, not the headers' (said for apps that
         * forward the request, as serve's proxy does). */
        if (rc || set_extensions(d, scope, ended && !PyBytes_Size(body))) goto fail;
    }
done: {
    PyObject *out = PyTuple_Pack(2, d, body);
    Py_DECREF(d);
    Py_DECREF(body);
    return out;
}
fail:
    Py_DECREF(d);
    Py_XDECREF(body);
    return NULL;
}

/* ---- the response: in through the filter, out for the server -------------------------- */

/* Appends the headers (a list or tuple of pairs, str or bytes fields) to the flat form:
 * 1 when they are not that (or ascii_only and a field is not ASCII), -1 on error. */
static int put_headers(wbuf *b, PyObject *items, int ascii_only, int *count) {
    int is_list = PyList_CheckExact(items);
    if (!is_list && !PyTuple_CheckExact(items)) return 1;
    Py_ssize_t n = is_list ? PyList_Size(items) : PyTuple_Size(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *v;
        const char *kp, *vp;
        Py_ssize_t kl, vl;
        int r;
        if (!pair_of(seq_item(items, is_list, i), &k, &v) || field(k, &kp, &kl) || field(v, &vp, &vl))
            return 1;
        if (ascii_only && (!is_ascii(kp, (size_t)kl) || !is_ascii(vp, (size_t)vl))) return 1;
        if ((r = put_field(b, kp, (size_t)kl)) || (r = put_field(b, vp, (size_t)vl))) return r;
        ++*count;
    }
    return 0;
}

/* HEAD, 1xx, 204 and 304 keep the content-length they have (no body is sent for them). */
static int keeps_length(int head, long status) {
    return head || status < 200 || status == 204 || status == 304;
}

/* A :status value as the general path's int() would read it, for plain digits; -1 when
 * it is anything else (the general path then decides). */
static long status_value(const char *v, size_t n) {
    if (!n || n > 9) return -1;
    long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -1;
        x = x * 10 + (v[i] - '0');
    }
    return x;
}

typedef struct {
    long status;      /* the app's status */
    const char *code; /* ... as text (WSGI's status line up to the space) */
    size_t code_len;
    PyObject *headers; /* the app's headers */
    PyObject *body;
    int end, head, wsgi;
    long long resp_in; /* body bytes the app has sent so far, this one included */
} response_in;

/* The response's headers and first body into the filter, in one CORE_CALL:
 * flags, or a negative error. */
static int push_response(Stream *s, const response_in *in, int *ret) {
    wbuf h;
    int count = 1, r;
    wb_init(&h);
    *ret = 1;
    if ((r = put_field(&h, ":status", 7)) || (r = put_field(&h, in->code, in->code_len)) ||
        (r = put_headers(&h, in->headers, in->wsgi, &count))) {
        *ret = r;
        wb_free(&h);
        return 0;
    }
    char *bp;
    Py_ssize_t bl;
    PyBytes_AsStringAndSize(in->body, &bp, &bl);
    void *vm = (void *)(uintptr_t)s->vma;
    uint32_t id = s->id;
    int eos = in->end && !bl, end = in->end, f;
    const uint8_t *hp = (const uint8_t *)h.p;
    size_t hl = h.len - 1;
    CORE_CALL({
        f = core_headers(vm, id, PW_DIR_RESPONSE, hp, hl, count, eos);
        if (f >= 0 && !eos && (bl || end))
            f = core_data(vm, id, PW_DIR_RESPONSE, (const uint8_t *)bp, (size_t)bl, end);
    });
    wb_free(&h);
    *ret = 0;
    return f;
}

/* The headers for the server, content-length made true: exact when the whole body is
 * known, none when a streamed body may have changed. From the filter's map when it
 * changed them (names as the core keeps them), else the app's own pairs. */
static PyObject *response_out(Stream *s, const response_in *in, int changed, pairs_it *it,
                              long status, int ended, Py_ssize_t out_len) {
    int fix = (ended || in->resp_in != out_len) && !keeps_length(in->head, status);
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    (void)s;
    if (changed) {
        /* The app's own pairs are reused where the filter left them as they were. */
        const char *k, *v;
        size_t kl, vl;
        reuse_it ru;
        reuse_init(&ru, in->headers, in->wsgi, 0, 1);
        while (pairs_next(it, &k, &kl, &v, &vl)) {
            if (kl && k[0] == ':') continue;
            PyObject *t = reuse_pair(&ru, k, kl, v, vl);
            if (fix && eq(k, kl, "content-length", 14)) {
                Py_XDECREF(t);
                continue;
            }
            if (!t) t = in->wsgi ? latin1_pair(k, kl, v, vl) : bytes_pair(k, kl, v, vl);
            if (list_add(out, t)) goto fail;
        }
    } else {
        PyObject *items = in->headers;
        int is_list = PyList_CheckExact(items);
        Py_ssize_t n = is_list ? PyList_Size(items) : PyTuple_Size(items);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *kv = seq_item(items, is_list, i), *k, *v;
            const char *kp;
            Py_ssize_t kl;
            pair_of(kv, &k, &v);
            field(k, &kp, &kl);
            if ((kl && kp[0] == ':') || (fix && eq_nocase(kp, (size_t)kl, "content-length", 14))) continue;
            if (PyTuple_CheckExact(kv)) {
                if (PyList_Append(out, kv)) goto fail;
            } else if (list_add(out, PyTuple_Pack(2, k, v))) {
                goto fail;
            }
        }
    }
    if (fix && ended) {
        char num[24];
        size_t w = decimal(num, (unsigned long long)out_len);
        if (list_add(out, in->wsgi ? latin1_pair("content-length", 14, num, w)
                                   : bytes_pair("content-length", 14, num, w)))
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* (flags, status, headers, body, ended), or (flags, None, None, None, False) when the
 * general path takes it from here. WSGI's status is the app's status line when it is
 * the same code, else the code as an int. */
static PyObject *respond(Stream *s, const response_in *in, PyObject *status_line) {
    int ret, f;
    if (!s->id || (s->flags & (PW_S_LOCAL_REPLY | PW_S_RESET | PW_S_FAILED))) Py_RETURN_NONE;
    f = push_response(s, in, &ret);
    if (ret < 0) return NULL;
    if (ret > 0) Py_RETURN_NONE;
    if (f < 0) return PyObject_CallMethod((PyObject *)s, "_raise", "i", f);
    s->flags = f;
    int ended = (f & PW_S_RESP_ENDED) != 0;
    if ((f & (PW_S_LOCAL_REPLY | PW_S_RESET | PW_S_FAILED | PW_S_RESP_STOPPED | PW_S_RESP_TRAILERS_OUT)) ||
        !(f & PW_S_RESP_HEADERS_OUT))
        goto later;
    int changed = (f & PW_S_RESP_HEADERS_CHANGED) != 0;
    pairs_it it = {0};
    long status = in->status;
    const char *code = in->code;
    size_t code_len = in->code_len;
    if (changed) {
        /* Read before the body (a body read leaves the serialized map in place). */
        const char *k, *v;
        size_t kl, vl;
        read_map(s, PW_R_RESP_HEADERS, &it);
        pairs_it first = it;
        status = 200;
        code = "200", code_len = 3;
        if (pairs_next(&first, &k, &kl, &v, &vl) && eq(k, kl, ":status", 7)) {
            if ((status = status_value(v, vl)) < 0) goto later; /* not plain digits */
            code = v, code_len = vl;
        }
    }
    PyObject *body = take_body(s, PW_R_RESP_BODY);
    if (!body) return NULL;
    Py_ssize_t bl = PyBytes_Size(body);
    if (!bl && !ended) {
        /* Headers wait for the body, so content-length can be made true (nothing taken). */
        Py_DECREF(body);
        goto later;
    }
    PyObject *hdrs = response_out(s, in, changed, &it, status, ended, bl);
    if (!hdrs) {
        Py_DECREF(body);
        return NULL;
    }
    PyObject *st;
    if (status_line && eq(code, code_len, in->code, in->code_len)) {
        st = status_line;
        Py_INCREF(st);
    } else {
        st = PyLong_FromLong(status);
    }
    PyObject *fo = st ? PyLong_FromLong(f) : NULL;
    PyObject *out = fo ? PyTuple_Pack(5, fo, st, hdrs, body, ended ? Py_True : Py_False) : NULL;
    Py_XDECREF(fo);
    Py_XDECREF(st);
    Py_DECREF(hdrs);
    Py_DECREF(body);
    return out;
later: {
    PyObject *fo = PyLong_FromLong(f);
    PyObject *out = fo ? PyTuple_Pack(5, fo, Py_None, Py_None, Py_None, Py_False) : NULL;
    Py_XDECREF(fo);
    return out;
}
}

static int respond_args(PyObject *const *args, Py_ssize_t nargs, response_in *in) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "respond(status, headers, body, end, head, resp_in)");
        return -1;
    }
    in->headers = args[1];
    in->body = args[2];
    in->end = PyObject_IsTrue(args[3]);
    in->head = PyObject_IsTrue(args[4]);
    in->resp_in = PyLong_AsLongLong(args[5]);
    if (in->end < 0 || in->head < 0 || (in->resp_in == -1 && PyErr_Occurred())) return -1;
    return PyBytes_CheckExact(in->body) ? 0 : 1;
}

/* asgi_respond(status, headers, body, end, head, resp_in): see the top of this file. */
PyObject *s_asgi_respond(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    response_in in = {0};
    int r = respond_args(args, nargs, &in);
    if (r < 0) return NULL;
    if (r > 0 || !PyLong_CheckExact(args[0])) Py_RETURN_NONE;
    in.status = PyLong_AsLong(args[0]);
    if (in.status < 0 || in.status > 999) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    char code[24];
    in.code_len = decimal(code, (unsigned long long)in.status);
    in.code = code;
    return respond((Stream *)self, &in, NULL);
}

/* ---- WSGI ------------------------------------------------------------------------------ */

/* An ASCII str (latin-1 and UTF-8 agree) at environ[key]; NULL when absent or not that. */
static const char *ascii_str(PyObject *env, PyObject *key, Py_ssize_t *n) {
    const char *p = str_of(PyDict_GetItemWithError(env, key), n);
    PyErr_Clear();
    return p && is_ascii(p, (size_t)*n) ? p : NULL;
}

/* A header name from an HTTP_* / CONTENT_* key: lowercase, '_' -> '-'. */
static int put_env_name(wbuf *b, const char *k, size_t n) {
    if (wb_reserve(b, n + 1)) return -1;
    char *d = b->p + b->len;
    for (size_t i = 0; i < n; i++) {
        char c = k[i];
        d[i] = c == '_' ? '-' : (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
    }
    d[n] = 0;
    b->len += n + 1;
    return memchr(k, 0, n) ? 1 : 0;
}

/* A native string's latin-1 bytes (PEP 3333) appended to b, percent-encoded as
 * urllib.parse.quote(..., safe="/;=,:@!$&'()*+~") does when `quote`: 1 when it is not a
 * str of latin-1 characters, -1 on error. */
static int put_latin1(wbuf *b, PyObject *o, int quote) {
    static const char safe[] = "_.-~/;=,:@!$&'()*+";
    Py_ssize_t n;
    const char *p = str_of(o, &n);
    PyObject *enc = NULL;
    if (!p) return 1;
    if (!is_ascii(p, (size_t)n)) {
        char *q;
        if (!(enc = PyUnicode_AsLatin1String(o)) || PyBytes_AsStringAndSize(enc, &q, &n)) {
            Py_XDECREF(enc);
            PyErr_Clear();
            return 1;
        }
        p = q;
    }
    int rc = 0;
    if (!quote) {
        rc = wb_put(b, p, (size_t)n);
    } else if (!(rc = wb_reserve(b, 3 * (size_t)n))) {
        static const char hex[] = "0123456789ABCDEF";
        char *d = b->p + b->len;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)p[i];
            if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                (c && memchr(safe, c, sizeof safe - 1))) {
                *d++ = (char)c;
            } else {
                *d++ = '%';
                *d++ = hex[c >> 4];
                *d++ = hex[c & 15];
            }
        }
        b->len = (size_t)(d - b->p);
    }
    Py_XDECREF(enc);
    return rc;
}

/* The request target as the general path's _request_uri gives it: REQUEST_URI or RAW_URI
 * as the server gives it, else SCRIPT_NAME + PATH_INFO quoted, then ?QUERY_STRING; NUL
 * terminated. 0 done, 1 not this path, -1 error. */
static int wsgi_uri(PyObject *env, wbuf *b) {
    PyObject *keys[2] = {k_request_uri, k_raw_uri};
    for (int i = 0; i < 2; i++) {
        PyObject *u = PyDict_GetItemWithError(env, keys[i]);
        if (!u && PyErr_Occurred()) return -1;
        int t = u ? PyObject_IsTrue(u) : 0;
        if (t < 0) return -1;
        if (t) {
            int r = put_latin1(b, u, 0);
            return r ? r : wb_put(b, "", 1);
        }
    }
    PyObject *parts[3] = {PyDict_GetItemWithError(env, k_script_name),
                          PyDict_GetItemWithError(env, k_path_info),
                          PyDict_GetItemWithError(env, k_query_string_env)};
    if (PyErr_Occurred()) return -1;
    int r;
    for (int i = 0; i < 2; i++)
        if (parts[i] && (r = put_latin1(b, parts[i], 1))) return r;
    if (parts[2] && PyUnicode_Check(parts[2]) && PyUnicode_GetLength(parts[2])) {
        if (wb_put(b, "?", 1) || (r = put_latin1(b, parts[2], 0))) return r ? r : -1;
    }
    return wb_put(b, "", 1);
}

/* The environ's request headers in the flat form: 0 done, 1 not this path, -1 error. */
static int wsgi_request(PyObject *env, wbuf *b, int *count, int *eos, int *grpc) {
    Py_ssize_t ml, sl, pl, hl = 0;
    const char *m = ascii_str(env, k_request_method, &ml);
    if (!m) return 1;
    PyObject *so = PyDict_GetItemWithError(env, k_url_scheme);
    const char *scheme = so ? str_of(so, &sl) : (sl = 4, "http");
    PyObject *po = PyDict_GetItemWithError(env, k_server_protocol);
    const char *proto = po ? str_of(po, &pl) : (pl = 8, "HTTP/1.1");
    if (!scheme || !proto || PyErr_Occurred()) {
        PyErr_Clear();
        return 1;
    }
    int has_body = pl >= 6 && !memcmp(proto, "HTTP/2", 6), r;
    *grpc = 0;
    /* :authority: the Host header, else SERVER_NAME:SERVER_PORT. */
    char addr[320];
    const char *host = ascii_str(env, k_http_host, &hl);
    if (!host) {
        if (PyDict_GetItemWithError(env, k_http_host)) return 1; /* not an ASCII str */
        Py_ssize_t nl = 0, tl = 0;
        const char *name = ascii_str(env, k_server_name, &nl), *port = ascii_str(env, k_server_port, &tl);
        if ((!name && PyDict_GetItemWithError(env, k_server_name)) ||
            (!port && PyDict_GetItemWithError(env, k_server_port)) || nl > 256 || tl > 32)
            return 1;
        int w = snprintf(addr, sizeof addr, "%.*s:%.*s", (int)nl, name ? name : "", (int)tl, port ? port : "");
        if (w < 0 || (size_t)w >= sizeof addr) return 1;
        host = addr;
        hl = w;
    }
    if ((r = put_field(b, ":method", 7)) || (r = put_field(b, m, (size_t)ml)) ||
        (r = put_field(b, ":path", 5)))
        return r;
    size_t at = b->len;
    if ((r = wsgi_uri(env, b))) return r;
    if (memchr(b->p + at, 0, b->len - at - 1)) return 1;
    if ((r = put_field(b, ":authority", 10)) || (r = put_field(b, host, (size_t)hl)) ||
        (r = put_field(b, ":scheme", 7)) || (r = put_field(b, scheme, (size_t)sl)))
        return r;
    int c = 4;
    Py_ssize_t pos = 0;
    PyObject *k, *v;
    while (PyDict_Next(env, &pos, &k, &v)) {
        Py_ssize_t kl, vl;
        const char *kp = str_of(k, &kl), *vp;
        if (!kp) {
            if (!PyUnicode_Check(k)) continue; /* not a CGI variable */
            return 1;
        }
        int http = kl >= 5 && !memcmp(kp, "HTTP_", 5), ct = 0, cl = 0;
        if (http && kl == 5) return 1; /* an empty name: the general path refuses it */
        if (!http) {
            ct = eq(kp, (size_t)kl, "CONTENT_TYPE", 12);
            cl = eq(kp, (size_t)kl, "CONTENT_LENGTH", 14);
            if (!ct && !cl) continue;
        }
        if (!(vp = str_of(v, &vl)) || !is_ascii(kp, (size_t)kl) || !is_ascii(vp, (size_t)vl)) return 1;
        if (!http && !vl) continue; /* an empty CONTENT_* is no header */
        if (http && kl == 9 && !memcmp(kp + 5, "HOST", 4)) continue; /* :authority */
        const char *name = http ? kp + 5 : kp;
        size_t nl = http ? (size_t)kl - 5 : (size_t)kl;
        if (cl || (http && eq(name, nl, "CONTENT_LENGTH", 14))) {
            if (announces_body(vp, (size_t)vl)) has_body = 1;
        } else if (http && eq(name, nl, "TRANSFER_ENCODING", 17)) {
            has_body = 1;
        } else if ((ct || (http && eq(name, nl, "CONTENT_TYPE", 12))) && vl >= 16 &&
                   !memcmp(vp, "application/grpc", 16)) {
            *grpc = 1;
        }
        if ((r = put_env_name(b, name, nl)) || (r = put_field(b, vp, (size_t)vl))) return r;
        c++;
    }
    *count = c;
    *eos = !has_body;
    return 0;
}

/* wsgi_start(environ, props): see the top of this file. */
PyObject *s_wsgi_start(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Stream *s = (Stream *)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wsgi_start(environ, props)");
        return NULL;
    }
    if (s->id || !PyDict_CheckExact(args[0])) Py_RETURN_NONE;
    return start_from(s, wsgi_request, args[0], args + 1, 1);
}

/* environ[key] = value, or joined to what is there with "," (repeated headers). */
static int env_join(PyObject *env, PyObject *key, PyObject *value) {
    PyObject *cur = PyDict_GetItemWithError(env, key);
    if (!cur) return PyErr_Occurred() ? -1 : PyDict_SetItem(env, key, value);
    PyObject *a = PyUnicode_Concat(cur, s_comma), *j = a ? PyUnicode_Concat(a, value) : NULL;
    Py_XDECREF(a);
    int rc = j ? PyDict_SetItem(env, key, j) : -1;
    Py_XDECREF(j);
    return rc;
}

static int set_latin1(PyObject *d, PyObject *key, const char *v, size_t vl) {
    PyObject *o = PyUnicode_DecodeLatin1(v, (Py_ssize_t)vl, NULL);
    if (!o) return -1;
    int rc = PyDict_SetItem(d, key, o);
    Py_DECREF(o);
    return rc;
}

static int wsgi_body_keys(Stream *s, PyObject *env, PyObject **body);

/* The environ's header keys (HTTP_*, CONTENT_TYPE, CONTENT_LENGTH) and those the filter's
 * map added: which the map has set (used), so that the others can go. */
typedef struct {
    const char *k; /* the key's text (owned by the key object) */
    size_t kl;
    PyObject *key; /* borrowed from the environ, or owned (new keys) */
    int used, owned;
} cgi_ent;

typedef struct {
    cgi_ent *e;
    size_t n;
} cgi_set;

static void cgi_free(cgi_set *c) {
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].owned) Py_DECREF(c->e[i].key);
    free(c->e);
    c->e = NULL;
    c->n = 0;
}

static int cgi_collect(cgi_set *c, PyObject *environ, uint32_t more) {
    Py_ssize_t pos = 0, cap = PyDict_Size(environ) + (Py_ssize_t)more + 1;
    PyObject *ek, *ev;
    if (!(c->e = malloc((size_t)cap * sizeof *c->e))) {
        PyErr_NoMemory();
        return -1;
    }
    while (PyDict_Next(environ, &pos, &ek, &ev)) {
        Py_ssize_t n;
        const char *kp = str_of(ek, &n);
        if (kp && ((n >= 5 && !memcmp(kp, "HTTP_", 5)) || eq(kp, (size_t)n, "CONTENT_TYPE", 12) ||
                   eq(kp, (size_t)n, "CONTENT_LENGTH", 14)))
            c->e[c->n++] = (cgi_ent){kp, (size_t)n, ek, 0, 0};
    }
    return 0;
}

/* environ[key] = value as the general path sets it: the first time the value (an equal
 * one kept as it is), then (join) the values joined with ","; content-* keys are set. */
static int cgi_put(cgi_set *c, PyObject *env, const char *key, size_t kl, int join,
                   const char *v, size_t vl) {
    cgi_ent *e = NULL;
    for (size_t i = 0; i < c->n && !e; i++)
        if (eq(c->e[i].k, c->e[i].kl, key, kl)) e = &c->e[i];
    if (!e) {
        PyObject *ko = PyUnicode_DecodeLatin1(key, (Py_ssize_t)kl, NULL);
        Py_ssize_t n;
        const char *kp = ko ? str_of(ko, &n) : NULL;
        if (!kp) {
            Py_XDECREF(ko);
            return -1;
        }
        e = &c->e[c->n++]; /* room: one per map entry was reserved */
        *e = (cgi_ent){kp, (size_t)n, ko, 0, 1};
    }
    if (e->used && join) {
        PyObject *value = PyUnicode_DecodeLatin1(v, (Py_ssize_t)vl, NULL);
        int rc = value ? env_join(env, e->key, value) : -1;
        Py_XDECREF(value);
        return rc;
    }
    e->used = 1;
    Py_ssize_t cl;
    const char *cur = str_of(PyDict_GetItemWithError(env, e->key), &cl);
    PyErr_Clear();
    if (cur && is_ascii(v, vl) && eq(cur, (size_t)cl, v, vl)) return 0; /* as it was */
    return set_latin1(env, e->key, v, vl);
}

/* The environ's header keys the filter's map does not have go. */
static int cgi_drop_unused(cgi_set *c, PyObject *env) {
    for (size_t i = 0; i < c->n; i++)
        if (!c->e[i].used && PyDict_DelItem(env, c->e[i].key)) return -1;
    return 0;
}

/* d[key] = value (latin-1), unless it holds that already. */
static int set_latin1_if(PyObject *d, PyObject *key, const char *v, size_t vl) {
    Py_ssize_t cl;
    const char *cur = str_of(PyDict_GetItemWithError(d, key), &cl);
    PyErr_Clear();
    if (cur && is_ascii(v, vl) && eq(cur, (size_t)cl, v, vl)) return 0;
    return set_latin1(d, key, v, vl);
}

/* A header name as its CGI key after a 5-byte prefix: key[5..5+kl) is the name with '-'
 * as '_' and ASCII letters upper case (key holds 5 + 256 bytes; kl <= 256). */
static void cgi_name(char *key, const char *k, size_t kl) {
    for (size_t i = 0; i < kl; i++) {
        char ch = k[i];
        key[5 + i] = ch == '-' ? '_' : (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
    }
}

/* A copy of the server's environ, which holds the request headers as they came (empty
 * CONTENT_* are not headers: they go). */
static PyObject *server_headers(PyObject *environ) {
    PyObject *env = PyDict_Copy(environ);
    if (!env) return NULL;
    PyObject *keys[2] = {k_content_type, k_content_length};
    for (int i = 0; i < 2; i++) {
        PyObject *v = PyDict_GetItemWithError(env, keys[i]);
        if (v && PyUnicode_Check(v) && !PyUnicode_GetLength(v) && PyDict_DelItem(env, keys[i])) {
            Py_DECREF(env);
            return NULL;
        }
    }
    return env;
}

/* When the filter only added plain request headers, the app's environ is the server's
 * with the added ones set, or joined with "," to a value the client sent, as the rebuild
 * would make them: 1 done (*out made), 0 when that is not the case, -1 on error. */
static int wsgi_added(Stream *s, PyObject *environ, PyObject **out) {
    pairs_it it;
    const char *k, *v;
    size_t kl, vl;
    if (!plain_additions(s, &it)) return 0;
    /* HTTP_CONTENT_* (not CGI's, some servers send them) the rebuild moves to CONTENT_*. */
    PyObject *odd[2] = {k_http_content_type, k_http_content_length};
    for (int i = 0; i < 2; i++)
        if (PyDict_GetItemWithError(environ, odd[i]) || PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    PyObject *env = server_headers(environ);
    if (!env) return -1;
    while (pairs_next(&it, &k, &kl, &v, &vl)) {
        char key[5 + 256];
        memcpy(key, "HTTP_", 5);
        cgi_name(key, k, kl);
        PyObject *ko = PyUnicode_DecodeLatin1(key, (Py_ssize_t)(5 + kl), NULL);
        PyObject *vo = ko ? PyUnicode_DecodeLatin1(v, (Py_ssize_t)vl, NULL) : NULL;
        int rc = vo ? env_join(env, ko, vo) : -1;
        Py_XDECREF(ko);
        Py_XDECREF(vo);
        if (rc) {
            Py_DECREF(env);
            return -1;
        }
    }
    *out = env;
    return 1;
}

/* wsgi_app_environ(environ) -> (the app's environ, body), or None (a header name that is
 * not ASCII: the general path). The body is what the app will read first: all of it when
 * the request ended with the headers, and then CONTENT_LENGTH says its true length; else
 * wsgi.input_terminated (PEP 3333: read to EOF). wsgi.input is the caller's. */
PyObject *s_wsgi_app_environ(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    Stream *s = (Stream *)self;
    if (nargs != 1 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "wsgi_app_environ(environ: dict)");
        return NULL;
    }
    PyObject *environ = args[0], *env = NULL, *body = NULL, *out;
    int has_host = PyDict_GetItemWithError(environ, k_http_host) != NULL;
    if (PyErr_Occurred()) return NULL;
    if (!(s->flags & PW_S_REQ_HEADERS_CHANGED) && has_host) {
        if (!(env = server_headers(environ))) return NULL;
        goto body;
    }
    if (has_host) {
        int r = wsgi_added(s, environ, &env);
        if (r < 0) return NULL;
        if (r) goto body;
    }
    pairs_it it, scan;
    const char *k, *v;
    size_t kl, vl;
    read_map(s, PW_R_REQ_HEADERS, &it);
    for (scan = it; pairs_next(&scan, &k, &kl, &v, &vl);)
        if (!is_ascii(k, kl) || kl > 256) Py_RETURN_NONE; /* str.upper() beyond ASCII, or a
                                                            * very long name: the general path */
    /* The server's environ, with its header keys brought in line with the filter's map:
     * equal values kept as they are, others set, repeats joined, the rest removed. */
    cgi_set c = {0};
    if (!(env = PyDict_Copy(environ)) || cgi_collect(&c, environ, it.n)) goto fail_c;
    wbuf uri;
    wb_init(&uri);
    int have_uri = wsgi_uri(environ, &uri) == 0;
    PyErr_Clear();
    while (pairs_next(&it, &k, &kl, &v, &vl)) {
        int rc = 0;
        if (kl && k[0] == ':') {
            if (eq(k, kl, ":method", 7)) rc = set_latin1_if(env, k_request_method, v, vl);
            else if (eq(k, kl, ":authority", 10)) rc = cgi_put(&c, env, "HTTP_HOST", 9, 1, v, vl);
            else if (eq(k, kl, ":scheme", 7)) rc = set_latin1_if(env, k_url_scheme, v, vl);
            else if (eq(k, kl, ":path", 5) && !(have_uri && eq(v, vl, uri.p, uri.len - 1))) {
                PyObject *po = PyBytes_FromStringAndSize(v, (Py_ssize_t)vl);
                PyObject *r = po && wsgi_path_fn ? PyObject_CallFunctionObjArgs(wsgi_path_fn, env, po, NULL) : NULL;
                rc = r ? 0 : -1;
                Py_XDECREF(r);
                Py_XDECREF(po);
            }
        } else {
            char key[5 + 256];
            cgi_name(key, k, kl);
            if (eq(key + 5, kl, "CONTENT_TYPE", 12) || eq(key + 5, kl, "CONTENT_LENGTH", 14)) {
                rc = cgi_put(&c, env, key + 5, kl, 0, v, vl);
            } else {
                memcpy(key, "HTTP_", 5);
                rc = cgi_put(&c, env, key, kl + 5, 1, v, vl);
            }
        }
        if (rc) {
            wb_free(&uri);
            goto fail_c;
        }
    }
    wb_free(&uri);
    if (cgi_drop_unused(&c, env)) goto fail_c;
    cgi_free(&c);
body:
    if (wsgi_body_keys(s, env, &body)) goto fail;
    out = PyTuple_Pack(2, env, body);
    Py_DECREF(env);
    Py_DECREF(body);
    return out;
fail_c:
    cgi_free(&c);
fail:
    Py_XDECREF(env);
    Py_XDECREF(body);
    return NULL;
}

/* The app's environ given the body: its true length when it is all known, else read to
 * EOF (wsgi.input_terminated, which Werkzeug and Django honour). */
static int wsgi_body_keys(Stream *s, PyObject *env, PyObject **body) {
    if (s->flags & PW_S_REQ_ENDED) {
        if (!(*body = take_body(s, PW_R_REQ_BODY))) return -1;
        Py_ssize_t n = PyBytes_Size(*body);
        int has = PyDict_Contains(env, k_content_length);
        if (has < 0) return -1;
        if (n || has) {
            char num[24];
            PyObject *v = PyUnicode_FromStringAndSize(num, (Py_ssize_t)decimal(num, (unsigned long long)n));
            int rc = v ? PyDict_SetItem(env, k_content_length, v) : -1;
            Py_XDECREF(v);
            return rc;
        }
        return 0;
    }
    if (!(*body = PyBytes_FromStringAndSize("", 0))) return -1;
    int has = PyDict_Contains(env, k_content_length);
    if (has < 0 || (has && PyDict_DelItem(env, k_content_length))) return -1;
    return PyDict_SetItemString(env, "wsgi.input_terminated", Py_True);
}

/* wsgi_respond(status_line, headers, body, end, head, resp_in): see the top of this file. */
PyObject *s_wsgi_respond(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    response_in in = {0};
    int r = respond_args(args, nargs, &in);
    if (r < 0) return NULL;
    Py_ssize_t sl;
    const char *line = str_of(args[0], &sl);
    if (r > 0 || !line || !is_ascii(line, (size_t)sl)) Py_RETURN_NONE;
    const char *sp = memchr(line, ' ', (size_t)sl);
    in.code = line;
    in.code_len = sp ? (size_t)(sp - line) : (size_t)sl;
    if ((in.status = status_value(in.code, in.code_len)) < 0) Py_RETURN_NONE;
    in.wsgi = 1;
    return respond((Stream *)self, &in, args[0]);
}
