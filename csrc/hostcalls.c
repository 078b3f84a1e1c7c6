/* The ABI glue: one C function per proxy_* import (ABI.md §5). Each validates the guest's
 * pointers and sizes, acts on the effective context, and answers with an ABI status.
 * Context semantics live in context.c / http.c / tcp.c; shared state in shared.c,
 * queue.c and metrics.c; properties in props.c. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

/* ---- guest memory ---------------------------------------------------------------------- */
void mem_refresh(pw_vm *vm, wasmtime_context_t *cx) {
    if (!vm->mem_ready) { /* a start function: instantiation has not handed us the memory */
        vm->mbase = NULL;
        vm->msize = 0;
        return;
    }
    vm->mbase = WT.memory_data(cx, &vm->mem);
    vm->msize = WT.memory_data_size(cx, &vm->mem);
}

uint8_t *gmem(pw_vm *vm, uint32_t ptr, uint32_t len) {
    if ((uint64_t)ptr + len > vm->msize) return NULL;
    return vm->mbase + ptr;
}

int gput_u32(pw_vm *vm, uint32_t ptr, uint32_t v) {
    uint8_t *p = gmem(vm, ptr, 4);
    if (!p) return -1;
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
    return 0;
}

int gput_u64(pw_vm *vm, uint32_t ptr, uint64_t v) {
    uint8_t *p = gmem(vm, ptr, 8);
    if (!p) return -1;
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
    return 0;
}

/* One exactly-sized guest allocation for an answer of n > 0 bytes; writes its address and
 * size to the out-parameters before anything else can run in the guest, and returns where
 * to copy the bytes (valid until the next guest call), or NULL with *status set. */
static uint8_t *galloc(pw_vm *vm, wasmtime_context_t *cx, size_t n, uint32_t ptr_ptr,
                       uint32_t size_ptr, int *status, wasm_trap_t **trap) {
    *status = ST_INVALID_MEMORY_ACCESS;
    if (n > UINT32_MAX || !gmem(vm, ptr_ptr, 4) || !gmem(vm, size_ptr, 4)) return NULL;
    wasmtime_val_raw_t raw[8];
    memset(raw, 0, sizeof raw);
    raw[0].i32 = (int32_t)n;
    /* While the guest allocates, only logging and clocks are allowed (as in cpp-host), so
     * nothing the caller is about to copy can change under it. */
    vm->in_alloc++;
    wasmtime_error_t *err = WT.func_call_unchecked(cx, &vm->fn[FN_ALLOC], raw, 8, trap);
    vm->in_alloc--;
    mem_refresh(vm, cx); /* the guest may have grown (and moved) its memory */
    mem_refresh(vm, cx); /* the guest may have grown (and moved) its memory */
    if (err) {
        vm_fail(vm, "the guest allocator failed", NULL, err);
        *trap = WT.trap_new("allocator failed", 16);
        return NULL;
    }
    if (*trap) return NULL;
    uint32_t p = (uint32_t)raw[0].i32;
    uint8_t *dst = p ? gmem(vm, p, (uint32_t)n) : NULL;
    if (!dst || gput_u32(vm, ptr_ptr, p) || gput_u32(vm, size_ptr, (uint32_t)n))
        return NULL;
    *status = ST_OK;
    return dst;
}

int greturn(pw_vm *vm, wasmtime_context_t *cx, const uint8_t *d, size_t n, uint32_t ptr_ptr,
            uint32_t size_ptr, wasm_trap_t **trap) {
    if (n == 0) { /* empty: no allocation, ptr 0 / size 0 (ABI.md §1) */
        if (gput_u32(vm, ptr_ptr, 0) || gput_u32(vm, size_ptr, 0))
            return ST_INVALID_MEMORY_ACCESS;
        return ST_OK;
    }
    int st;
    uint8_t *dst = galloc(vm, cx, n, ptr_ptr, size_ptr, &st, trap);
    if (dst) memcpy(dst, d, n);
    return st;
}

/* ---- prologue ------------------------------------------------------------------------ */
#define HOSTCALL(name)                                                                    \
    static wasm_trap_t *hc_##name(void *env_, wasmtime_caller_t *caller,                  \
                                  wasmtime_val_raw_t *a, size_t nargs_)
#define BEGIN                                                                             \
    (void)env_;                                                                           \
    (void)nargs_;                                                                         \
    wasm_trap_t *trap = NULL;                                                             \
    (void)trap;                                                                           \
    wasmtime_context_t *cx = WT.caller_context(caller);                                   \
    pw_vm *vm = WT.context_get_data(cx);                                                  \
    mem_refresh(vm, cx);                                                                  \
    if (vm->trace) trace_enter(vm, a, nargs_);
