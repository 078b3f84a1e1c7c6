/* The VM: engine and linker, compiled modules, instances, calls into the guest, the
 * deferred-action loop, clocks, and the deliveries its dispatcher runs (ticks, queue
 * notifications). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <stdatomic.h>

#include "internal.h"

/* Set once at import by pw_set_callbacks, before any VM exists; read-only afterwards. */
pw_log_fn pw_log_cb;
pw_foreign_fn pw_foreign_cb;

void pw_set_callbacks(pw_log_fn log, pw_foreign_fn foreign) {
    pw_log_cb = log;
    pw_foreign_cb = foreign;
}

/* Set once at import by pw_set_lock_yield, before guest code runs; read by any thread
 * (relaxed: the import happens before the threads that run guests are told of a VM). */
_Atomic(pw_yield_fn) pw_yield_cb;

void pw_set_lock_yield(pw_yield_fn yield) { atomic_store_explicit(&pw_yield_cb, yield, memory_order_relaxed); }

/* VM keys: process-unique, so a queue owner names its VM without holding a pointer. */
static _Atomic uint64_t next_vm_key = 1;

/* ---- errors ------------------------------------------------------------------------ */
/* The cause first ("wasm trap: call stack exhausted", "deadline exceeded: ..."), then as
 * much of wasmtime's backtrace as fits: a deep backtrace never hides why it failed. */
static void copy_msg(char *dst, size_t dl, const char *prefix, wasm_byte_vec_t *msg) {
    int n = snprintf(dst, dl, "%s", prefix);
    if (n < 0 || (size_t)n >= dl) return;
    size_t used = (size_t)n;
    const char *text = (const char *)msg->data;
    size_t len = msg->size, head = len;
    static const char marker[] = "Caused by:";
    for (size_t i = 0; i + sizeof marker - 1 <= len; i++)
        if (!memcmp(text + i, marker, sizeof marker - 1)) {
            head = i;
            break;
        }
    if (head < len) { /* the cause, without its indentation and trailing newlines */
        size_t c = head + sizeof marker - 1, e = len;
        while (c < e && (text[c] == ' ' || text[c] == '\n')) c++;
        while (e > c && (text[e - 1] == ' ' || text[e - 1] == '\n')) e--;
        size_t room = dl - used - 1, m = e - c < room ? e - c : room;
        memcpy(dst + used, text + c, m);
        used += m;
        while (head && (text[head - 1] == ' ' || text[head - 1] == '\n')) head--;
        if (used + 2 < dl) {
            dst[used++] = ';';
            dst[used++] = ' ';
        }
    }
    size_t room = dl - used - 1, m = head < room ? head : room;
    memcpy(dst + used, text, m);
    used += m;
    while (used > (size_t)n && (dst[used - 1] == '\n' || dst[used - 1] == ' ' || dst[used - 1] == ';'))
        used--;
    dst[used] = 0;
}

static void describe(char *dst, size_t dl, const char *what, wasm_trap_t *trap,
                     wasmtime_error_t *err) {
    char prefix[160];
    snprintf(prefix, sizeof prefix, "%.150s: ", what); /* what may be 255 long */
    wasm_byte_vec_t msg = {0, NULL};
    if (trap) {
        WT.trap_message(trap, &msg);
        copy_msg(dst, dl, prefix, &msg);
        WT.byte_vec_delete(&msg);
        WT.trap_delete(trap);
    } else if (err) {
        WT.error_message(err, &msg);
        copy_msg(dst, dl, prefix, &msg);
        WT.byte_vec_delete(&msg);
        WT.error_delete(err);
    } else {
        snprintf(dst, dl, "%s", what);
    }
}

void vm_fail(pw_vm *vm, const char *what, wasm_trap_t *trap, wasmtime_error_t *err) {
    if (!vm->failed) {
        describe(vm->error, sizeof vm->error, what, trap, err);
        vm->failed = 1;
        vm_log(vm, vm->cur, LOG_CRITICAL, vm->error, strlen(vm->error));
        callout_cancel_all(vm); /* it runs no more callbacks: its answers have nowhere to go */
    } else {
        if (trap) WT.trap_delete(trap);
        if (err) WT.error_delete(err);
    }
}

