;; A hostile guest for the containment tests. on_request_headers does what the request's
;; headers ask (each header's presence is the trigger):
;;   x-loop       loops forever                     x-alloc-loop  loops in the allocator
;;   x-recurse    recurses without end              x-grow        grows memory until refused,
;;                                                                then stores the page count
;;                                                                (u32) as shared data "pages"
;;   x-fd-bomb    one fd_write of 1,000 iovecs, each naming the first 64 KiB of memory
;;   x-hdr-churn  20,000 replaces of one header, alternating 1 and 60,000 bytes
;;   x-body-bomb  on_request_body appends 64 KiB to the body 4,096 times and stores the
;;                last status (u32) as shared data "body-status"
;;   x-every10    counts requests and traps on every 10th
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $sset (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (global $alloc_loop (mut i32) (i32.const 0))
  (global $body_bomb (mut i32) (i32.const 0))
  (global $count (mut i32) (i32.const 0))
  (data (i32.const 100) "x-loop")
  (data (i32.const 110) "x-alloc-loop")
  (data (i32.const 130) "x-recurse")
  (data (i32.const 140) "x-grow")
  (data (i32.const 150) "x-fd-bomb")
  (data (i32.const 160) "x-hdr-churn")
  (data (i32.const 180) "x-body-bomb")
  (data (i32.const 200) "x-every10")
  (data (i32.const 220) ":path")
  (data (i32.const 230) "pages")
  (data (i32.const 240) "body-status")
  (data (i32.const 260) "x-churn")

  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (if (global.get $alloc_loop) (then (loop $spin (br $spin))))
    (if (i32.gt_u (i32.add (global.get $heap) (local.get $size)) (i32.const 131072))
      (then (global.set $heap (i32.const 65536))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (local.get $p))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))

  (func $has (param $name i32) (param $len i32) (result i32)
    (i32.eqz (call $get (i32.const 0) (local.get $name) (local.get $len) (i32.const 300) (i32.const 304))))

  (func $recurse (param $n i64) (result i64)
    (i64.add (call $recurse (i64.add (local.get $n) (i64.const 1))) (local.get $n)))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (local $i i32) (local $pages i32)
    (if (call $has (i32.const 100) (i32.const 6)) (then (loop $forever (br $forever))))
    (if (call $has (i32.const 110) (i32.const 12))
      (then
        (global.set $alloc_loop (i32.const 1))
        (drop (call $get (i32.const 0) (i32.const 220) (i32.const 5) (i32.const 300) (i32.const 304)))))
    (if (call $has (i32.const 130) (i32.const 9)) (then (drop (call $recurse (i64.const 0)))))
    (if (call $has (i32.const 140) (i32.const 6))
      (then
        (local.set $pages (memory.size))
        (block $refused
          (loop $more
            (br_if $refused (i32.eq (memory.grow (i32.const 16)) (i32.const -1)))
            (local.set $pages (memory.size))
            (br_if $refused (i32.ge_u (local.get $pages) (i32.const 65000)))
            (br $more)))
        (i32.store (i32.const 400) (local.get $pages))
        (drop (call $sset (i32.const 230) (i32.const 5) (i32.const 400) (i32.const 4) (i32.const 0)))))
    (if (call $has (i32.const 150) (i32.const 9))
      (then
        (local.set $i (i32.const 0))
        (block $built
          (loop $iov
            (br_if $built (i32.ge_u (local.get $i) (i32.const 1000)))
            (i32.store (i32.add (i32.const 4096) (i32.mul (local.get $i) (i32.const 8))) (i32.const 0))
            (i32.store (i32.add (i32.const 4100) (i32.mul (local.get $i) (i32.const 8))) (i32.const 65536))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $iov)))
        (drop (call $fd_write (i32.const 1) (i32.const 4096) (i32.const 1000) (i32.const 500)))))
    (if (call $has (i32.const 160) (i32.const 11))
      (then
        (local.set $i (i32.const 0))
        (block $churned
          (loop $churn
            (br_if $churned (i32.ge_u (local.get $i) (i32.const 20000)))
            (drop (call $replace (i32.const 0) (i32.const 260) (i32.const 7) (i32.const 0)
              (select (i32.const 60000) (i32.const 1) (i32.and (local.get $i) (i32.const 1)))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $churn)))))
    (if (call $has (i32.const 180) (i32.const 11)) (then (global.set $body_bomb (i32.const 1))))
    (if (call $has (i32.const 200) (i32.const 9))
      (then
        (global.set $count (i32.add (global.get $count) (i32.const 1)))
        (if (i32.eqz (i32.rem_u (global.get $count) (i32.const 10))) (then unreachable))))
    (i32.const 0))

  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (local $i i32) (local $st i32)
    (if (global.get $body_bomb)
      (then
        (block $done
          (loop $append
            (br_if $done (i32.ge_u (local.get $i) (i32.const 4096)))
            (local.set $st (call $set_buffer (i32.const 0) (i32.const -1) (i32.const 0)
                                              (i32.const 0) (i32.const 65536)))
            (br_if $done (local.get $st))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $append)))
        (i32.store (i32.const 400) (local.get $st))
        (drop (call $sset (i32.const 240) (i32.const 11) (i32.const 400) (i32.const 4) (i32.const 0)))))
    (i32.const 0)))
