;; Registers 3,000 shared queues with distinct names (4 bytes each: "q" + a 3-byte
;; counter) in on_request_headers and stores how many registrations succeeded (u32) as
;; shared data "registered".
(module
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $sset (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "registered")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32) (local $ok i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (i32.const 3000)))
        (i32.store (i32.const 200) (i32.or (i32.shl (local.get $i) (i32.const 8)) (i32.const 113)))
        (if (i32.eqz (call $register (i32.const 200) (i32.const 4) (i32.const 300)))
          (then (local.set $ok (i32.add (local.get $ok) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store (i32.const 400) (local.get $ok))
    (drop (call $sset (i32.const 100) (i32.const 10) (i32.const 400) (i32.const 4) (i32.const 0)))
    (i32.const 0)))
