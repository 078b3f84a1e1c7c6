/* Internal structures of the C core. One VM is touched by its owner thread only; the
 * process-wide tables (shared data, queues, metrics) have their own locks. */
#ifndef PW_INTERNAL_H
#define PW_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "abi.h"
#include "mpsc.h"
#include "pw.h"
#include "wt.h"

/* ABI statuses (proxy_status_t). */
enum {
    ST_OK = 0,
    ST_NOT_FOUND = 1,
    ST_BAD_ARGUMENT = 2,
    ST_SERIALIZATION_FAILURE = 3,
    ST_PARSE_FAILURE = 4,
    ST_INVALID_MEMORY_ACCESS = 6,
    ST_EMPTY = 7,
    ST_CAS_MISMATCH = 8,
    ST_INTERNAL_FAILURE = 10,
    ST_UNIMPLEMENTED = 12,
};

/* Log levels (proxy_log_level_t); 6 means "off". */
enum { LOG_TRACE, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CRITICAL, LOG_OFF };

/* ---- bytes ---------------------------------------------------------------------- */
typedef struct pw_buf {
    uint8_t *p;
    size_t len, cap;
} pw_buf;

int buf_reserve(pw_buf *b, size_t cap);
int buf_set(pw_buf *b, const uint8_t *d, size_t n);
int buf_append(pw_buf *b, const uint8_t *d, size_t n);
int buf_prepend(pw_buf *b, const uint8_t *d, size_t n);
void buf_drain_front(pw_buf *b, size_t n);
void buf_move_append(pw_buf *dst, pw_buf *src); /* dst += src; src emptied */
void buf_free(pw_buf *b);
static inline void buf_clear(pw_buf *b) { b->len = 0; }

/* n (1..8) bytes at p as a little-endian number: the ABI's byte order, whatever the host's
 * (the pairs format's lengths, the foreign functions' arguments). On a little-endian host
 * it is a memcpy, which the compiler makes one load once n is a constant: a byte loop is
 * not unrolled at -O2, and cost about 190 instructions per header map parsed. */
static inline uint64_t rd_le(const uint8_t *p, int n) {
    uint64_t v = 0;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&v, p, (size_t)n);
#else
    for (int i = 0; i < n; i++) v |= (uint64_t)p[i] << (8 * i);
#endif
    return v;
}

/* The low n (1..8) bytes of v at p, little-endian (one store, as rd_le). */
static inline void wr_le(uint8_t *p, uint64_t v, int n) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(p, &v, (size_t)n);
#else
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
#endif
}

/* ---- header maps and the pairs wire format (hmap.c) ----------------------------- */
typedef struct hm_entry {
    uint32_t ko, kl, vo, vl; /* offsets into bytes */
} hm_entry;

typedef struct pw_hmap {
    hm_entry *e;
    size_t n, cap;
    pw_buf bytes;
    size_t garbage;
    int loose; /* 0: entries in order without gaps, serialized with one copy (hmap.c) */
    int changed;  /* set by every change (parse, add, replace, remove, clear); the embedding
                   * clears it after handing a map in, so it says "the filter touched it" */
    size_t given; /* the entries the embedding handed in, still first and unchanged while
                   * the filter only added entries (hmap_add, or replace of an absent key);
                   * HMAP_CHANGED once anything else changed the map */
} pw_hmap;

#define HMAP_CHANGED SIZE_MAX

#define PAIRS_MAX_COUNT 8192u
#define PAIRS_MAX_BYTES (16u << 20)

/* Parses the pairs format into a fresh map (keys lowercased). -1 on malformed input;
 * the map is left unchanged then. */
int hmap_parse(pw_hmap *m, const uint8_t *p, size_t n);
/* The flat form Python sends: count name/value pairs as "k\0v\0k\0v" (no final NUL),
 * parsed and checked in one pass (keys lowercased). 0; -1 when the separators do not make
 * count pairs (or out of memory); -2 when a name is empty or a field holds CR or LF. On
 * failure the map is empty. */
