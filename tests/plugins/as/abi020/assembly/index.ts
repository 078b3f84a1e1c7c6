// pyproxywasm test plugin: AssemblyScript, @solo-io/proxy-runtime 0.1.8, ABI 0.2.0.
//
// Behaviour contract (shared with ../abi010, asserted byte-exact by the tests):
//   root  on_configure      : log INFO "as configure: <plugin configuration>", return true
//   http  on_request_headers: add    request header "x-as-req"     = config (or "none" if empty)
//                             replace request header "x-as-replace" = "as"
//                             log INFO "as path=<:path>"
//                             if request header "x-as-deny" is present:
//                               send_local_response(401, "denied", "as denied",
//                                                   [x-as-reason: deny], grpc_status -1)
//                               return StopIteration
//   http  on_response_headers: add response header "x-as-resp" = "1"
//   http  on_log             : log INFO "as done"
//
// The root context factory is registered for root_id "" (the default) and "as".

// Exports proxy_abi_version_0_2_0, proxy_on_*, malloc and free.
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  LogLevelValues,
  WasmResultValues,
  GrpcStatusValues,
  HeaderPair,
  Headers,
  stream_context,
  log,
  send_local_response,
} from "@solo-io/proxy-runtime";
import * as imports from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";

// Proxy-Wasm enum values (spec numbering).
const MAP_REQUEST_HEADERS: i32 = 0;
const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;

// Reads the (ptr, size) pair the host wrote into `cells` (two u32 slots) as a
// UTF-8 string, then frees the host-allocated block.
function takeHostString(cells: ArrayBuffer): string {
  const base = changetype<usize>(cells);
  const ptr = load<u32>(base);
  const size = load<u32>(base + 4);
  if (ptr == 0 || size == 0) {
    return "";
  }
  const s = String.UTF8.decodeUnsafe(<usize>ptr, <usize>size);
  free(<usize>ptr);
  return s;
}

// PLUGIN_CONFIGURATION as a string; "" when empty or unavailable.
function readPluginConfiguration(size: u32): string {
  const cells = new ArrayBuffer(8);
  const base = changetype<usize>(cells);
  const res = imports.proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, base, base + 4);
  if (res != WasmResultValues.Ok) {
    return "";
  }
  return takeHostString(cells);
}

// True when the header map contains an entry whose key is exactly `name`
// (byte comparison over proxy_get_header_map_pairs).
function headerPresent(mapType: i32, name: string): bool {
  const cells = new ArrayBuffer(8);
  const base = changetype<usize>(cells);
  const res = imports.proxy_get_header_map_pairs(mapType, base, base + 4);
  if (res != WasmResultValues.Ok) {
    return false;
  }
  const ptr = <usize>load<u32>(base);
  const size = <usize>load<u32>(base + 4);
  if (ptr == 0 || size < 4) {
    if (ptr != 0) free(ptr);
    return false;
  }
  const want = String.UTF8.encode(name);
  const wantPtr = changetype<usize>(want);
  const wantLen = <usize>want.byteLength;
  const n = <usize>load<u32>(ptr);
  let found = false;
  if (n * 8 + 4 <= size) {
    let data = ptr + n * 8 + 4;
    const end = ptr + size;
    for (let i: usize = 0; i < n; i++) {
      const klen = <usize>load<u32>(ptr + i * 8 + 4);
      const vlen = <usize>load<u32>(ptr + i * 8 + 8);
      if (data + klen + 1 + vlen + 1 > end) {
        break;
      }
      if (klen == wantLen && memory.compare(data, wantPtr, klen) == 0) {
        found = true;
        break;
      }
      data += klen + 1 + vlen + 1;
    }
  }
  free(ptr);
  return found;
}

class AsRoot extends RootContext {
  config: string = "";

  constructor(context_id: u32) {
    super(context_id);
  }

  createContext(context_id: u32): Context {
    return new AsHttp(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    this.config = readPluginConfiguration(configuration_size);
    log(LogLevelValues.info, "as configure: " + this.config);
    return true;
  }
}

class AsHttp extends Context {
  root: AsRoot;

  constructor(context_id: u32, root: AsRoot) {
    super(context_id, root);
    this.root = root;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    // Plain if/else rather than `cond ? config : "none"`: with this compiler a ternary over a
    // string local released the root's config string early (heap corruption on the next stream).
    let value = "none";
    if (this.root.config.length > 0) {
      value = this.root.config;
    }
    stream_context.headers.request.add("x-as-req", value);
    stream_context.headers.request.replace("x-as-replace", "as");
    log(LogLevelValues.info, "as path=" + stream_context.headers.request.get(":path"));
    if (headerPresent(MAP_REQUEST_HEADERS, "x-as-deny")) {
      const extra: Headers = [];
      extra.push(new HeaderPair(String.UTF8.encode("x-as-reason"), String.UTF8.encode("deny")));
      send_local_response(401, "denied", String.UTF8.encode("as denied"), extra, GrpcStatusValues.InvalidCode);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-resp", "1");
    return FilterHeadersStatusValues.Continue;
  }

  onLog(): void {
    log(LogLevelValues.info, "as done");
  }
}

registerRootContext((context_id: u32): RootContext => { return new AsRoot(context_id); }, "");
registerRootContext((context_id: u32): RootContext => { return new AsRoot(context_id); }, "as");
