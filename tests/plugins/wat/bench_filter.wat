;; The minimal header-rewriting filter used by the benchmarks (ABI 0.2.1):
;; request headers: read :path, add "x-wasm-filter: 1"; response headers: set
;; "server: pyproxywasm". A bump allocator, reset at every callback, serves the host.
(module
  (import "env" "proxy_get_header_map_value"
    (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $add_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_value (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-wasm-filter")
  (data (i32.const 48) "1")
  (data (i32.const 64) "server")
  (data (i32.const 80) "pyproxywasm")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 4096))
    (drop (call $get_value (i32.const 0) (i32.const 16) (i32.const 5)
                           (i32.const 1024) (i32.const 1028)))
    (drop (call $add_value (i32.const 0) (i32.const 32) (i32.const 13)
                           (i32.const 48) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 4096))
    (drop (call $replace_value (i32.const 2) (i32.const 64) (i32.const 6)
                               (i32.const 80) (i32.const 11)))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