/* Calls that may touch host state are refused while the guest allocator runs. */
#define BEGIN_RESTRICTED \
    BEGIN;               \
    if (vm->in_alloc) RET(ST_INTERNAL_FAILURE);
#define U(i) ((uint32_t)a[i].i32)
#define RET(v)                                             \
    do {                                                   \
        a[0].i32 = (int32_t)(v);                           \
        if (vm->trace) trace_hostcall(vm, __func__ + 3, a[0].i32); \
        return trap;                                       \
    } while (0)
#define MEM(var, ptr, len)                                    \
    const uint8_t *var = gmem(vm, (ptr), (len));          \
    if (!var) RET(ST_INVALID_MEMORY_ACCESS);

static pw_ctx *root_of_eff(pw_vm *vm) {
    pw_ctx *c = ctx_effective(vm);
    return c ? c->root : NULL;
}

/* ---- logging, time, timers -------------------------------------------------------- */
HOSTCALL(log) {
    BEGIN;
    if (U(0) > LOG_CRITICAL) RET(ST_BAD_ARGUMENT);
    MEM(msg, U(1), U(2));
    vm_log(vm, ctx_effective(vm), (int)U(0), (const char *)msg, U(2));
    RET(ST_OK);
}

HOSTCALL(get_log_level) {
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    int level = root ? root->r->log_level : vm->log_level;
    if (level > LOG_CRITICAL) level = LOG_CRITICAL; /* "off" is not a LogLevel */
    if (gput_u32(vm, U(0), (uint32_t)level)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(get_current_time_nanoseconds) {
    BEGIN;
    if (gput_u64(vm, U(0), vm_now_ns(vm, 0))) RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(set_tick_period_milliseconds) {
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    if (!root) RET(ST_BAD_ARGUMENT);
    root->r->tick_period_ms = U(0);
    root->r->next_tick_ns = vm_tick_after(vm_now_ns(vm, 1), U(0));
    RET(ST_OK);
}

/* ---- configuration and buffers -------------------------------------------------------- */
HOSTCALL(get_configuration) { /* 0.1.0 */
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    const pw_buf *b = (vm->phase == PH_CONFIGURE && root) ? &root->r->config : &vm->vm_config;
    RET(greturn(vm, cx, b->p, b->len, U(0), U(1), &trap));
}

/* Finds buffer `type` for the effective context; NULL with *st when unavailable. */
static pw_buf *find_buffer(pw_vm *vm, uint32_t type, int write, int *st) {
    pw_ctx *c = ctx_effective(vm);
    *st = ST_NOT_FOUND;
    switch (type) {
    case 0: case 1: case 2: case 3:
        return stream_buffer(vm, c, type, st);
    case 6:
        if (write) break;
        *st = ST_OK;
        return &vm->vm_config;
    case 7:
        if (vm->phase != PH_CONFIGURE || !c || !c->root) return NULL;
        if (write) break;
        *st = ST_OK;
        return &c->root->r->config;
    case 8:
        if (vm->phase != PH_FOREIGN) return NULL;
        if (write) break;
        *st = ST_OK;
        return &vm->call_data;
    case 4: case 5:
        return callout_buffer(vm, type, write, st);
    default:
        *st = ST_BAD_ARGUMENT;
        return NULL;
    }
    *st = ST_BAD_ARGUMENT; /* immutable buffer */
    return NULL;
}

HOSTCALL(get_buffer_bytes) {
    BEGIN_RESTRICTED;
    int st;
    pw_buf *b = find_buffer(vm, U(0), 0, &st);
    if (!b) RET(st);
    uint64_t start = U(1), max = U(2);
    size_t n = start >= b->len ? 0 : (size_t)(b->len - start < max ? b->len - start : max);
    RET(greturn(vm, cx, n ? b->p + start : NULL, n, U(3), U(4), &trap));
}

HOSTCALL(get_buffer_status) {
    BEGIN_RESTRICTED;
    int st;
    pw_buf *b = find_buffer(vm, U(0), 0, &st);
    if (!b) RET(st);
    if (b->len > UINT32_MAX || gput_u32(vm, U(1), (uint32_t)b->len) ||
        gput_u32(vm, U(2), 0))
        RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(set_buffer_bytes) {
    BEGIN_RESTRICTED;
    MEM(v, U(3), U(4));
    int st;
    pw_buf *b = find_buffer(vm, U(0), 1, &st);
    if (!b) RET(st);
    uint32_t start = U(1), size = U(2);
    /* Envoy's copyFrom: start 0 drains `size` bytes then prepends; start >= len appends;
     * a middle insert is not supported. */
    uint64_t cap = vm->limits.body_bytes;
    if (start == 0) { /* `v` is guest memory: reshaping our buffer cannot move it */
        size_t kept = size >= b->len ? 0 : b->len - size;
        if (cap && (uint64_t)kept + U(4) > cap && (uint64_t)kept + U(4) > b->len)
            RET(ST_INTERNAL_FAILURE); /* past Limits.body_bytes: nothing changes */
        if (buf_reserve(b, kept + U(4))) RET(ST_INTERNAL_FAILURE); /* then nothing fails */
        buf_drain_front(b, size);
        buf_prepend(b, v, U(4));
        RET(ST_OK);
    }
    if (start >= b->len) {
        if (cap && (uint64_t)b->len + U(4) > cap && U(4)) RET(ST_INTERNAL_FAILURE);
        RET(buf_append(b, v, U(4)) ? ST_INTERNAL_FAILURE : ST_OK);
    }
    RET(ST_BAD_ARGUMENT);
}

/* ---- header maps ------------------------------------------------------------------------ */
/* Types 4..7 (gRPC and HTTP-call maps) exist only while their answer is delivered. The
 * AssemblyScript SDK numbers them one higher (its 4 is a map Envoy never had). */
static pw_hmap *find_map(pw_vm *vm, uint32_t type, int write, int *st) {
    if (vm->legacy_maps && type >= 4) {
        if (type == 4 || type > 8) {
            *st = ST_BAD_ARGUMENT;
            return NULL;
        }
        type--;
    }
    if (type >= 4 && type <= 7) return callout_map(vm, type, write, st);
    return http_map(ctx_effective(vm), type, write, st);
}

HOSTCALL(get_header_map_size) {
    BEGIN_RESTRICTED;
    int st;
    pw_hmap *m = find_map(vm, U(0), 0, &st);
    if (!m) RET(st);
    /* The spec's meaning (serialized size), not Envoy's byteSize(): see docs. */
    size_t n = hmap_serialized_size(m);
    if (n > UINT32_MAX || gput_u32(vm, U(1), (uint32_t)n)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(get_header_map_pairs) {
    BEGIN_RESTRICTED;
    int st;
    pw_hmap *m = find_map(vm, U(0), 0, &st);
    if (!m && st == ST_BAD_ARGUMENT && U(0) > (vm->legacy_maps ? 8u : 7u)) RET(st);
    if (!m || m->n == 0) RET(greturn(vm, cx, NULL, 0, U(1), U(2), &trap));
    size_t n = hmap_serialized_size(m);
    uint8_t *dst = galloc(vm, cx, n, U(1), U(2), &st, &trap);
    if (dst) hmap_serialize_to(m, dst);
    RET(st);
}

HOSTCALL(set_header_map_pairs) {
    BEGIN_RESTRICTED;
    MEM(p, U(1), U(2));
    int st;
    pw_hmap *m = find_map(vm, U(0), 1, &st);
    if (!m) RET(st);
    RET(hmap_parse(m, p, U(2)) ? ST_BAD_ARGUMENT : ST_OK);
}

HOSTCALL(get_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, U(1), U(2));
    int st;
    pw_hmap *m = find_map(vm, U(0), 0, &st);
    if (!m) {
        if (U(0) <= 7 && vm->phase == PH_LOG)
            RET(vm->abi == PW_ABI_0_1_0 ? greturn(vm, cx, NULL, 0, U(3), U(4), &trap)
                                        : ST_NOT_FOUND);
        RET(st);
    }
    size_t vl = 0;
    const uint8_t *v = hmap_get(m, k, U(2), &vl);
    if (!v && vm->abi != PW_ABI_0_1_0) RET(ST_NOT_FOUND);
    RET(greturn(vm, cx, v, v ? vl : 0, U(3), U(4), &trap));
}

HOSTCALL(add_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, U(1), U(2));
    MEM(v, U(3), U(4));
    int st;
    pw_hmap *m = find_map(vm, U(0), 1, &st);
    if (!m) RET(st);
    RET(hmap_add(m, k, U(2), v, U(4)) ? ST_INTERNAL_FAILURE : ST_OK);
}

HOSTCALL(replace_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, U(1), U(2));
    MEM(v, U(3), U(4));
    int st;
    pw_hmap *m = find_map(vm, U(0), 1, &st);
    if (!m) RET(st);
    RET(hmap_replace(m, k, U(2), v, U(4)) ? ST_INTERNAL_FAILURE : ST_OK);
}

HOSTCALL(remove_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, U(1), U(2));
    int st;
    pw_hmap *m = find_map(vm, U(0), 1, &st);
    if (!m) RET(st);
    hmap_remove(m, k, U(2));
    RET(ST_OK);
}

/* ---- stream control ------------------------------------------------------------------------ */
static int continue_stream(pw_vm *vm, uint32_t type) {
    if (type > 3) return ST_BAD_ARGUMENT;
    if (type == 3) return ST_UNIMPLEMENTED; /* Envoy cannot resume the upstream side */
    pw_ctx *c = ctx_effective(vm);
    /* A continue that fits no paused stream is a harmless no-op (ABI.md §9.8). */
    if (c && ((c->kind == CTX_HTTP && type <= 1) || (c->kind == CTX_TCP && type == 2)))
        if (vm_defer(vm, DF_CONTINUE, c->id, type)) return ST_INTERNAL_FAILURE;
    return ST_OK;
}

HOSTCALL(continue_stream) {
    BEGIN_RESTRICTED;
    RET(continue_stream(vm, U(0)));
}

HOSTCALL(continue_request) {
    BEGIN_RESTRICTED;
    RET(continue_stream(vm, 0));
}

HOSTCALL(continue_response) {
    BEGIN_RESTRICTED;
    RET(continue_stream(vm, 1));
}

HOSTCALL(close_stream) {
    BEGIN_RESTRICTED;
    if (U(0) > 3) RET(ST_BAD_ARGUMENT);
    pw_ctx *c = ctx_effective(vm);
    if (c && c->kind != CTX_ROOT && vm_defer(vm, DF_CLOSE, c->id, U(0)))
        RET(ST_INTERNAL_FAILURE);
    RET(ST_OK);
}

HOSTCALL(clear_route_cache) { /* 0.1.0; there is no router to recompute here */
    BEGIN_RESTRICTED;
    RET(ST_OK);
}

HOSTCALL(send_local_response) {
    BEGIN_RESTRICTED;
    MEM(details, U(1), U(2));
    MEM(body, U(3), U(4));
    MEM(hdrs, U(5), U(6));
    pw_ctx *c = ctx_effective(vm);
    if (!c || c->kind != CTX_HTTP) RET(ST_OK); /* Envoy: OK even when no reply is possible */
    pw_http *h = c->h;
    if (h->lr_pending || h->local_reply) RET(ST_OK); /* the first reply stands */
    if (hmap_parse(&h->lr_headers, hdrs, U(6))) RET(ST_BAD_ARGUMENT);
    if (buf_set(&h->lr_details, details, U(2)) || buf_set(&h->lr_body, body, U(4)))
        RET(ST_INTERNAL_FAILURE);
    for (size_t i = 0; i < h->lr_details.len; i++)
        if (h->lr_details.p[i] == ' ') h->lr_details.p[i] = '_';
    h->lr_status = U(0);
    h->lr_grpc = a[7].i32;
    h->lr_pending = 1;
    if (vm_defer(vm, DF_LOCAL_REPLY, c->id, 0)) {
        h->lr_pending = 0;
        RET(ST_INTERNAL_FAILURE);
    }
    if (c == vm->cur) vm->local_reply_in_call = 1;
    RET(ST_OK);
}

/* The outcome of the root's last outbound call: gRPC status and message after a gRPC close,
 * 0 after an answer, the failure's status and reason after a failed HTTP call. */
HOSTCALL(get_status) {
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    uint32_t code = root ? root->r->status_code : 0;
    const pw_buf *msg = root ? &root->r->status_msg : NULL;
    if (gput_u32(vm, U(0), code)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(greturn(vm, cx, msg ? msg->p : NULL, msg ? msg->len : 0, U(1), U(2), &trap));
}

/* ---- outbound calls (semantics in callout.c) ------------------------------------- */
HOSTCALL(http_call) {
    BEGIN_RESTRICTED;
    MEM(up, U(0), U(1));
    MEM(hdrs, U(2), U(3));
    MEM(body, U(4), U(5));
    MEM(trl, U(6), U(7));
    if (!gmem(vm, U(9), 4)) RET(ST_INVALID_MEMORY_ACCESS); /* before the call starts */
    RET(callout_http(vm, up, U(1), hdrs, U(3), body, U(5), trl, U(7), U(8), U(9)));
}

HOSTCALL(grpc_call) {
    BEGIN_RESTRICTED;
    MEM(up, U(0), U(1));
    MEM(svc, U(2), U(3));
    MEM(meth, U(4), U(5));
    MEM(md, U(6), U(7));
    MEM(msg, U(8), U(9));
    if (!gmem(vm, U(11), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC, up, U(1), svc, U(3), meth, U(5), md, U(7), msg, U(9),
                     U(10), U(11)));
}

HOSTCALL(grpc_stream) {
    BEGIN_RESTRICTED;
    MEM(up, U(0), U(1));
    MEM(svc, U(2), U(3));
    MEM(meth, U(4), U(5));
    MEM(md, U(6), U(7));
    if (!gmem(vm, U(8), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC_STREAM, up, U(1), svc, U(3), meth, U(5), md, U(7), NULL, 0,
                     0, U(8)));
}

/* The AssemblyScript SDK's shapes: no initial-metadata pair (10 and 7 parameters). */
HOSTCALL(as_grpc_call) {
    BEGIN_RESTRICTED;
    MEM(up, U(0), U(1));
    MEM(svc, U(2), U(3));
    MEM(meth, U(4), U(5));
    MEM(msg, U(6), U(7));
    if (!gmem(vm, U(9), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC, up, U(1), svc, U(3), meth, U(5), NULL, 0, msg, U(7), U(8),
                     U(9)));
}

HOSTCALL(as_grpc_stream) {
    BEGIN_RESTRICTED;
    MEM(up, U(0), U(1));
    MEM(svc, U(2), U(3));
    MEM(meth, U(4), U(5));
    if (!gmem(vm, U(6), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC_STREAM, up, U(1), svc, U(3), meth, U(5), NULL, 0, NULL, 0,
                     0, U(6)));
}

HOSTCALL(grpc_send) {
    BEGIN_RESTRICTED;
    MEM(msg, U(1), U(2));
    RET(callout_grpc_op(vm, U(0), PW_OP_SEND, msg, U(2), U(3) != 0));
}

HOSTCALL(grpc_cancel) {
    BEGIN_RESTRICTED;
    RET(callout_grpc_op(vm, U(0), PW_OP_CANCEL, NULL, 0, 0));
}

HOSTCALL(grpc_close) {
    BEGIN_RESTRICTED;
    RET(callout_grpc_op(vm, U(0), PW_OP_CLOSE, NULL, 0, 0));
}

/* ---- shared data and queues ----------------------------------------------------------- */
HOSTCALL(get_shared_data) {
    BEGIN_RESTRICTED;
    MEM(k, U(0), U(1));
    uint32_t cas = 0;
    int st = state_get(vm, k, U(1), &vm->hc, &cas);
    if (st != ST_OK) RET(st);
    if (!gmem(vm, U(4), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    st = greturn(vm, cx, vm->hc.p, vm->hc.len, U(2), U(3), &trap);
    if (st == ST_OK && gput_u32(vm, U(4), cas)) st = ST_INVALID_MEMORY_ACCESS;
    RET(st);
}

HOSTCALL(set_shared_data) {
    BEGIN_RESTRICTED;
    MEM(k, U(0), U(1));
    MEM(v, U(2), U(3));
    RET(state_set(vm, k, U(1), v, U(3), U(4)));
}

HOSTCALL(register_shared_queue) {
    BEGIN_RESTRICTED;
    MEM(name, U(0), U(1));
    if (!gmem(vm, U(2), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    if (!vm->disp) RET(ST_INTERNAL_FAILURE); /* its thread's dispatcher is gone */
    pw_ctx *root = root_of_eff(vm);
    int created;
    uint32_t id;
    int st = backend_q_register(vm, name, U(1), root ? root->id : 0,
                                vm->queues_created < PW_QUEUES_PER_VM, &created, &id);
    vm->queues_created += (uint32_t)created;
    if (st != ST_OK) RET(st);
    gput_u32(vm, U(2), id);
    RET(ST_OK);
}

HOSTCALL(resolve_shared_queue) {
    BEGIN_RESTRICTED;
    MEM(vid, U(0), U(1));
    MEM(name, U(2), U(3));
    if (!gmem(vm, U(4), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    uint32_t id = 0;
    /* An empty vm_id is this VM's; another one is found in this VM's namespace, in
     * whichever backend holds it. */
    int st = backend_q_resolve(vm, vid, U(1), name, U(3), &id);
    if (st == ST_OK) gput_u32(vm, U(4), id);
    RET(st);
}

HOSTCALL(enqueue_shared_queue) {
    BEGIN_RESTRICTED;
    MEM(v, U(1), U(2));
    RET(state_enqueue(U(0), v, U(2)));
}

HOSTCALL(dequeue_shared_queue) {
    BEGIN_RESTRICTED;
    if (!gmem(vm, U(1), 4) || !gmem(vm, U(2), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    int st = state_dequeue(U(0), &vm->hc);
    if (st != ST_OK) RET(st);
    RET(greturn(vm, cx, vm->hc.p, vm->hc.len, U(1), U(2), &trap));
}

/* ---- metrics ---------------------------------------------------------------------------- */
HOSTCALL(define_metric) {
    BEGIN_RESTRICTED;
    if (U(0) > 2) RET(ST_BAD_ARGUMENT);
    MEM(name, U(1), U(2));
    if (!gmem(vm, U(3), 4)) RET(ST_INVALID_MEMORY_ACCESS);
    uint32_t id = 0;
    int st = metric_define(vm, U(0), name, U(2), &id);
    if (st == ST_OK) gput_u32(vm, U(3), id);
    RET(st);
}

HOSTCALL(increment_metric) {
    BEGIN_RESTRICTED;
    RET(metric_increment(vm, U(0), a[1].i64));
}

HOSTCALL(record_metric) {
    BEGIN_RESTRICTED;
    RET(metric_record(vm, U(0), (uint64_t)a[1].i64));
}

HOSTCALL(get_metric) {
    BEGIN_RESTRICTED;
    if (!gmem(vm, U(1), 8)) RET(ST_INVALID_MEMORY_ACCESS);
    uint64_t v = 0;
    int st = metric_get(vm, U(0), &v);
    if (st == ST_OK) gput_u64(vm, U(1), v);
    RET(st);
}

/* ---- properties ---------------------------------------------------------------------------- */
HOSTCALL(get_property) {
    BEGIN_RESTRICTED;
    MEM(path, U(0), U(1));
    int st = props_get(vm, ctx_effective(vm), path, U(1), &vm->hc);
    if (st != ST_OK) RET(st);
    RET(greturn(vm, cx, vm->hc.p, vm->hc.len, U(2), U(3), &trap));
}

HOSTCALL(set_property) {
    BEGIN_RESTRICTED;
    MEM(path, U(0), U(1));
    MEM(v, U(2), U(3));
    RET(props_set(vm, ctx_effective(vm), path, U(1), v, U(3)));
}

/* ---- contexts and foreign functions ------------------------------------------------------ */
HOSTCALL(set_effective_context) {
    BEGIN_RESTRICTED;
    pw_ctx *c = ctx_get(vm, U(0));
    if (!c || !c->created) RET(ST_BAD_ARGUMENT);
    vm->eff = c;
    RET(ST_OK);
}

HOSTCALL(done) {
    BEGIN_RESTRICTED;
    pw_ctx *c = ctx_effective(vm);
    if (!c || c->kind != CTX_ROOT || !c->r->pending_done) RET(ST_NOT_FOUND);
    c->r->pending_done = 0;
    RET(vm_defer(vm, DF_DELETE_ROOT, c->id, 0) ? ST_INTERNAL_FAILURE : ST_OK);
}

HOSTCALL(call_foreign_function) {
    BEGIN_RESTRICTED;
    MEM(name, U(0), U(1));
    MEM(args, U(2), U(3));
    pw_foreign *f = vm->foreign;
    while (f && (f->name.len != U(1) || (U(1) && memcmp(f->name.p, name, U(1)))))
        f = f->next;
    if (!f || (!f->native && !pw_foreign_cb)) RET(ST_NOT_FOUND);
    if (U(4) && (!gmem(vm, U(4), 4) || !gmem(vm, U(5), 4)))
        RET(ST_INVALID_MEMORY_ACCESS);
    buf_clear(&vm->hc);
    /* The guest is suspended, so `args` stays put while Python runs. */
    uint64_t t0 = epoch_now_ns();
    int st = f->native ? f->native(vm, args, U(3), &vm->hc)
                       : pw_foreign_cb(f->handle, args, U(3), &vm->hc);
    vm_paused(vm, t0); /* Python's time, not the guest's */
    if (st != ST_OK || !U(4)) RET(st);
    RET(greturn(vm, cx, vm->hc.p, vm->hc.len, U(4), U(5), &trap));
}

/* ---- non-proxy env imports some toolchains bring -------------------------------------- */
static wasm_trap_t *hc_notify_memory_growth(void *env, wasmtime_caller_t *caller,
                                            wasmtime_val_raw_t *a, size_t n) {
    (void)env, (void)caller, (void)a, (void)n;
    return NULL;
}

HOSTCALL(pthread_equal) {
    BEGIN;
    RET(U(0) == U(1));
}

/* AssemblyScript's abort(msg, file, line, col) without --use abort=...: a trap that says
 * where. The strings are AssemblyScript's UTF-16; they are reported by address. */
HOSTCALL(as_abort) {
    BEGIN;
    char msg[96];
    int n = snprintf(msg, sizeof msg, "abort at line %u column %u", U(2), U(3));
    return WT.trap_new(msg, (size_t)n);
}

/* ---- registration ----------------------------------------------------------------------- */
static const import_def proxy_imports[] = {
    {"proxy_log", "iii", "i", hc_log},
    {"proxy_get_log_level", "i", "i", hc_get_log_level},
    {"proxy_get_current_time_nanoseconds", "i", "i", hc_get_current_time_nanoseconds},
    {"proxy_set_tick_period_milliseconds", "i", "i", hc_set_tick_period_milliseconds},
    {"proxy_get_configuration", "ii", "i", hc_get_configuration},
    {"proxy_get_buffer_bytes", "iiiii", "i", hc_get_buffer_bytes},
    {"proxy_get_buffer_status", "iii", "i", hc_get_buffer_status},
    {"proxy_set_buffer_bytes", "iiiii", "i", hc_set_buffer_bytes},
    {"proxy_get_header_map_size", "ii", "i", hc_get_header_map_size},
    {"proxy_get_header_map_pairs", "iii", "i", hc_get_header_map_pairs},
    {"proxy_set_header_map_pairs", "iii", "i", hc_set_header_map_pairs},
    {"proxy_get_header_map_value", "iiiii", "i", hc_get_header_map_value},
    {"proxy_add_header_map_value", "iiiii", "i", hc_add_header_map_value},
    {"proxy_replace_header_map_value", "iiiii", "i", hc_replace_header_map_value},
    {"proxy_remove_header_map_value", "iii", "i", hc_remove_header_map_value},
    {"proxy_continue_stream", "i", "i", hc_continue_stream},
    {"proxy_close_stream", "i", "i", hc_close_stream},
    {"proxy_continue_request", "", "i", hc_continue_request},
    {"proxy_continue_response", "", "i", hc_continue_response},
    {"proxy_clear_route_cache", "", "i", hc_clear_route_cache},
    {"proxy_send_local_response", "iiiiiiii", "i", hc_send_local_response},
    {"proxy_get_status", "iii", "i", hc_get_status},
    {"proxy_http_call", "iiiiiiiiii", "i", hc_http_call},
    /* The name some 0.1.0-era SDKs and hosts use for the same call. */
    {"proxy_dispatch_http_call", "iiiiiiiiii", "i", hc_http_call},
    {"proxy_grpc_call", "iiiiiiiiiiii", "i", hc_grpc_call},
    {"proxy_grpc_stream", "iiiiiiiii", "i", hc_grpc_stream},
    {"proxy_grpc_send", "iiii", "i", hc_grpc_send},
    {"proxy_grpc_cancel", "i", "i", hc_grpc_cancel},
    {"proxy_grpc_close", "i", "i", hc_grpc_close},
    {"proxy_get_shared_data", "iiiii", "i", hc_get_shared_data},
    {"proxy_set_shared_data", "iiiii", "i", hc_set_shared_data},
    {"proxy_register_shared_queue", "iii", "i", hc_register_shared_queue},
    {"proxy_resolve_shared_queue", "iiiii", "i", hc_resolve_shared_queue},
    {"proxy_enqueue_shared_queue", "iii", "i", hc_enqueue_shared_queue},
    {"proxy_dequeue_shared_queue", "iii", "i", hc_dequeue_shared_queue},
    {"proxy_define_metric", "iiii", "i", hc_define_metric},
    {"proxy_increment_metric", "iI", "i", hc_increment_metric},
    {"proxy_record_metric", "iI", "i", hc_record_metric},
    {"proxy_get_metric", "ii", "i", hc_get_metric},
    {"proxy_get_property", "iiii", "i", hc_get_property},
    {"proxy_set_property", "iiii", "i", hc_set_property},
    {"proxy_set_effective_context", "i", "i", hc_set_effective_context},
    {"proxy_done", "", "i", hc_done},
    {"proxy_call_foreign_function", "iiiiii", "i", hc_call_foreign_function},
    {"emscripten_notify_memory_growth", "i", "", hc_notify_memory_growth},
    {"pthread_equal", "ii", "i", hc_pthread_equal},
    {"abort", "iiii", "", hc_as_abort},
};

static wasm_functype_t *functype(const char *params, const char *results) {
    wasm_valtype_t *p[16], *r[2];
    size_t np = strlen(params), nr = strlen(results);
    for (size_t i = 0; i < np; i++)
        p[i] = WT.valtype_new(params[i] == 'I' ? WASM_I64 : WASM_I32);
    for (size_t i = 0; i < nr; i++)
        r[i] = WT.valtype_new(results[i] == 'I' ? WASM_I64 : WASM_I32);
    wasm_valtype_vec_t pv, rv;
    if (np) WT.valtype_vec_new(&pv, np, p);
    else WT.valtype_vec_new_empty(&pv);
    if (nr) WT.valtype_vec_new(&rv, nr, r);
    else WT.valtype_vec_new_empty(&rv);
    return WT.functype_new(&pv, &rv);
}

int define_imports(wasmtime_linker_t *linker, const char *module, const import_def *d,
                   size_t n, char *err, size_t errlen) {
    for (size_t i = 0; i < n; i++) {
        wasm_functype_t *ft = functype(d[i].params, d[i].results);
        wasmtime_error_t *we = WT.linker_define_func_unchecked(
            linker, module, strlen(module), d[i].name, strlen(d[i].name), ft, d[i].cb, NULL,
            NULL);
        WT.functype_delete(ft);
        if (we) {
            wasm_byte_vec_t msg = {0, NULL};
            WT.error_message(we, &msg);
            snprintf(err, errlen, "cannot define %s.%s: %.*s", module, d[i].name,
                     (int)msg.size, (const char *)msg.data);
            WT.byte_vec_delete(&msg);
            WT.error_delete(we);
            return -1;
        }
    }
    return 0;
}

/* The AssemblyScript SDK's gRPC import shapes, for modules linked with as_grpc. */
static const import_def as_grpc_imports[] = {
    {"proxy_grpc_call", "iiiiiiiiii", "i", hc_as_grpc_call},
    {"proxy_grpc_stream", "iiiiiii", "i", hc_as_grpc_stream},
};

int hostcalls_define(wasmtime_linker_t *linker, int as_grpc, char *err, size_t errlen) {
    size_t n = sizeof proxy_imports / sizeof proxy_imports[0];
    const size_t n_as = sizeof as_grpc_imports / sizeof as_grpc_imports[0];
    for (size_t i = 0; i < n; i++) {
        int replaced = 0;
        for (size_t j = 0; as_grpc && j < n_as; j++)
            replaced |= !strcmp(proxy_imports[i].name, as_grpc_imports[j].name);
        if (!replaced && define_imports(linker, "env", &proxy_imports[i], 1, err, errlen))
            return -1;
    }
    return as_grpc ? define_imports(linker, "env", as_grpc_imports, n_as, err, errlen) : 0;
}

/* The import table as the linker defines it (as_grpc: the AssemblyScript shapes), for
 * load errors that name what differs: "name params results\n" lines, params and results
 * in the "iI" letters above ("-" when empty). Free with pw_bytes_free. */
int pw_host_imports(int as_grpc, uint8_t **out, size_t *len) {
    pw_buf b = {0};
    int ok = 1;
    const size_t n = sizeof proxy_imports / sizeof proxy_imports[0];
    const size_t n_as = sizeof as_grpc_imports / sizeof as_grpc_imports[0];
    for (size_t i = 0; i < n + n_as && ok; i++) {
        const import_def *d = i < n ? &proxy_imports[i] : &as_grpc_imports[i - n];
        int replaced = 0;
        for (size_t j = 0; i < n && j < n_as; j++)
            replaced |= !strcmp(d->name, as_grpc_imports[j].name);
        if ((i < n && as_grpc && replaced) || (i >= n && !as_grpc)) continue;
        char line[160];
        int k = snprintf(line, sizeof line, "%s %s %s\n", d->name, *d->params ? d->params : "-",
                         *d->results ? d->results : "-");
        ok = k > 0 && (size_t)k < sizeof line && !buf_append(&b, (const uint8_t *)line, (size_t)k);
    }
    if (!ok || (!b.p && buf_reserve(&b, 1))) {
        buf_free(&b);
        return PW_ERR;
    }
    *out = b.p;
    *len = b.len;
    return PW_OK;
}
