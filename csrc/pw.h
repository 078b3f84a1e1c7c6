/*
 * pyproxywasm C core: the API Python calls through cffi.
 *
 * The text between the cdef markers is handed to cffi verbatim, so it holds only plain C
 * declarations. One call per ABI event: Python never runs on the hostcall path, and every
 * call below is made with the GIL released (cffi API mode), so VMs owned by different
 * threads run in parallel. A pw_vm belongs to the thread that created it; calls from any
 * other thread return PW_ERR_THREAD.
 */
#ifndef PW_H
#define PW_H

#include <stddef.h>
#include <stdint.h>

/* The API is all the core exports when it is built with -fvisibility=hidden (the Makefile's
 * libpwcore.so; the Python extension exports only its init function). */
#pragma GCC visibility push(default)
/* cdef-begin */
typedef struct pw_engine pw_engine;
typedef struct pw_module pw_module;
typedef struct pw_vm pw_vm;
typedef struct pw_dispatcher pw_dispatcher;

/* Results of the pw_* calls (not ABI statuses). */
#define PW_OK 0
#define PW_ERR 1            /* see the error text */
#define PW_ERR_TRAP 2       /* the guest trapped; the VM is failed */
#define PW_ERR_FAILED 3     /* the VM failed earlier; nothing was called */
#define PW_ERR_THREAD 4     /* not the VM's thread, or from inside its own callback */
#define PW_ERR_NO_CONTEXT 5 /* unknown or already deleted context id */
#define PW_ERR_REJECTED 6   /* on_configure returned false */
#define PW_ERR_STATE 7      /* event out of order for this stream */
#define PW_ERR_VM_REJECTED 8 /* on_vm_start returned false */
#define PW_ERR_CLOSED 9     /* the VM was closed (its host closed); the handle is stale */
#define PW_ERR_REENTRANT 10 /* called from inside one of the VM's own callbacks */
#define PW_ERR_STACK 11     /* the thread's stack has no room for the wasm stack */
#define PW_ERR_BAD_HEADERS 12 /* headers with an empty name, or NUL, CR or LF */
/* The one convention: calls that answer a status return PW_OK or a PW_ERR_* code; calls
 * that answer a non-negative value (flags, counts, 0/1) return -PW_ERR_* on error. */

/* ABI versions. */
#define PW_ABI_0_1_0 0
#define PW_ABI_0_2_0 1
#define PW_ABI_0_2_1 2

/* Directions: HTTP request/response, TCP downstream/upstream. */
#define PW_DIR_REQUEST 0
#define PW_DIR_RESPONSE 1
#define PW_DIR_DOWNSTREAM 0
#define PW_DIR_UPSTREAM 1

/* Stream flags returned by the stream calls (a bit set). */
#define PW_S_REQ_STOPPED 1
#define PW_S_RESP_STOPPED 2
#define PW_S_LOCAL_REPLY 4
#define PW_S_RESET 8        /* proxy_close_stream, or TCP close requested */
#define PW_S_FAILED 16      /* the VM trapped while serving this stream */
#define PW_S_DONE 32        /* teardown ran */
#define PW_S_REQ_ENDED 64   /* end of stream forwarded on the request/downstream side */
#define PW_S_RESP_ENDED 128 /* same, response/upstream side */
#define PW_S_REQ_HEADERS_OUT 256  /* request headers were forwarded */
#define PW_S_RESP_HEADERS_OUT 512 /* response headers were forwarded */
#define PW_S_REQ_TRAILERS_OUT 1024
#define PW_S_RESP_TRAILERS_OUT 2048
#define PW_S_BYPASSED 4096  /* FAIL_OPEN: the VM failed; the stream passes without the filter */
/* The request / response headers differ from what the embedding gave (the filter changed
 * them, or a local reply replaced them): when clear, what was given is what goes on, and
 * need not be read back. */
