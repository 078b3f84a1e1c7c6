;; Stream and root semantics. The request header "x-mode" picks what the filter does
;; (first byte); results are logged at INFO as "<what> <number>" or "<what>".
;;   e  on_request_headers returns 2 (ContinueAndEndStream)
;;   n  on_request_body returns 3 (StopIterationNoBuffer) for the first chunk, then 0
;;   c  on_request_headers calls proxy_close_stream(HTTP_REQUEST)
;;   t  on_request_body at end of stream adds request trailer "x-created: 1"
;;   s  on_request_body logs "status <buffer size>" from proxy_get_buffer_status
;;   p  on_request_headers replaces the map with set_header_map_pairs (a: 1, b: 22)
;;   z  on_request_headers logs "size <serialized size>" (proxy_get_header_map_size)
;;   w  on_request_headers pauses; the next tick resumes it through
;;      proxy_set_effective_context and logs "resumed <status of set_effective_context>"
;; on_log logs "log-add <status>" (adding to request headers there) and
;; "log-pairs <count>" (response headers readable there).
;; Root: on_configure sets a 10 ms tick; on_done returns 0 (pending) and the next tick
;; calls proxy_done ("done <status>"); on_delete of the root logs "root deleted";
;; on_foreign_function logs "foreign <id>" and then the arguments.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $map_size (param i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_status" (func $buffer_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_eff (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (global $mode (mut i32) (i32.const 0))
  (global $root (mut i32) (i32.const 0))
  (global $chunks (mut i32) (i32.const 0))
  (global $waiting (mut i32) (i32.const 0))
  (global $closing (mut i32) (i32.const 0))

  (data (i32.const 100) "x-mode")      ;; 6
  (data (i32.const 110) "x-created")   ;; 9
  (data (i32.const 120) "1")
  (data (i32.const 130) "status ")     ;; 7
  (data (i32.const 140) "size ")       ;; 5
  (data (i32.const 150) "resumed ")    ;; 8
  (data (i32.const 160) "log-add ")    ;; 8
  (data (i32.const 170) "log-pairs ")  ;; 10
  (data (i32.const 190) "done ")       ;; 5
  (data (i32.const 200) "root deleted");; 12
  (data (i32.const 220) "foreign ")    ;; 8
  (data (i32.const 230) "x-log")       ;; 5
  ;; pairs {a: 1, b: 22}
  (data (i32.const 300) "\02\00\00\00\01\00\00\00\01\00\00\00\01\00\00\00\02\00\00\00a\001\00b\0022\00")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))

  ;; log "prefix<decimal v>"
  (func $logn (param $s i32) (param $n i32) (param $v i32)
    (local $pos i32) (local $len i32)
    (local.set $pos (i32.const 2064))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (local.set $len (i32.sub (i32.const 2064) (local.get $pos)))
    (memory.copy (i32.const 2100) (local.get $s) (local.get $n))
    (memory.copy (i32.add (i32.const 2100) (local.get $n)) (local.get $pos) (local.get $len))
    (drop (call $log (i32.const 2) (i32.const 2100) (i32.add (local.get $n) (local.get $len)))))

  (func (export "proxy_on_context_create") (param $id i32) (param $parent i32)
    (if (i32.eqz (local.get $parent)) (then (global.set $root (local.get $id)))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $set_tick (i32.const 10)))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32) (param i32) (result i32)
    (global.set $mode (i32.const 0))
    (global.set $chunks (i32.const 0))
    (if (i32.eqz (call $get (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 3000) (i32.const 3004)))
      (then (if (i32.load (i32.const 3004))
        (then (global.set $mode (i32.load8_u (i32.load (i32.const 3000))))))))
    (if (i32.eq (global.get $mode) (i32.const 101)) ;; e
      (then (return (i32.const 2))))
    (if (i32.eq (global.get $mode) (i32.const 99)) ;; c
      (then (drop (call $close (i32.const 0)))))
    (if (i32.eq (global.get $mode) (i32.const 112)) ;; p
      (then (drop (call $set_pairs (i32.const 0) (i32.const 300) (i32.const 29)))))
    (if (i32.eq (global.get $mode) (i32.const 122)) ;; z
      (then (drop (call $map_size (i32.const 0) (i32.const 3008)))
            (call $logn (i32.const 140) (i32.const 5) (i32.load (i32.const 3008)))))
    (if (i32.eq (global.get $mode) (i32.const 119)) ;; w
      (then (global.set $waiting (local.get $ctx))
            (return (i32.const 1))))
    (i32.const 0))

  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (global.set $chunks (i32.add (global.get $chunks) (i32.const 1)))
    (if (i32.eq (global.get $mode) (i32.const 110)) ;; n
      (then (if (i32.eq (global.get $chunks) (i32.const 1)) (then (return (i32.const 3))))))
    (if (i32.eq (global.get $mode) (i32.const 116)) ;; t
      (then (if (local.get $eos)
        (then (drop (call $add (i32.const 1) (i32.const 110) (i32.const 9) (i32.const 120) (i32.const 1))))))) 
    (if (i32.eq (global.get $mode) (i32.const 115)) ;; s
      (then (drop (call $buffer_status (i32.const 0) (i32.const 3008) (i32.const 3012)))
            (call $logn (i32.const 130) (i32.const 7) (i32.load (i32.const 3008)))))
    (i32.const 0))

  (func (export "proxy_on_log") (param i32)
    (call $logn (i32.const 160) (i32.const 8)
      (call $add (i32.const 0) (i32.const 230) (i32.const 5) (i32.const 120) (i32.const 1)))
    (i32.store (i32.const 3000) (i32.const 0))
    (drop (call $pairs (i32.const 2) (i32.const 3000) (i32.const 3004)))
    (call $logn (i32.const 170) (i32.const 10)
      (if (result i32) (i32.load (i32.const 3000))
        (then (i32.load (i32.load (i32.const 3000))))
        (else (i32.const 0)))))

  (func (export "proxy_on_tick") (param i32)
    (if (global.get $waiting)
      (then (call $logn (i32.const 150) (i32.const 8) (call $set_eff (global.get $waiting)))
            (drop (call $continue (i32.const 0)))
            (global.set $waiting (i32.const 0))))
    (if (global.get $closing)
      (then (call $logn (i32.const 190) (i32.const 5) (call $done))
            (global.set $closing (i32.const 0)))))

  (func (export "proxy_on_done") (param $id i32) (result i32)
    (if (i32.eq (local.get $id) (global.get $root))
      (then (global.set $closing (i32.const 1))
            (return (i32.const 0))))
    (i32.const 1))

  (func (export "proxy_on_delete") (param $id i32)
    (if (i32.eq (local.get $id) (global.get $root))
      (then (drop (call $log (i32.const 2) (i32.const 200) (i32.const 12))))))

  (func (export "proxy_on_foreign_function") (param i32) (param $fid i32) (param $size i32)
    (drop (call $get_buffer (i32.const 8) (i32.const 0) (local.get $size) (i32.const 3000) (i32.const 3004)))
    ;; two lines: "foreign <id>", then the arguments
    (call $logn (i32.const 220) (i32.const 8) (local.get $fid))
    (drop (call $log (i32.const 2) (i32.load (i32.const 3000)) (i32.load (i32.const 3004))))))
