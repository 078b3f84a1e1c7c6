;; Shared-queue producer/consumer. Plugin configuration "c": a consumer that registers
;; queue "items" and, on each on_queue_ready, dequeues until EMPTY and hands every item to
;; the host's foreign function "consumed" ("C": the same without the foreign call). Configuration "p": a producer whose
;; on_request_headers resolves ("", "items") and enqueues N items (N from header "x-n"),
;; each 8 bytes: u32 producer id (header "x-p") and u32 sequence number from 0. A refused
;; enqueue is logged at ERROR as "enqueue <status, two digits>". Both kinds may share one VM.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function"
    (func $foreign (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (global $report (mut i32) (i32.const 0))
  (data (i32.const 100) "items")
  (data (i32.const 110) "x-n")
  (data (i32.const 120) "x-p")
  (data (i32.const 130) "consumed")
  (data (i32.const 140) "enqueue ")

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

  (func $header_number (param $name i32) (param $len i32) (result i32)
    (drop (call $get (i32.const 0) (local.get $name) (local.get $len) (i32.const 1000) (i32.const 1004)))
    (call $decimal (i32.load (i32.const 1000)) (i32.load (i32.const 1004))))

  (func (export "proxy_on_configure") (param i32) (param $size i32) (result i32)
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 1000) (i32.const 1004)))
    (if (i32.eq (i32.load8_u (i32.load (i32.const 1000))) (i32.const 99)) ;; "c"
      (then (global.set $report (i32.const 1))))
    (if (i32.or (global.get $report)
                (i32.eq (i32.load8_u (i32.load (i32.const 1000))) (i32.const 67))) ;; "C"
      (then (drop (call $register (i32.const 100) (i32.const 5) (i32.const 1008)))))
    (i32.const 1))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $n i32) (local $producer i32) (local $i i32) (local $queue i32) (local $st i32)
    (global.set $heap (i32.const 8192))
    (local.set $n (call $header_number (i32.const 110) (i32.const 3)))
    (local.set $producer (call $header_number (i32.const 120) (i32.const 3)))
    (if (call $resolve (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 5) (i32.const 1008))
      (then (return (i32.const 0))))
    (local.set $queue (i32.load (i32.const 1008)))
    (block $done
      (loop $produce
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i32.store (i32.const 1100) (local.get $producer))
        (i32.store (i32.const 1104) (local.get $i))
        (local.set $st (call $enqueue (local.get $queue) (i32.const 1100) (i32.const 8)))
        (if (local.get $st)
          (then (i32.store8 (i32.const 148) (i32.add (i32.const 48) (i32.div_u (local.get $st) (i32.const 10))))
                (i32.store8 (i32.const 149) (i32.add (i32.const 48) (i32.rem_u (local.get $st) (i32.const 10))))
                (drop (call $log (i32.const 4) (i32.const 140) (i32.const 10)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $produce)))
    (i32.const 0))

  (func (export "proxy_on_queue_ready") (param i32) (param $queue i32)
    (block $empty
      (loop $drain
        (global.set $heap (i32.const 8192))
        (br_if $empty (call $dequeue (local.get $queue) (i32.const 1010) (i32.const 1014)))
        (if (global.get $report)
          (then (drop (call $foreign (i32.const 130) (i32.const 8)
                                     (i32.load (i32.const 1010)) (i32.load (i32.const 1014))
                                     (i32.const 0) (i32.const 0)))))
        (br $drain)))))