#define PW_S_REQ_HEADERS_CHANGED 8192
#define PW_S_RESP_HEADERS_CHANGED 16384

/* What pw_http_read / pw_tcp_read can return. */
#define PW_R_REQ_HEADERS 0
#define PW_R_REQ_TRAILERS 1
#define PW_R_RESP_HEADERS 2
#define PW_R_RESP_TRAILERS 3
#define PW_R_REQ_BODY 4      /* request body forwarded and not yet taken */
#define PW_R_RESP_BODY 5     /* response body forwarded and not yet taken */
#define PW_R_REQ_HELD 6      /* request body held by the filter */
#define PW_R_RESP_HELD 7     /* response body held by the filter */
#define PW_R_LOCAL_HEADERS 8 /* headers of the plugin's local response (pairs) */
#define PW_R_LOCAL_BODY 9
#define PW_R_LOCAL_DETAILS 10
#define PW_R_DOWN_DATA 11    /* TCP downstream data forwarded upstream, not yet taken */
#define PW_R_UP_DATA 12      /* TCP upstream data forwarded downstream, not yet taken */
#define PW_R_REQ_HEADERS_ADDED 13 /* the request headers' entries after the ones the embedding
                                   * gave (pairs), when the filter only added entries; NULL
                                   * (and PW_OK) when it changed more than that */

/* Cold callbacks into Python (each takes the GIL itself). */
typedef void (*pw_log_fn)(void *handle, int level, const char *msg, size_t len);
typedef int (*pw_foreign_fn)(void *handle, const uint8_t *args, size_t len, void *result);
void pw_set_callbacks(pw_log_fn log, pw_foreign_fn foreign);

/* Guest calls made with an interpreter lock held. An embedding may call the core holding
 * its own lock (pyproxywasm's C event path holds the GIL across a call: releasing and
 * retaking it costs more than a short guest call). So that the lock is not held for long,
 * the core calls `yield` on the calling thread once a guest call has run for a tick,
 * before a hostcall blocks (a Redis round trip, a contended shared-memory lock), and before
 * every callback into the embedding (log, foreign function, outbound call: whatever the
 * callback calls in turn must not find the lock marked as held); the embedding gives up its
 * lock there if its caller holds it, and takes it back when the core returns. `yield` may
 * be called anywhere inside any core call, any number of times.
 * NULL (the default): never called. Set once, before guest code runs. */
typedef void (*pw_yield_fn)(void);
void pw_set_lock_yield(pw_yield_fn yield);

/* Outbound calls (proxy_http_call, proxy_grpc_*). The core checks a guest's call (Envoy's
 * argument rules), gives it a token and hands it to the embedding through the callout
 * callback, on the VM's thread, with the guest suspended: it answers OK (the call is in
 * flight) or a status (e.g. BAD_ARGUMENT for an unknown cluster). Pointers in the call are
 * valid only during the callback. Answers come back later, from any thread, with
 * pw_dispatcher_post_call on the dispatcher of the VM's thread; they are delivered there to
 * the root context that made the call. The op callback tells the embedding of a gRPC
 * message or half-close to send, or that a call is cancelled (proxy_grpc_cancel, its root
 * context deleted, its VM freed): it must then deliver nothing more for that token. */
#define PW_CALL_HTTP 0
#define PW_CALL_GRPC 1        /* unary */
#define PW_CALL_GRPC_STREAM 2
typedef struct pw_callout {
    int kind;
    uint32_t root, token, timeout_ms; /* timeout 0: none */
    const uint8_t *upstream;
    size_t upstream_len;
    const uint8_t *headers;  /* pairs wire format, keys lowercased (HTTP headers, gRPC metadata) */
    size_t headers_len;
    const uint8_t *body;     /* HTTP body, gRPC message */
    size_t body_len;
    const uint8_t *trailers; /* pairs wire format (HTTP only) */
    size_t trailers_len;
    const uint8_t *service;  /* gRPC only */
    size_t service_len;
    const uint8_t *method;
    size_t method_len;
} pw_callout;
#define PW_OP_CANCEL 0
#define PW_OP_SEND 1   /* a gRPC stream message (end_stream: half-close after it) */
#define PW_OP_CLOSE 2  /* a gRPC stream's local half-close */
typedef int (*pw_callout_fn)(void *handle, const pw_callout *call);
/* Answers an ABI status for PW_OP_SEND: OK, or BAD_ARGUMENT when the stream already holds
 * the buffer limit's worth of messages not yet written (nothing is sent then); the answer
 * to other ops is ignored. */
