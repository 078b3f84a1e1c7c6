;; A network filter that traps on downstream data starting with "!"; otherwise continues.
(module
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
    (drop (call $get_buffer (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 100) (i32.const 104)))
    (if (i32.eq (i32.load8_u (i32.load (i32.const 100))) (i32.const 33)) (then unreachable))
    (i32.const 0)))