int hmap_parse_flat(pw_hmap *m, const uint8_t *p, size_t n, uint32_t count);
/* Entries [from, n) in the pairs format into out (0; -1 out of memory). */
int hmap_serialize_from(const pw_hmap *m, size_t from, pw_buf *out);
size_t hmap_serialized_size(const pw_hmap *m);
void hmap_serialize_to(const pw_hmap *m, uint8_t *out);
int hmap_serialize(const pw_hmap *m, pw_buf *out);
int hmap_find(const pw_hmap *m, const uint8_t *k, size_t kl);
int hmap_add(pw_hmap *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl);
int hmap_replace(pw_hmap *m, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl);
void hmap_remove(pw_hmap *m, const uint8_t *k, size_t kl);
void hmap_clear(pw_hmap *m);
/* A map just parsed from the embedding: 0 if a name is empty or a name or value holds
 * NUL, CR or LF (what no HTTP field can hold). */
int hmap_fields_ok(const pw_hmap *m);
void hmap_free(pw_hmap *m);
/* Value of the first entry for key, or NULL. */
const uint8_t *hmap_get(const pw_hmap *m, const uint8_t *k, size_t kl, size_t *vl);
static inline const uint8_t *hm_key(const pw_hmap *m, size_t i) { return m->bytes.p + m->e[i].ko; }
static inline const uint8_t *hm_val(const pw_hmap *m, size_t i) { return m->bytes.p + m->e[i].vo; }

/* ---- contexts --------------------------------------------------------------------- */
enum ctx_kind { CTX_ROOT = 1, CTX_HTTP = 2, CTX_TCP = 3 };
enum map_mode { MAP_NONE = 0, MAP_RO = 1, MAP_RW = 2 };
enum stop_at { STOP_NONE = 0, STOP_HEADERS, STOP_BODY, STOP_TRAILERS };

typedef struct pw_prop {
    pw_buf path, value;
    int readonly; /* filter state of a property declared read-only: set once */
    struct pw_prop *next;
} pw_prop;

typedef struct pw_root {
    pw_buf name, root_id, config;
    void *log_handle;
    int log_level;
    uint32_t tick_period_ms;
    uint64_t next_tick_ns;
    int pending_done;
    uint32_t deadline_ms; /* per top-level callback of this root and its streams; 0: none */
    int fail_open;        /* a failed VM lets this plugin's streams pass (FAIL_OPEN) */
    uint32_t status_code; /* proxy_get_status: the last outbound call's outcome */
    pw_buf status_msg;
    pw_prop *readonly_props; /* names declared read-only (declare_property), no values */
} pw_root;

typedef struct pw_hdir {
    pw_hmap headers, trailers;
    pw_buf held; /* body the filter holds: the current chunk, or everything buffered */
    pw_buf out;  /* body forwarded past the filter, not yet taken by the caller */
    uint8_t headers_in, headers_out, trailers_in, trailers_out, end_in, end_out;
    uint8_t headers_eos;
    uint8_t cut; /* ContinueAndEndStream: headers went on as the whole message */
    uint64_t body_in; /* body bytes received, for request.size / response.size */
    uint8_t stop;
    uint8_t hmode, tmode;
} pw_hdir;

typedef struct pw_http {
    pw_hdir d[2];
    int lr_pending;  /* proxy_send_local_response was called; applied after the callback */
    int local_reply; /* 1 once a local reply replaced the response */
    uint32_t lr_status;
    int32_t lr_grpc;
    pw_buf lr_details, lr_body;
    pw_hmap lr_headers;
    int reset, failed, done;
    int grpc;          /* the request's content-type is application/grpc* */
    int bypass;        /* FAIL_OPEN: the VM failed, the stream passes without the filter */
    uint64_t start_ns; /* wall clock at the first event: request.time */
} pw_http;

typedef struct pw_tdir {
    pw_buf held, out;
    uint8_t end_in, end_out, stop, closed;
} pw_tdir;

typedef struct pw_tcp {
    pw_tdir d[2];
    int close_requested, failed, done, opened;
    int bypass; /* FAIL_OPEN: the VM failed; data passes without the filter */
} pw_tcp;