typedef int (*pw_callop_fn)(void *handle, uint32_t token, int op, const uint8_t *data,
                            size_t len, int end_stream);
void pw_set_callout_callbacks(pw_callout_fn start, pw_callop_fn op);

/* Result sink for foreign functions: copies the bytes the Python side produced. */
int pw_result_set(void *result, const uint8_t *data, size_t len);

int pw_wt_bind(const char *libpath, char *err, size_t errlen);
void pw_wt_struct_sizes(size_t out[6]);

pw_engine *pw_engine_new(char *err, size_t errlen);
/* Signal-based traps (csrc/signals.c): puts the core's fault handler back in front of any
 * handler installed since (returns how many signals needed it); how often that happened;
 * whether the engine uses signals at all (PYPROXYWASM_SIGNALS=0: explicit checks). */
int pw_signals_verify(void);
uint64_t pw_signals_repairs(void);
int pw_signals_enabled(void);
void pw_engine_free(pw_engine *e);

/* Compile (or deserialize a cached compile of) a module. The exports it calls were
 * validated by the Python loader; header_arity is 2 (ABI 0.1.0 builds) or 3. flags adapt
 * the AssemblyScript SDK: its gRPC import shapes (proxy_grpc_call with 10 parameters,
 * proxy_grpc_stream with 7) and its map-type numbers (gRPC metadata 5/6, HTTP-call
 * response headers/trailers 7/8). */
#define PW_MOD_AS_GRPC 1
#define PW_MOD_AS_MAPS 2
pw_module *pw_module_new(pw_engine *e, const uint8_t *wasm, size_t len, int abi,
                         int header_arity, int flags, char *err, size_t errlen);
pw_module *pw_module_deserialize(pw_engine *e, const uint8_t *bytes, size_t len, int abi,
                                 int header_arity, int flags, char *err, size_t errlen);
int pw_module_serialize(pw_module *m, uint8_t **out, size_t *len);
/* The Proxy-Wasm imports ("env" module) the host defines, for load errors: lines of
 * "name params results", each a string of i (i32) / I (i64), "-" when empty. */
int pw_host_imports(int as_grpc, uint8_t **out, size_t *len);
/* The exports the host calls or checks, with the types a module must give them, for the
 * loader: lines of "name params results" as above (an export's alternative name gets its
 * own line). The header callbacks are listed with 3 parameters (0.1.0 builds may have 2). */
int pw_host_exports(uint8_t **out, size_t *len);
void pw_bytes_free(uint8_t *p);
void pw_module_free(pw_module *m);

/* Dispatchers: one per thread that owns VMs. Any thread may post to one (queue
 * notifications) or wake it; the owner thread waits on its fd (readable when woken) and
 * runs it, which delivers notifications and due ticks to its VMs. */
pw_dispatcher *pw_dispatcher_new(void);
int pw_dispatcher_fd(pw_dispatcher *d);
void pw_dispatcher_wake(pw_dispatcher *d);
/* Owner thread only: returns the number of callbacks made, or a negative PW_ERR. */
int pw_dispatcher_run(pw_dispatcher *d);
uint64_t pw_dispatcher_next_tick_in(pw_dispatcher *d);
/* For a thread that never waits on the fd (a WSGI worker, say): pending notifications and
 * due ticks are then delivered when a stream starts on one of its VMs. */
