/* HTTP streams: Envoy's filter semantics for one Wasm filter (ABI.md §4.2, §9.7, §9.8).
 *
 * Each direction (request, response) holds its headers, trailers and body. What the filter
 * lets through is "forwarded" (headers_out, out, trailers_out, end_out) for the caller to
 * read; what it stops on is held until proxy_continue_stream. Pause at headers is Envoy's
 * StopAllIterationAndWatermark: later body and trailers are held without callbacks and are
 * delivered to the filter when it continues. Pause at body is StopIterationAndBuffer: each
 * new chunk is added to the buffer and the callback sees the whole buffered size. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

static const int fn_headers[2] = {FN_ON_REQUEST_HEADERS, FN_ON_RESPONSE_HEADERS};
static const int fn_body[2] = {FN_ON_REQUEST_BODY, FN_ON_RESPONSE_BODY};
static const int fn_trailers[2] = {FN_ON_REQUEST_TRAILERS, FN_ON_RESPONSE_TRAILERS};
static const int ph_headers[2] = {PH_REQ_HEADERS, PH_RESP_HEADERS};
static const int ph_body[2] = {PH_REQ_BODY, PH_RESP_BODY};
static const int ph_trailers[2] = {PH_REQ_TRAILERS, PH_RESP_TRAILERS};

void http_free(pw_http *h) {
    for (int d = 0; d < 2; d++) {
        hmap_free(&h->d[d].headers);
        hmap_free(&h->d[d].trailers);
        buf_free(&h->d[d].held);
        buf_free(&h->d[d].out);
    }
    buf_free(&h->lr_details);
    buf_free(&h->lr_body);
    hmap_free(&h->lr_headers);
}

/* A pooled context keeps its buffers' capacity up to this; a bigger one (a 256 MiB body)
 * is given back rather than staying resident until the VM closes. */
#define SPARE_KEEP_BYTES (64u << 10)

static void trim_buf(pw_buf *b) {
    if (b->cap > SPARE_KEEP_BYTES) buf_free(b);
}

static void trim_map(pw_hmap *m) {
    if (m->bytes.cap > SPARE_KEEP_BYTES || m->cap > 1024) hmap_free(m);
}

void http_reset(pw_http *h) {
    for (int d = 0; d < 2; d++) {
        trim_map(&h->d[d].headers);
        trim_map(&h->d[d].trailers);
        trim_buf(&h->d[d].held);
        trim_buf(&h->d[d].out);
    }
    trim_buf(&h->lr_details);
    trim_buf(&h->lr_body);
    trim_map(&h->lr_headers);
    pw_http keep = *h;
    memset(h, 0, sizeof *h);
    for (int d = 0; d < 2; d++) {
        h->d[d].headers = keep.d[d].headers;
        h->d[d].trailers = keep.d[d].trailers;
        h->d[d].held = keep.d[d].held;
        h->d[d].out = keep.d[d].out;
        hmap_clear(&h->d[d].headers);
        hmap_clear(&h->d[d].trailers);
        buf_clear(&h->d[d].held);
        buf_clear(&h->d[d].out);
    }
    h->lr_details = keep.lr_details;
    h->lr_body = keep.lr_body;
    h->lr_headers = keep.lr_headers;
    buf_clear(&h->lr_details);
    buf_clear(&h->lr_body);
    hmap_clear(&h->lr_headers);
}

static int is_grpc(const pw_hmap *request) {
    size_t n;
    const uint8_t *ct = hmap_get(request, (const uint8_t *)"content-type", 12, &n);
    return ct && n >= 16 && !memcmp(ct, "application/grpc", 16);
}

static pw_ctx *http_of(pw_vm *vm, uint32_t id) {
    pw_ctx *c = ctx_get(vm, id);
    return (c && c->kind == CTX_HTTP) ? c : NULL;
}

