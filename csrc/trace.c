/* The ABI call trace: a ring buffer per VM of every Proxy-Wasm hostcall (its arguments and
 * the status it answered) and every callback into the guest (its arguments, then what it
 * returned or that it trapped), for a failing test to print. Off by default: the hooks
 * are one predictable branch on vm->trace (NULL) in BEGIN/RET and vm_call. Owner thread
 * only, like the VM. WASI calls are not traced. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define TRACE_STACK 8 /* nested hostcalls (a hostcall whose guest allocator logs, say) */

typedef struct trace_rec {
    uint8_t kind, nargs;
    uint32_t ctx;
    int64_t result;
    uint64_t args[TRACE_MAX_ARGS];
    const char *name; /* a static string: a hostcall's function or an export's name */
} trace_rec;

struct pw_trace {
    trace_rec *ring;
    size_t cap, next; /* next: records written so far (the ring holds the last cap) */
    uint64_t pending[TRACE_STACK][TRACE_MAX_ARGS];
    uint8_t pending_n[TRACE_STACK];
    int depth;
};

void trace_free(pw_vm *vm) {
    if (vm->trace) {
        free(vm->trace->ring);
        free(vm->trace);
        vm->trace = NULL;
    }
}

int pw_vm_trace(pw_vm *vm, uint32_t capacity) {
    VM_ENTER(vm);
    trace_free(vm);
    if (!capacity) return PW_OK;
    pw_trace *t = calloc(1, sizeof *t);
    if (!t || !(t->ring = calloc(capacity, sizeof *t->ring))) {
        free(t);
        return PW_ERR;
    }
    t->cap = capacity;
    vm->trace = t;
    return PW_OK;
}

static uint32_t ctx_id(pw_vm *vm) {
    pw_ctx *c = ctx_effective(vm);
    return c ? c->id : 0;
}

static trace_rec *push(pw_trace *t) { return &t->ring[t->next++ % t->cap]; }

int trace_depth(pw_vm *vm) { return vm->trace ? vm->trace->depth : 0; }

void trace_set_depth(pw_vm *vm, int depth) {
    if (vm->trace) vm->trace->depth = depth;
}

void trace_enter(pw_vm *vm, const wasmtime_val_raw_t *a, size_t nargs) {
    pw_trace *t = vm->trace;
    if (t->depth < TRACE_STACK) {
        size_t n = nargs < TRACE_MAX_ARGS ? nargs : TRACE_MAX_ARGS;
        /* the raw slot: an i32's upper half is not defined (readers mask it) */
        for (size_t i = 0; i < n; i++) t->pending[t->depth][i] = (uint64_t)a[i].i64;
        t->pending_n[t->depth] = (uint8_t)n;
    }
    t->depth++;
}

void trace_hostcall(pw_vm *vm, const char *name, int64_t status) {
    pw_trace *t = vm->trace;
    if (t->depth > 0) t->depth--;
    trace_rec *r = push(t);
    r->kind = PW_TRACE_HOSTCALL;
    r->name = name;
    r->ctx = ctx_id(vm);
    r->result = status;
    r->nargs = t->depth < TRACE_STACK ? t->pending_n[t->depth] : 0;
    if (r->nargs) memcpy(r->args, t->pending[t->depth], r->nargs * sizeof r->args[0]);
}

void trace_callback(pw_vm *vm, int kind, const char *name, uint32_t ctx, int nargs,
                    const uint32_t *args, int64_t result) {
    trace_rec *r = push(vm->trace);
    r->kind = (uint8_t)kind;
    r->name = name;
    r->ctx = ctx;
    r->result = result;
    r->nargs = (uint8_t)(nargs < TRACE_MAX_ARGS ? (nargs > 0 ? nargs : 0) : TRACE_MAX_ARGS);
    for (int i = 0; i < r->nargs; i++) r->args[i] = args[i];
}

int pw_vm_trace_read(pw_vm *vm, uint8_t **out, size_t *len, uint64_t *dropped) {
    if (!pthread_equal(vm->owner, pthread_self())) return PW_ERR_THREAD;
    pw_buf b = {0};
    pw_trace *t = vm->trace;
    size_t n = t ? (t->next < t->cap ? t->next : t->cap) : 0;
    *dropped = t && t->next > t->cap ? t->next - t->cap : 0;
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        const trace_rec *r = &t->ring[(t->next - n + i) % t->cap];
        /* kind u8, nargs u8, name length u16, ctx u32, result i64, args u64 each, name */
        uint8_t h[16];
        size_t nl = strlen(r->name);
        h[0] = r->kind;
        h[1] = r->nargs;
        h[2] = (uint8_t)nl;
        h[3] = (uint8_t)(nl >> 8);
        for (int k = 0; k < 4; k++) h[4 + k] = (uint8_t)(r->ctx >> (8 * k));
        for (int k = 0; k < 8; k++) h[8 + k] = (uint8_t)((uint64_t)r->result >> (8 * k));
        ok = !buf_append(&b, h, sizeof h);
        for (int j = 0; j < r->nargs && ok; j++) {
            uint8_t w[8];
            for (int k = 0; k < 8; k++) w[k] = (uint8_t)(r->args[j] >> (8 * k));
            ok = !buf_append(&b, w, 8);
        }
        ok = ok && !buf_append(&b, (const uint8_t *)r->name, nl);
    }
    if (!ok || (!b.p && buf_reserve(&b, 1))) {
        buf_free(&b);
        return PW_ERR;
    }
    *out = b.p;
    *len = b.len;
    return PW_OK;
}
