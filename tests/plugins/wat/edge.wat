;; Edge cases of the hostcall ABI (0.2.1). on_request_headers makes each call below and
;; reports its status as a request header "x-<case>: <status>"; the test asserts them.
;; The allocator traps when asked for 0 bytes, so an empty answer must come back as
;; ptr 0 / size 0 without an allocation. With "x-bad-alloc" present, the allocator
;; answers an out-of-range pointer.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_eff (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (import "env" "proxy_get_property" (func $prop (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_http_call"
    (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $sget (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $incr (param i32 i64) (result i32)))
  (import "env" "proxy_get_log_level" (func $log_level (param i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (global $bad_alloc (mut i32) (i32.const 0))

  (data (i32.const 100) "x-log-oob")          ;; 9
  (data (i32.const 120) "x-get-key-oob")      ;; 13
  (data (i32.const 140) "x-get-ret-oob")      ;; 13
  (data (i32.const 160) "x-empty")            ;; 7
  (data (i32.const 170) "x-empty-status")     ;; 14
  (data (i32.const 190) "x-empty-ptr-size")   ;; 16
  (data (i32.const 210) "x-plugin-config")    ;; 15
  (data (i32.const 230) "x-buffer-type")      ;; 13
  (data (i32.const 250) "x-map-type")         ;; 10
  (data (i32.const 270) "x-bad-pairs")        ;; 11
  (data (i32.const 290) "x-log-level-bad")    ;; 15
  (data (i32.const 310) "x-effective")        ;; 11
  (data (i32.const 330) "x-done")             ;; 6
  (data (i32.const 340) "x-empty-path")       ;; 12
  (data (i32.const 360) "x-continue-bad")     ;; 14
  (data (i32.const 380) "x-continue-up")      ;; 13
  (data (i32.const 400) "x-http-call")        ;; 11
  (data (i32.const 420) "x-shared-missing")   ;; 16
  (data (i32.const 440) "x-dequeue-unknown")  ;; 17
  (data (i32.const 460) "x-resolve-unknown")  ;; 17
  (data (i32.const 480) "x-metric-type")      ;; 13
  (data (i32.const 500) "x-metric-unknown")   ;; 16
  (data (i32.const 520) "x-counter-zero")     ;; 14
  (data (i32.const 540) "x-missing")          ;; 9
  (data (i32.const 550) "x-missing-status")   ;; 16
  (data (i32.const 570) "x-bad-alloc")        ;; 11
  (data (i32.const 590) "x-bad-alloc-status") ;; 18
  (data (i32.const 610) "x-log-level")        ;; 11
  (data (i32.const 630) "x-pairs-count")      ;; 13
  (data (i32.const 650) "cluster")            ;; 7
  (data (i32.const 660) "x-set-body")         ;; 10
  (data (i32.const 680) "hello")              ;; 5
  (data (i32.const 700) "\02\00\00\00\01\00\00\00")  ;; malformed pairs: N=2, one length pair only
  (data (i32.const 720) "edge-queue")         ;; 10
  (data (i32.const 740) "x-dequeue-empty")    ;; 15
  (data (i32.const 760) "x-queue-id-nonzero") ;; 18

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (if (i32.eqz (local.get $size)) (then unreachable))
    (if (global.get $bad_alloc) (then (return (i32.const -16))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))

  ;; adds request header name: decimal(v)
  (func $report (param $name i32) (param $nlen i32) (param $v i32)
    (local $pos i32)
    (local.set $pos (i32.const 2016))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (drop (call $add (i32.const 0) (local.get $name) (local.get $nlen)
                     (local.get $pos) (i32.sub (i32.const 2016) (local.get $pos)))))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32) (param i32) (result i32)
    ;; bad guest pointers
    (call $report (i32.const 100) (i32.const 9)
      (call $log (i32.const 2) (i32.const 0x7fff0000) (i32.const 10)))
    (call $report (i32.const 120) (i32.const 13)
      (call $get (i32.const 0) (i32.const 0x7fff0000) (i32.const 4) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 140) (i32.const 13)
      (call $get (i32.const 0) (i32.const 160) (i32.const 7) (i32.const 0xfffffff0) (i32.const 3004)))
    ;; a present header with an empty value: OK, ptr 0 / size 0, no allocation
    (i32.store (i32.const 3000) (i32.const 77))
    (i32.store (i32.const 3004) (i32.const 77))
    (call $report (i32.const 170) (i32.const 14)
      (call $get (i32.const 0) (i32.const 160) (i32.const 7) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 190) (i32.const 16)
      (i32.add (i32.load (i32.const 3000)) (i32.load (i32.const 3004))))
    ;; a missing header: NOT_FOUND in 0.2.x
    (call $report (i32.const 550) (i32.const 16)
      (call $get (i32.const 0) (i32.const 540) (i32.const 9) (i32.const 3000) (i32.const 3004)))
    ;; availability and argument checks
    (call $report (i32.const 210) (i32.const 15)
      (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 230) (i32.const 13)
      (call $get_buffer (i32.const 99) (i32.const 0) (i32.const 100) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 250) (i32.const 10)
      (call $pairs (i32.const 99) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 270) (i32.const 11)
      (call $set_pairs (i32.const 0) (i32.const 700) (i32.const 8)))
    (call $report (i32.const 290) (i32.const 15)
      (call $log (i32.const 9) (i32.const 100) (i32.const 9)))
    (call $report (i32.const 310) (i32.const 11) (call $set_eff (i32.const 9999)))
    (call $report (i32.const 330) (i32.const 6) (call $done))
    (call $report (i32.const 340) (i32.const 12)
      (call $prop (i32.const 100) (i32.const 0) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 360) (i32.const 14) (call $continue (i32.const 7)))
    (call $report (i32.const 380) (i32.const 13) (call $continue (i32.const 3)))
    (call $report (i32.const 400) (i32.const 11)
      (call $http_call (i32.const 650) (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 0)
                       (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 3008)))
    (call $report (i32.const 420) (i32.const 16)
      (call $sget (i32.const 540) (i32.const 9) (i32.const 3000) (i32.const 3004) (i32.const 3008)))
    (call $report (i32.const 440) (i32.const 17)
      (call $dequeue (i32.const 12345) (i32.const 3000) (i32.const 3004)))
    ;; a registered queue with nothing in it: EMPTY; ids are never 0
    (drop (call $register (i32.const 720) (i32.const 10) (i32.const 3012)))
    (call $report (i32.const 760) (i32.const 18) (i32.ne (i32.load (i32.const 3012)) (i32.const 0)))
    (call $report (i32.const 740) (i32.const 15)
      (call $dequeue (i32.load (i32.const 3012)) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 460) (i32.const 17)
      (call $resolve (i32.const 0) (i32.const 0) (i32.const 540) (i32.const 9) (i32.const 3008)))
    (call $report (i32.const 480) (i32.const 13)
      (call $define (i32.const 5) (i32.const 540) (i32.const 9) (i32.const 3008)))
    (call $report (i32.const 500) (i32.const 16) (call $incr (i32.const 4000) (i64.const 1)))
    (drop (call $define (i32.const 0) (i32.const 540) (i32.const 9) (i32.const 3008)))
    (call $report (i32.const 520) (i32.const 14)
      (call $incr (i32.load (i32.const 3008)) (i64.const 0)))
    (drop (call $log_level (i32.const 3008)))
    (call $report (i32.const 610) (i32.const 11) (i32.load (i32.const 3008)))
    ;; the body buffer is not available while request headers are processed
    (call $report (i32.const 660) (i32.const 10)
      (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 680) (i32.const 5)))
    ;; an allocator that answers garbage
    (global.set $bad_alloc (i32.const 1))
    (local.set 1 (call $get (i32.const 0) (i32.const 570) (i32.const 11) (i32.const 3000) (i32.const 3004)))
    (global.set $bad_alloc (i32.const 0))
    (call $report (i32.const 590) (i32.const 18) (local.get 1))
    ;; every entry made it (the malformed set_pairs left the map alone)
    (drop (call $pairs (i32.const 0) (i32.const 3000) (i32.const 3004)))
    (call $report (i32.const 630) (i32.const 13) (i32.load (i32.load (i32.const 3000))))
    (i32.const 0))
  (func (export "proxy_on_context_create") (param i32 i32)))