static int flags_of(const pw_http *h) {
    int f = 0;
    if (h->d[0].stop) f |= PW_S_REQ_STOPPED;
    if (h->d[1].stop) f |= PW_S_RESP_STOPPED;
    if (h->local_reply) f |= PW_S_LOCAL_REPLY;
    if (h->reset) f |= PW_S_RESET;
    if (h->failed && !h->bypass) f |= PW_S_FAILED;
    if (h->bypass) f |= PW_S_BYPASSED;
    if (h->done) f |= PW_S_DONE;
    if (h->d[0].end_out) f |= PW_S_REQ_ENDED;
    if (h->d[1].end_out) f |= PW_S_RESP_ENDED;
    if (h->d[0].headers_out) f |= PW_S_REQ_HEADERS_OUT;
    if (h->d[1].headers_out) f |= PW_S_RESP_HEADERS_OUT;
    if (h->d[0].trailers_out) f |= PW_S_REQ_TRAILERS_OUT;
    if (h->d[1].trailers_out) f |= PW_S_RESP_TRAILERS_OUT;
    if (h->d[0].headers_in && h->d[0].headers.changed) f |= PW_S_REQ_HEADERS_CHANGED;
    if (h->d[1].headers_in && h->d[1].headers.changed) f |= PW_S_RESP_HEADERS_CHANGED;
    return f;
}

/* Input for a direction is dropped once the stream is over for it. */
static int closed_for(const pw_http *h, int dir) {
    return h->reset || h->failed || h->done || (dir == PW_DIR_REQUEST && h->local_reply);
}

/* Filter statuses on the return slot (the C++ SDK's richer enums; Rust and Go return 0/1). */
enum { R_CONTINUE = 0, R_CONTINUE_AND_END_STREAM = 2, R_STOP_NO_BUFFER = 3 };

/* Calls a filter callback: its status (Continue when not exported), or -1 if the VM failed. */
static int filter_call(pw_vm *vm, pw_ctx *c, int fn, int phase, int nargs, const uint32_t *a) {
    uint32_t r = 0;
    int rc = vm_call(vm, fn, c, phase, nargs, a, &r);
    if (rc < 0) {
        http_fail(vm, c);
        return -1;
    }
    return rc == 1 ? R_CONTINUE : (int)(r > 16 ? 16 : r);
}

static void forward_end(pw_hdir *D) {
    buf_move_append(&D->out, &D->held);
    D->stop = STOP_NONE;
    if (D->trailers_in) {
        D->trailers_out = 1;
        D->tmode = MAP_NONE;
    }
    D->end_out = 1;
}

static void trailers_callback(pw_vm *vm, pw_ctx *c, int dir) {
    pw_hdir *D = &c->h->d[dir];
    D->tmode = MAP_RW;
    uint32_t a[2] = {c->id, (uint32_t)D->trailers.n};
    int r = filter_call(vm, c, fn_trailers[dir], ph_trailers[dir], 2, a);
    if (r == R_CONTINUE) forward_end(D);
    else if (r > 0) D->stop = STOP_TRAILERS;
}

static void body_callback(pw_vm *vm, pw_ctx *c, int dir) {
    pw_hdir *D = &c->h->d[dir];
    int eos = D->end_in && !D->trailers_in;
    /* At the end of a stream without trailers the filter may create them (Envoy). */
    if (eos) D->tmode = MAP_RW;
    uint32_t a[3] = {c->id, (uint32_t)D->held.len, (uint32_t)eos};
    int r = filter_call(vm, c, fn_body[dir], ph_body[dir], 3, a);
    if (eos) {
        D->tmode = MAP_NONE;
        if (D->trailers.n) D->trailers_in = 1;
    }
    if (r == R_CONTINUE) {
        if (eos) forward_end(D);
        else {
            buf_move_append(&D->out, &D->held);
            D->stop = STOP_NONE;
        }
    } else if (r > 0) {
        /* 1 (Pause) and 2 buffer; StopIterationNoBuffer leaves the chunk to the filter,
         * which for a Wasm filter means it is dropped, as in Envoy. */
        if (r >= R_STOP_NO_BUFFER) buf_clear(&D->held); /* > 3 too, as cpp-host clamps */
        D->stop = STOP_BODY;
    }
}

static void headers_forward(pw_hdir *D) {
    D->headers_out = 1;
    D->hmode = MAP_NONE;
    D->stop = STOP_NONE;
    if (D->headers_eos) D->end_out = 1;
}

static void headers_callback(pw_vm *vm, pw_ctx *c, int dir) {
    pw_hdir *D = &c->h->d[dir];
    D->hmode = MAP_RW;
    uint32_t a[3] = {c->id, (uint32_t)D->headers.n, D->headers_eos};
    int r = filter_call(vm, c, fn_headers[dir], ph_headers[dir], vm->header_arity, a);
    if (r == R_CONTINUE) {
        headers_forward(D);
    } else if (r == R_CONTINUE_AND_END_STREAM) {
        /* The headers go on as the whole message; body and trailers are dropped. */
        headers_forward(D);
        D->end_out = D->cut = 1;
        buf_clear(&D->held);
    } else if (r > 0) {
        D->stop = STOP_HEADERS; /* 1, 3, 4 and anything larger: StopAllIteration */
    }
}

