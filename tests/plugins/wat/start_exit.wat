;; A WASI command (no _initialize): _start ends with proc_exit(code), where code is the
;; first data byte (0 here; the test patches it). proc_exit(0) is a normal end.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $started (mut i32) (i32.const 0))
  (data (i32.const 100) "\00")
  (func (export "proxy_abi_version_0_2_0"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "_start")
    (global.set $started (i32.const 1))
    (call $exit (i32.load8_u (i32.const 100)))
    unreachable)
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (global.get $started)))
