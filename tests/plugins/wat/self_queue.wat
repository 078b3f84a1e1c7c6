;; Registers queue "self" in on_vm_start and enqueues one item; every on_queue_ready
;; dequeues it and enqueues it again: a notification loop with no end of its own.
(module
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "self")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $register (i32.const 100) (i32.const 4) (i32.const 200)))
    (drop (call $enqueue (i32.load (i32.const 200)) (i32.const 100) (i32.const 4)))
    (i32.const 1))
  (func (export "proxy_on_queue_ready") (param i32 i32)
    (drop (call $dequeue (local.get 1) (i32.const 300) (i32.const 304)))
    (drop (call $enqueue (local.get 1) (i32.const 100) (i32.const 4)))))