/* proxy_continue_stream, run after the callback that asked for it. */
void http_resume(pw_vm *vm, pw_ctx *c, int dir) {
    pw_http *h = c->h;
    if (dir < 0 || dir > 1 || closed_for(h, dir)) return;
    pw_hdir *D = &h->d[dir];
    switch (D->stop) {
    case STOP_HEADERS:
        headers_forward(D);
        if (D->end_out) return;
        /* What arrived while stopped now reaches the filter, as Envoy does. */
        if (D->held.len || (D->end_in && !D->trailers_in)) body_callback(vm, c, dir);
        if (D->stop == STOP_NONE && D->trailers_in && !D->trailers_out && !closed_for(h, dir))
            trailers_callback(vm, c, dir);
        break;
    case STOP_BODY:
        if (D->end_in && !D->trailers_in) forward_end(D);
        else {
            buf_move_append(&D->out, &D->held);
            D->stop = STOP_NONE;
        }
        break;
    case STOP_TRAILERS:
        forward_end(D);
        break;
    default:
        break; /* not stopped: a harmless no-op */
    }
}

/* The local reply becomes the response. Sent before the response started, it runs
 * through the filter's response callbacks as Envoy's does; once the response is under way
 * it replaces it outright; after response headers went out Envoy can only reset. */
static void respond_locally(pw_vm *vm, pw_ctx *c, int run_callbacks) {
    pw_http *h = c->h;
    pw_hdir *R = &h->d[PW_DIR_RESPONSE], *Q = &h->d[PW_DIR_REQUEST];
    h->local_reply = 1;
    Q->stop = STOP_NONE;
    buf_clear(&Q->held);
    if (R->headers_out) {
        h->reset = 1;
        return;
    }
    int started = R->headers_in;
    hmap_clear(&R->headers);
    hmap_clear(&R->trailers);
    buf_clear(&R->held);
    buf_clear(&R->out);
    R->trailers_in = R->trailers_out = 0;
    char status[12];
    int sl = snprintf(status, sizeof status, "%u", h->lr_status);
    hmap_add(&R->headers, (const uint8_t *)":status", 7, (const uint8_t *)status, (size_t)sl);
    for (size_t i = 0; i < h->lr_headers.n; i++)
        hmap_add(&R->headers, hm_key(&h->lr_headers, i), h->lr_headers.e[i].kl,
                 hm_val(&h->lr_headers, i), h->lr_headers.e[i].vl);
    if (h->grpc && h->lr_grpc >= 0 && h->lr_grpc <= 16) { /* Envoy: gRPC requests only */
        sl = snprintf(status, sizeof status, "%d", h->lr_grpc);
        hmap_replace(&R->headers, (const uint8_t *)"grpc-status", 11, (const uint8_t *)status,
                     (size_t)sl);
    }
    if (h->lr_body.len) {
        sl = snprintf(status, sizeof status, "%zu", h->lr_body.len);
        hmap_replace(&R->headers, (const uint8_t *)"content-length", 14, (const uint8_t *)status,
                     (size_t)sl);
        if (hmap_find(&R->headers, (const uint8_t *)"content-type", 12) < 0)
            hmap_add(&R->headers, (const uint8_t *)"content-type", 12,
                     (const uint8_t *)"text/plain", 10);
    }
    buf_set(&R->held, h->lr_body.p, h->lr_body.len);
    R->headers_in = 1;
    R->end_in = 1;
    R->headers_eos = h->lr_body.len == 0;
    if (!run_callbacks || started) {
        headers_forward(R);
        forward_end(R);
        return;
    }
    headers_callback(vm, c, PW_DIR_RESPONSE);
    if (R->stop == STOP_NONE && !R->end_out && !closed_for(h, PW_DIR_RESPONSE))
        body_callback(vm, c, PW_DIR_RESPONSE);
}

void http_local_reply_apply(pw_vm *vm, pw_ctx *c) {
    pw_http *h = c->h;
    if (!h->lr_pending || h->local_reply || h->reset || h->failed || h->done) return;
    h->lr_pending = 0;
    respond_locally(vm, c, 1);
}