/* ---- engine and modules ---------------------------------------------------------------- */
pw_engine *pw_engine_new(char *err, size_t errlen) {
    pw_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    wasm_config_t *cfg = WT.config_new();
    /* Signal-based traps (no explicit bounds checks in guest code: about a third fewer
     * guest instructions on a Go plugin), with the core's handler kept in front of any
     * handler a Python process installs later (signals.c). PYPROXYWASM_SIGNALS=0: explicit
     * checks and no handlers at all. */
    WT.config_signals_based_traps_set(cfg, sig_enabled() != 0);
    epoch_configure(cfg); /* deadlines and the wasm stack bound (epoch.c) */
    e->engine = WT.engine_new_with_config(cfg);
    if (sig_enabled() && e->engine) sig_capture();
    epoch_engine_start(e->engine);
    for (int as = 0; as < 2; as++) {
        e->linker[as] = WT.linker_new(e->engine);
        if (hostcalls_define(e->linker[as], as, err, errlen) ||
            wasi_define(e->linker[as], err, errlen)) {
            pw_engine_free(e);
            return NULL;
        }
    }
    return e;
}

void pw_engine_free(pw_engine *e) {
    if (!e) return;
    for (int as = 0; as < 2; as++)
        if (e->linker[as]) WT.linker_delete(e->linker[as]);
    if (e->engine) {
        epoch_engine_stop(e->engine);
        WT.engine_delete(e->engine);
    }
    free(e);
}