typedef struct pw_ctx {
    uint32_t id;
    int kind;
    int created; /* on_context_create was delivered */
    struct pw_ctx *root;
    pw_root *r;
    pw_http *h;
    pw_tcp *t;
    pw_prop *host_props;   /* what the embedding provides (source.address, ...) */
    pw_prop *filter_state; /* what the guest set with proxy_set_property */
} pw_ctx;

/* ---- exports the host calls --------------------------------------------------------- */
/* From abi.h's CALLBACKS list: FN_ON_CONTEXT_CREATE, ..., FN_MAIN_VOID, FN_COUNT. */
#define FN_ENUM(id, name, alt, params, res) FN_##id,
enum fn_id { CALLBACKS(FN_ENUM) FN_COUNT };
#undef FN_ENUM

/* What the running callback is, for Envoy's availability rules of maps and buffers. */
enum cb_phase {
    PH_NONE = 0,
    PH_START,
    PH_VM_START,
    PH_CONFIGURE,
    PH_REQ_HEADERS,
    PH_REQ_BODY,
    PH_REQ_TRAILERS,
    PH_RESP_HEADERS,
    PH_RESP_BODY,
    PH_RESP_TRAILERS,
    PH_LOG,
    PH_DOWN_DATA,
    PH_UP_DATA,
    PH_FOREIGN,
    PH_HTTP_CALL,     /* proxy_on_http_call_response */
    PH_GRPC_INITIAL,  /* proxy_on_grpc_receive_initial_metadata */
    PH_GRPC_MESSAGE,  /* proxy_on_grpc_receive */
    PH_GRPC_TRAILING, /* proxy_on_grpc_receive_trailing_metadata */
    PH_GRPC_CLOSE,    /* proxy_on_grpc_close */
    PH_OTHER
};

enum deferred_kind { DF_CONTINUE, DF_CLOSE, DF_LOCAL_REPLY, DF_DELETE_ROOT };

typedef struct pw_deferred {
    int kind;
    uint32_t ctx;
    uint32_t arg;
} pw_deferred;

typedef struct pw_foreign {
    pw_buf name;
    void *handle;
    /* A function of the core's own (no Python): answers a status, output in *out. */
    int (*native)(pw_vm *vm, const uint8_t *args, size_t len, pw_buf *out);
    struct pw_foreign *next;
} pw_foreign;

typedef struct pw_ctx_table {
    pw_ctx **slots;
    size_t cap, n;
} pw_ctx_table;

struct pw_dispatcher {
    int efd;
    int running;          /* pw_dispatcher_run is delivering (owner only) */
    int track_changes;    /* the embedding reads `changed` (owner only) */
    pw_buf changed;       /* streams that events changed: (vm_key u64, ctx u32) records */
    _Atomic int signaled; /* the eventfd was written since the owner last ran */
    _Atomic int closed;
    _Atomic int named;    /* a queue owner refers to it: it can be posted to from anywhere */
    _Atomic int active;   /* posters and wakers inside their bracket (dispatcher.c) */
    _Atomic uint64_t posted; /* notices ever posted; `consumed` is the owner's count */
    uint64_t consumed;
    int autorun;          /* no loop waits on it: run it when a stream starts (owner only) */
    mpsc inbox;           /* notice_node: queue notifications from any thread */
    pthread_t owner;
    pw_vm **vms;          /* the owner thread's VMs; owner thread only */
    size_t n_vms, cap_vms;
};

struct pw_engine {
    wasm_engine_t *engine;
    wasmtime_linker_t *linker[2]; /* [1]: with the AssemblyScript SDK's gRPC import shapes */
};

struct pw_module {
    pw_engine *engine;
    wasmtime_module_t *module;
    wasmtime_instance_pre_t *pre;
    int abi, header_arity, flags;
};

struct metric;

/* ---- outbound calls (callout.c) ----------------------------------------------------- */
typedef struct pw_call {
    uint32_t token; /* 0: free slot */
    uint32_t root;
    uint8_t kind, half_closed;
} pw_call;

typedef struct pw_calls {
    pw_call *slots;
    size_t cap, n;
    uint32_t seq; /* token sequence (the token is seq << 2 | kind) */
} pw_calls;