void pw_dispatcher_set_autorun(pw_dispatcher *d, int on);
/* Answer events for outbound calls, from any thread. headers/trailers come as in
 * pw_http_headers (n < 0: pairs wire format; else n flat pairs); status and body carry
 * proxy_get_status's code and message for failures and gRPC closes. Returns -1 when the
 * dispatcher is closed (the event is dropped). */
#define PW_EV_HTTP_RESPONSE 1
#define PW_EV_HTTP_FAILURE 2  /* the callback gets 0 headers, 0 body, 0 trailers */
#define PW_EV_GRPC_INITIAL 3  /* headers: initial metadata (streams only) */
#define PW_EV_GRPC_MESSAGE 4  /* body: one message; ends a unary call */
#define PW_EV_GRPC_TRAILING 5 /* headers: trailing metadata (streams only) */
#define PW_EV_GRPC_CLOSE 6    /* status: gRPC status; body: its message; ends the call */
int pw_dispatcher_post_call(pw_dispatcher *d, uint64_t vm_key, uint32_t token, int ev,
                            uint32_t status, const uint8_t *headers, size_t headers_len,
                            int nheaders, const uint8_t *body, size_t body_len,
                            const uint8_t *trailers, size_t trailers_len, int ntrailers);
/* Streams whose state events changed during the last runs (a tick, a queue notification or
 * a call answer continued, answered or reset them): records of (vm_key u64, context id u32),
 * little-endian; reading them empties the list. Owner thread only. */
void pw_dispatcher_track_changes(pw_dispatcher *d, int on); /* off by default */
int pw_dispatcher_changed(pw_dispatcher *d, uint8_t *out, size_t cap, size_t *len);
/* Owner thread, after its VMs are freed: later posts are dropped. */
void pw_dispatcher_close(pw_dispatcher *d);
/* When nothing can call it any more (Python's object is gone): frees it unless a queue
 * owner names it. */
void pw_dispatcher_free(pw_dispatcher *d);

/* A VM: one instance of a module, owned by the calling thread (whose dispatcher is d).
 * Runs the WASI start-up (_initialize + main, or _start). vm_id and vm_config are kept for
 * the VM's roots; environ is "K=V\0K=V\0" for WASI environ_get. ns is the host's namespace
 * (below: where the VM's shared data, queues and metrics live). */
/* Caps on what one VM's guest can make the host hold or spend (defaults in Python's
 * pyproxywasm.limits.Limits); 0 means no cap for each. */
typedef struct pw_limits {
    uint64_t memory_bytes; /* linear memory (store limiter): memory.grow past it fails */
    uint64_t body_bytes;   /* a body buffer set_buffer_bytes may build */
    uint32_t deadline_ms;  /* default per top-level guest call (roots copy it when made) */
    uint32_t log_bytes;    /* longest log message / WASI output line; longer ones are cut */
} pw_limits;

pw_vm *pw_vm_new(pw_module *m, pw_dispatcher *d, const pw_limits *limits,
                 const uint8_t *ns, size_t ns_len,
                 const uint8_t *vm_id, size_t vm_id_len,
                 const uint8_t *vm_config, size_t vm_config_len, const uint8_t *environ,
                 size_t environ_len, void *log_handle, char *err, size_t errlen);
/* Owner thread, outside the VM's callbacks: frees the store and contexts; the handle stays
 * valid (every later call answers PW_ERR_CLOSED) until pw_vm_free. */
int pw_vm_close(pw_vm *vm);
void pw_vm_free(pw_vm *vm);
/* Any thread: the running (or next) guest call traps at its next epoch check. */
void pw_vm_interrupt(pw_vm *vm);
/* The deadline roots created from now on get (ms; 0: none). */
void pw_vm_set_deadline(pw_vm *vm, uint32_t ms);
/* FAIL_OPEN (1) or FAIL_CLOSED (0) for this root's streams when the VM fails. */
void pw_root_set_fail_open(pw_vm *vm, uint32_t root, int fail_open);
/* How much body a stream may hold per direction while the plugin pauses (Envoy's buffer
 * limit, 1 MiB by default); past it the stream ends with 413 / 500. */
