/* TCP streams: a Wasm network filter as Envoy drives it (ABI.md §4.2).
 *
 * Like Envoy's connection read buffer, data the filter stopped on stays held and the next
 * data event calls the filter again with everything held so far. proxy_continue_stream
 * (DOWNSTREAM) lets the held data through without calling the filter again. */
#include "internal.h"

void tcp_free(pw_tcp *t) {
    for (int d = 0; d < 2; d++) {
        buf_free(&t->d[d].held);
        buf_free(&t->d[d].out);
    }
}

static pw_ctx *tcp_of(pw_vm *vm, uint32_t id) {
    pw_ctx *c = ctx_get(vm, id);
    return (c && c->kind == CTX_TCP) ? c : NULL;
}

static int flags_of(const pw_tcp *t) {
    int f = 0;
    if (t->d[0].stop) f |= PW_S_REQ_STOPPED;
    if (t->d[1].stop) f |= PW_S_RESP_STOPPED;
    if (t->close_requested) f |= PW_S_RESET;
    if (t->failed && !t->bypass) f |= PW_S_FAILED;
    if (t->bypass) f |= PW_S_BYPASSED;
    if (t->done) f |= PW_S_DONE;
    if (t->d[0].end_out) f |= PW_S_REQ_ENDED;
    if (t->d[1].end_out) f |= PW_S_RESP_ENDED;
    return f;
}

static void release(pw_tdir *T) {
    buf_move_append(&T->out, &T->held);
    T->stop = 0;
    if (T->end_in) T->end_out = 1;
}

/* The VM failed (now, or before the connection): FAIL_OPEN lets the connection pass as
 * if the filter were absent; otherwise it closes (Envoy's fail closed). */
static void tcp_fail(pw_ctx *c) {
    pw_tcp *t = c->t;
    t->failed = 1;
    if (c->root && c->root->r->fail_open) {
        t->bypass = 1;
        release(&t->d[0]);
        release(&t->d[1]);
    } else {
        t->close_requested = 1;
    }
}

/* Calls a network callback: 1 = continue, 0 = stop, -1 = failed (the connection closes,
 * or passes under FAIL_OPEN: then 1). */
static int net_call(pw_vm *vm, pw_ctx *c, int fn, int phase, int nargs, const uint32_t *a) {
    uint32_t r = 0;
    int rc = vm_call(vm, fn, c, phase, nargs, a, &r);
    if (rc < 0) {
        tcp_fail(c);
        return c->t->bypass ? 1 : -1;
    }
    return (rc == 1 || r == 0) ? 1 : 0;
}

void tcp_resume(pw_vm *vm, pw_ctx *c) {
    (void)vm;
    pw_tdir *T = &c->t->d[PW_DIR_DOWNSTREAM];
    if (T->stop) release(T);
}

int pw_tcp_new(pw_vm *vm, uint32_t root, uint32_t *out_id) {
    int rc = pw_tcp_alloc(vm, root, out_id);
    return rc == PW_OK ? pw_tcp_open(vm, *out_id) : rc;
}

int pw_tcp_alloc(pw_vm *vm, uint32_t root, uint32_t *out_id) {
    VM_ENTER(vm);
    pw_ctx *r = ctx_get(vm, root);
    if (!r || r->kind != CTX_ROOT || r->r->pending_done) return PW_ERR_NO_CONTEXT;
    pw_ctx *c = ctx_new(vm, CTX_TCP, r);
    if (!c) return PW_ERR;
    *out_id = c->id;
    return PW_OK;
}

int pw_tcp_open(pw_vm *vm, uint32_t id) {
    VM_ENTER(vm);
    dispatcher_autorun(vm->disp);
    pw_ctx *c = tcp_of(vm, id);
    if (!c) return PW_ERR_NO_CONTEXT;
    if (c->t->opened) return PW_ERR_STATE;
    /* On a failed VM too: the connection gets the plugin's failure policy. */
    if (ctx_ensure_created(vm, c)) {
        tcp_fail(c);
        c->t->opened = 1;
        return c->t->bypass ? PW_OK : PW_ERR_TRAP;
    }
    if (net_call(vm, c, FN_ON_NEW_CONNECTION, PH_OTHER, 1, &id) == 0)
        c->t->d[PW_DIR_DOWNSTREAM].stop = 1;
    c->t->opened = 1;
    vm_run_deferred(vm);
    return c->t->failed ? PW_ERR_TRAP : PW_OK;
}