/* The answer being delivered (maps 4..7, buffers 4 and 5), and scratch for requests. */
typedef struct pw_callres {
    pw_hmap a, b; /* headers or metadata; trailers */
    pw_buf body;
    pw_hmap req_headers, req_trailers;
    pw_buf req_ser[2];
} pw_callres;

/* One answer event, as posted to a dispatcher (dispatcher.c) and delivered by callout.c. */
typedef struct pw_call_event {
    uint32_t token, status;
    int ev;
    const uint8_t *headers, *body, *trailers;
    size_t headers_len, body_len, trailers_len;
    int nheaders, ntrailers; /* < 0: pairs wire format; else the flat form's pair count */
} pw_call_event;

struct pw_vm {
    pw_module *mod;
    wasmtime_store_t *store;
    wasmtime_context_t *cx;
    wasmtime_instance_t inst;
    wasmtime_memory_t mem;
    uint8_t *mbase; /* the memory view of the running hostcall (mem_refresh) */
    size_t msize;
    wasmtime_func_t fn[FN_COUNT];
    uint8_t has[FN_COUNT];
    int abi, header_arity;
    int legacy_maps; /* PW_MOD_AS_MAPS: the AssemblyScript SDK's map-type numbers */
    pthread_t owner;

    pw_buf vm_id, vm_config, environ;
    void *log_handle;

    pw_ctx_table ctxs;
    uint32_t next_id;
    pw_ctx *spare; /* finished HTTP contexts kept for reuse (context.c) */
    size_t n_spare;

    /* The running guest call: its context, the effective context and phase. */
    pw_ctx *cur, *eff;
    int phase;
    int depth;
    int in_deferred; /* vm_run_deferred is running: nested requests queue behind it */
    int in_alloc;    /* the guest allocator is running (hostcalls.c galloc) */
    int log_level;   /* for contexts without a root (start-up): LOG_TRACE, Python filters */
    int local_reply_in_call; /* a local reply was queued during this call */

    int failed;
    int closed;    /* pw_vm_close ran: the struct lives on for stale handles, nothing else */
    int mem_ready; /* the memory export is known (not yet while a start function runs) */
    char error[768];
    int exited, exit_code;

    pw_deferred *dq;
    size_t dq_len, dq_cap;

    pw_buf scratch;           /* answers handed to Python, valid until the next call */
    pw_buf hc;                /* a hostcall's answer on its way into the guest */
    pw_buf stdio[2];          /* partial stdout / stderr lines not yet logged */
    pw_buf call_data;         /* FOREIGN_FUNCTION_ARGUMENTS */
    pw_foreign *foreign;
    pw_prop *host_props; /* properties the embedding provides for every context */

    pw_limits limits;
    /* Deadlines (epoch.c): set by the owner thread at each top-level call, read by the
     * epoch callback on the same thread; interrupt is set from any thread. */
    uintptr_t stack_lo;        /* the owner thread's lowest stack address */
    uint64_t call_tick0_ns;    /* monotonic time of the running call's first tick */
    uint64_t call_cpu0_ns;     /* thread CPU time at that tick (0: none yet) */
    uint64_t call_pre_ns;      /* guest time credited before it (one tick less Python's) */
    uint64_t call_paused0_ns;  /* paused_ns at that tick */
    uint64_t call_deadline_ms; /* its deadline; 0: none */
    uint64_t paused_ns;        /* time spent in Python callbacks during this call */
    _Atomic int interrupt;     /* pw_vm_interrupt: trap at the next epoch check */

    uint64_t clock_ns; /* virtual clock; 0 = real clocks */
    size_t buffer_limit; /* bytes a stream may hold per direction (http.c) */

    struct metric **metrics; /* metric ids of this VM: id = (index << 2) | kind */
    size_t n_metrics, cap_metrics;

    pw_calls calls;         /* outbound calls in flight (callout.c) */
    pw_callres cr;
    void *callout_handle;   /* the embedding's handle for this VM's calls; NULL: none */
    uint32_t max_calls;