#define PW_DEFAULT_BUFFER_LIMIT 1048576
void pw_vm_set_buffer_limit(pw_vm *vm, size_t bytes);
int pw_vm_failed(pw_vm *vm); /* 1 once failed (or closed) */
int pw_vm_closed(pw_vm *vm);
const char *pw_vm_error(pw_vm *vm);
/* Virtual clock (ns since the Unix epoch); 0 goes back to the real clocks. */
void pw_vm_set_clock(pw_vm *vm, uint64_t now_ns);
/* Nanoseconds until the next tick is due on this VM's clock, or UINT64_MAX if none. */
uint64_t pw_vm_next_tick_in(pw_vm *vm);
/* Outbound calls: the embedding's handle for this VM's calls (NULL: no clusters, every
 * name is unknown) and how many may be in flight at once (0: the default); past it a call
 * answers INTERNAL_FAILURE. */
#define PW_DEFAULT_MAX_CALLS 1024
void pw_vm_set_callouts(pw_vm *vm, void *handle, uint32_t max_calls);
uint32_t pw_vm_calls_in_flight(pw_vm *vm);
/* Process-unique: names the VM in dispatcher posts. */
uint64_t pw_vm_key(pw_vm *vm);
/* Foreign functions callable by this VM's guests. */
int pw_vm_register_foreign(pw_vm *vm, const char *name, size_t name_len, void *handle);

/* Root (plugin) contexts. Creates the context and calls on_vm_start, on_configure. */
int pw_root_new(pw_vm *vm, const uint8_t *name, size_t name_len, const uint8_t *root_id,
                size_t root_id_len, const uint8_t *config, size_t config_len, void *log_handle,
                int log_level, uint32_t *out_id);
void pw_root_set_log_level(pw_vm *vm, uint32_t root, int level);
uint32_t pw_root_tick_period(pw_vm *vm, uint32_t root);
int pw_root_tick(pw_vm *vm, uint32_t root);
/* The context the VM is running a callback for (0: none, kind -1) and its kind, for the
 * log and foreign function callbacks to tell which stream called; owner thread only. */
#define PW_CTX_ROOT 0
#define PW_CTX_HTTP 1
#define PW_CTX_TCP 2
uint32_t pw_vm_current_context(pw_vm *vm, int *kind);
/* 1 while the context exists (a root pending proxy_done still exists). */
int pw_context_alive(pw_vm *vm, uint32_t ctx);
/* Calls on_done; returns 1 when the root was deleted, 0 when it is pending proxy_done. */
int pw_root_done(pw_vm *vm, uint32_t root);
int pw_root_foreign_call(pw_vm *vm, uint32_t root, uint32_t function_id,
                         const uint8_t *args, size_t len);

/* Envoy's declare_property with readonly set, from inside the running callback: when that
 * callback is a root context's, each stream of that root may from then on set the property
 * once (proxy_set_property answers BAD_ARGUMENT after); from a stream's callback it binds
 * nothing, as in Envoy. Callable while the VM waits in a foreign function. */
int pw_vm_declare_readonly(pw_vm *vm, const uint8_t *path, size_t path_len);

/* Properties the host provides for a context (0 = every context of the VM): the path is
 * NUL-separated segments, the value already encoded as Envoy encodes it. These two may be
 * called from a foreign function callback too (the guest waits; nothing calls into it). */
int pw_set_host_property(pw_vm *vm, uint32_t ctx, const uint8_t *path, size_t path_len,
                         const uint8_t *value, size_t value_len);
/* Reads a property as the guest would; *out is valid until the next call on the VM. */
int pw_get_property(pw_vm *vm, uint32_t ctx, const uint8_t *path, size_t path_len,
                    const uint8_t **out, size_t *out_len);

