;; Pause and resume through a shared queue (for the ASGI/WSGI adapters' tests).
;; on_configure registers queue "resume". A request with header "x-wait" is held
;; (on_request_headers returns Pause) and its context id remembered (the last one wins). A
;; request with header "x-release" resolves ("", "resume") and enqueues one item. On each
;; on_queue_ready the queue is drained, and the held request is continued with
;; proxy_set_effective_context + proxy_continue_stream(REQUEST); it then gets request
;; header "x-resumed: queue".
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_eff (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 8192))
  (global $waiting (mut i32) (i32.const 0))
  (data (i32.const 100) "resume")     ;; 6
  (data (i32.const 110) "x-wait")     ;; 6
  (data (i32.const 120) "x-release")  ;; 9
  (data (i32.const 140) "x-resumed")  ;; 9
  (data (i32.const 150) "queue")      ;; 5
  (data (i32.const 160) "go")         ;; 2

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $register (i32.const 100) (i32.const 6) (i32.const 1008)))
    (i32.const 1))

  (func $has (param $name i32) (param $len i32) (result i32)
    (i32.eqz (call $get (i32.const 0) (local.get $name) (local.get $len) (i32.const 1000) (i32.const 1004))))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (global.set $heap (i32.const 8192))
    (if (call $has (i32.const 110) (i32.const 6))
      (then (global.set $waiting (local.get $ctx))
            (return (i32.const 1))))
    (if (call $has (i32.const 120) (i32.const 9))
      (then
        (if (i32.eqz (call $resolve (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 1012)))
          (then (drop (call $enqueue (i32.load (i32.const 1012)) (i32.const 160) (i32.const 2)))))))
    (i32.const 0))

  (func (export "proxy_on_queue_ready") (param i32) (param $queue i32)
    (block $empty
      (loop $drain
        (global.set $heap (i32.const 8192))
        (br_if $empty (call $dequeue (local.get $queue) (i32.const 1020) (i32.const 1024)))
        (br $drain)))
    (if (global.get $waiting)
      (then
        (if (i32.eqz (call $set_eff (global.get $waiting)))
          (then
            (drop (call $add (i32.const 0) (i32.const 140) (i32.const 9) (i32.const 150) (i32.const 5)))
            (drop (call $continue (i32.const 0)))))
        (global.set $waiting (i32.const 0)))))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32)))