    pw_dispatcher *disp; /* the owner thread's dispatcher */
    struct pw_space *space; /* this scope's shared data (shared.c); NULL with a backend */
    struct pw_backend *backend; /* the scope's backend (backend.c); NULL: in-process */
    pw_buf ns, scope;       /* the host's namespace; (namespace, vm_id) as one key (namespace.c) */
    struct pw_trace *trace; /* the ABI call trace (trace.c); NULL: off */
    uint64_t vm_key;     /* process-unique: queue owners name their VM by it */
    uint32_t queues_created; /* against PW_QUEUES_PER_VM */
};

/* ---- cross-file internal API -------------------------------------------------------- */
/* Python callbacks, set once at import before any VM exists; read-only afterwards. */
extern pw_log_fn pw_log_cb;
extern pw_foreign_fn pw_foreign_cb;
extern _Atomic(pw_yield_fn) pw_yield_cb;

/* Before this thread blocks, or after a tick of guest code: the embedding's lock goes
 * (pw_set_lock_yield). */
static inline void lock_yield(void) {
    pw_yield_fn y = atomic_load_explicit(&pw_yield_cb, memory_order_relaxed);
    if (y) y();
}

/* vm.c */
int vm_call(pw_vm *vm, int fn, pw_ctx *ctx, int phase, int nargs, const uint32_t *args,
            uint32_t *ret);
void vm_run_deferred(pw_vm *vm);
int vm_defer(pw_vm *vm, int kind, uint32_t ctx, uint32_t arg);
void vm_fail(pw_vm *vm, const char *what, wasm_trap_t *trap, wasmtime_error_t *err);
uint64_t vm_now_ns(pw_vm *vm, int monotonic);
void vm_log(pw_vm *vm, pw_ctx *ctx, int level, const char *msg, size_t len);
int vm_enter(pw_vm *vm); /* PW_OK, or why the VM takes no call now */
uint64_t vm_tick_after(uint64_t t, uint32_t period_ms);
/* The prologue of every pw_* call on a VM: a status, or a negated one (pw.h). */
#define VM_ENTER(vm)                 \
    do {                             \
        int e_ = vm_enter(vm);       \
        if (e_) return e_;           \
    } while (0)
#define VM_ENTER_NEG(vm)             \
    do {                             \
        int e_ = vm_enter(vm);       \
        if (e_) return -e_;          \
    } while (0)
int vm_queue_ready(pw_vm *vm, uint32_t root, uint32_t queue); /* 1 if delivered */
int vm_run_ticks(pw_vm *vm);

/* epoch.c: deadlines, interrupts, the wasm stack's room on the thread stack */
#define PW_WASM_STACK (256u << 10) /* wasmtime's max_wasm_stack */
#define PW_STACK_MARGIN (128u << 10) /* host frames below the deepest wasm frame */
void epoch_configure(wasm_config_t *cfg);
void epoch_engine_start(wasm_engine_t *e);
void epoch_engine_stop(wasm_engine_t *e);
void epoch_vm_attach(pw_vm *vm);
void epoch_vm_detach(pw_vm *vm);
uint64_t epoch_now_ns(void);

/* Before a callback into the embedding (a log line, a foreign function, an outbound call):
 * the embedding's lock goes first, so that whatever the callback calls in turn (the core
 * again, through a binding that releases the lock itself) never finds it marked as held
 * by this call (pw_set_lock_yield); returns the time, for vm_paused. */
static inline uint64_t callback_begin(void) {
    lock_yield();
    return epoch_now_ns();
}
/* After a call into Python that began at t0 (epoch_now_ns): its time is not the guest's. */
static inline void vm_paused(pw_vm *vm, uint64_t t0) { vm->paused_ns += epoch_now_ns() - t0; }
uintptr_t epoch_stack_low(void);
int epoch_stack_fail(pw_vm *vm, char *why, size_t whylen);
/* Set by every guest call (and by each tick of a running one), cleared by the ticker at
 * each tick: the ticker sleeps once no call has set it for a while (epoch.c). */
extern _Atomic int epoch_busy;
void epoch_wake(void); /* sets epoch_busy; wakes the ticker if it sleeps */