int pw_tcp_data(pw_vm *vm, uint32_t id, int dir, const uint8_t *data, size_t len, int eos) {
    VM_ENTER_NEG(vm);
    pw_ctx *c = tcp_of(vm, id);
    if (!c) return -PW_ERR_NO_CONTEXT;
    if (dir < 0 || dir > 1) return -PW_ERR;
    pw_tcp *t = c->t;
    pw_tdir *T = &t->d[dir];
    if (!t->opened || T->end_in || T->closed) return -PW_ERR_STATE;
    if (eos) T->end_in = 1;
    if (t->bypass) {
        if (buf_append(&T->held, data, len)) return -PW_ERR;
        release(T);
        return flags_of(t);
    }
    if (t->failed || t->close_requested) return flags_of(t);
    if (buf_append(&T->held, data, len)) return -PW_ERR;
    uint32_t a[3] = {id, (uint32_t)T->held.len, (uint32_t)(eos != 0)};
    int fn = dir == PW_DIR_DOWNSTREAM ? FN_ON_DOWNSTREAM_DATA : FN_ON_UPSTREAM_DATA;
    int ph = dir == PW_DIR_DOWNSTREAM ? PH_DOWN_DATA : PH_UP_DATA;
    int r = net_call(vm, c, fn, ph, 3, a);
    if (r == 1) release(T);
    else if (r == 0) T->stop = 1;
    vm_run_deferred(vm);
    return flags_of(t);
}

static void teardown(pw_vm *vm, pw_ctx *c) {
    /* Envoy's onCloseTCP: done, log, delete; at most once. */
    c->t->done = 1;
    if (c->created && !vm->failed) {
        uint32_t a = c->id, ignored;
        vm_call(vm, FN_ON_DONE, c, PH_OTHER, 1, &a, &ignored);
        vm_call(vm, FN_ON_LOG, c, PH_LOG, 1, &a, NULL);
    }
    ctx_delete(vm, c);
    vm_run_deferred(vm);
}

int pw_tcp_close(pw_vm *vm, uint32_t id, int dir, int peer) {
    VM_ENTER_NEG(vm);
    pw_ctx *c = tcp_of(vm, id);
    if (!c) return -PW_ERR_NO_CONTEXT;
    if (dir < 0 || dir > 1) return -PW_ERR;
    pw_tcp *t = c->t;
    if (!t->opened) return -PW_ERR_STATE;
    if (t->d[dir].closed) return flags_of(t);
    t->d[dir].closed = 1;
    uint32_t a[2] = {id, (uint32_t)peer};
    int fn = dir == PW_DIR_DOWNSTREAM ? FN_ON_DOWNSTREAM_CLOSE : FN_ON_UPSTREAM_CLOSE;
    if (!vm->failed) vm_call(vm, fn, c, PH_OTHER, 2, a, NULL);
    vm_run_deferred(vm);
    /* Teardown follows the downstream close; an upstream close only once it happened. */
    if (t->d[PW_DIR_DOWNSTREAM].closed) {
        int f = flags_of(t);
        teardown(vm, c);
        return f | PW_S_DONE;
    }
    return flags_of(t);
}

int pw_tcp_flags(pw_vm *vm, uint32_t id) {
    VM_ENTER_NEG(vm);
    pw_ctx *c = tcp_of(vm, id);
    return c ? flags_of(c->t) : -PW_ERR_NO_CONTEXT;
}

int pw_tcp_finish(pw_vm *vm, uint32_t id) {
    VM_ENTER_NEG(vm);
    pw_ctx *c = tcp_of(vm, id);
    if (!c) return -PW_ERR_NO_CONTEXT;
    int f = flags_of(c->t);
    teardown(vm, c);
    return f | PW_S_DONE;
}

int pw_tcp_read(pw_vm *vm, uint32_t id, int what, const uint8_t **out, size_t *len) {
    VM_ENTER_NEG(vm);
    pw_ctx *c = tcp_of(vm, id);
    if (!c) return -PW_ERR_NO_CONTEXT;
    pw_buf *b;
    if (what == PW_R_DOWN_DATA) b = &c->t->d[PW_DIR_DOWNSTREAM].out;
    else if (what == PW_R_UP_DATA) b = &c->t->d[PW_DIR_UPSTREAM].out;
    else return -PW_ERR;
    *out = b->p;
    *len = b->len;
    b->len = 0; /* taken; the bytes stay valid until the buffer is written again */
    return PW_OK;
}
