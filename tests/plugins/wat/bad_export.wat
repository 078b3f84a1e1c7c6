;; Exports proxy_on_request_headers with the wrong type for ABI 0.2.1.
(module
  (memory (export "memory") 1)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_request_headers") (param i32) (result i32) (i32.const 0)))