/* HTTP streams. Headers and trailers come in one of two forms: with nflat < 0, the pairs
 * wire format; otherwise nflat name/value pairs as "k\0v\0k\0v" (what Python builds
 * fastest; HTTP field names and values never contain NUL). pw_http_start creates the
 * stream and delivers its request headers in one call. */
int pw_http_new(pw_vm *vm, uint32_t root, uint32_t *out_id);
int pw_http_start(pw_vm *vm, uint32_t root, const uint8_t *headers, size_t len, int nflat,
                  int eos, uint32_t *out_id);
int pw_http_headers(pw_vm *vm, uint32_t ctx, int dir, const uint8_t *headers, size_t len,
                    int nflat, int eos);
int pw_http_data(pw_vm *vm, uint32_t ctx, int dir, const uint8_t *data, size_t len, int eos);
int pw_http_trailers(pw_vm *vm, uint32_t ctx, int dir, const uint8_t *headers, size_t len,
                     int nflat);
int pw_http_flags(pw_vm *vm, uint32_t ctx);
int pw_http_finish(pw_vm *vm, uint32_t ctx);
int pw_http_local_reply(pw_vm *vm, uint32_t ctx, uint32_t *status, int32_t *grpc_status);
/* *out is valid until the next call on the VM; reading a body output takes it. */
int pw_http_read(pw_vm *vm, uint32_t ctx, int what, const uint8_t **out, size_t *len);

/* TCP streams (network filters). peer is the ABI PeerType. */
int pw_tcp_new(pw_vm *vm, uint32_t root, uint32_t *out_id);
/* pw_tcp_new in two steps: the context (host properties can be set on it), then the
 * connection's opening (proxy_on_context_create, on_new_connection), which then sees them. */
int pw_tcp_alloc(pw_vm *vm, uint32_t root, uint32_t *out_id);
int pw_tcp_open(pw_vm *vm, uint32_t ctx);
int pw_tcp_data(pw_vm *vm, uint32_t ctx, int dir, const uint8_t *data, size_t len, int eos);
int pw_tcp_close(pw_vm *vm, uint32_t ctx, int dir, int peer);
int pw_tcp_flags(pw_vm *vm, uint32_t ctx);
int pw_tcp_finish(pw_vm *vm, uint32_t ctx);
int pw_tcp_read(pw_vm *vm, uint32_t ctx, int what, const uint8_t **out, size_t *len);

/* The ABI call trace of a VM: the last `capacity` hostcalls (arguments, status) and
 * callbacks (arguments, then the return value; -1 for a trap, -2 when the host does not
 * use one) in a ring; 0 turns it off
 * (the default, and then it costs nothing). pw_vm_trace_read: records of kind (u8),
 * argument count (u8), name length (u16), context id (u32), result (i64), the arguments
 * (u64 each), the name; little-endian; *dropped: older records the ring overwrote. Free
 * with pw_bytes_free. Owner thread only. */
#define PW_TRACE_HOSTCALL 0
#define PW_TRACE_CALLBACK 1
#define PW_TRACE_RETURN 2
int pw_vm_trace(pw_vm *vm, uint32_t capacity);
int pw_vm_trace_read(pw_vm *vm, uint8_t **out, size_t *len, uint64_t *dropped);

/* Namespaces (pw_vm_new's ns): a host's VMs keep shared data and queues by (namespace,
 * vm_id) and metrics by (namespace, name), so hosts in one process see each other's state
 * only when they share a namespace. The default is "" (process-wide, as in Envoy).
 * Hosts count themselves in (acquire when made, release when closed): when the last host
 * of a namespace other than "" releases it, its in-process shared data and queues are
 * freed (a backend's data stays: it belongs to other processes too). */
int pw_namespace_acquire(const uint8_t *ns, size_t ns_len);
void pw_namespace_release(const uint8_t *ns, size_t ns_len);

