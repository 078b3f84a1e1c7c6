/* The ABI in one place: every import the host provides (HOSTCALLS) and every export it
 * calls or checks (CALLBACKS, CHECKED_EXPORTS), each declared once. Everything else is
 * derived from these lists: the linker's import table and the embedding's view of it
 * (pw_host_imports), the typed argument struct each hostcall body receives, the trace's
 * names and argument counts (hostcalls.c); enum fn_id, the export names, their types as
 * checked against wasmtime's at instantiation, and the embedding's export table
 * (pw_host_exports, which the Python loader validates modules with) (vm.c). The fuzz
 * guest generator (csrc/fuzz/gen_guest.py) reads these lists as text: keep one entry a
 * line group starting with X( or A(.
 *
 * Parameter types: I32 (a guest i32, read unsigned: the Rust SDK passes -1 for "all"),
 * S32 (a guest i32 read signed), I64 / U64 (a guest i64, read signed / unsigned). Results:
 * I32 (a status) or VOID. */
#ifndef PW_ABI_H
#define PW_ABI_H

/* HOSTCALLS(X, A), in import-table order:
 *   X(c_name, "import name", link, (params), result)
 *     link: HC_ALL in both linkers, HC_SPEC only for modules with the spec's shapes,
 *           HC_AS only for modules with the AssemblyScript SDK's gRPC shapes (PW_MOD_AS_GRPC);
 *   A("import name", c_name): another name for the same hostcall and type. */
