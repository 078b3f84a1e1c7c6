;; Faults that signal-based traps turn into traps (tests/test_signals.py). on_request_headers
;; does what the request's headers ask:
;;   x-oob      loads from an address far outside linear memory (SIGSEGV in compiled code)
;;   x-trap     executes `unreachable` (a trap instruction: SIGILL)
;;   x-div      divides by zero
;;   x-recurse  recurses without end (the wasm stack limit)
;; otherwise it continues.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $zero (mut i32) (i32.const 0))
  (data (i32.const 100) "x-oob")
  (data (i32.const 110) "x-trap")
  (data (i32.const 120) "x-div")
  (data (i32.const 130) "x-recurse")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func $has (param $p i32) (param $n i32) (result i32)
    (i32.eqz (call $get (i32.const 0) (local.get $p) (local.get $n) (i32.const 300) (i32.const 304))))
  (func $recurse (param $n i64) (result i64)
    (i64.add (call $recurse (i64.add (local.get $n) (i64.const 1))) (local.get $n)))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (call $has (i32.const 100) (i32.const 5))
      (then (drop (i32.load (i32.const 0xfffffff0)))))
    (if (call $has (i32.const 110) (i32.const 6)) (then unreachable))
    (if (call $has (i32.const 120) (i32.const 5))
      (then (drop (i32.div_u (i32.const 7) (global.get $zero)))))
    (if (call $has (i32.const 130) (i32.const 9)) (then (drop (call $recurse (i64.const 0)))))
    (i32.const 0)))