/* signals.c: signal-based traps kept in front of later handlers */
int sig_enabled(void);
void sig_capture(void); /* right after an engine with signals-based traps is made */
extern __attribute__((tls_model("initial-exec"))) _Thread_local int sig_in_guest;

/* dispatcher.c */
int dispatcher_post(pw_dispatcher *d, uint64_t vm_key, uint32_t root, uint32_t queue);
/* Before a new stream on a thread with no loop: deliver what is pending (owner only). */
static inline void dispatcher_autorun(pw_dispatcher *d) {
    if (d && d->autorun && atomic_load_explicit(&d->signaled, memory_order_acquire))
        pw_dispatcher_run(d);
}
int dispatcher_add_vm(pw_dispatcher *d, pw_vm *vm);
void dispatcher_changed(pw_dispatcher *d, uint64_t vm_key, uint32_t ctx);
void dispatcher_remove_vm(pw_dispatcher *d, pw_vm *vm);

/* context.c */
pw_ctx *ctx_get(pw_vm *vm, uint32_t id);
pw_ctx *ctx_new(pw_vm *vm, int kind, pw_ctx *root);
void ctx_delete(pw_vm *vm, pw_ctx *c);
int ctx_ensure_created(pw_vm *vm, pw_ctx *c);
void ctx_table_free(pw_vm *vm);
pw_ctx *ctx_effective(pw_vm *vm);
int prop_set(pw_prop **list, const uint8_t *path, size_t pl, const uint8_t *v, size_t vl);
const pw_prop *prop_find(const pw_prop *list, const uint8_t *path, size_t pl);
void prop_free_all(pw_prop **list);

/* http.c / tcp.c: deferred actions land here; the hostcalls find maps and buffers here */
pw_hmap *http_map(pw_ctx *c, uint32_t type, int write, int *status);
pw_buf *stream_buffer(pw_vm *vm, pw_ctx *c, uint32_t type, int *status);
void http_resume(pw_vm *vm, pw_ctx *c, int dir);
void http_local_reply_apply(pw_vm *vm, pw_ctx *c);
void http_fail(pw_vm *vm, pw_ctx *c);
void http_free(pw_http *h);
void http_reset(pw_http *h); /* empty it for reuse, keeping its buffers */
void tcp_resume(pw_vm *vm, pw_ctx *c);
void tcp_free(pw_tcp *t);

/* hostcalls.c */
typedef struct import_def {
    const char *name;
    const char *params; /* one char per parameter: i = i32, I = i64 */
    const char *results;
    wasmtime_func_unchecked_callback_t cb;
} import_def;
int define_imports(wasmtime_linker_t *linker, const char *module, const import_def *defs,
                   size_t n, char *err, size_t errlen);
int hostcalls_define(wasmtime_linker_t *linker, int as_grpc, char *err, size_t errlen);
/* Guest memory access; every guest pointer goes through these, bounds-checked against the
 * view taken by mem_refresh at hostcall entry and again after any call into the guest. */
void mem_refresh(pw_vm *vm, wasmtime_context_t *cx);
uint8_t *gmem(pw_vm *vm, uint32_t ptr, uint32_t len);
int gput_u32(pw_vm *vm, uint32_t ptr, uint32_t v);
int gput_u64(pw_vm *vm, uint32_t ptr, uint64_t v);
/* Returns bytes to the guest through (ptr_ptr, size_ptr) with one exactly-sized
 * allocation; a trap from the allocator comes back in *trap. */
int greturn(pw_vm *vm, wasmtime_context_t *cx, const uint8_t *d, size_t n, uint32_t ptr_ptr,
            uint32_t size_ptr, wasm_trap_t **trap);

/* callout.c */
int callout_http(pw_vm *vm, const uint8_t *up, size_t upl, const uint8_t *hp, size_t hl,
                 const uint8_t *body, size_t bl, const uint8_t *tp, size_t tl, uint32_t timeout_ms,
                 uint32_t token_ptr);