#define HOSTCALLS(X, A)                                                                   \
    X(log, "proxy_log", HC_ALL, (I32(level), I32(message_data), I32(message_size)), I32)   \
    X(get_log_level, "proxy_get_log_level", HC_ALL, (I32(return_level)), I32)             \
    X(get_current_time_nanoseconds, "proxy_get_current_time_nanoseconds", HC_ALL,         \
      (I32(return_time)), I32)                                                            \
    X(set_tick_period_milliseconds, "proxy_set_tick_period_milliseconds", HC_ALL,         \
      (I32(tick_period)), I32)                                                            \
    X(get_configuration, "proxy_get_configuration", HC_ALL,                               \
      (I32(return_data), I32(return_size)), I32)                                          \
    X(get_buffer_bytes, "proxy_get_buffer_bytes", HC_ALL,                                 \
      (I32(buffer_id), I32(start), I32(max_size), I32(return_data), I32(return_size)), I32) \
    X(get_buffer_status, "proxy_get_buffer_status", HC_ALL,                               \
      (I32(buffer_id), I32(return_size), I32(return_flags)), I32)                         \
    X(set_buffer_bytes, "proxy_set_buffer_bytes", HC_ALL,                                 \
      (I32(buffer_id), I32(start), I32(size), I32(value_data), I32(value_size)), I32)     \
    X(get_header_map_size, "proxy_get_header_map_size", HC_ALL,                           \
      (I32(map_id), I32(return_size)), I32)                                               \
    X(get_header_map_pairs, "proxy_get_header_map_pairs", HC_ALL,                         \
      (I32(map_id), I32(return_data), I32(return_size)), I32)                             \
    X(set_header_map_pairs, "proxy_set_header_map_pairs", HC_ALL,                         \
      (I32(map_id), I32(map_data), I32(map_size)), I32)                                   \
    X(get_header_map_value, "proxy_get_header_map_value", HC_ALL,                         \
      (I32(map_id), I32(key_data), I32(key_size), I32(return_data), I32(return_size)), I32) \
    X(add_header_map_value, "proxy_add_header_map_value", HC_ALL,                         \
      (I32(map_id), I32(key_data), I32(key_size), I32(value_data), I32(value_size)), I32) \
    X(replace_header_map_value, "proxy_replace_header_map_value", HC_ALL,                 \
      (I32(map_id), I32(key_data), I32(key_size), I32(value_data), I32(value_size)), I32) \
    X(remove_header_map_value, "proxy_remove_header_map_value", HC_ALL,                   \
      (I32(map_id), I32(key_data), I32(key_size)), I32)                                   \
    X(continue_stream, "proxy_continue_stream", HC_ALL, (I32(stream_type)), I32)          \
    X(close_stream, "proxy_close_stream", HC_ALL, (I32(stream_type)), I32)                \
    X(continue_request, "proxy_continue_request", HC_ALL, (), I32)                        \
    X(continue_response, "proxy_continue_response", HC_ALL, (), I32)                      \
    X(clear_route_cache, "proxy_clear_route_cache", HC_ALL, (), I32)                      \
    X(send_local_response, "proxy_send_local_response", HC_ALL,                           \
      (I32(status_code), I32(details_data), I32(details_size), I32(body_data),            \
       I32(body_size), I32(headers_data), I32(headers_size), S32(grpc_status)), I32)      \
    X(get_status, "proxy_get_status", HC_ALL,                                             \
      (I32(return_code), I32(return_message_data), I32(return_message_size)), I32)        \
    X(http_call, "proxy_http_call", HC_ALL,                                               \
      (I32(upstream_data), I32(upstream_size), I32(headers_data), I32(headers_size),      \
       I32(body_data), I32(body_size), I32(trailers_data), I32(trailers_size),            \
       I32(timeout_ms), I32(return_token)), I32)                                          \
    /* The name some 0.1.0-era SDKs and hosts use for the same call. */                   \
    A("proxy_dispatch_http_call", http_call)                                              \
    X(grpc_call, "proxy_grpc_call", HC_SPEC,                                              \
      (I32(upstream_data), I32(upstream_size), I32(service_data), I32(service_size),      \
       I32(method_data), I32(method_size), I32(metadata_data), I32(metadata_size),        \
       I32(message_data), I32(message_size), I32(timeout_ms), I32(return_token)), I32)    \
    X(grpc_stream, "proxy_grpc_stream", HC_SPEC,                                          \
      (I32(upstream_data), I32(upstream_size), I32(service_data), I32(service_size),      \
       I32(method_data), I32(method_size), I32(metadata_data), I32(metadata_size),        \
       I32(return_token)), I32)                                                           \
    X(grpc_send, "proxy_grpc_send", HC_ALL,                                               \
      (I32(token), I32(message_data), I32(message_size), I32(end_stream)), I32)           \
    X(grpc_cancel, "proxy_grpc_cancel", HC_ALL, (I32(token)), I32)                        \
    X(grpc_close, "proxy_grpc_close", HC_ALL, (I32(token)), I32)                          \
    X(get_shared_data, "proxy_get_shared_data", HC_ALL,                                   \
      (I32(key_data), I32(key_size), I32(return_value_data), I32(return_value_size),      \
       I32(return_cas)), I32)                                                             \
    X(set_shared_data, "proxy_set_shared_data", HC_ALL,                                   \
      (I32(key_data), I32(key_size), I32(value_data), I32(value_size), I32(cas)), I32)    \
    X(register_shared_queue, "proxy_register_shared_queue", HC_ALL,                       \
      (I32(name_data), I32(name_size), I32(return_id)), I32)                              \
    X(resolve_shared_queue, "proxy_resolve_shared_queue", HC_ALL,                         \
      (I32(vm_id_data), I32(vm_id_size), I32(name_data), I32(name_size), I32(return_id)), \
      I32)                                                                                \
    X(enqueue_shared_queue, "proxy_enqueue_shared_queue", HC_ALL,                         \
      (I32(queue_id), I32(value_data), I32(value_size)), I32)                             \
    X(dequeue_shared_queue, "proxy_dequeue_shared_queue", HC_ALL,                         \
      (I32(queue_id), I32(return_value_data), I32(return_value_size)), I32)              \
    X(define_metric, "proxy_define_metric", HC_ALL,                                       \
      (I32(type), I32(name_data), I32(name_size), I32(return_id)), I32)                   \
    X(increment_metric, "proxy_increment_metric", HC_ALL, (I32(metric_id), I64(offset)), I32) \
    X(record_metric, "proxy_record_metric", HC_ALL, (I32(metric_id), U64(value)), I32)    \
    X(get_metric, "proxy_get_metric", HC_ALL, (I32(metric_id), I32(return_value)), I32)   \
    X(get_property, "proxy_get_property", HC_ALL,                                         \
      (I32(path_data), I32(path_size), I32(return_value_data), I32(return_value_size)), I32) \
    X(set_property, "proxy_set_property", HC_ALL,                                         \
      (I32(path_data), I32(path_size), I32(value_data), I32(value_size)), I32)            \
    X(set_effective_context, "proxy_set_effective_context", HC_ALL, (I32(context_id)), I32) \
    X(done, "proxy_done", HC_ALL, (), I32)                                                \
    X(call_foreign_function, "proxy_call_foreign_function", HC_ALL,                       \
      (I32(name_data), I32(name_size), I32(args_data), I32(args_size),                    \
       I32(return_results_data), I32(return_results_size)), I32)                          \
    /* non-proxy env imports some toolchains bring */                                     \
    X(notify_memory_growth, "emscripten_notify_memory_growth", HC_ALL,                    \
      (I32(memory_index)), VOID)                                                          \
    X(pthread_equal, "pthread_equal", HC_ALL, (I32(a), I32(b)), I32)                      \
    X(as_abort, "abort", HC_ALL, (I32(message), I32(file), I32(line), I32(column)), VOID) \
    /* The AssemblyScript SDK's shapes: no initial-metadata pair (10 and 7 parameters). */ \
    X(as_grpc_call, "proxy_grpc_call", HC_AS,                                             \
      (I32(upstream_data), I32(upstream_size), I32(service_data), I32(service_size),      \
       I32(method_data), I32(method_size), I32(message_data), I32(message_size),          \
       I32(timeout_ms), I32(return_token)), I32)                                          \
    X(as_grpc_stream, "proxy_grpc_stream", HC_AS,                                         \
      (I32(upstream_data), I32(upstream_size), I32(service_data), I32(service_size),      \
       I32(method_data), I32(method_size), I32(return_token)), I32)

