/*
 * The slice of the wasmtime C API that pyproxywasm uses, declared here because the
 * wasmtime wheel ships _libwasmtime.so without headers.
 *
 * Every declaration is written from the C API's documented signatures for the pinned
 * wasmtime version (see pyproxywasm/_wasmtime.py). The struct layouts are checked at
 * import against the ctypes structs in wasmtime._bindings (pw_wt_struct_sizes), and the
 * functions are resolved with dlsym into the table WT, so a different wasmtime fails at
 * import with one clear message instead of misbehaving later.
 */
#ifndef PW_WT_H
#define PW_WT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Opaque handles. */
typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasm_config_t wasm_config_t;
typedef struct wasm_trap_t wasm_trap_t;
typedef struct wasm_valtype_t wasm_valtype_t;
typedef struct wasm_functype_t wasm_functype_t;
typedef struct wasmtime_error_t wasmtime_error_t;
typedef struct wasmtime_store_t wasmtime_store_t;
typedef struct wasmtime_context_t wasmtime_context_t;
typedef struct wasmtime_module_t wasmtime_module_t;
typedef struct wasmtime_linker_t wasmtime_linker_t;
typedef struct wasmtime_caller_t wasmtime_caller_t;
typedef struct wasmtime_instance_pre_t wasmtime_instance_pre_t;

typedef uint8_t wasm_valkind_t;
enum { WASM_I32 = 0, WASM_I64 = 1, WASM_F32 = 2, WASM_F64 = 3 };

typedef struct wasm_byte_vec_t {
    size_t size;
    uint8_t *data;
} wasm_byte_vec_t;
typedef wasm_byte_vec_t wasm_name_t;
typedef wasm_byte_vec_t wasm_message_t;

typedef struct wasm_valtype_vec_t {
    size_t size;
    wasm_valtype_t **data;
} wasm_valtype_vec_t;

typedef struct wasmtime_func {
    uint64_t store_id;
    void *private_;
} wasmtime_func_t;

typedef struct wasmtime_memory {
    struct {
        uint64_t store_id;
        uint32_t private1;
    } inner;
    uint32_t private2;
} wasmtime_memory_t;

typedef struct wasmtime_instance {
    uint64_t store_id;
    size_t private_;
} wasmtime_instance_t;

/* Only the func and memory members are used; the others size the union. */
typedef struct wasmtime_global {
    uint64_t store_id;
    uint32_t private1, private2, private3;
} wasmtime_global_t;

typedef uint8_t wasmtime_extern_kind_t;
enum { WASMTIME_EXTERN_FUNC = 0, WASMTIME_EXTERN_MEMORY = 3 };

typedef struct wasmtime_extern {
    wasmtime_extern_kind_t kind;
    union {
        wasmtime_func_t func;
        wasmtime_global_t global;
        wasmtime_memory_t memory;
        void *sharedmemory;
    } of;
} wasmtime_extern_t;

typedef union wasmtime_val_raw {
    int32_t i32;
    int64_t i64;
    float f32;
    double f64;
    uint8_t v128[16];
    uint32_t anyref;
    uint32_t externref;
    void *funcref;
} wasmtime_val_raw_t;

typedef uint8_t wasmtime_update_deadline_kind_t;
#define WASMTIME_UPDATE_DEADLINE_CONTINUE 0
typedef wasmtime_error_t *(*wasmtime_epoch_deadline_callback_t)(
    wasmtime_context_t *context, void *data, uint64_t *epoch_deadline_delta,
    wasmtime_update_deadline_kind_t *update_kind);

typedef wasm_trap_t *(*wasmtime_func_unchecked_callback_t)(void *env, wasmtime_caller_t *caller,
                                                          wasmtime_val_raw_t *args_and_results,
                                                          size_t num_args_and_results);

/* The function table, filled once by pw_wt_bind(). */
struct pw_wt {
    wasm_config_t *(*config_new)(void);
    void (*config_parallel_compilation_set)(wasm_config_t *, bool);
    void (*config_signals_based_traps_set)(wasm_config_t *, bool);
    void (*config_epoch_interruption_set)(wasm_config_t *, bool);
    void (*config_max_wasm_stack_set)(wasm_config_t *, size_t);
    void (*engine_increment_epoch)(wasm_engine_t *);
    wasm_engine_t *(*engine_new_with_config)(wasm_config_t *);
    void (*engine_delete)(wasm_engine_t *);