int callout_grpc(pw_vm *vm, int kind, const uint8_t *up, size_t upl, const uint8_t *svc,
                 size_t svcl, const uint8_t *meth, size_t methl, const uint8_t *md, size_t mdl,
                 const uint8_t *msg, size_t msgl, uint32_t timeout_ms, uint32_t token_ptr);
int callout_grpc_op(pw_vm *vm, uint32_t token, int op, const uint8_t *msg, size_t len, int end);
pw_hmap *callout_map(pw_vm *vm, uint32_t type, int write, int *st);
pw_buf *callout_buffer(pw_vm *vm, uint32_t type, int write, int *st);
int callout_deliver(pw_vm *vm, const pw_call_event *ev); /* 1 if a callback was made */
void callout_cancel_root(pw_vm *vm, uint32_t root);
void callout_cancel_all(pw_vm *vm); /* a failed VM's calls: no answer can be delivered */
void callout_free(pw_vm *vm);       /* cancels every call in flight */

/* wasi.c */
int wasi_define(wasmtime_linker_t *linker, char *err, size_t errlen);
void wasi_flush(pw_vm *vm); /* logs partial stdout/stderr lines */

/* props.c */
int props_get(pw_vm *vm, pw_ctx *ctx, const uint8_t *path, size_t pl, pw_buf *out);
int props_set(pw_vm *vm, pw_ctx *ctx, const uint8_t *path, size_t pl, const uint8_t *v, size_t vl);

/* trace.c: hooks called only when vm->trace is set */
#define TRACE_MAX_ARGS 12
typedef struct pw_trace pw_trace;
void trace_free(pw_vm *vm);
int trace_depth(pw_vm *vm);
void trace_set_depth(pw_vm *vm, int depth);
void trace_enter(pw_vm *vm, const wasmtime_val_raw_t *a, size_t nargs);
void trace_hostcall(pw_vm *vm, const char *name, int64_t status);
void trace_callback(pw_vm *vm, int kind, const char *name, uint32_t ctx, int nargs,
                    const uint32_t *args, int64_t result);

/* namespace.c */
int scope_make(pw_buf *out, const uint8_t *ns, size_t nsl, const uint8_t *vm_id, size_t vl);
int vm_namespace_apply(pw_vm *vm, const uint8_t *ns, size_t nsl); /* sets ns, scope, space */

void vm_namespace_release(pw_vm *vm); /* pw_vm_free: gives back the scope's store/backend */
/* The foreign functions delete_shared_data / expire_shared_data (backend.c), registered
 * on every VM before the embedding's own (which win on a name clash). */
int backend_register_foreign(pw_vm *vm);

/* shared.c, queue.c (keyed by scope), metrics.c (by namespace) */
typedef struct pw_space pw_space; /* one vm_id's shared data */
/* Finds (or creates) a scope's store, holding a reference: give it back with
 * shared_space_unref. */
pw_space *shared_space(const uint8_t *vm_id, size_t vl, int create);
void shared_space_unref(pw_space *s);
void shared_space_configure(pw_space *s, uint64_t max_bytes, uint64_t default_ttl_ms);
void shared_retire(const uint8_t *prefix, size_t pl); /* a namespace's stores go */
int shared_get(pw_space *s, const uint8_t *k, size_t kl, pw_buf *out, uint32_t *cas);
int shared_set(pw_space *s, const uint8_t *k, size_t kl, const uint8_t *v, size_t n, uint32_t cas);
int shared_del(pw_space *s, const uint8_t *k, size_t kl, uint32_t cas);
int shared_expire(pw_space *s, const uint8_t *k, size_t kl, uint64_t ttl_ms);
uint64_t shared_now_ns(void);             /* CLOCK_MONOTONIC, what TTLs count in */
uint64_t shared_deadline(uint64_t ttl_ms); /* now + ttl (saturating); 0 for ttl 0 */
#define PW_QUEUES_PER_VM 1024 /* queues one VM may create (it may join any number) */
uint32_t queue_register(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl,
                        pw_dispatcher *d, uint64_t vm_key, uint32_t root, int may_create,
                        int *created);