enum hc_link { HC_ALL, HC_SPEC, HC_AS };

/* CALLBACKS(X): the exports the host calls, in enum fn_id order:
 *   X(ID, "export name", alternative name or NULL, (params), result)
 * The alternative is looked up only when the name is absent. The header callbacks take
 * the module's header arity (2 under old 0.1.0 builds) instead of the 3 declared. */
#define CALLBACKS(X)                                                                      \
    X(ON_CONTEXT_CREATE, "proxy_on_context_create", NULL,                                 \
      (I32(context_id), I32(parent_context_id)), VOID)                                    \
    X(ON_VM_START, "proxy_on_vm_start", NULL, (I32(root_context_id), I32(vm_configuration_size)), I32) \
    X(ON_CONFIGURE, "proxy_on_configure", NULL,                                           \
      (I32(root_context_id), I32(plugin_configuration_size)), I32)                        \
    X(ON_TICK, "proxy_on_tick", NULL, (I32(root_context_id)), VOID)                       \
    X(ON_QUEUE_READY, "proxy_on_queue_ready", NULL, (I32(root_context_id), I32(queue_id)), VOID) \
    X(ON_FOREIGN_FUNCTION, "proxy_on_foreign_function", NULL,                             \
      (I32(root_context_id), I32(function_id), I32(arguments_size)), VOID)                \
    X(ON_NEW_CONNECTION, "proxy_on_new_connection", NULL, (I32(context_id)), I32)         \
    X(ON_DOWNSTREAM_DATA, "proxy_on_downstream_data", NULL,                               \
      (I32(context_id), I32(data_size), I32(end_of_stream)), I32)                         \
    X(ON_UPSTREAM_DATA, "proxy_on_upstream_data", NULL,                                   \
      (I32(context_id), I32(data_size), I32(end_of_stream)), I32)                         \
    X(ON_DOWNSTREAM_CLOSE, "proxy_on_downstream_connection_close", NULL,                  \
      (I32(context_id), I32(peer_type)), VOID)                                            \
    X(ON_UPSTREAM_CLOSE, "proxy_on_upstream_connection_close", NULL,                      \
      (I32(context_id), I32(peer_type)), VOID)                                            \
    X(ON_REQUEST_HEADERS, "proxy_on_request_headers", NULL,                               \
      (I32(context_id), I32(num_headers), I32(end_of_stream)), I32)                       \
    X(ON_REQUEST_BODY, "proxy_on_request_body", NULL,                                     \
      (I32(context_id), I32(body_size), I32(end_of_stream)), I32)                         \
    X(ON_REQUEST_TRAILERS, "proxy_on_request_trailers", NULL,                             \
      (I32(context_id), I32(num_trailers)), I32)                                          \
    X(ON_RESPONSE_HEADERS, "proxy_on_response_headers", NULL,                             \
      (I32(context_id), I32(num_headers), I32(end_of_stream)), I32)                       \
    X(ON_RESPONSE_BODY, "proxy_on_response_body", NULL,                                   \
      (I32(context_id), I32(body_size), I32(end_of_stream)), I32)                         \
    X(ON_RESPONSE_TRAILERS, "proxy_on_response_trailers", NULL,                           \
      (I32(context_id), I32(num_trailers)), I32)                                          \
    X(ON_HTTP_CALL_RESPONSE, "proxy_on_http_call_response", NULL,                         \
      (I32(root_context_id), I32(token), I32(num_headers), I32(body_size),                \
       I32(num_trailers)), VOID)                                                          \
    X(ON_GRPC_INITIAL, "proxy_on_grpc_receive_initial_metadata", NULL,                    \
      (I32(root_context_id), I32(token), I32(num_elements)), VOID)                        \
    X(ON_GRPC_RECEIVE, "proxy_on_grpc_receive", NULL,                                     \
      (I32(root_context_id), I32(token), I32(message_size)), VOID)                        \
    /* The AssemblyScript SDK exports the pre-spec name. */                               \
    X(ON_GRPC_TRAILING, "proxy_on_grpc_receive_trailing_metadata",                        \
      "proxy_on_grpc_trailing_metadata", (I32(root_context_id), I32(token), I32(num_elements)), \
      VOID)                                                                               \
    X(ON_GRPC_CLOSE, "proxy_on_grpc_close", NULL,                                         \
      (I32(root_context_id), I32(token), I32(status_code)), VOID)                         \
    X(ON_DONE, "proxy_on_done", NULL, (I32(context_id)), I32)                             \
    X(ON_LOG, "proxy_on_log", NULL, (I32(context_id)), VOID)                              \
    X(ON_DELETE, "proxy_on_delete", NULL, (I32(context_id)), VOID)                        \
    /* The spec's allocator first; malloc only as the fallback (ABI.md §1). */            \
    X(ALLOC, "proxy_on_memory_allocate", "malloc", (I32(size)), I32)                      \
    X(INITIALIZE, "_initialize", NULL, (), VOID)                                          \
    X(START, "_start", NULL, (), VOID)                                                    \
    X(MAIN, "main", NULL, (I32(argc), I32(argv)), I32)                                    \
    X(MAIN_VOID, "__main_void", NULL, (), I32)

