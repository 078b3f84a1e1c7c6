;; Long guest calls with a Python callback on either side, for the tests of the GIL across
;; core calls (tests/test_gil.py). The plugin configuration is a decimal MS.
;;   on_request_headers   spins for MS milliseconds (by proxy_get_current_time_nanoseconds),
;;                        then logs "spin_log after" (INFO); returns Continue.
;;   on_response_headers  logs "spin_log before" (INFO), then spins for MS milliseconds;
;;                        returns Continue.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $ms (mut i64) (i64.const 0))
  (data (i32.const 100) "spin_log after")
  (data (i32.const 120) "spin_log before")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $v i64)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 1))))
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                            (i32.const 1024) (i32.const 1028)))
    (local.set $p (i32.load (i32.const 1024)))
    (local.set $end (i32.add (local.get $p) (i32.load (i32.const 1028))))
    (block $done
      (loop $digits
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10))
                               (i64.extend_i32_u (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digits)))
    (global.set $ms (local.get $v))
    (i32.const 1))
  (func $spin
    (local $until i64)
    (drop (call $now (i32.const 2048)))
    (local.set $until (i64.add (i64.load (i32.const 2048))
                               (i64.mul (global.get $ms) (i64.const 1000000))))
    (loop $again
      (drop (call $now (i32.const 2048)))
      (br_if $again (i64.lt_u (i64.load (i32.const 2048)) (local.get $until)))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $spin)
    (drop (call $log (i32.const 2) (i32.const 100) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 120) (i32.const 15)))
    (call $spin)
    (i32.const 0)))
