;; Outbound calls, the auth pattern, in its smallest form. Logs at INFO.
;; on_request_headers: the request header "x-call" picks what it does (first byte):
;;   h  proxy_http_call("svc", {:method GET, :path /check, :authority svc}, body "ping",
;;      no trailers, timeout 1000 ms); logs "call <status>"; on OK pauses the request
;;   g  proxy_grpc_call("svc", "pkg.Svc", "Do", no metadata, message "hi", timeout 500);
;;      logs "grpc <status>"; pauses on OK
;;   s  proxy_grpc_stream("svc", "pkg.Svc", "Chat", no metadata), then sends "a" and "b"
;;      (the second with end_stream); logs "stream <status>", "send <status>" twice; pauses
;;   n  proxy_http_call to cluster "nope"; logs "call <status>"
;;   m  proxy_http_call without :authority; logs "call <status>"
;;   (none) continues
;; proxy_on_http_call_response(root, token, headers, body, trailers): logs
;; "response <headers> <body> <trailers>", then the :status of HTTP_CALL_RESPONSE_HEADERS as
;; "status=<value>" (when there are headers), the body as "body=<bytes>", and
;; "get_status <code>"; then switches to the calling stream and continues it; a response
;; with :status 403 answers the stream locally with 403 instead.
;; Each call remembers its stream by token (a table of 4096 slots), so many streams may
;; wait at once.
;; gRPC: "grpc-initial <n>", "grpc-message <size>" (and "message=<bytes>"),
;; "grpc-trailing <n>", "grpc-close <status>" and "get_status <code>"; the unary answer or
;; the close resumes the calling stream.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_stream" (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_eff (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue (param i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $local (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 40960))
  (global $stream (mut i32) (i32.const 0))

  (data (i32.const 100) "x-call")        ;; 6
  (data (i32.const 110) "svc")           ;; 3
  (data (i32.const 120) "ping")          ;; 4
  (data (i32.const 130) "call ")         ;; 5
  (data (i32.const 140) "response ")     ;; 9
  (data (i32.const 150) ":status")       ;; 7
  (data (i32.const 160) "get_status ")   ;; 11
  (data (i32.const 180) "status=")       ;; 7
  (data (i32.const 190) "body=")         ;; 5
  (data (i32.const 200) "nope")          ;; 4
  (data (i32.const 210) "pkg.Svc")       ;; 7
  (data (i32.const 220) "Do")            ;; 2
  (data (i32.const 224) "Chat")          ;; 4
  (data (i32.const 230) "hi")            ;; 2
  (data (i32.const 240) "grpc ")         ;; 5
  (data (i32.const 250) "stream ")       ;; 7
  (data (i32.const 260) "send ")         ;; 5
  (data (i32.const 270) "grpc-initial ") ;; 13
  (data (i32.const 290) "grpc-message ") ;; 13
  (data (i32.const 310) "grpc-trailing ");; 14
  (data (i32.const 330) "grpc-close ")   ;; 11
  (data (i32.const 350) "message=")      ;; 8
  (data (i32.const 360) "a")
  (data (i32.const 361) "b")
  (data (i32.const 370) "denied")        ;; 6
  ;; empty pairs
  (data (i32.const 400) "\00\00\00\00")
  ;; {:method GET, :path /check, :authority svc}  (68 bytes)
  (data (i32.const 500) "\03\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00\0a\00\00\00\03\00\00\00:method\00GET\00:path\00/check\00:authority\00svc\00")
  ;; {:method GET, :path /check}  (45 bytes)
  (data (i32.const 700) "\02\00\00\00\07\00\00\00\03\00\00\00\05\00\00\00\06\00\00\00:method\00GET\00:path\00/check\00")

  (func (export "proxy_abi_version_0_2_1"))
  ;; A bump allocator that wraps around: every answer is used within the callback that
  ;; asked for it, so a long run of calls never exhausts the memory.
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $size)) (i32.const 131072))
      (then (global.set $heap (i32.const 40960))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (local.get $p) (local.get $size)) (i32.const 7))
                               (i32.const -8)))
    (local.get $p))

  ;; log "prefix<decimal v>"
  (func $logn (param $s i32) (param $n i32) (param $v i32)
    (local $pos i32) (local $len i32)
    (local.set $pos (i32.const 3064))
    (loop $digit
      (local.set $pos (i32.sub (local.get $pos) (i32.const 1)))
      (i32.store8 (local.get $pos) (i32.add (i32.const 48) (i32.rem_u (local.get $v) (i32.const 10))))
      (local.set $v (i32.div_u (local.get $v) (i32.const 10)))
      (br_if $digit (local.get $v)))
    (local.set $len (i32.sub (i32.const 3064) (local.get $pos)))
    (memory.copy (i32.const 3100) (local.get $s) (local.get $n))
    (memory.copy (i32.add (i32.const 3100) (local.get $n)) (local.get $pos) (local.get $len))
    (drop (call $log (i32.const 2) (i32.const 3100) (i32.add (local.get $n) (local.get $len)))))

  ;; log "prefix" followed by the bytes at (ptr, len)
  (func $logs (param $s i32) (param $n i32) (param $p i32) (param $len i32)
    (memory.copy (i32.const 3100) (local.get $s) (local.get $n))
    (memory.copy (i32.add (i32.const 3100) (local.get $n)) (local.get $p) (local.get $len))
    (drop (call $log (i32.const 2) (i32.const 3100) (i32.add (local.get $n) (local.get $len)))))

  ;; the status and message of the last call: "get_status <code>"
  (func $log_status
    (drop (call $get_status (i32.const 1000) (i32.const 1004) (i32.const 1008)))
    (call $logn (i32.const 160) (i32.const 11) (i32.load (i32.const 1000))))

  ;; token -> calling stream
  (func $slot (param $token i32) (result i32)
    (i32.add (i32.const 20000) (i32.shl (i32.and (i32.shr_u (local.get $token) (i32.const 2))
                                                 (i32.const 4095)) (i32.const 2))))
  (func $remember (param $st i32) (result i32)
    (if (i32.eqz (local.get $st))
      (then (i32.store (call $slot (i32.load (i32.const 1030))) (global.get $stream))))
    (local.get $st))
  (func $resume (param $token i32)
    (drop (call $set_eff (i32.load (call $slot (local.get $token)))))
    (drop (call $continue (i32.const 0))))

  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (local $mode i32) (local $st i32)
    (global.set $stream (local.get $ctx))
    (if (call $get (i32.const 0) (i32.const 100) (i32.const 6) (i32.const 1020) (i32.const 1024))
      (then (return (i32.const 0))))
    (local.set $mode (i32.load8_u (i32.load (i32.const 1020))))
    (if (i32.eq (local.get $mode) (i32.const 104)) ;; h
      (then
        (local.set $st (call $http_call (i32.const 110) (i32.const 3) (i32.const 500) (i32.const 68)
                                        (i32.const 120) (i32.const 4) (i32.const 400) (i32.const 4)
                                        (i32.const 1000) (i32.const 1030)))
        (call $logn (i32.const 130) (i32.const 5) (call $remember (local.get $st)))
        (return (i32.eqz (local.get $st)))))
    (if (i32.eq (local.get $mode) (i32.const 110)) ;; n
      (then
        (local.set $st (call $http_call (i32.const 200) (i32.const 4) (i32.const 500) (i32.const 68)
                                        (i32.const 0) (i32.const 0) (i32.const 400) (i32.const 4)
                                        (i32.const 1000) (i32.const 1030)))
        (call $logn (i32.const 130) (i32.const 5) (local.get $st))
        (return (i32.const 0))))
    (if (i32.eq (local.get $mode) (i32.const 109)) ;; m
      (then
        (local.set $st (call $http_call (i32.const 110) (i32.const 3) (i32.const 700) (i32.const 45)
                                        (i32.const 0) (i32.const 0) (i32.const 400) (i32.const 4)
                                        (i32.const 1000) (i32.const 1030)))
        (call $logn (i32.const 130) (i32.const 5) (local.get $st))
        (return (i32.const 0))))
    (if (i32.eq (local.get $mode) (i32.const 103)) ;; g
      (then
        (local.set $st (call $grpc_call (i32.const 110) (i32.const 3) (i32.const 210) (i32.const 7)
                                        (i32.const 220) (i32.const 2) (i32.const 400) (i32.const 4)
                                        (i32.const 230) (i32.const 2) (i32.const 500) (i32.const 1030)))
        (call $logn (i32.const 240) (i32.const 5) (call $remember (local.get $st)))
        (return (i32.eqz (local.get $st)))))
    (if (i32.eq (local.get $mode) (i32.const 115)) ;; s
      (then
        (local.set $st (call $grpc_stream (i32.const 110) (i32.const 3) (i32.const 210) (i32.const 7)
                                          (i32.const 224) (i32.const 4) (i32.const 400) (i32.const 4)
                                          (i32.const 1030)))
        (call $logn (i32.const 250) (i32.const 7) (call $remember (local.get $st)))
        (if (local.get $st) (then (return (i32.const 0))))
        (call $logn (i32.const 260) (i32.const 5)
              (call $grpc_send (i32.load (i32.const 1030)) (i32.const 360) (i32.const 1) (i32.const 0)))
        (call $logn (i32.const 260) (i32.const 5)
              (call $grpc_send (i32.load (i32.const 1030)) (i32.const 361) (i32.const 1) (i32.const 1)))
        (return (i32.const 1))))
    (i32.const 0))

  (func (export "proxy_on_http_call_response") (param $root i32) (param $token i32)
        (param $nh i32) (param $bl i32) (param $nt i32)
    (local $deny i32)
    (call $logn (i32.const 140) (i32.const 9) (local.get $nh))
    (call $logn (i32.const 140) (i32.const 9) (local.get $bl))
    (call $logn (i32.const 140) (i32.const 9) (local.get $nt))
    (if (local.get $nh)
      (then
        (if (i32.eqz (call $get (i32.const 6) (i32.const 150) (i32.const 7) (i32.const 1040) (i32.const 1044)))
          (then
            (call $logs (i32.const 180) (i32.const 7) (i32.load (i32.const 1040)) (i32.load (i32.const 1044)))
            (local.set $deny (i32.and (i32.eq (i32.load (i32.const 1044)) (i32.const 3))
                                      (i32.eq (i32.load8_u (i32.load (i32.const 1040))) (i32.const 52))))))))
    (if (local.get $bl)
      (then
        (if (i32.eqz (call $get_buffer (i32.const 4) (i32.const 0) (i32.const -1) (i32.const 1048) (i32.const 1052)))
          (then (call $logs (i32.const 190) (i32.const 5) (i32.load (i32.const 1048)) (i32.load (i32.const 1052)))))))
    (call $log_status)
    (drop (call $set_eff (i32.load (call $slot (local.get $token)))))
    (if (local.get $deny)
      (then (drop (call $local (i32.const 403) (i32.const 370) (i32.const 6) (i32.const 370) (i32.const 6)
                               (i32.const 400) (i32.const 4) (i32.const -1))))
      (else (drop (call $continue (i32.const 0))))))

  (func (export "proxy_on_grpc_receive_initial_metadata") (param $root i32) (param $token i32) (param $n i32)
    (call $logn (i32.const 270) (i32.const 13) (local.get $n)))
  (func (export "proxy_on_grpc_receive") (param $root i32) (param $token i32) (param $size i32)
    (call $logn (i32.const 290) (i32.const 13) (local.get $size))
    (if (i32.eqz (call $get_buffer (i32.const 5) (i32.const 0) (i32.const -1) (i32.const 1048) (i32.const 1052)))
      (then (call $logs (i32.const 350) (i32.const 8) (i32.load (i32.const 1048)) (i32.load (i32.const 1052)))))
    (if (i32.eq (i32.and (local.get $token) (i32.const 3)) (i32.const 1)) (then (call $resume (local.get $token)))))
  (func (export "proxy_on_grpc_receive_trailing_metadata") (param $root i32) (param $token i32) (param $n i32)
    (call $logn (i32.const 310) (i32.const 14) (local.get $n)))
  (func (export "proxy_on_grpc_close") (param $root i32) (param $token i32) (param $status i32)
    (call $logn (i32.const 330) (i32.const 11) (local.get $status))
    (call $log_status)
    (call $resume (local.get $token)))
)