/* CHECKED_EXPORTS(X): exports the host never calls but whose type a module must get right,
 * as cpp-host checks them (the loader refuses a wrong one): X("export name", (params), result). */
#define CHECKED_EXPORTS(X)                                                                \
    X("proxy_validate_configuration", (I32(root_context_id), I32(configuration_size)), I32) \
    X("proxy_on_request_metadata", (I32(context_id), I32(num_elements)), I32)             \
    X("proxy_on_response_metadata", (I32(context_id), I32(num_elements)), I32)

/* ---- the preprocessor machinery the lists are expanded with -------------------------- */
#define PW_PP_CAT(a, b) PW_PP_CAT_(a, b)
#define PW_PP_CAT_(a, b) a##b
#define PW_PP_UNPAREN(...) __VA_ARGS__
/* The number of arguments, 1..12 (an empty list counts as one empty argument). */
#define PW_PP_NARG(...) PW_PP_NARG_(__VA_ARGS__, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
#define PW_PP_NARG_(_1, _2, _3, _4, _5, _6, _7, _8, _9, _10, _11, _12, N, ...) N
/* M(index, param) for each parameter of a parenthesized list. */
#define PW_PP_EACH(M, params) PW_PP_EACH_(M, PW_PP_UNPAREN params)
#define PW_PP_EACH_(M, ...) PW_PP_CAT(PW_PP_EACH_, PW_PP_NARG(__VA_ARGS__))(M, __VA_ARGS__)
#define PW_PP_EACH_1(M, a) M(0, a)
#define PW_PP_EACH_2(M, a, b) M(0, a) M(1, b)
#define PW_PP_EACH_3(M, a, b, c) PW_PP_EACH_2(M, a, b) M(2, c)
#define PW_PP_EACH_4(M, a, b, c, d) PW_PP_EACH_3(M, a, b, c) M(3, d)
#define PW_PP_EACH_5(M, a, b, c, d, e) PW_PP_EACH_4(M, a, b, c, d) M(4, e)
#define PW_PP_EACH_6(M, a, b, c, d, e, f) PW_PP_EACH_5(M, a, b, c, d, e) M(5, f)
#define PW_PP_EACH_7(M, a, b, c, d, e, f, g) PW_PP_EACH_6(M, a, b, c, d, e, f) M(6, g)
#define PW_PP_EACH_8(M, a, b, c, d, e, f, g, h) PW_PP_EACH_7(M, a, b, c, d, e, f, g) M(7, h)
#define PW_PP_EACH_9(M, a, b, c, d, e, f, g, h, i)                                         \
    PW_PP_EACH_8(M, a, b, c, d, e, f, g, h) M(8, i)
