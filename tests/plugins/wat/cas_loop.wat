;; Shared-data stress plugin. on_request_headers does N compare-and-swap increments of an
;; 8-byte little-endian counter: N from request header "x-n" (decimal), the key from
;; "x-key". Each increment is get, +1, set with the cas, retried on CAS_MISMATCH (and on
;; a get or set that fails for another reason: only NOT_FOUND means "no counter yet"). The
;; number of retries is logged as "retries <n>".
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $sget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $sset (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 100) "x-n")
  (data (i32.const 110) "x-key")
  (data (i32.const 120) "retries ")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))

  (func $decimal (param $p i32) (param $n i32) (result i32)
    (local $v i32) (local $end i32)
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10))
                               (i32.sub (i32.load8_u (local.get $p)) (i32.const 48))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $v))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $n i32) (local $key i32) (local $klen i32) (local $i i32) (local $retries i32)
    (local $st i32) (local $v i64) (local $pos i32)
    (global.set $heap (i32.const 8192))
    (drop (call $get (i32.const 0) (i32.const 100) (i32.const 3) (i32.const 1000) (i32.const 1004)))
    (local.set $n (call $decimal (i32.load (i32.const 1000)) (i32.load (i32.const 1004))))
    (drop (call $get (i32.const 0) (i32.const 110) (i32.const 5) (i32.const 1000) (i32.const 1004)))
    ;; keep the key where later allocations cannot overwrite it
    (local.set $klen (i32.load (i32.const 1004)))
    (memory.copy (i32.const 4096) (i32.load (i32.const 1000)) (local.get $klen))
    (local.set $key (i32.const 4096))
    (block $done
      (loop $increment
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (global.set $heap (i32.const 8192))
        (local.set $st (call $sget (local.get $key) (local.get $klen)
                                   (i32.const 1010) (i32.const 1014) (i32.const 1018)))
        ;; OK: the value and its cas; NOT_FOUND (1): start from 0, unconditionally; any
        ;; other status (a backend that cannot answer now): try again, counted as a retry.
        (if (i32.eqz (local.get $st))
          (then (local.set $v (i64.load (i32.load (i32.const 1010)))))
          (else
            (if (i32.ne (local.get $st) (i32.const 1))
              (then (local.set $retries (i32.add (local.get $retries) (i32.const 1)))
                    (br $increment)))
            (local.set $v (i64.const 0))
            (i32.store (i32.const 1018) (i32.const 0))))
        (i64.store (i32.const 1024) (i64.add (local.get $v) (i64.const 1)))
        (local.set $st (call $sset (local.get $key) (local.get $klen) (i32.const 1024) (i32.const 8)
                                   (i32.load (i32.const 1018))))
        (if (i32.eqz (local.get $st))
          (then (local.set $i (i32.add (local.get $i) (i32.const 1))))
          (else (local.set $retries (i32.add (local.get $retries) (i32.const 1)))))
        (br $increment)))
    ;; log "retries <n>"
    (local.set $pos (i32.const 2064))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos) (i32.add (i32.const 48) (i32.rem_u (local.get $retries) (i32.const 10))))
      (local.set $retries (i32.div_u (local.get $retries) (i32.const 10)))
      (br_if $digit (local.get $retries)))
    (memory.copy (i32.const 2100) (i32.const 120) (i32.const 8))
    (memory.copy (i32.const 2108) (local.get $pos) (i32.sub (i32.const 2064) (local.get $pos)))
    (drop (call $log (i32.const 1) (i32.const 2100) (i32.add (i32.const 8) (i32.sub (i32.const 2064) (local.get $pos)))))
    (i32.const 0)))
