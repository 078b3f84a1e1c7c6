/* Resolves the wasmtime C API from the wheel's shared library into WT. */
#include "wt.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "pw.h"

struct pw_wt WT;

struct sym {
    const char *name;
    void **slot;
};

#define SYM(field, name) {name, (void **)&WT.field}

int pw_wt_bind(const char *libpath, char *err, size_t errlen) {
    /* The wheel's library is already loaded by wasmtime-py; dlopen of the same path
     * returns that instance, so both share one set of engines' globals. */
    void *lib = dlopen(libpath, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(err, errlen, "cannot load %s: %s", libpath, dlerror());
        return -1;
    }
    const struct sym syms[] = {
        SYM(config_new, "wasm_config_new"),
        SYM(config_parallel_compilation_set, "wasmtime_config_parallel_compilation_set"),
        SYM(config_signals_based_traps_set, "wasmtime_config_signals_based_traps_set"),
        SYM(config_epoch_interruption_set, "wasmtime_config_epoch_interruption_set"),
        SYM(config_max_wasm_stack_set, "wasmtime_config_max_wasm_stack_set"),
        SYM(engine_increment_epoch, "wasmtime_engine_increment_epoch"),
        SYM(engine_new_with_config, "wasm_engine_new_with_config"),
        SYM(engine_delete, "wasm_engine_delete"),
        SYM(module_new, "wasmtime_module_new"),
        SYM(module_delete, "wasmtime_module_delete"),
        SYM(module_serialize, "wasmtime_module_serialize"),
        SYM(module_deserialize, "wasmtime_module_deserialize"),
        SYM(store_new, "wasmtime_store_new"),
        SYM(store_context, "wasmtime_store_context"),
        SYM(store_delete, "wasmtime_store_delete"),
        SYM(context_get_data, "wasmtime_context_get_data"),
        SYM(store_limiter, "wasmtime_store_limiter"),
        SYM(context_set_epoch_deadline, "wasmtime_context_set_epoch_deadline"),
        SYM(store_epoch_deadline_callback, "wasmtime_store_epoch_deadline_callback"),
        SYM(linker_new, "wasmtime_linker_new"),
        SYM(linker_delete, "wasmtime_linker_delete"),
        SYM(linker_define_func_unchecked, "wasmtime_linker_define_func_unchecked"),
        SYM(linker_instantiate_pre, "wasmtime_linker_instantiate_pre"),
        SYM(instance_pre_delete, "wasmtime_instance_pre_delete"),
        SYM(instance_pre_instantiate, "wasmtime_instance_pre_instantiate"),
        SYM(instance_export_get, "wasmtime_instance_export_get"),
        SYM(extern_delete, "wasmtime_extern_delete"),
        SYM(func_call_unchecked, "wasmtime_func_call_unchecked"),
        SYM(caller_context, "wasmtime_caller_context"),
        SYM(func_type, "wasmtime_func_type"),
        SYM(functype_params, "wasm_functype_params"),
        SYM(functype_results, "wasm_functype_results"),
        SYM(valtype_kind, "wasm_valtype_kind"),
        SYM(memory_data, "wasmtime_memory_data"),
        SYM(memory_data_size, "wasmtime_memory_data_size"),
        SYM(valtype_new, "wasm_valtype_new"),
        SYM(valtype_vec_new, "wasm_valtype_vec_new"),
        SYM(valtype_vec_new_empty, "wasm_valtype_vec_new_empty"),
        SYM(functype_new, "wasm_functype_new"),
        SYM(functype_delete, "wasm_functype_delete"),
        SYM(trap_new, "wasmtime_trap_new"),
        SYM(trap_message, "wasm_trap_message"),
        SYM(trap_delete, "wasm_trap_delete"),
        SYM(error_message, "wasmtime_error_message"),
        SYM(error_delete, "wasmtime_error_delete"),
        SYM(error_new, "wasmtime_error_new"),
        SYM(byte_vec_delete, "wasm_byte_vec_delete"),
    };
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void *p = dlsym(lib, syms[i].name);
        if (!p) {
            snprintf(err, errlen, "symbol %s missing from %s", syms[i].name, libpath);
            return -1;
        }
        *syms[i].slot = p;
    }
    return 0;
}

void pw_wt_struct_sizes(size_t out[6]) {
    out[0] = sizeof(wasmtime_func_t);
    out[1] = sizeof(wasmtime_memory_t);
    out[2] = sizeof(wasmtime_instance_t);
    out[3] = sizeof(wasmtime_extern_t);
    out[4] = sizeof(wasmtime_val_raw_t);
    out[5] = sizeof(wasm_byte_vec_t);
}