/* FAIL_OPEN: everything this direction holds goes on, and later input passes unfiltered. */
static void bypass_dir(pw_hdir *D) {
    if (!D->headers_in) return;
    D->headers_out = 1;
    D->hmode = D->tmode = MAP_NONE;
    D->stop = STOP_NONE;
    if (D->cut) return;
    buf_move_append(&D->out, &D->held);
    if (D->trailers_in) D->trailers_out = 1;
    if (D->end_in) D->end_out = 1;
}

/* A trap while serving the stream (or a stream on a VM that failed earlier): the plugin's
 * failure policy. FAIL_CLOSED answers Envoy's 503 wasm_fail_stream (grpc-status 14 only
 * for a gRPC request); FAIL_OPEN lets the stream pass as if the filter were absent. */
void http_fail(pw_vm *vm, pw_ctx *c) {
    pw_http *h = c->h;
    if (h->failed) return;
    if (c->root && c->root->r->fail_open && !h->local_reply) {
        h->failed = h->bypass = 1;
        h->lr_pending = 0;
        bypass_dir(&h->d[0]);
        bypass_dir(&h->d[1]);
        return;
    }
    h->lr_status = 503;
    h->lr_grpc = 14; /* Unavailable; sent only to gRPC requests */
    buf_set(&h->lr_details, (const uint8_t *)"wasm_fail_stream", 16);
    buf_clear(&h->lr_body);
    hmap_clear(&h->lr_headers);
    h->lr_pending = 0;
    if (!h->local_reply) respond_locally(vm, c, 0);
    h->failed = 1;
}

/* ---- maps and buffers the hostcalls reach --------------------------------------------- */
pw_hmap *http_map(pw_ctx *c, uint32_t type, int write, int *status) {
    *status = ST_BAD_ARGUMENT;
    if (!c || c->kind != CTX_HTTP || type > 3) return NULL;
    pw_hdir *D = &c->h->d[type >> 1];
    int trailers = type & 1;
    int mode = trailers ? D->tmode : D->hmode;
    if (mode == MAP_NONE || (write && mode != MAP_RW)) return NULL;
    *status = ST_OK;
    return trailers ? &D->trailers : &D->headers;
}

pw_buf *stream_buffer(pw_vm *vm, pw_ctx *c, uint32_t type, int *status) {
    *status = ST_NOT_FOUND;
    if (!c) return NULL;
    if (c->kind == CTX_HTTP && type <= 1) {
        pw_hdir *D = &c->h->d[type];
        if (vm->phase == ph_body[type] || D->stop == STOP_BODY || D->stop == STOP_TRAILERS ||
            (D->stop == STOP_HEADERS && D->held.len)) {
            *status = ST_OK;
            return &D->held;
        }
        return NULL;
    }
    if (c->kind == CTX_TCP && (type == 2 || type == 3)) {
        pw_tdir *T = &c->t->d[type - 2];
        *status = ST_OK;
        return &T->held;
    }
    return NULL;
}

/* ---- the API ------------------------------------------------------------------------ */
#define ENTER(vm, id, c)                                  \
    VM_ENTER_NEG(vm);       \
    pw_ctx *c = http_of(vm, id);                          \
    if (!c) return -PW_ERR_NO_CONTEXT;

int pw_http_new(pw_vm *vm, uint32_t root, uint32_t *out_id) {
    VM_ENTER(vm);
    dispatcher_autorun(vm->disp);
    /* On a failed VM the stream is still made: its first event answers with the plugin's
     * failure policy (a 503, or passing without the filter) and calls no guest code. */
    pw_ctx *r = ctx_get(vm, root);
    if (!r || r->kind != CTX_ROOT || r->r->pending_done) return PW_ERR_NO_CONTEXT;
    pw_ctx *c = ctx_new(vm, CTX_HTTP, r);
    if (!c) return PW_ERR;
    *out_id = c->id;
    return PW_OK;
}

/* Creates the guest context lazily, before the stream's first callback. */
static int begin(pw_vm *vm, pw_ctx *c) {
    if (c->created) return 0;
    if (!c->root) {
        c->h->reset = 1;
        return -1;
    }
    if (ctx_ensure_created(vm, c)) {
        http_fail(vm, c);
        return -1;
    }
    return 0;
}

/* Headers from the embedding: what no HTTP field can hold (an empty name; NUL, CR or LF)
 * is refused here, in one pass, instead of reaching the guest (hmap_fields_ok). */