    wasmtime_error_t *(*module_new)(wasm_engine_t *, const uint8_t *, size_t, wasmtime_module_t **);
    void (*module_delete)(wasmtime_module_t *);
    wasmtime_error_t *(*module_serialize)(wasmtime_module_t *, wasm_byte_vec_t *);
    wasmtime_error_t *(*module_deserialize)(wasm_engine_t *, const uint8_t *, size_t,
                                            wasmtime_module_t **);

    wasmtime_store_t *(*store_new)(wasm_engine_t *, void *, void (*)(void *));
    wasmtime_context_t *(*store_context)(wasmtime_store_t *);
    void (*store_delete)(wasmtime_store_t *);
    void *(*context_get_data)(const wasmtime_context_t *);
    void (*store_limiter)(wasmtime_store_t *, int64_t memory_size, int64_t table_elements,
                          int64_t instances, int64_t tables, int64_t memories);
    void (*context_set_epoch_deadline)(wasmtime_context_t *, uint64_t ticks_beyond_current);
    void (*store_epoch_deadline_callback)(wasmtime_store_t *, wasmtime_epoch_deadline_callback_t,
                                          void *data, void (*finalizer)(void *));

    wasmtime_linker_t *(*linker_new)(wasm_engine_t *);
    void (*linker_delete)(wasmtime_linker_t *);
    wasmtime_error_t *(*linker_define_func_unchecked)(wasmtime_linker_t *, const char *, size_t,
                                                      const char *, size_t, const wasm_functype_t *,
                                                      wasmtime_func_unchecked_callback_t, void *,
                                                      void (*)(void *));
    wasmtime_error_t *(*linker_instantiate_pre)(const wasmtime_linker_t *, const wasmtime_module_t *,
                                                wasmtime_instance_pre_t **);
    void (*instance_pre_delete)(wasmtime_instance_pre_t *);
    wasmtime_error_t *(*instance_pre_instantiate)(const wasmtime_instance_pre_t *,
                                                  wasmtime_context_t *, wasmtime_instance_t *,
                                                  wasm_trap_t **);
    bool (*instance_export_get)(wasmtime_context_t *, const wasmtime_instance_t *, const char *,
                                size_t, wasmtime_extern_t *);
    void (*extern_delete)(wasmtime_extern_t *);

    wasmtime_error_t *(*func_call_unchecked)(wasmtime_context_t *, const wasmtime_func_t *,
                                             wasmtime_val_raw_t *, size_t, wasm_trap_t **);
    wasmtime_context_t *(*caller_context)(wasmtime_caller_t *);
    wasm_functype_t *(*func_type)(const wasmtime_context_t *, const wasmtime_func_t *);
    const wasm_valtype_vec_t *(*functype_params)(const wasm_functype_t *);
    const wasm_valtype_vec_t *(*functype_results)(const wasm_functype_t *);
    wasm_valkind_t (*valtype_kind)(const wasm_valtype_t *);

    uint8_t *(*memory_data)(const wasmtime_context_t *, const wasmtime_memory_t *);
    size_t (*memory_data_size)(const wasmtime_context_t *, const wasmtime_memory_t *);

    wasm_valtype_t *(*valtype_new)(wasm_valkind_t);
    void (*valtype_vec_new)(wasm_valtype_vec_t *, size_t, wasm_valtype_t *const *);
    void (*valtype_vec_new_empty)(wasm_valtype_vec_t *);
    wasm_functype_t *(*functype_new)(wasm_valtype_vec_t *, wasm_valtype_vec_t *);
    void (*functype_delete)(wasm_functype_t *);

    wasm_trap_t *(*trap_new)(const char *, size_t);
    void (*trap_message)(const wasm_trap_t *, wasm_message_t *);
    void (*trap_delete)(wasm_trap_t *);
    void (*error_message)(const wasmtime_error_t *, wasm_name_t *);
    void (*error_delete)(wasmtime_error_t *);
    wasmtime_error_t *(*error_new)(const char *);
    void (*byte_vec_delete)(wasm_byte_vec_t *);
};

/* Written once by pw_wt_bind() while Python imports the package (under the GIL, before
 * any other pyproxywasm call can run); read-only afterwards from every thread. */
extern struct pw_wt WT;

#endif
