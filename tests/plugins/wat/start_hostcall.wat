;; A Wasm start function that calls hostcalls (proxy_log, a WASI clock) while the module
;; is being instantiated, before the host knows its memory. Otherwise a no-op filter.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (memory (export "memory") 1)
  (global $log_status (mut i32) (i32.const -1))
  (global $clock_status (mut i32) (i32.const -1))
  (data (i32.const 100) "start")
  (func $start
    (global.set $log_status (call $log (i32.const 2) (i32.const 100) (i32.const 5)))
    (global.set $clock_status (call $clock (i32.const 0) (i64.const 1) (i32.const 200))))
  (start $start)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0)))