static int parse_in(pw_hmap *m, const uint8_t *p, size_t len, int nflat) {
    if (nflat >= 0) { /* checked as it is parsed */
        int r = hmap_parse_flat(m, p, len, (uint32_t)nflat);
        if (r) return r == -2 ? -PW_ERR_BAD_HEADERS : -PW_ERR;
    } else {
        if (hmap_parse(m, p, len)) return -PW_ERR;
        if (!hmap_fields_ok(m)) {
            hmap_clear(m);
            return -PW_ERR_BAD_HEADERS;
        }
    }
    m->changed = 0; /* as given: only the filter (or a local reply) marks it from here */
    m->given = m->n;
    return 0;
}

int pw_http_start(pw_vm *vm, uint32_t root, const uint8_t *headers, size_t len, int nflat,
                  int eos, uint32_t *out_id) {
    *out_id = 0;
    int rc = pw_http_new(vm, root, out_id);
    if (rc != PW_OK) return -rc;
    return pw_http_headers(vm, *out_id, PW_DIR_REQUEST, headers, len, nflat, eos);
}

int pw_http_headers(pw_vm *vm, uint32_t id, int dir, const uint8_t *pairs, size_t len, int nflat,
                    int eos) {
    ENTER(vm, id, c);
    if (dir < 0 || dir > 1) return -PW_ERR;
    pw_http *h = c->h;
    pw_hdir *D = &h->d[dir];
    if (D->headers_in && !(dir == PW_DIR_RESPONSE && h->local_reply)) return -PW_ERR_STATE;
    if (dir == PW_DIR_RESPONSE && h->local_reply) return flags_of(h); /* upstream too late */
    {
        int pr = parse_in(&D->headers, pairs, len, nflat);
        if (pr) return pr;
    }
    if (!h->start_ns) h->start_ns = vm_now_ns(vm, 0);
    if (dir == PW_DIR_REQUEST) h->grpc = is_grpc(&D->headers);
    D->headers_in = 1;
    D->headers_eos = eos != 0;
    D->end_in = eos != 0;
    if (h->bypass) {
        bypass_dir(D);
        return flags_of(h);
    }
    if (closed_for(h, dir) || begin(vm, c)) return flags_of(h);
    headers_callback(vm, c, dir);
    vm_run_deferred(vm);
    return flags_of(h);
}

/* Envoy's buffer limit: a body held past it ends the stream with 413 (request) or 500
 * (response; a reset once response headers went out), and what was held is dropped. */
static void enforce_limit(pw_vm *vm, pw_ctx *c, int dir) {
    pw_http *h = c->h;
    pw_hdir *D = &h->d[dir];
    if (!D->stop || D->held.len <= vm->buffer_limit || closed_for(h, dir)) return;
    static const char *const details[2] = {"request_payload_too_large", "response_payload_too_large"};
    static const char *const bodies[2] = {"Payload Too Large", "Internal Server Error"};
    h->lr_status = dir == PW_DIR_REQUEST ? 413 : 500;
    h->lr_grpc = -1;
    h->lr_pending = 0;
    hmap_clear(&h->lr_headers);
    buf_set(&h->lr_details, (const uint8_t *)details[dir], strlen(details[dir]));
    buf_set(&h->lr_body, (const uint8_t *)bodies[dir], strlen(bodies[dir]));
    buf_clear(&D->held);
    D->stop = STOP_NONE;
    respond_locally(vm, c, dir == PW_DIR_REQUEST);
}

int pw_http_data(pw_vm *vm, uint32_t id, int dir, const uint8_t *data, size_t len, int eos) {
    ENTER(vm, id, c);
    if (dir < 0 || dir > 1) return -PW_ERR;
    pw_http *h = c->h;
    pw_hdir *D = &h->d[dir];
    if (dir == PW_DIR_RESPONSE && h->local_reply) return flags_of(h);
    if (D->cut) return flags_of(h); /* ended by ContinueAndEndStream: the rest is dropped */
    if (!D->headers_in || D->end_in) return -PW_ERR_STATE;
    if (eos) D->end_in = 1;
    D->body_in += len;
    if (h->bypass) {
        if (buf_append(&D->out, data, len)) return -PW_ERR;
        bypass_dir(D);
        return flags_of(h);
    }
    if (closed_for(h, dir)) return flags_of(h);
    if (buf_append(&D->held, data, len)) return -PW_ERR;
    if (D->stop != STOP_HEADERS) body_callback(vm, c, dir);
    enforce_limit(vm, c, dir);
    vm_run_deferred(vm);
    return flags_of(h);
}