#define PW_PP_EACH_10(M, a, b, c, d, e, f, g, h, i, j)                                     \
    PW_PP_EACH_9(M, a, b, c, d, e, f, g, h, i) M(9, j)
#define PW_PP_EACH_11(M, a, b, c, d, e, f, g, h, i, j, k)                                  \
    PW_PP_EACH_10(M, a, b, c, d, e, f, g, h, i, j) M(10, k)
#define PW_PP_EACH_12(M, a, b, c, d, e, f, g, h, i, j, k, l)                               \
    PW_PP_EACH_11(M, a, b, c, d, e, f, g, h, i, j, k) M(11, l)

/* Per parameter, pasted onto its type tag (I32(name) -> PW_P_SIG_I32(name)); the empty
 * list pastes to the bare prefix. */
#define PW_P_SIG(i, p) PW_PP_CAT_(PW_P_SIG_, p)
#define PW_P_SIG_
#define PW_P_SIG_I32(n) "i"
#define PW_P_SIG_S32(n) "i"
#define PW_P_SIG_I64(n) "I"
#define PW_P_SIG_U64(n) "I"
#define PW_P_COUNT(i, p) +PW_PP_CAT_(PW_P_COUNT_, p)
#define PW_P_COUNT_ 0
#define PW_P_COUNT_I32(n) 1
#define PW_P_COUNT_S32(n) 1
#define PW_P_COUNT_I64(n) 1
#define PW_P_COUNT_U64(n) 1
#define PW_P_ALLI32(i, p) &&PW_PP_CAT_(PW_P_ALLI32_, p)
#define PW_P_ALLI32_ 1
#define PW_P_ALLI32_I32(n) 1
#define PW_P_ALLI32_S32(n) 1
#define PW_P_ALLI32_I64(n) 0
#define PW_P_ALLI32_U64(n) 0
/* "iiI": the wasm parameter types, one letter each (i = i32, I = i64). */
#define PW_PARAM_SIG(params) "" PW_PP_EACH(PW_P_SIG, params)
#define PW_PARAM_COUNT(params) (0 PW_PP_EACH(PW_P_COUNT, params))
#define PW_RESULT_SIG_I32 "i"
#define PW_RESULT_SIG_VOID ""
#define PW_RESULT_SIG(r) PW_RESULT_SIG_##r
#define PW_RESULT_COUNT_I32 1
#define PW_RESULT_COUNT_VOID 0
#define PW_RESULT_COUNT(r) PW_RESULT_COUNT_##r

#endif
