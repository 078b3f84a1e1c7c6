;; Asks for a 5 ms tick in on_vm_start, and traps in every on_tick.
(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $set_tick (i32.const 5)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32) unreachable))
