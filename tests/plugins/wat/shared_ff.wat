;; Calls a foreign function from a guest: on_request_headers reads the function's name from
;; request header "x-fn" and its arguments, hex-encoded, from "x-arg" (headers cannot carry
;; arbitrary bytes), calls proxy_call_foreign_function and logs "ff <status>" at info.
;; Used for delete_shared_data / expire_shared_data (args: u32 cas or u64 ttl_ms,
;; little-endian, then the key).
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function"
    (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 16384))
  (data (i32.const 100) "x-fn")
  (data (i32.const 110) "x-arg")
  (data (i32.const 120) "ff ")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))

  (func $nibble (param $c i32) (result i32)
    (if (result i32) (i32.ge_u (local.get $c) (i32.const 97))
      (then (i32.sub (local.get $c) (i32.const 87)))
      (else (i32.sub (local.get $c) (i32.const 48)))))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $name i32) (local $nlen i32) (local $hex i32) (local $hlen i32) (local $i i32)
    (local $st i32)
    (global.set $heap (i32.const 16384))
    (drop (call $get (i32.const 0) (i32.const 100) (i32.const 4) (i32.const 1000) (i32.const 1004)))
    (local.set $name (i32.load (i32.const 1000)))
    (local.set $nlen (i32.load (i32.const 1004)))
    (drop (call $get (i32.const 0) (i32.const 110) (i32.const 5) (i32.const 1008) (i32.const 1012)))
    (local.set $hex (i32.load (i32.const 1008)))
    (local.set $hlen (i32.load (i32.const 1012)))
    ;; decode the hex arguments to 4096..
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (i32.add (local.get $i) (i32.const 1)) (local.get $hlen)))
        (i32.store8 (i32.add (i32.const 4096) (i32.shr_u (local.get $i) (i32.const 1)))
          (i32.or (i32.shl (call $nibble (i32.load8_u (i32.add (local.get $hex) (local.get $i))))
                           (i32.const 4))
                  (call $nibble (i32.load8_u (i32.add (local.get $hex)
                                                      (i32.add (local.get $i) (i32.const 1)))))))
        (local.set $i (i32.add (local.get $i) (i32.const 2)))
        (br $next)))
    (local.set $st (call $ff (local.get $name) (local.get $nlen) (i32.const 4096)
                             (i32.shr_u (local.get $hlen) (i32.const 1))
                             (i32.const 1016) (i32.const 1020)))
    ;; log "ff <status>" (status < 100)
    (memory.copy (i32.const 2000) (i32.const 120) (i32.const 3))
    (i32.store8 (i32.const 2003) (i32.add (i32.const 48) (i32.div_u (local.get $st) (i32.const 10))))
    (i32.store8 (i32.const 2004) (i32.add (i32.const 48) (i32.rem_u (local.get $st) (i32.const 10))))
    (drop (call $log (i32.const 2) (i32.const 2000) (i32.const 5)))
    (i32.const 0)))