/* Shared-state backends (csrc/backend.h): where a scope's shared data and queues live.
 * Without one, the in-process store. A backend is attached to one (namespace, vm_id) or
 * to every vm_id of a namespace (all_vm_ids; an exact attachment wins); VMs made after
 * that use it (a VM looks its backend up once, when made). Attaching a second, different
 * backend to the same key fails (PW_ERR), except in-process options over in-process
 * options (the latest wins). The caller of a constructor owns the handle and gives it back
 * with pw_backend_close; attachments and VMs keep the backend alive until they go.
 * pw_backend_inprocess: options for the in-process store (a per-scope byte cap, keys +
 * values, 0: the process default; a TTL given to new keys, 0: none).
 * pw_backend_unavailable: operations that answered INTERNAL_FAILURE because the store
 * could not be reached (a full segment, a Redis outage). */
typedef struct pw_backend pw_backend;
pw_backend *pw_backend_inprocess(uint64_t max_bytes, uint64_t default_ttl_ms);
int pw_backend_attach(pw_backend *b, const uint8_t *ns, size_t ns_len, const uint8_t *vm_id,
                      size_t vm_id_len, int all_vm_ids);
/* A host that chose no backend: in-process options for its namespace that apply only where
 * no backend was attached (they never conflict; a backend attached before or after wins).
 * Detach it with pw_backend_detach(b, ns, ns_len, NULL, 0, 1). */
int pw_backend_attach_default(pw_backend *b, const uint8_t *ns, size_t ns_len);
int pw_backend_detach(pw_backend *b, const uint8_t *ns, size_t ns_len, const uint8_t *vm_id,
                      size_t vm_id_len, int all_vm_ids);
void pw_backend_close(pw_backend *b);
uint64_t pw_backend_unavailable(pw_backend *b);
const char *pw_backend_kind(pw_backend *b);
/* The shared-memory backend (csrc/shm.c): opens (creating it if absent, with `size` bytes)
 * the POSIX shared-memory segment /<name>; name: 1-200 of [A-Za-z0-9_.-]. An existing
 * segment keeps its size. NULL and the reason in err on failure. max_bytes: keys + values
 * per scope (0: no cap); default_ttl_ms: given to new keys (0: none). A process must open
 * it itself (a handle inherited through fork names the parent as queue owner).
 * pw_shm_unlink removes the name (processes attached keep their mapping).
 * pw_shm_stats: writes refused because the segment was full, bad links cut, locks
 * recovered from a dead holder (counted in the segment: every process's). */
pw_backend *pw_shm_open(const uint8_t *name, size_t name_len, uint64_t size, uint64_t max_bytes,
                        uint64_t default_ttl_ms, char *err, size_t errlen);
int pw_shm_unlink(const uint8_t *name, size_t name_len);
int pw_shm_stats(pw_backend *b, uint64_t out[3]);

/* Shared data (per namespace and vm_id) as the guests see it. */
int pw_shared_get(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                  const uint8_t *key, size_t key_len, uint8_t **out, size_t *out_len,
                  uint32_t *cas);
int pw_shared_set(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                  const uint8_t *key, size_t key_len, const uint8_t *value, size_t value_len,
                  uint32_t cas);
/* Beyond the ABI: delete (cas 0: unconditionally; else only at that cas: CAS_MISMATCH)
 * and a TTL (the key disappears ttl_ms from now; 0: never); NOT_FOUND for a missing key. */
int pw_shared_delete(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                     const uint8_t *key, size_t key_len, uint32_t cas);
int pw_shared_expire(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                     const uint8_t *key, size_t key_len, uint64_t ttl_ms);
/* Benchmark baseline only: 1 makes every shard of every store take one process lock. */
void pw_shared_single_lock(int on);
/* Shared queues, in whichever backend holds them (ids carry their backend's slot):
 * resolve a queue id, read its depth (-1: no such queue), enqueue as a producer would
 * (the owner is notified), dequeue as any VM may (EMPTY when none; free with
 * pw_bytes_free). */