int queue_resolve(const uint8_t *vm_id, size_t vl, const uint8_t *name, size_t nl, uint32_t *id);
#define QUEUE_MAX_ITEMS (1 << 20) /* per queue; see queue.c */
int queue_enqueue(uint32_t id, const uint8_t *d, size_t n);
int queue_dequeue(uint32_t id, pw_buf *out);
int queue_size(uint32_t id); /* -1: no such queue */
void queue_retire(const uint8_t *prefix, size_t pl); /* a namespace's queues go */

/* backend.c: routing between the in-process store (slot 0, called directly) and the
 * scope's backend (backend.h). Queue ids carry their backend's slot in the top 8 bits. */
#define PW_QUEUE_SLOT(id) ((id) >> 24)
#define PW_QUEUE_LOCAL(id) ((id) & 0xffffffu)
#define PW_BACKEND_SLOTS 256
struct pw_backend;
int backend_get(pw_vm *vm, const uint8_t *k, size_t kl, pw_buf *out, uint32_t *cas);
int backend_set(pw_vm *vm, const uint8_t *k, size_t kl, const uint8_t *v, size_t n, uint32_t cas);
int backend_del(pw_vm *vm, const uint8_t *k, size_t kl, uint32_t cas);
int backend_expire(pw_vm *vm, const uint8_t *k, size_t kl, uint64_t ttl_ms);
int backend_q_register(pw_vm *vm, const uint8_t *name, size_t nl, uint32_t root, int may_create,
                       int *created, uint32_t *id);
int backend_q_resolve(pw_vm *vm, const uint8_t *vm_id, size_t vl, const uint8_t *name,
                      size_t nl, uint32_t *id);
int backend_q_enqueue(uint32_t id, const uint8_t *d, size_t n);
int backend_q_dequeue(uint32_t id, pw_buf *out);
/* The hostcalls' entry points: the in-process store without indirection when the VM's
 * scope has no backend. */
static inline int state_get(pw_vm *vm, const uint8_t *k, size_t kl, pw_buf *out, uint32_t *cas) {
    return vm->backend ? backend_get(vm, k, kl, out, cas) : shared_get(vm->space, k, kl, out, cas);
}
static inline int state_set(pw_vm *vm, const uint8_t *k, size_t kl, const uint8_t *v, size_t n,
                            uint32_t cas) {
    return vm->backend ? backend_set(vm, k, kl, v, n, cas) : shared_set(vm->space, k, kl, v, n, cas);
}
static inline int state_enqueue(uint32_t id, const uint8_t *d, size_t n) {
    return PW_QUEUE_SLOT(id) ? backend_q_enqueue(id, d, n) : queue_enqueue(id, d, n);
}
static inline int state_dequeue(uint32_t id, pw_buf *out) {
    return PW_QUEUE_SLOT(id) ? backend_q_dequeue(id, out) : queue_dequeue(id, out);
}
int metric_define(pw_vm *vm, uint32_t kind, const uint8_t *name, size_t nl, uint32_t *id);
int metric_increment(pw_vm *vm, uint32_t id, int64_t off);
int metric_record(pw_vm *vm, uint32_t id, uint64_t v);
int metric_get(pw_vm *vm, uint32_t id, uint64_t *v);

/* At a top-level guest call (epoch.c's scheme): checks the owner thread's stack has room
 * for the wasm stack, then arms the deadline; -1 (and why) when there is no room. */
static inline int epoch_call_begin(pw_vm *vm, uint32_t deadline_ms, char *why, size_t whylen) {
    char here;
    if ((uintptr_t)&here - vm->stack_lo < (uintptr_t)PW_WASM_STACK + PW_STACK_MARGIN ||
        (uintptr_t)&here < vm->stack_lo)
        return epoch_stack_fail(vm, why, whylen);
    vm->paused_ns = 0;
    vm->call_deadline_ms = deadline_ms;
    vm->call_cpu0_ns = 0; /* no clock read here: the first tick reads them (epoch.c) */
    WT.context_set_epoch_deadline(vm->cx, 1);
    if (!atomic_load(&epoch_busy)) epoch_wake(); /* once per tick at most: the ticker clears it */
    return 0;
}

#endif
