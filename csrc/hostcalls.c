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
    wr_le(p, v, 4);
    return 0;
}

int gput_u64(pw_vm *vm, uint32_t ptr, uint64_t v) {
    uint8_t *p = gmem(vm, ptr, 8);
    if (!p) return -1;
    wr_le(p, v, 8);
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
/* Every hostcall is declared once, in abi.h's HOSTCALLS list. From it come, per hostcall:
 * struct hc_args_NAME (its parameters, named and typed), the wasmtime callback hc_NAME
 * that hands the raw arguments to the body as that struct, traces, and answers the body's
 * status, and the body's prototype, so a body that does not match its declaration does
 * not compile. A body is written HOSTCALL(name) { BEGIN; ... RET(status); } and reads
 * arg->parameter. The struct lays a named, typed view over wasmtime's argument slots (one
 * 16-byte wasmtime_val_raw_t each, the value at its start as wasmtime writes it), so a body
 * reads an argument where and when it uses it, as indexing the slots by hand did. */
typedef struct hc_frame {
    pw_vm *vm;
    wasmtime_context_t *cx;
    wasm_trap_t *trap; /* what the callback returns to wasmtime: NULL, or a trap */
} hc_frame;

#define HC_FIELD(i, p) PW_PP_CAT_(HC_FIELD_, p)
#define HC_FIELD_ wasmtime_val_raw_t none_;
#define HC_SLOT(type, n)                                                                  \
    union {                                                                               \
        type n;                                                                           \
        wasmtime_val_raw_t n##_slot_;                                                     \
    };
#define HC_FIELD_I32(n) HC_SLOT(uint32_t, n)
#define HC_FIELD_S32(n) HC_SLOT(int32_t, n)
#define HC_FIELD_I64(n) HC_SLOT(int64_t, n)
#define HC_FIELD_U64(n) HC_SLOT(uint64_t, n)

#define HC_ARGS(c, imp, link, params, res)                                                \
    struct hc_args_##c {                                                                  \
        PW_PP_EACH(HC_FIELD, params)                                                      \
    };                                                                                    \
    _Static_assert(sizeof(struct hc_args_##c) ==                                          \
                       sizeof(wasmtime_val_raw_t) *                                       \
                           (PW_PARAM_COUNT(params) ? PW_PARAM_COUNT(params) : 1),         \
                   "the arguments of " #c " lie over wasmtime's slots");
#define HC_PROTO(c, imp, link, params, res) \
    static inline int32_t hcb_##c(hc_frame *hc_, const struct hc_args_##c *arg);
#define HC_NO_ALIAS(imp, c)
HOSTCALLS(HC_ARGS, HC_NO_ALIAS)
HOSTCALLS(HC_PROTO, HC_NO_ALIAS)

/* A body: the hostcall's work on its typed arguments; answers its status (ignored for
 * hostcalls declared VOID). */
#define HOSTCALL(c) static inline int32_t hcb_##c(hc_frame *hc_, const struct hc_args_##c *arg)
#define BEGIN                                                                             \
    pw_vm *vm = hc_->vm;                                                                  \
    wasmtime_context_t *cx = hc_->cx;                                                     \
    wasm_trap_t *trap = NULL;                                                             \
    (void)vm, (void)cx, (void)trap, (void)arg
/* Calls that may touch host state are refused while the guest allocator runs. */
#define BEGIN_RESTRICTED \
    BEGIN;               \
    if (vm->in_alloc) RET(ST_INTERNAL_FAILURE);
#define RET(v)                             \
    do {                                   \
        int32_t ret_ = (int32_t)(v);       \
        hc_->trap = trap;                  \
        return ret_;                       \
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
    if (arg->level > LOG_CRITICAL) RET(ST_BAD_ARGUMENT);
    MEM(msg, arg->message_data, arg->message_size);
    vm_log(vm, ctx_effective(vm), (int)arg->level, (const char *)msg, arg->message_size);
    RET(ST_OK);
}

HOSTCALL(get_log_level) {
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    int level = root ? root->r->log_level : vm->log_level;
    if (level > LOG_CRITICAL) level = LOG_CRITICAL; /* "off" is not a LogLevel */
    if (gput_u32(vm, arg->return_level, (uint32_t)level)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(get_current_time_nanoseconds) {
    BEGIN;
    if (gput_u64(vm, arg->return_time, vm_now_ns(vm, 0))) RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(set_tick_period_milliseconds) {
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    if (!root) RET(ST_BAD_ARGUMENT);
    root->r->tick_period_ms = arg->tick_period;
    root->r->next_tick_ns = vm_tick_after(vm_now_ns(vm, 1), arg->tick_period);
    RET(ST_OK);
}

/* ---- configuration and buffers -------------------------------------------------------- */
HOSTCALL(get_configuration) { /* 0.1.0 */
    BEGIN_RESTRICTED;
    pw_ctx *root = root_of_eff(vm);
    const pw_buf *b = (vm->phase == PH_CONFIGURE && root) ? &root->r->config : &vm->vm_config;
    RET(greturn(vm, cx, b->p, b->len, arg->return_data, arg->return_size, &trap));
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
    pw_buf *b = find_buffer(vm, arg->buffer_id, 0, &st);
    if (!b) RET(st);
    uint64_t start = arg->start, max = arg->max_size;
    size_t n = start >= b->len ? 0 : (size_t)(b->len - start < max ? b->len - start : max);
    RET(greturn(vm, cx, n ? b->p + start : NULL, n, arg->return_data, arg->return_size, &trap));
}

HOSTCALL(get_buffer_status) {
    BEGIN_RESTRICTED;
    int st;
    pw_buf *b = find_buffer(vm, arg->buffer_id, 0, &st);
    if (!b) RET(st);
    if (b->len > UINT32_MAX || gput_u32(vm, arg->return_size, (uint32_t)b->len) ||
        gput_u32(vm, arg->return_flags, 0))
        RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(set_buffer_bytes) {
    BEGIN_RESTRICTED;
    MEM(v, arg->value_data, arg->value_size);
    int st;
    pw_buf *b = find_buffer(vm, arg->buffer_id, 1, &st);
    if (!b) RET(st);
    uint32_t start = arg->start, size = arg->size;
    /* Envoy's copyFrom: start 0 drains `size` bytes then prepends; start >= len appends;
     * a middle insert is not supported. */
    uint64_t cap = vm->limits.body_bytes;
    if (start == 0) { /* `v` is guest memory: reshaping our buffer cannot move it */
        size_t kept = size >= b->len ? 0 : b->len - size;
        if (cap && (uint64_t)kept + arg->value_size > cap && (uint64_t)kept + arg->value_size > b->len)
            RET(ST_INTERNAL_FAILURE); /* past Limits.body_bytes: nothing changes */
        if (buf_reserve(b, kept + arg->value_size)) RET(ST_INTERNAL_FAILURE); /* then nothing fails */
        buf_drain_front(b, size);
        buf_prepend(b, v, arg->value_size);
        RET(ST_OK);
    }
    if (start >= b->len) {
        if (cap && (uint64_t)b->len + arg->value_size > cap && arg->value_size) RET(ST_INTERNAL_FAILURE);
        RET(buf_append(b, v, arg->value_size) ? ST_INTERNAL_FAILURE : ST_OK);
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
    pw_hmap *m = find_map(vm, arg->map_id, 0, &st);
    if (!m) RET(st);
    /* The spec's meaning (serialized size), not Envoy's byteSize(): see docs. */
    size_t n = hmap_serialized_size(m);
    if (n > UINT32_MAX || gput_u32(vm, arg->return_size, (uint32_t)n)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(ST_OK);
}

HOSTCALL(get_header_map_pairs) {
    BEGIN_RESTRICTED;
    int st;
    pw_hmap *m = find_map(vm, arg->map_id, 0, &st);
    if (!m && st == ST_BAD_ARGUMENT && arg->map_id > (vm->legacy_maps ? 8u : 7u)) RET(st);
    if (!m || m->n == 0) RET(greturn(vm, cx, NULL, 0, arg->return_data, arg->return_size, &trap));
    size_t n = hmap_serialized_size(m);
    uint8_t *dst = galloc(vm, cx, n, arg->return_data, arg->return_size, &st, &trap);
    if (dst) hmap_serialize_to(m, dst);
    RET(st);
}

HOSTCALL(set_header_map_pairs) {
    BEGIN_RESTRICTED;
    MEM(p, arg->map_data, arg->map_size);
    int st;
    pw_hmap *m = find_map(vm, arg->map_id, 1, &st);
    if (!m) RET(st);
    RET(hmap_parse(m, p, arg->map_size) ? ST_BAD_ARGUMENT : ST_OK);
}

HOSTCALL(get_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, arg->key_data, arg->key_size);
    int st;
    pw_hmap *m = find_map(vm, arg->map_id, 0, &st);
    if (!m) {
        if (arg->map_id <= 7 && vm->phase == PH_LOG)
            RET(vm->abi == PW_ABI_0_1_0 ? greturn(vm, cx, NULL, 0, arg->return_data, arg->return_size, &trap)
                                        : ST_NOT_FOUND);
        RET(st);
    }
    size_t vl = 0;
    const uint8_t *v = hmap_get(m, k, arg->key_size, &vl);
    if (!v && vm->abi != PW_ABI_0_1_0) RET(ST_NOT_FOUND);
    RET(greturn(vm, cx, v, v ? vl : 0, arg->return_data, arg->return_size, &trap));
}

HOSTCALL(add_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, arg->key_data, arg->key_size);
    MEM(v, arg->value_data, arg->value_size);
    int st;
    pw_hmap *m = find_map(vm, arg->map_id, 1, &st);
    if (!m) RET(st);
    RET(hmap_add(m, k, arg->key_size, v, arg->value_size) ? ST_INTERNAL_FAILURE : ST_OK);
}

HOSTCALL(replace_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, arg->key_data, arg->key_size);
    MEM(v, arg->value_data, arg->value_size);
    int st;
    pw_hmap *m = find_map(vm, arg->map_id, 1, &st);
    if (!m) RET(st);
    RET(hmap_replace(m, k, arg->key_size, v, arg->value_size) ? ST_INTERNAL_FAILURE : ST_OK);
}

HOSTCALL(remove_header_map_value) {
    BEGIN_RESTRICTED;
    MEM(k, arg->key_data, arg->key_size);
    int st;
    pw_hmap *m = find_map(vm, arg->map_id, 1, &st);
    if (!m) RET(st);
    hmap_remove(m, k, arg->key_size);
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
    RET(continue_stream(vm, arg->stream_type));
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
    if (arg->stream_type > 3) RET(ST_BAD_ARGUMENT);
    pw_ctx *c = ctx_effective(vm);
    if (c && c->kind != CTX_ROOT && vm_defer(vm, DF_CLOSE, c->id, arg->stream_type))
        RET(ST_INTERNAL_FAILURE);
    RET(ST_OK);
}

HOSTCALL(clear_route_cache) { /* 0.1.0; there is no router to recompute here */
    BEGIN_RESTRICTED;
    RET(ST_OK);
}

HOSTCALL(send_local_response) {
    BEGIN_RESTRICTED;
    MEM(details, arg->details_data, arg->details_size);
    MEM(body, arg->body_data, arg->body_size);
    MEM(hdrs, arg->headers_data, arg->headers_size);
    pw_ctx *c = ctx_effective(vm);
    if (!c || c->kind != CTX_HTTP) RET(ST_OK); /* Envoy: OK even when no reply is possible */
    pw_http *h = c->h;
    if (h->lr_pending || h->local_reply) RET(ST_OK); /* the first reply stands */
    if (hmap_parse(&h->lr_headers, hdrs, arg->headers_size)) RET(ST_BAD_ARGUMENT);
    if (buf_set(&h->lr_details, details, arg->details_size) || buf_set(&h->lr_body, body, arg->body_size))
        RET(ST_INTERNAL_FAILURE);
    for (size_t i = 0; i < h->lr_details.len; i++)
        if (h->lr_details.p[i] == ' ') h->lr_details.p[i] = '_';
    h->lr_status = arg->status_code;
    h->lr_grpc = arg->grpc_status;
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
    if (gput_u32(vm, arg->return_code, code)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(greturn(vm, cx, msg ? msg->p : NULL, msg ? msg->len : 0, arg->return_message_data, arg->return_message_size, &trap));
}

/* ---- outbound calls (semantics in callout.c) ------------------------------------- */
HOSTCALL(http_call) {
    BEGIN_RESTRICTED;
    MEM(up, arg->upstream_data, arg->upstream_size);
    MEM(hdrs, arg->headers_data, arg->headers_size);
    MEM(body, arg->body_data, arg->body_size);
    MEM(trl, arg->trailers_data, arg->trailers_size);
    if (!gmem(vm, arg->return_token, 4)) RET(ST_INVALID_MEMORY_ACCESS); /* before the call starts */
    RET(callout_http(vm, up, arg->upstream_size, hdrs, arg->headers_size, body, arg->body_size, trl, arg->trailers_size, arg->timeout_ms, arg->return_token));
}

HOSTCALL(grpc_call) {
    BEGIN_RESTRICTED;
    MEM(up, arg->upstream_data, arg->upstream_size);
    MEM(svc, arg->service_data, arg->service_size);
    MEM(meth, arg->method_data, arg->method_size);
    MEM(md, arg->metadata_data, arg->metadata_size);
    MEM(msg, arg->message_data, arg->message_size);
    if (!gmem(vm, arg->return_token, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC, up, arg->upstream_size, svc, arg->service_size, meth, arg->method_size, md, arg->metadata_size, msg, arg->message_size,
                     arg->timeout_ms, arg->return_token));
}

HOSTCALL(grpc_stream) {
    BEGIN_RESTRICTED;
    MEM(up, arg->upstream_data, arg->upstream_size);
    MEM(svc, arg->service_data, arg->service_size);
    MEM(meth, arg->method_data, arg->method_size);
    MEM(md, arg->metadata_data, arg->metadata_size);
    if (!gmem(vm, arg->return_token, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC_STREAM, up, arg->upstream_size, svc, arg->service_size, meth, arg->method_size, md, arg->metadata_size, NULL, 0,
                     0, arg->return_token));
}

/* The AssemblyScript SDK's shapes: no initial-metadata pair (10 and 7 parameters). */
HOSTCALL(as_grpc_call) {
    BEGIN_RESTRICTED;
    MEM(up, arg->upstream_data, arg->upstream_size);
    MEM(svc, arg->service_data, arg->service_size);
    MEM(meth, arg->method_data, arg->method_size);
    MEM(msg, arg->message_data, arg->message_size);
    if (!gmem(vm, arg->return_token, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC, up, arg->upstream_size, svc, arg->service_size, meth, arg->method_size, NULL, 0, msg, arg->message_size, arg->timeout_ms,
                     arg->return_token));
}

HOSTCALL(as_grpc_stream) {
    BEGIN_RESTRICTED;
    MEM(up, arg->upstream_data, arg->upstream_size);
    MEM(svc, arg->service_data, arg->service_size);
    MEM(meth, arg->method_data, arg->method_size);
    if (!gmem(vm, arg->return_token, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    RET(callout_grpc(vm, PW_CALL_GRPC_STREAM, up, arg->upstream_size, svc, arg->service_size, meth, arg->method_size, NULL, 0, NULL, 0,
                     0, arg->return_token));
}

HOSTCALL(grpc_send) {
    BEGIN_RESTRICTED;
    MEM(msg, arg->message_data, arg->message_size);
    RET(callout_grpc_op(vm, arg->token, PW_OP_SEND, msg, arg->message_size, arg->end_stream != 0));
}

HOSTCALL(grpc_cancel) {
    BEGIN_RESTRICTED;
    RET(callout_grpc_op(vm, arg->token, PW_OP_CANCEL, NULL, 0, 0));
}

HOSTCALL(grpc_close) {
    BEGIN_RESTRICTED;
    RET(callout_grpc_op(vm, arg->token, PW_OP_CLOSE, NULL, 0, 0));
}

/* ---- shared data and queues ----------------------------------------------------------- */
HOSTCALL(get_shared_data) {
    BEGIN_RESTRICTED;
    MEM(k, arg->key_data, arg->key_size);
    uint32_t cas = 0;
    int st = state_get(vm, k, arg->key_size, &vm->hc, &cas);
    if (st != ST_OK) RET(st);
    if (!gmem(vm, arg->return_cas, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    st = greturn(vm, cx, vm->hc.p, vm->hc.len, arg->return_value_data, arg->return_value_size, &trap);
    if (st == ST_OK && gput_u32(vm, arg->return_cas, cas)) st = ST_INVALID_MEMORY_ACCESS;
    RET(st);
}

HOSTCALL(set_shared_data) {
    BEGIN_RESTRICTED;
    MEM(k, arg->key_data, arg->key_size);
    MEM(v, arg->value_data, arg->value_size);
    RET(state_set(vm, k, arg->key_size, v, arg->value_size, arg->cas));
}

HOSTCALL(register_shared_queue) {
    BEGIN_RESTRICTED;
    MEM(name, arg->name_data, arg->name_size);
    if (!gmem(vm, arg->return_id, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    if (!vm->disp) RET(ST_INTERNAL_FAILURE); /* its thread's dispatcher is gone */
    pw_ctx *root = root_of_eff(vm);
    int created;
    uint32_t id;
    int st = backend_q_register(vm, name, arg->name_size, root ? root->id : 0,
                                vm->queues_created < PW_QUEUES_PER_VM, &created, &id);
    vm->queues_created += (uint32_t)created;
    if (st != ST_OK) RET(st);
    gput_u32(vm, arg->return_id, id);
    RET(ST_OK);
}

HOSTCALL(resolve_shared_queue) {
    BEGIN_RESTRICTED;
    MEM(vid, arg->vm_id_data, arg->vm_id_size);
    MEM(name, arg->name_data, arg->name_size);
    if (!gmem(vm, arg->return_id, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    uint32_t id = 0;
    /* An empty vm_id is this VM's; another one is found in this VM's namespace, in
     * whichever backend holds it. */
    int st = backend_q_resolve(vm, vid, arg->vm_id_size, name, arg->name_size, &id);
    if (st == ST_OK) gput_u32(vm, arg->return_id, id);
    RET(st);
}

HOSTCALL(enqueue_shared_queue) {
    BEGIN_RESTRICTED;
    MEM(v, arg->value_data, arg->value_size);
    /* A backend's wait is not the guest's time (backend.c) */
    uint64_t t0 = PW_QUEUE_SLOT(arg->queue_id) ? epoch_now_ns() : 0;
    int st = state_enqueue(arg->queue_id, v, arg->value_size);
    if (t0) vm_paused(vm, t0);
    RET(st);
}

HOSTCALL(dequeue_shared_queue) {
    BEGIN_RESTRICTED;
    if (!gmem(vm, arg->return_value_data, 4) || !gmem(vm, arg->return_value_size, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    uint64_t t0 = PW_QUEUE_SLOT(arg->queue_id) ? epoch_now_ns() : 0;
    int st = state_dequeue(arg->queue_id, &vm->hc);
    if (t0) vm_paused(vm, t0);
    if (st != ST_OK) RET(st);
    RET(greturn(vm, cx, vm->hc.p, vm->hc.len, arg->return_value_data, arg->return_value_size, &trap));
}

/* ---- metrics ---------------------------------------------------------------------------- */
HOSTCALL(define_metric) {
    BEGIN_RESTRICTED;
    if (arg->type > 2) RET(ST_BAD_ARGUMENT);
    MEM(name, arg->name_data, arg->name_size);
    if (!gmem(vm, arg->return_id, 4)) RET(ST_INVALID_MEMORY_ACCESS);
    uint32_t id = 0;
    int st = metric_define(vm, arg->type, name, arg->name_size, &id);
    if (st == ST_OK) gput_u32(vm, arg->return_id, id);
    RET(st);
}

HOSTCALL(increment_metric) {
    BEGIN_RESTRICTED;
    RET(metric_increment(vm, arg->metric_id, arg->offset));
}

HOSTCALL(record_metric) {
    BEGIN_RESTRICTED;
    RET(metric_record(vm, arg->metric_id, (uint64_t)arg->value));
}

HOSTCALL(get_metric) {
    BEGIN_RESTRICTED;
    if (!gmem(vm, arg->return_value, 8)) RET(ST_INVALID_MEMORY_ACCESS);
    uint64_t v = 0;
    int st = metric_get(vm, arg->metric_id, &v);
    if (st == ST_OK) gput_u64(vm, arg->return_value, v);
    RET(st);
}

/* ---- properties ---------------------------------------------------------------------------- */
HOSTCALL(get_property) {
    BEGIN_RESTRICTED;
    MEM(path, arg->path_data, arg->path_size);
    int st = props_get(vm, ctx_effective(vm), path, arg->path_size, &vm->hc);
    if (st != ST_OK) RET(st);
    RET(greturn(vm, cx, vm->hc.p, vm->hc.len, arg->return_value_data, arg->return_value_size, &trap));
}

HOSTCALL(set_property) {
    BEGIN_RESTRICTED;
    MEM(path, arg->path_data, arg->path_size);
    MEM(v, arg->value_data, arg->value_size);
    RET(props_set(vm, ctx_effective(vm), path, arg->path_size, v, arg->value_size));
}

/* ---- contexts and foreign functions ------------------------------------------------------ */
HOSTCALL(set_effective_context) {
    BEGIN_RESTRICTED;
    pw_ctx *c = ctx_get(vm, arg->context_id);
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
    MEM(name, arg->name_data, arg->name_size);
    MEM(args, arg->args_data, arg->args_size);
    pw_foreign *f = vm->foreign;
    while (f && (f->name.len != arg->name_size || (arg->name_size && memcmp(f->name.p, name, arg->name_size))))
        f = f->next;
    if (!f || (!f->native && !pw_foreign_cb)) RET(ST_NOT_FOUND);
    if (arg->return_results_data && (!gmem(vm, arg->return_results_data, 4) || !gmem(vm, arg->return_results_size, 4)))
        RET(ST_INVALID_MEMORY_ACCESS);
    buf_clear(&vm->hc);
    /* The guest is suspended, so `args` stays put while Python runs. A native function's
     * work is the guest's (one waiting on a backend credits that wait itself). */
    int st;
    if (f->native) {
        st = f->native(vm, args, arg->args_size, &vm->hc);
    } else {
        uint64_t t0 = callback_begin();
        st = pw_foreign_cb(f->handle, args, arg->args_size, &vm->hc);
        vm_paused(vm, t0); /* Python's time, not the guest's */
    }
    if (st != ST_OK || !arg->return_results_data) RET(st);
    RET(greturn(vm, cx, vm->hc.p, vm->hc.len, arg->return_results_data, arg->return_results_size, &trap));
}

/* ---- non-proxy env imports some toolchains bring -------------------------------------- */
HOSTCALL(notify_memory_growth) {
    BEGIN;
    return 0;
}

HOSTCALL(pthread_equal) {
    BEGIN;
    RET(arg->a == arg->b);
}

/* AssemblyScript's abort(msg, file, line, col) without --use abort=...: a trap that says
 * where. The strings are AssemblyScript's UTF-16; they are reported by address. */
HOSTCALL(as_abort) {
    BEGIN;
    char msg[96];
    int n = snprintf(msg, sizeof msg, "abort at line %u column %u", arg->line, arg->column);
    trap = WT.trap_new(msg, (size_t)n);
    RET(0);
}

/* ---- the callbacks wasmtime calls, derived from the declarations -------------------- */
/* Unpack the raw arguments into the body's struct, run the body, answer its status; the
 * trace records the declared parameters and the status. */
#define HC_CALL_I32(c, np)                                                                \
    if (f.vm->trace) trace_enter(f.vm, a, np);                                            \
    int32_t st_ = hcb_##c(&f, arg);                                                       \
    a[0].i32 = st_;                                                                       \
    if (f.vm->trace) trace_hostcall(f.vm, #c, st_);
#define HC_CALL_VOID(c, np) (void)hcb_##c(&f, arg);
#define HC_WRAP(c, imp, link, params, res)                                                \
    static wasm_trap_t *hc_##c(void *env_, wasmtime_caller_t *caller, wasmtime_val_raw_t *a, \
                               size_t nargs_) {                                           \
        (void)env_, (void)nargs_, (void)a;                                                \
        hc_frame f;                                                                       \
        f.cx = WT.caller_context(caller);                                                 \
        f.vm = WT.context_get_data(f.cx);                                                 \
        f.trap = NULL;                                                                    \
        mem_refresh(f.vm, f.cx);                                                          \
        const struct hc_args_##c *arg = (const struct hc_args_##c *)a;                    \
        HC_CALL_##res(c, PW_PARAM_COUNT(params)) return f.trap;                          \
    }
HOSTCALLS(HC_WRAP, HC_NO_ALIAS)

/* ---- registration ----------------------------------------------------------------------- */
/* The import table, in HOSTCALLS order; an alias shares its hostcall's type and linkers. */
typedef struct hc_def {
    import_def d;
    int link; /* enum hc_link */
} hc_def;

#define HC_SIGS(c, imp, link, params, res)                                                \
    static const char hc_params_##c[] = PW_PARAM_SIG(params);                              \
    static const char hc_results_##c[] = PW_RESULT_SIG(res);                               \
    enum { hc_link_##c = link };
HOSTCALLS(HC_SIGS, HC_NO_ALIAS)
#define HC_DEF(c, imp, link, params, res) {{imp, hc_params_##c, hc_results_##c, hc_##c}, link},
#define HC_DEF_ALIAS(imp, c) {{imp, hc_params_##c, hc_results_##c, hc_##c}, hc_link_##c},
static const hc_def proxy_imports[] = {HOSTCALLS(HC_DEF, HC_DEF_ALIAS)};
#define N_PROXY_IMPORTS (sizeof proxy_imports / sizeof proxy_imports[0])

/* Whether an entry belongs to the linker for modules with (as_grpc) or without the
 * AssemblyScript SDK's gRPC shapes. */
static int hc_linked(const hc_def *h, int as_grpc) {
    return h->link == HC_ALL || h->link == (as_grpc ? HC_AS : HC_SPEC);
}

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

int hostcalls_define(wasmtime_linker_t *linker, int as_grpc, char *err, size_t errlen) {
    for (size_t i = 0; i < N_PROXY_IMPORTS; i++)
        if (hc_linked(&proxy_imports[i], as_grpc) &&
            define_imports(linker, "env", &proxy_imports[i].d, 1, err, errlen))
            return -1;
    return 0;
}

/* The import table as the linker defines it (as_grpc: the AssemblyScript shapes), for
 * load errors that name what differs: "name params results\n" lines, params and results
 * in the "iI" letters above ("-" when empty). Free with pw_bytes_free. */
int pw_host_imports(int as_grpc, uint8_t **out, size_t *len) {
    pw_buf b = {0};
    int ok = 1;
    for (size_t i = 0; i < N_PROXY_IMPORTS && ok; i++) {
        const import_def *d = &proxy_imports[i].d;
        if (!hc_linked(&proxy_imports[i], as_grpc)) continue;
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