int pw_queue_resolve(const uint8_t *ns, size_t ns_len, const uint8_t *vm_id, size_t vm_id_len,
                     const uint8_t *name, size_t name_len, uint32_t *out_id);
int pw_queue_size(uint32_t id);
int pw_queue_enqueue(uint32_t id, const uint8_t *data, size_t len);
int pw_queue_dequeue(uint32_t id, uint8_t **out, size_t *out_len);
/* How many items may wait in one queue (0: the default, 1 << 20); past it, producers get
 * INTERNAL_FAILURE. */
void pw_queue_set_max_items(uint32_t n);
/* Bytes that may wait in all of one scope's in-process queues together (0: no cap); past
 * it, INTERNAL_FAILURE. */
void pw_queue_set_max_bytes(uint64_t n);
/* Bytes (keys + values) one vm_id's shared data may hold when its scope has no cap of its
 * own (pw_backend_inprocess); 0: no cap. Past it a set answers INTERNAL_FAILURE and changes
 * nothing. */
void pw_shared_set_max_bytes(uint64_t n);
/* SipHash-1-3 of p[0..n) under the key (k0, k1): the shared-data tables' key hash
 * (siphash.c), here for its test. */
uint64_t pw_hash_keyed(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n);

/* Metrics (by namespace and name). kind: 0 counter, 1 gauge, 2 histogram. For a
 * histogram, value is the sample count and sum is the sum of samples; each histogram also
 * counts its samples in PW_HIST_BUCKETS buckets (Envoy's default bounds, below: a sample
 * v falls in the first bucket whose bound b has v <= b; the last bucket is +Inf). */
#define PW_HIST_BUCKETS 20
void pw_hist_bounds(double out[19]);
int pw_metric_get(const uint8_t *ns, size_t ns_len, const uint8_t *name, size_t name_len,
                  int *kind, int64_t *value, uint64_t *sum);
/* Snapshot of a namespace's metrics: records of kind (u8), name length (u32), value (i64),
 * sum (u64), little-endian, then the name, then for a histogram PW_HIST_BUCKETS bucket
 * counts (u64 each, not cumulative); free with pw_bytes_free. */
int pw_metrics_dump(const uint8_t *ns, size_t ns_len, uint8_t **out, size_t *len);
/* The Redis backend (csrc/redis.c): every process using the same server and prefix shares
 * shared data and queues. 1 when this build has Redis support (hiredis was found when the
 * core was built). */
int pw_redis_available(void);
/* url: redis://[[user]:password@]host[:port][/db]; no operation blocks a thread longer
 * than timeout_us; max_bytes per scope (0: no cap); default_ttl_ms for new keys (0: none).
 * NULL with a message in err when the URL is malformed or the server cannot be reached
 * (opening itself may take up to max(timeout, 2 s)). */
pw_backend *pw_redis_open(const char *url, uint64_t timeout_us, const uint8_t *prefix,
                          size_t prefix_len, uint64_t max_bytes, uint64_t default_ttl_ms,
                          char *err, size_t err_cap);
/* Counters: operations answered INTERNAL_FAILURE because the server could not be reached,
 * on_queue_ready notifications posted, notifications with no local owner, subscriptions
 * to the notification channel (1 once subscribed; more after reconnects), notifications posted for items waiting after one, and
 * connections made. */
#define PW_REDIS_UNAVAILABLE 0
#define PW_REDIS_NOTIFIED 1
#define PW_REDIS_DROPPED 2
#define PW_REDIS_SUBSCRIBED 3
#define PW_REDIS_FLUSHED 4
#define PW_REDIS_CONNECTS 5
uint64_t pw_redis_stat(pw_backend *b, int which);
/* cdef-end */
#pragma GCC visibility pop

#endif
