;; Registers and uses a shared queue from _initialize, before any root context exists (a
;; guest may call any hostcall during start-up). The queue's notifications go to this VM.
(module
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "start-queue")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "_initialize")
    (drop (call $register (i32.const 100) (i32.const 11) (i32.const 200)))
    (drop (call $enqueue (i32.load (i32.const 200)) (i32.const 100) (i32.const 5)))))
