/* Outbound calls: proxy_http_call and gRPC calls and streams (ABI.md §5.6, §5.7, §9.5, §9.6).
 *
 * A guest's call is checked here (Envoy's argument rules), given a token, and handed to the
 * embedding through the callout callback (Python, a cold path that takes the GIL): it either
 * accepts the call (OK) or answers a status (an unknown cluster, say). The answer comes back
 * later, from any thread, as events posted to the dispatcher of the thread that owns the VM
 * (dispatcher.c), and is delivered here on that thread, outside any other callback, to the
 * root context that made the call.
 *
 * Each VM keeps its calls in flight in a small open-addressing table keyed by token; the
 * table is touched by the VM's owner thread only. Tokens carry the kind in their low two
 * bits, as Envoy's do: HTTP calls 4, 8, ...; gRPC calls 5, 9, ...; gRPC streams 6, 10, ....
 * A root context that is deleted cancels its calls; a freed VM cancels all of them: nothing
 * is ever delivered into a context that is gone. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Set once at import by pw_set_callout_callbacks, before any VM exists; read-only after. */
static pw_callout_fn callout_cb;
static pw_callop_fn callop_cb;

void pw_set_callout_callbacks(pw_callout_fn start, pw_callop_fn op) {
    callout_cb = start;
    callop_cb = op;
}

void pw_vm_set_callouts(pw_vm *vm, void *handle, uint32_t max_calls) {
    vm->callout_handle = handle;
    vm->max_calls = max_calls ? max_calls : PW_DEFAULT_MAX_CALLS;
}

uint32_t pw_vm_calls_in_flight(pw_vm *vm) { return (uint32_t)vm->calls.n; }

uint64_t pw_vm_key(pw_vm *vm) { return vm->vm_key; }

/* ---- the table of calls in flight --------------------------------------------------- */
static size_t call_slot(const pw_calls *t, uint32_t token) {
    size_t mask = t->cap - 1, i = (token * 2654435761u) & mask;
    while (t->slots[i].token && t->slots[i].token != token) i = (i + 1) & mask;
    return i;
}

static pw_call *call_find(pw_vm *vm, uint32_t token) {
    pw_calls *t = &vm->calls;
    if (!t->cap || !token) return NULL;
    pw_call *c = &t->slots[call_slot(t, token)];
    return c->token ? c : NULL;
}

/* Room for one more call, so that the insert after the embedding accepted it cannot fail. */
static int call_reserve(pw_calls *t) {
    if ((t->n + 1) * 2 <= t->cap) return 0;
    size_t nc = t->cap ? t->cap * 2 : 16;
    pw_call *ns = calloc(nc, sizeof *ns);
    if (!ns) return -1;
    pw_calls nt = {ns, nc, 0, t->seq};
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].token) {
            nt.slots[call_slot(&nt, t->slots[i].token)] = t->slots[i];
            nt.n++;
        }
    free(t->slots);
    *t = nt;
    return 0;
}

static void call_remove(pw_vm *vm, uint32_t token) {
    pw_calls *t = &vm->calls;
    size_t mask = t->cap - 1, i = call_slot(t, token);
    if (!t->slots[i].token) return;
    t->slots[i].token = 0;
    t->n--;
    for (size_t j = (i + 1) & mask; t->slots[j].token; j = (j + 1) & mask) {
        pw_call c = t->slots[j];
        t->slots[j].token = 0;
        t->slots[call_slot(t, c.token)] = c;
    }
}

/* A token of the given kind that no call in flight uses. */
static uint32_t next_token(pw_vm *vm, int kind) {
    pw_calls *t = &vm->calls;
    for (;;) {
        if (++t->seq >= (1u << 30)) t->seq = 1;
        uint32_t token = (t->seq << 2) | (uint32_t)kind;
        if (!call_find(vm, token)) return token;
    }
}

/* The embedding forgets a call: no more events will be delivered for it. */
static void cancel(pw_vm *vm, uint32_t token) {
    if (callop_cb && vm->callout_handle) {
        uint64_t t0 = callback_begin();
        callop_cb(vm->callout_handle, token, PW_OP_CANCEL, NULL, 0, 0);
        vm_paused(vm, t0);
    }
}

