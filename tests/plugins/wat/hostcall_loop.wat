;; Benchmark plugin: the plugin configuration is a decimal N. on_request_headers calls
;; proxy_get_header_map_value(":path") N times; on_response_headers calls
;; proxy_replace_header_map_value("x-bench", "1") N times. Each get allocates its answer
;; in the guest, as every real plugin's get does.
(module
  (import "env" "proxy_get_buffer_bytes"
    (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $get_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value"
    (func $replace_value (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (global $n (mut i32) (i32.const 0))
  (data (i32.const 16) ":path")
  (data (i32.const 32) "x-bench")
  (data (i32.const 48) "1")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
               (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $v i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 1))))
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size)
                            (i32.const 1024) (i32.const 1028)))
    (local.set $p (i32.load (i32.const 1024)))
    (local.set $end (i32.add (local.get $p) (i32.load (i32.const 1028))))
    (block $done
      (loop $digits
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10))
                               (i32.sub (i32.load8_u (local.get $p)) (i32.const 48))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $digits)))
    (global.set $n (local.get $v))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (global.get $n)))
        (global.set $heap (i32.const 4096))
        (drop (call $get_value (i32.const 0) (i32.const 16) (i32.const 5)
                               (i32.const 1024) (i32.const 1028)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (local $i i32)
    (block $done
      (loop $again
        (br_if $done (i32.ge_u (local.get $i) (global.get $n)))
        (drop (call $replace_value (i32.const 2) (i32.const 32) (i32.const 7)
                                   (i32.const 48) (i32.const 1)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $again)))
    (i32.const 0)))