static pw_module *module_finish(pw_engine *e, wasmtime_module_t *mod, int abi, int arity,
                                int flags, char *err, size_t errlen) {
    pw_module *m = calloc(1, sizeof *m);
    if (!m) {
        WT.module_delete(mod);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->engine = e;
    m->module = mod;
    m->abi = abi;
    m->header_arity = arity;
    m->flags = flags;
    wasmtime_error_t *we =
        WT.linker_instantiate_pre(e->linker[(flags & PW_MOD_AS_GRPC) != 0], mod, &m->pre);
    if (we) {
        describe(err, errlen, "cannot link the module", NULL, we);
        WT.module_delete(mod);
        free(m);
        return NULL;
    }
    return m;
}

pw_module *pw_module_new(pw_engine *e, const uint8_t *wasm, size_t len, int abi,
                         int header_arity, int flags, char *err, size_t errlen) {
    wasmtime_module_t *mod = NULL;
    wasmtime_error_t *we = WT.module_new(e->engine, wasm, len, &mod);
    if (we) {
        describe(err, errlen, "cannot compile the module", NULL, we);
        return NULL;
    }
    return module_finish(e, mod, abi, header_arity, flags, err, errlen);
}

pw_module *pw_module_deserialize(pw_engine *e, const uint8_t *bytes, size_t len, int abi,
                                 int header_arity, int flags, char *err, size_t errlen) {
    wasmtime_module_t *mod = NULL;
    wasmtime_error_t *we = WT.module_deserialize(e->engine, bytes, len, &mod);
    if (we) {
        describe(err, errlen, "cannot load the cached module", NULL, we);
        return NULL;
    }
    return module_finish(e, mod, abi, header_arity, flags, err, errlen);
}

int pw_module_serialize(pw_module *m, uint8_t **out, size_t *len) {
    wasm_byte_vec_t v = {0, NULL};
    wasmtime_error_t *we = WT.module_serialize(m->module, &v);
    if (we) {
        WT.error_delete(we);
        return PW_ERR;
    }
    *out = malloc(v.size ? v.size : 1);
    if (!*out) {
        WT.byte_vec_delete(&v);
        return PW_ERR;
    }
    memcpy(*out, v.data, v.size);
    *len = v.size;
    WT.byte_vec_delete(&v);
    return PW_OK;
}

void pw_module_free(pw_module *m) {
    if (!m) return;
    if (m->pre) WT.instance_pre_delete(m->pre);
    if (m->module) WT.module_delete(m->module);
    free(m);
}

/* ---- VM creation ------------------------------------------------------------------- */
/* From abi.h's CALLBACKS list: each export's name, the name looked up when it is absent,
 * and its type: i32 parameters and i32 results (header callbacks take the module's header
 * arity). Checked against wasmtime's own types before any unchecked call: a wrong type is
 * refused here even if something skipped the Python loader. */
#define FN_NAME(id, name, alt, params, res) [FN_##id] = name,
#define FN_ALT(id, name, alt, params, res) [FN_##id] = alt,
#define FN_ARITY(id, name, alt, params, res) [FN_##id] = {PW_PARAM_COUNT(params), PW_RESULT_COUNT(res)},
#define FN_ALL_I32(id, name, alt, params, res)                                              \
    _Static_assert(1 PW_PP_EACH(PW_P_ALLI32, params), name " must take i32 parameters only");
static const char *const fn_names[FN_COUNT] = {CALLBACKS(FN_NAME)};
static const char *const fn_alt[FN_COUNT] = {CALLBACKS(FN_ALT)};
static const uint8_t fn_arity[FN_COUNT][2] = {CALLBACKS(FN_ARITY)};
CALLBACKS(FN_ALL_I32)

/* The export table for the loader, derived from the same lists. */
typedef struct export_line {
    const char *name, *params, *results;
} export_line;
#define FN_LINE(id, name, alt, params, res)                                               \
    {name, PW_PARAM_SIG(params), PW_RESULT_SIG(res)},                                     \
        {alt, PW_PARAM_SIG(params), PW_RESULT_SIG(res)},
#define CHECKED_LINE(name, params, res) {name, PW_PARAM_SIG(params), PW_RESULT_SIG(res)},
static const export_line export_lines[] = {CALLBACKS(FN_LINE) CHECKED_EXPORTS(CHECKED_LINE)};

int pw_host_exports(uint8_t **out, size_t *len) {
    pw_buf b = {0};
    int ok = 1;
    for (size_t i = 0; i < sizeof export_lines / sizeof export_lines[0] && ok; i++) {
        const export_line *e = &export_lines[i];
        if (!e->name) continue; /* no alternative name */
        char line[160];
        int k = snprintf(line, sizeof line, "%s %s %s\n", e->name, *e->params ? e->params : "-",
                         *e->results ? e->results : "-");
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

static int all_i32(const wasm_valtype_vec_t *v, size_t n) {
    if (!v || v->size != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (WT.valtype_kind(v->data[i]) != WASM_I32) return 0;
    return 1;
}

/* 1 found, 0 absent, -1 present with the wrong type. */
static int get_func(pw_vm *vm, int fn, const char *name, wasmtime_func_t *out) {
    wasmtime_extern_t ex;
    if (!WT.instance_export_get(vm->cx, &vm->inst, name, strlen(name), &ex)) return 0;
    if (ex.kind != WASMTIME_EXTERN_FUNC) {
        WT.extern_delete(&ex);
        return 0;
    }
    size_t np = fn_arity[fn][0], nr = fn_arity[fn][1];
    if (fn == FN_ON_REQUEST_HEADERS || fn == FN_ON_RESPONSE_HEADERS) np = (size_t)vm->header_arity;
    wasm_functype_t *ft = WT.func_type(vm->cx, &ex.of.func);
    int ok = ft && all_i32(WT.functype_params(ft), np) && all_i32(WT.functype_results(ft), nr);
    if (ft) WT.functype_delete(ft);
    if (!ok) return -1;
    *out = ex.of.func;
    return 1;
}

static int vm_start_wasi(pw_vm *vm);

pw_vm *pw_vm_new(pw_module *m, pw_dispatcher *d, const pw_limits *limits,
                 const uint8_t *ns, size_t ns_len,
                 const uint8_t *vm_id, size_t vm_id_len,
                 const uint8_t *vm_config, size_t vm_config_len, const uint8_t *environ,
                 size_t environ_len, void *log_handle, char *err, size_t errlen) {
    if (!pthread_equal(d->owner, pthread_self())) {
        snprintf(err, errlen, "the dispatcher belongs to another thread");
        return NULL;
    }
    pw_vm *vm = calloc(1, sizeof *vm);
    if (!vm) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    vm->vm_key = atomic_fetch_add(&next_vm_key, 1);
    vm->disp = d; /* before any guest code: start-up may already register a queue */
    vm->buffer_limit = PW_DEFAULT_BUFFER_LIMIT;
    if (limits) vm->limits = *limits;
    vm->max_calls = PW_DEFAULT_MAX_CALLS;
    vm->mod = m;
    vm->abi = m->abi;
    vm->header_arity = m->header_arity;
    vm->legacy_maps = (m->flags & PW_MOD_AS_MAPS) != 0;
    vm->owner = pthread_self();
    vm->stack_lo = epoch_stack_low();
    vm->log_handle = log_handle;
    vm->next_id = 1;
    if (buf_set(&vm->vm_id, vm_id, vm_id_len) || buf_set(&vm->vm_config, vm_config, vm_config_len) ||
        buf_set(&vm->environ, environ, environ_len) ||
        vm_namespace_apply(vm, ns, ns_len) || backend_register_foreign(vm)) {
        snprintf(err, errlen, "out of memory");
        pw_vm_free(vm);
        return NULL;
    }
    vm->store = WT.store_new(m->engine->engine, vm, NULL);
    vm->cx = WT.store_context(vm->store);
    if (vm->limits.memory_bytes)
        WT.store_limiter(vm->store, vm->limits.memory_bytes > INT64_MAX ? INT64_MAX
                                                                        : (int64_t)vm->limits.memory_bytes,
                         -1, -1, -1, -1);
    epoch_vm_attach(vm);
    /* A start function runs inside instantiation: under the deadline too, and with no
     * memory known yet (its hostcalls see an empty memory: INVALID_MEMORY_ACCESS). */
    if (epoch_call_begin(vm, vm->limits.deadline_ms, err, errlen)) {
        pw_vm_free(vm);
        return NULL;
    }
    wasm_trap_t *trap = NULL;
    vm->depth++;
    sig_in_guest++; /* start functions are guest code */
    wasmtime_error_t *we = WT.instance_pre_instantiate(m->pre, vm->cx, &vm->inst, &trap);
    sig_in_guest--;
    vm->depth--;
    if (we || trap) {
        describe(err, errlen, "cannot instantiate the module", trap, we);
        pw_vm_free(vm);
        return NULL;
    }
    wasmtime_extern_t ex;
    if (!WT.instance_export_get(vm->cx, &vm->inst, "memory", 6, &ex) ||
        ex.kind != WASMTIME_EXTERN_MEMORY) {
        snprintf(err, errlen, "the module exports no memory named \"memory\"");
        pw_vm_free(vm);
        return NULL;
    }
    vm->mem = ex.of.memory;
    vm->mem_ready = 1;
    for (int i = 0; i < FN_COUNT; i++) {
        int got = get_func(vm, i, fn_names[i], &vm->fn[i]);
        if (got == 0 && fn_alt[i]) got = get_func(vm, i, fn_alt[i], &vm->fn[i]);
        if (got < 0) {
            unsigned np = i == FN_ON_REQUEST_HEADERS || i == FN_ON_RESPONSE_HEADERS
                              ? (unsigned)vm->header_arity : fn_arity[i][0];
            snprintf(err, errlen, "export %s (or its alternative name) has the wrong type "
                     "(expected %u i32 parameters and %u i32 results)", fn_names[i], np,
                     (unsigned)fn_arity[i][1]);
            pw_vm_free(vm);
            return NULL;
        }
        vm->has[i] = (uint8_t)got;
    }
    if (!vm->has[FN_ALLOC]) {
        snprintf(err, errlen,
                 "the module exports neither proxy_on_memory_allocate nor malloc");
        pw_vm_free(vm);
        return NULL;
    }
    /* 0.1.0 has no foreign functions. */
    if (vm->abi == PW_ABI_0_1_0) vm->has[FN_ON_FOREIGN_FUNCTION] = 0;
    if (vm_start_wasi(vm)) {
        snprintf(err, errlen, "%s", vm->error);
        pw_vm_free(vm);
        return NULL;
    }
    if (dispatcher_add_vm(d, vm)) {
        snprintf(err, errlen, "out of memory");
        pw_vm_free(vm);
        return NULL;
    }
    return vm;
}

/* _initialize then main(0,0) or __main_void; or _start, where proc_exit(0) is a normal
 * end (TinyGo >= 0.35 exits from _start). */
static int vm_start_wasi(pw_vm *vm) {
    uint32_t zero[2] = {0, 0}, ret;
    if (vm->has[FN_INITIALIZE]) {
        if (vm_call(vm, FN_INITIALIZE, NULL, PH_START, 0, NULL, NULL)) return -1;
        if (vm->has[FN_MAIN]) return vm_call(vm, FN_MAIN, NULL, PH_START, 2, zero, &ret);
        if (vm->has[FN_MAIN_VOID]) return vm_call(vm, FN_MAIN_VOID, NULL, PH_START, 0, NULL, &ret);
        return 0;
    }
    if (vm->has[FN_START]) return vm_call(vm, FN_START, NULL, PH_START, 0, NULL, NULL);
    return 0;
}

int pw_vm_close(pw_vm *vm) {
    if (!vm || vm->closed) return PW_OK;
    if (!pthread_equal(vm->owner, pthread_self())) return PW_ERR_THREAD;
    if (vm->depth) return PW_ERR_REENTRANT; /* a log handler closing its own VM */
    vm->closed = 1;
    if (vm->disp) dispatcher_remove_vm(vm->disp, vm);
    vm->disp = NULL;
    callout_free(vm);
    ctx_table_free(vm);
    if (vm->store) {
        epoch_vm_detach(vm);
        WT.store_delete(vm->store);
        vm->store = NULL;
        vm->cx = NULL;
    }
    return PW_OK;
}

void pw_vm_free(pw_vm *vm) {
    if (!vm) return;
    if (!vm->closed) { /* never started, or freed without a close: same thread by contract */
        vm->depth = 0;
        vm->owner = pthread_self();
        vm->stack_lo = epoch_stack_low();
        pw_vm_close(vm);
    }
    buf_free(&vm->vm_id);
    vm_namespace_release(vm);
    buf_free(&vm->ns);
    buf_free(&vm->scope);
    trace_free(vm);
    buf_free(&vm->vm_config);
    buf_free(&vm->environ);
    buf_free(&vm->scratch);
    buf_free(&vm->hc);
    buf_free(&vm->stdio[0]);
    buf_free(&vm->stdio[1]);
    prop_free_all(&vm->host_props);
    buf_free(&vm->call_data);
    while (vm->foreign) {
        pw_foreign *f = vm->foreign;
        vm->foreign = f->next;
        buf_free(&f->name);
        free(f);
    }
    free(vm->dq);
    free(vm->metrics);
    free(vm);
}

int pw_vm_failed(pw_vm *vm) { return vm->failed || vm->closed; }
int pw_vm_closed(pw_vm *vm) { return vm->closed; }
void pw_vm_set_deadline(pw_vm *vm, uint32_t ms) { vm->limits.deadline_ms = ms; }
void pw_vm_set_buffer_limit(pw_vm *vm, size_t bytes) { vm->buffer_limit = bytes; }
const char *pw_vm_error(pw_vm *vm) { return vm->error; }

/* A VM takes calls only while open, from its owner thread, and never from inside one of
 * its own callbacks (a Python log handler or foreign function calling back into it). */
int vm_enter(pw_vm *vm) {
    if (vm->closed) return PW_ERR_CLOSED;
    if (!pthread_equal(vm->owner, pthread_self())) return PW_ERR_THREAD;
    if (vm->depth) return PW_ERR_REENTRANT;
    return PW_OK;
}

int pw_vm_register_foreign(pw_vm *vm, const char *name, size_t name_len, void *handle) {
    int e = vm_enter(vm);
    if (e) return e;
    pw_foreign *f = calloc(1, sizeof *f);
    if (!f || buf_set(&f->name, (const uint8_t *)name, name_len)) {
        free(f);
        return PW_ERR;
    }
    f->handle = handle;
    f->next = vm->foreign;
    vm->foreign = f;
    return PW_OK;
}

/* ---- calls into the guest ---------------------------------------------------------------- */
int vm_call(pw_vm *vm, int fn, pw_ctx *ctx, int phase, int nargs, const uint32_t *args,
            uint32_t *ret) {
    if (vm->failed) return -1;
    if (!vm->has[fn]) return 1; /* not exported: the caller applies the ABI default */
    /* Eight slots whatever the arity: an unchecked call never reads past our array. */
    wasmtime_val_raw_t raw[8];
    memset(raw, 0, sizeof raw);
    for (int i = 0; i < nargs && i < 8; i++) raw[i].i32 = (int32_t)args[i];
    pw_ctx *saved_cur = vm->cur, *saved_eff = vm->eff;
    int saved_phase = vm->phase, saved_lr = vm->local_reply_in_call;
    vm->cur = ctx;
    vm->eff = ctx; /* the effective context never outlives one call */
    vm->phase = phase;
    vm->local_reply_in_call = 0;
    if (!vm->depth) {
        char why[256];
        uint32_t dl = (ctx && ctx->root) ? ctx->root->r->deadline_ms : vm->limits.deadline_ms;
        if (epoch_call_begin(vm, dl, why, sizeof why)) {
            vm_fail(vm, why, NULL, NULL);
            vm->cur = saved_cur;
            vm->eff = saved_eff;
            vm->phase = saved_phase;
            vm->local_reply_in_call = saved_lr;
            return -1;
        }
    }
    int tdepth = trace_depth(vm);
    if (vm->trace) trace_callback(vm, PW_TRACE_CALLBACK, fn_names[fn], ctx ? ctx->id : 0, nargs, args, 0);
    vm->depth++;
    sig_in_guest++;
    wasm_trap_t *trap = NULL;
    wasmtime_error_t *err = WT.func_call_unchecked(vm->cx, &vm->fn[fn], raw, 8, &trap);
    sig_in_guest--;
    vm->depth--;
    if (vm->trace) {
        trace_set_depth(vm, tdepth); /* a hostcall that trapped never returned */
        trace_callback(vm, PW_TRACE_RETURN, fn_names[fn], ctx ? ctx->id : 0, 0, NULL,
                       trap || err ? -1 : ret ? (int64_t)(uint32_t)raw[0].i32 : -2);
    }
    if (!vm->depth) wasi_flush(vm);
    int lr = vm->local_reply_in_call;
    vm->cur = saved_cur;
    vm->eff = saved_eff;
    vm->phase = saved_phase;
    vm->local_reply_in_call = saved_lr | lr;
    if (trap || err) {
        if (fn == FN_START && vm->exited && vm->exit_code == 0) {
            if (trap) WT.trap_delete(trap);
            if (err) WT.error_delete(err);
            return 0;
        }
        char what[96];
        if (vm->exited)
            snprintf(what, sizeof what, "%s exited with code %d", fn_names[fn], vm->exit_code);
        else
            snprintf(what, sizeof what, "%s trapped", fn_names[fn]);
        vm->cur = ctx;
        vm_fail(vm, what, trap, err);
        vm->cur = saved_cur;
        return -1;
    }
    if (ret) *ret = (uint32_t)raw[0].i32;
    if (lr && ret) *ret = 1; /* a local reply stops iteration whatever the guest said */
    return 0;
}

/* ---- deferred actions ---------------------------------------------------------------------- */
int vm_defer(pw_vm *vm, int kind, uint32_t ctx, uint32_t arg) {
    if (vm->dq_len == vm->dq_cap) {
        size_t nc = vm->dq_cap ? vm->dq_cap * 2 : 8;
        pw_deferred *n = realloc(vm->dq, nc * sizeof *n);
        if (!n) return -1;
        vm->dq = n;
        vm->dq_cap = nc;
    }
    vm->dq[vm->dq_len++] = (pw_deferred){kind, ctx, arg};
    return 0;
}

/* Runs what guests asked for during their callbacks, in order, once no guest code is on
 * the stack. An action may call the guest again and queue more. */
void vm_run_deferred(pw_vm *vm) {
    if (vm->depth || vm->in_deferred) return;
    vm->in_deferred = 1;
    for (size_t i = 0; i < vm->dq_len; i++) {
        pw_deferred d = vm->dq[i];
        pw_ctx *c = ctx_get(vm, d.ctx);
        if (!c) continue;
        if (d.kind != DF_DELETE_ROOT) dispatcher_changed(vm->disp, vm->vm_key, d.ctx);
        switch (d.kind) {
        case DF_CONTINUE:
            if (c->kind == CTX_HTTP) http_resume(vm, c, (int)d.arg);
            else if (c->kind == CTX_TCP) tcp_resume(vm, c);
            break;
        case DF_CLOSE:
            if (c->kind == CTX_HTTP) c->h->reset = 1;
            else if (c->kind == CTX_TCP) c->t->close_requested = 1;
            break;
        case DF_LOCAL_REPLY:
            if (c->kind == CTX_HTTP) http_local_reply_apply(vm, c);
            break;
        case DF_DELETE_ROOT:
            ctx_delete(vm, c);
            break;
        }
    }
    vm->dq_len = 0;
    vm->in_deferred = 0;
}

/* ---- clocks, ticks and queue notifications ----------------------------------------- */
/* A tick deadline that saturates at the end of the clock instead of wrapping to "due". */
uint64_t vm_tick_after(uint64_t t, uint32_t period_ms) {
    uint64_t p = (uint64_t)period_ms * 1000000u;
    return t > UINT64_MAX - p ? UINT64_MAX : t + p;
}

uint64_t vm_now_ns(pw_vm *vm, int monotonic) {
    if (vm->clock_ns) return vm->clock_ns;
    struct timespec ts;
    clock_gettime(monotonic ? CLOCK_MONOTONIC : CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void pw_vm_set_clock(pw_vm *vm, uint64_t now_ns) {
    /* Moving between real and virtual time re-bases pending ticks on the new clock. */
    int switching = (vm->clock_ns == 0) != (now_ns == 0);
    vm->clock_ns = now_ns;
    if (!switching) return;
    uint64_t now = vm_now_ns(vm, 1);
    for (size_t i = 0; i < vm->ctxs.cap; i++) {
        pw_ctx *c = vm->ctxs.slots[i];
        if (c && c->kind == CTX_ROOT && c->r->tick_period_ms)
            c->r->next_tick_ns = vm_tick_after(now, c->r->tick_period_ms);
    }
}

static pw_ctx *next_due_root(pw_vm *vm, uint64_t now) {
    pw_ctx *best = NULL;
    for (size_t i = 0; i < vm->ctxs.cap; i++) {
        pw_ctx *c = vm->ctxs.slots[i];
        if (!c || c->kind != CTX_ROOT || !c->r->tick_period_ms || c->r->next_tick_ns > now)
            continue;
        if (!best || c->r->next_tick_ns < best->r->next_tick_ns) best = c;
    }
    return best;
}

uint64_t pw_vm_next_tick_in(pw_vm *vm) {
    uint64_t now = vm_now_ns(vm, 1), best = UINT64_MAX;
    if (vm->failed || vm->closed) return best; /* a failed VM runs no more ticks */
    for (size_t i = 0; i < vm->ctxs.cap; i++) {
        pw_ctx *c = vm->ctxs.slots[i];
        if (!c || c->kind != CTX_ROOT || !c->r->tick_period_ms) continue;
        uint64_t in = c->r->next_tick_ns > now ? c->r->next_tick_ns - now : 0;
        if (in < best) best = in;
    }
    return best;
}

/* One on_queue_ready, on this VM's thread, outside any other callback. */
int vm_queue_ready(pw_vm *vm, uint32_t root, uint32_t queue) {
    pw_ctx *c = ctx_get(vm, root);
    if (vm->failed || !c || c->kind != CTX_ROOT) return 0; /* gone: the notice is dropped */
    uint32_t a[2] = {root, queue};
    vm_call(vm, FN_ON_QUEUE_READY, c, PH_OTHER, 2, a, NULL);
    vm_run_deferred(vm);
    return 1;
}

/* The ticks that are due, earliest first; each re-arms one period after it was due. */
int vm_run_ticks(pw_vm *vm) {
    uint64_t now = vm_now_ns(vm, 1);
    int calls = 0;
    pw_ctx *root;
    while (!vm->failed && (root = next_due_root(vm, now)) && calls < 100000) {
        uint64_t due = root->r->next_tick_ns;
        uint32_t id = root->id;
        pw_root_tick(vm, id);
        calls++;
        root = ctx_get(vm, id); /* the tick may have deleted it (proxy_done) */
        if (root && root->r->tick_period_ms && root->r->next_tick_ns <= due)
            root->r->next_tick_ns = vm_tick_after(due, root->r->tick_period_ms);
    }
    return calls;
}

/* ---- logging --------------------------------------------------------------------------- */
void vm_log(pw_vm *vm, pw_ctx *ctx, int level, const char *msg, size_t len) {
    if (!pw_log_cb) return;
    pw_root *r = (ctx && ctx->root) ? ctx->root->r : NULL;
    void *handle = r ? r->log_handle : vm->log_handle;
    if (r && level < r->log_level) return;
    if (vm->limits.log_bytes && len > vm->limits.log_bytes) len = vm->limits.log_bytes;
    /* The embedding's lock goes first (as callback_begin); time in Python does not count
     * against the guest's deadline. */
    lock_yield();
    uint64_t t0 = vm->depth ? epoch_now_ns() : 0;
    pw_log_cb(handle, level, msg, len);
    if (t0) vm_paused(vm, t0);
}