void callout_cancel_root(pw_vm *vm, uint32_t root) {
    pw_calls *t = &vm->calls;
    for (size_t i = 0; i < t->cap;) {
        pw_call *c = &t->slots[i];
        if (c->token && c->root == root) {
            uint32_t token = c->token;
            call_remove(vm, token); /* re-seats the cluster: look at slot i again */
            cancel(vm, token);
        } else {
            i++;
        }
    }
}

void callout_cancel_all(pw_vm *vm) {
    pw_calls *t = &vm->calls;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].token) {
            uint32_t token = t->slots[i].token;
            t->slots[i].token = 0;
            cancel(vm, token);
        }
    t->n = 0;
}

void callout_free(pw_vm *vm) {
    pw_calls *t = &vm->calls;
    callout_cancel_all(vm);
    free(t->slots);
    memset(t, 0, sizeof *t);
    hmap_free(&vm->cr.a);
    hmap_free(&vm->cr.b);
    buf_free(&vm->cr.body);
    hmap_free(&vm->cr.req_headers);
    hmap_free(&vm->cr.req_trailers);
    buf_free(&vm->cr.req_ser[0]);
    buf_free(&vm->cr.req_ser[1]);
}

/* ---- starting a call (the hostcalls) ------------------------------------------------ */
static pw_ctx *caller_root(pw_vm *vm) {
    pw_ctx *c = ctx_effective(vm);
    return c ? c->root : NULL;
}

/* Parses guest pairs (keys lowercased) and re-serializes them for the embedding. */
static int normalize(pw_hmap *m, pw_buf *out, const uint8_t *p, size_t n) {
    return hmap_parse(m, p, n) || hmap_serialize(m, out) ? -1 : 0;
}

/* Hands a checked call to the embedding; on OK the call is in flight and its token is
 * written to the guest. */
static int launch(pw_vm *vm, pw_callout *call, uint32_t token_ptr) {
    pw_ctx *root = caller_root(vm);
    if (!root) return ST_BAD_ARGUMENT; /* no plugin to answer to (start-up code) */
    if (!callout_cb || !vm->callout_handle) /* no clusters: every name is unknown */
        return call->kind == PW_CALL_HTTP ? ST_BAD_ARGUMENT : ST_PARSE_FAILURE;
    if (vm->calls.n >= vm->max_calls) return ST_INTERNAL_FAILURE; /* documented bound */
    if (call_reserve(&vm->calls)) return ST_INTERNAL_FAILURE;
    call->root = root->id;
    uint32_t seq = vm->calls.seq;
    call->token = next_token(vm, call->kind);
    uint64_t t0 = callback_begin();
    int st = callout_cb(vm->callout_handle, call);
    vm_paused(vm, t0); /* Python's time, not the guest's */
    if (st != ST_OK) {
        vm->calls.seq = seq; /* a refused call uses no token, as in Envoy */
        return st;
    }
    pw_calls *t = &vm->calls;
    t->slots[call_slot(t, call->token)] = (pw_call){call->token, root->id, (uint8_t)call->kind, 0};
    t->n++;
    gput_u32(vm, token_ptr, call->token); /* checked writable before the call started */
    return ST_OK;
}

static int has_value(const pw_hmap *m, const char *key) {
    return hmap_find(m, (const uint8_t *)key, strlen(key)) >= 0;
}

int callout_http(pw_vm *vm, const uint8_t *up, size_t upl, const uint8_t *hp, size_t hl,
                 const uint8_t *body, size_t bl, const uint8_t *tp, size_t tl, uint32_t timeout_ms,
                 uint32_t token_ptr) {
    pw_callres *cr = &vm->cr;
    /* Envoy reads the timeout as a signed int and refuses a negative one. */
    if (timeout_ms > INT32_MAX) return ST_BAD_ARGUMENT;
    if (normalize(&cr->req_headers, &cr->req_ser[0], hp, hl) ||
        normalize(&cr->req_trailers, &cr->req_ser[1], tp, tl))
        return ST_BAD_ARGUMENT;
    /* Envoy refuses a call without :method, :path or :authority (its Host()). */
    if (!has_value(&cr->req_headers, ":method") || !has_value(&cr->req_headers, ":path") ||
        !has_value(&cr->req_headers, ":authority"))
        return ST_BAD_ARGUMENT;
    if (bl > vm->buffer_limit) return ST_BAD_ARGUMENT; /* Envoy's buffer limit */
    pw_callout call = {.kind = PW_CALL_HTTP,
                       .upstream = up, .upstream_len = upl,
                       .headers = cr->req_ser[0].p, .headers_len = cr->req_ser[0].len,
                       .body = body, .body_len = bl,
                       .trailers = cr->req_ser[1].p, .trailers_len = cr->req_ser[1].len,
                       .timeout_ms = timeout_ms};
    return launch(vm, &call, token_ptr);
}