int pw_http_trailers(pw_vm *vm, uint32_t id, int dir, const uint8_t *pairs, size_t len, int nflat) {
    ENTER(vm, id, c);
    if (dir < 0 || dir > 1) return -PW_ERR;
    pw_http *h = c->h;
    pw_hdir *D = &h->d[dir];
    if ((dir == PW_DIR_RESPONSE && h->local_reply) || D->cut) return flags_of(h);
    if (!D->headers_in || D->end_in) return -PW_ERR_STATE;
    {
        int pr = parse_in(&D->trailers, pairs, len, nflat);
        if (pr) return pr;
    }
    D->trailers_in = 1;
    D->end_in = 1;
    if (h->bypass) {
        bypass_dir(D);
        return flags_of(h);
    }
    if (closed_for(h, dir)) return flags_of(h);
    if (D->stop != STOP_HEADERS) trailers_callback(vm, c, dir);
    vm_run_deferred(vm);
    return flags_of(h);
}

int pw_http_flags(pw_vm *vm, uint32_t id) {
    ENTER(vm, id, c);
    return flags_of(c->h);
}

/* Teardown in Envoy's HTTP order: log, done (its result ignored for streams), delete. */
int pw_http_finish(pw_vm *vm, uint32_t id) {
    ENTER(vm, id, c);
    pw_http *h = c->h;
    if (!c->created && c->root && !vm->failed) ctx_ensure_created(vm, c);
    if (c->created && !vm->failed) {
        /* In on_log the maps are readable copies; request trailers are not offered. */
        h->d[0].hmode = h->d[0].headers_in ? MAP_RO : MAP_NONE;
        h->d[1].hmode = h->d[1].headers_in ? MAP_RO : MAP_NONE;
        h->d[0].tmode = MAP_NONE;
        h->d[1].tmode = h->d[1].trailers_in ? MAP_RO : MAP_NONE;
        uint32_t a = id, ignored;
        vm_call(vm, FN_ON_LOG, c, PH_LOG, 1, &a, NULL);
        vm_call(vm, FN_ON_DONE, c, PH_OTHER, 1, &a, &ignored);
    }
    h->done = 1;
    ctx_delete(vm, c);
    vm_run_deferred(vm);
    return PW_S_DONE;
}

int pw_http_local_reply(pw_vm *vm, uint32_t id, uint32_t *status, int32_t *grpc_status) {
    ENTER(vm, id, c);
    if (!c->h->local_reply) return 0;
    *status = c->h->lr_status;
    *grpc_status = c->h->lr_grpc;
    return 1;
}

int pw_http_read(pw_vm *vm, uint32_t id, int what, const uint8_t **out, size_t *len) {
    ENTER(vm, id, c);
    pw_http *h = c->h;
    const pw_hmap *m = NULL;
    pw_buf *b = NULL;
    int take = 0;
    switch (what) {
    case PW_R_REQ_HEADERS: m = &h->d[0].headers; break;
    case PW_R_REQ_TRAILERS: m = &h->d[0].trailers; break;
    case PW_R_RESP_HEADERS: m = &h->d[1].headers; break;
    case PW_R_RESP_TRAILERS: m = &h->d[1].trailers; break;
    case PW_R_LOCAL_HEADERS: m = &h->lr_headers; break;
    case PW_R_REQ_BODY: b = &h->d[0].out; take = 1; break;
    case PW_R_RESP_BODY: b = &h->d[1].out; take = 1; break;
    case PW_R_REQ_HELD: b = &h->d[0].held; break;
    case PW_R_RESP_HELD: b = &h->d[1].held; break;
    case PW_R_LOCAL_BODY: b = &h->lr_body; break;
    case PW_R_LOCAL_DETAILS: b = &h->lr_details; break;
    case PW_R_REQ_HEADERS_ADDED: {
        const pw_hmap *r = &h->d[0].headers;
        *out = NULL;
        *len = 0;
        if (r->given == HMAP_CHANGED) return PW_OK; /* more than additions */
        if (hmap_serialize_from(r, r->given, &vm->scratch)) return -PW_ERR;
        *out = vm->scratch.p;
        *len = vm->scratch.len;
        return PW_OK;
    }
    default: return -PW_ERR;
    }
    if (m) {
        if (hmap_serialize(m, &vm->scratch)) return -PW_ERR;
        *out = vm->scratch.p;
        *len = vm->scratch.len;
        return PW_OK;
    }
    *out = b->p;
    *len = b->len;
    if (take) b->len = 0; /* the bytes stay valid until the buffer is written again */
    return PW_OK;
}