int callout_grpc(pw_vm *vm, int kind, const uint8_t *up, size_t upl, const uint8_t *svc,
                 size_t svcl, const uint8_t *meth, size_t methl, const uint8_t *md, size_t mdl,
                 const uint8_t *msg, size_t msgl, uint32_t timeout_ms, uint32_t token_ptr) {
    pw_callres *cr = &vm->cr;
    if (normalize(&cr->req_headers, &cr->req_ser[0], md, mdl)) return ST_BAD_ARGUMENT;
    if (msgl > vm->buffer_limit) return ST_BAD_ARGUMENT;
    pw_callout call = {.kind = kind,
                       .upstream = up, .upstream_len = upl,
                       .headers = cr->req_ser[0].p, .headers_len = cr->req_ser[0].len,
                       .body = msg, .body_len = msgl,
                       .service = svc, .service_len = svcl,
                       .method = meth, .method_len = methl,
                       .timeout_ms = timeout_ms};
    return launch(vm, &call, token_ptr);
}

/* grpc_send / grpc_cancel / grpc_close. Envoy: a token of the wrong kind is BAD_ARGUMENT, an
 * unknown one NOT_FOUND. */
int callout_grpc_op(pw_vm *vm, uint32_t token, int op, const uint8_t *msg, size_t len, int end) {
    uint32_t kind = token & 3;
    if (op == PW_OP_SEND ? kind != PW_CALL_GRPC_STREAM
                         : (kind != PW_CALL_GRPC && kind != PW_CALL_GRPC_STREAM))
        return ST_BAD_ARGUMENT;
    pw_call *c = call_find(vm, token);
    if (!c) return ST_NOT_FOUND;
    switch (op) {
    case PW_OP_SEND:
        if (c->half_closed) return ST_BAD_ARGUMENT; /* nothing may follow end_stream */
        if (len > vm->buffer_limit) return ST_BAD_ARGUMENT;
        uint64_t t0 = callback_begin();
        int st = callop_cb(vm->callout_handle, token, PW_OP_SEND, msg, len, end);
        vm_paused(vm, t0);
        if (st != ST_OK) return st; /* the stream's send buffer is full: nothing was sent */
        if (end) c->half_closed = 1;
        return ST_OK;
    case PW_OP_CLOSE:
        if (kind == PW_CALL_GRPC_STREAM) { /* local half-close; kept until the remote closes */
            if (!c->half_closed) {
                c->half_closed = 1;
                uint64_t t0 = callback_begin();
                callop_cb(vm->callout_handle, token, PW_OP_CLOSE, NULL, 0, 1);
                vm_paused(vm, t0);
            }
            return ST_OK;
        }
        break; /* closing a unary call cancels it */
    default:
        break;
    }
    call_remove(vm, token);
    cancel(vm, token);
    return ST_OK;
}

/* ---- maps and buffers of the answer being delivered -------------------------------- */
pw_hmap *callout_map(pw_vm *vm, uint32_t type, int write, int *st) {
    *st = ST_BAD_ARGUMENT; /* read-only, and only inside the callback that delivers it */
    if (write) return NULL;
    int ok = (type == 6 || type == 7) ? vm->phase == PH_HTTP_CALL
           : type == 4                ? vm->phase == PH_GRPC_INITIAL
           : type == 5                ? vm->phase == PH_GRPC_TRAILING
                                      : 0;
    if (!ok) return NULL;
    *st = ST_OK;
    return type == 7 ? &vm->cr.b : &vm->cr.a;
}

pw_buf *callout_buffer(pw_vm *vm, uint32_t type, int write, int *st) {
    int ok = (type == 4 && vm->phase == PH_HTTP_CALL) || (type == 5 && vm->phase == PH_GRPC_MESSAGE);
    *st = !ok ? ST_NOT_FOUND : write ? ST_BAD_ARGUMENT : ST_OK;
    return *st == ST_OK ? &vm->cr.body : NULL;
}

/* ---- delivering an answer (on the owner thread, from the dispatcher) --------------- */
static int fill_map(pw_hmap *m, const uint8_t *p, size_t n, int nflat) {
    return nflat < 0 ? hmap_parse(m, p, n) : hmap_parse_flat(m, p, n, (uint32_t)nflat);
}

static void set_status(pw_ctx *root, uint32_t code, const uint8_t *msg, size_t len) {
    root->r->status_code = code;
    if (buf_set(&root->r->status_msg, msg, len)) buf_clear(&root->r->status_msg);
}

int callout_deliver(pw_vm *vm, const pw_call_event *ev) {
    pw_call *c = call_find(vm, ev->token);
    if (!c || vm->failed) return 0; /* cancelled, finished or VM failed: dropped */
    pw_ctx *root = ctx_get(vm, c->root);
    if (!root || root->kind != CTX_ROOT) { /* cannot happen: deleting a root cancels its calls */
        call_remove(vm, ev->token);
        return 0;
    }
    pw_callres *cr = &vm->cr;
    hmap_clear(&cr->a);
    hmap_clear(&cr->b);
    buf_clear(&cr->body);
    uint32_t id = root->id, token = ev->token, kind = c->kind;
    uint32_t a[5] = {id, token, 0, 0, 0};
    int fn, phase, nargs = 3, finished = 0;
    switch (ev->ev) {
    case PW_EV_HTTP_RESPONSE:
        if (fill_map(&cr->a, ev->headers, ev->headers_len, ev->nheaders) ||
            fill_map(&cr->b, ev->trailers, ev->trailers_len, ev->ntrailers) ||
            buf_set(&cr->body, ev->body, ev->body_len)) {
            hmap_clear(&cr->a); /* cannot be kept: delivered as a failure */
            hmap_clear(&cr->b);
            buf_clear(&cr->body);
            set_status(root, ST_INTERNAL_FAILURE, (const uint8_t *)"bad response", 12);
        } else {
            set_status(root, ST_OK, NULL, 0);
        }
        a[2] = (uint32_t)cr->a.n, a[3] = (uint32_t)cr->body.len, a[4] = (uint32_t)cr->b.n;
        fn = FN_ON_HTTP_CALL_RESPONSE, phase = PH_HTTP_CALL, nargs = 5, finished = 1;
        break;
    case PW_EV_HTTP_FAILURE: /* Envoy: the callback with no headers, body or trailers */
        set_status(root, ev->status, ev->body, ev->body_len);
        fn = FN_ON_HTTP_CALL_RESPONSE, phase = PH_HTTP_CALL, nargs = 5, finished = 1;
        break;
    case PW_EV_GRPC_INITIAL:
    case PW_EV_GRPC_TRAILING:
        if (kind != PW_CALL_GRPC_STREAM) return 0; /* unary calls get no metadata callbacks */
        if (fill_map(&cr->a, ev->headers, ev->headers_len, ev->nheaders)) hmap_clear(&cr->a);
        a[2] = (uint32_t)cr->a.n;
        fn = ev->ev == PW_EV_GRPC_INITIAL ? FN_ON_GRPC_INITIAL : FN_ON_GRPC_TRAILING;
        phase = ev->ev == PW_EV_GRPC_INITIAL ? PH_GRPC_INITIAL : PH_GRPC_TRAILING;
        break;
    case PW_EV_GRPC_MESSAGE:
        if (buf_set(&cr->body, ev->body, ev->body_len)) return 0;
        a[2] = (uint32_t)cr->body.len;
        fn = FN_ON_GRPC_RECEIVE, phase = PH_GRPC_MESSAGE;
        if (kind == PW_CALL_GRPC) { /* a unary success: the call ends with its message */
            set_status(root, 0, NULL, 0);
            finished = 1;
        }
        break;
    case PW_EV_GRPC_CLOSE:
        set_status(root, ev->status, ev->body, ev->body_len);
        a[2] = ev->status;
        fn = FN_ON_GRPC_CLOSE, phase = PH_GRPC_CLOSE, finished = 1;
        break;
    default:
        return 0;
    }
    if (finished) call_remove(vm, token);
    vm_call(vm, fn, root, phase, nargs, a, NULL);
    hmap_clear(&cr->a);
    hmap_clear(&cr->b);
    buf_clear(&cr->body);
    vm_run_deferred(vm);
    return 1;
}
