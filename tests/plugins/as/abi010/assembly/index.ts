// pyproxywasm test plugin: AssemblyScript, @solo-io/proxy-runtime 0.1.1, ABI 0.1.0.
//
// Behaviour contract (shared with ../abi020, asserted byte-exact by the tests):
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
//
// proxy-runtime 0.1.1 targets AssemblyScript 0.9, which has no virtual methods: contexts are
// wrapped with RootContextHelper/ContextHelper so the runtime reaches the overrides below.
// Its serializeHeaders() (used by its send_local_response) writes past its size table and
// copies values with wrong subarray bounds, so this plugin serializes the local-response
// headers itself and calls proxy_send_local_response directly.

// Exports proxy_abi_version_0_1_0, proxy_on_*, malloc and free.
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext,
  Context,
  RootContextHelper,
  ContextHelper,
  registerRootContext,
  FilterHeadersStatusValues,
  LogLevelValues,
  WasmResultValues,
  stream_context,
} from "@solo-io/proxy-runtime";
import { log } from "@solo-io/proxy-runtime/runtime";
import * as imports from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";

// Proxy-Wasm enum values (spec numbering).
const MAP_REQUEST_HEADERS: i32 = 0;
const GRPC_STATUS_NONE: u32 = 0xFFFFFFFF; // -1: not a gRPC reply

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

// The plugin configuration (ABI 0.1.0: proxy_get_configuration inside on_configure);
// "" when empty or unavailable.
function readPluginConfiguration(): string {
  const cells = new ArrayBuffer(8);
  const base = changetype<usize>(cells);
  const res = imports.proxy_get_configuration(base, base + 4);
  if (res != WasmResultValues.Ok) {
    return "";
  }
  return takeHostString(cells);
}

// True when the header map contains an entry whose key is exactly `name`
// (byte comparison over proxy_get_header_map_pairs; in ABI 0.1.0 a missing key
// read with proxy_get_header_map_value is indistinguishable from an empty value).
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

// Serializes one header pair in the Proxy-Wasm pairs format:
// u32 count, u32 key_len, u32 value_len, key bytes, NUL, value bytes, NUL.
function serializeOnePair(key: string, value: string): ArrayBuffer {
  const k = String.UTF8.encode(key);
  const v = String.UTF8.encode(value);
  const klen = <usize>k.byteLength;
  const vlen = <usize>v.byteLength;
  const out = new ArrayBuffer(<i32>(klen + vlen + 14));
  const p = changetype<usize>(out);
  store<u32>(p, 1);
  store<u32>(p + 4, <u32>klen);
  store<u32>(p + 8, <u32>vlen);
  memory.copy(p + 12, changetype<usize>(k), klen);
  store<u8>(p + 12 + klen, 0);
  memory.copy(p + 13 + klen, changetype<usize>(v), vlen);
  store<u8>(p + 13 + klen + vlen, 0);
  return out;
}

function sendLocalResponse(status: u32, details: string, body: string, hkey: string, hvalue: string): void {
  const d = String.UTF8.encode(details);
  const b = String.UTF8.encode(body);
  const h = serializeOnePair(hkey, hvalue);
  imports.proxy_send_local_response(status,
    changetype<usize>(d), <usize>d.byteLength,
    changetype<usize>(b), <usize>b.byteLength,
    changetype<usize>(h), <usize>h.byteLength,
    GRPC_STATUS_NONE);
}

class AsRoot extends RootContext {
  config: string = "";

  constructor() {
    super();
  }

  createContext(): Context {
    return ContextHelper.wrap(new AsHttp(this));
  }

  onConfigure(): bool {
    this.config = readPluginConfiguration();
    log(LogLevelValues.info, "as configure: " + this.config);
    return true;
  }
}

class AsHttp extends Context {
  root: AsRoot;

  constructor(root: AsRoot) {
    super();
    this.root = root;
  }

  onRequestHeaders(a: u32): FilterHeadersStatusValues {
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
      sendLocalResponse(401, "denied", "as denied", "x-as-reason", "deny");
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32): FilterHeadersStatusValues {
    stream_context.headers.response.add("x-as-resp", "1");
    return FilterHeadersStatusValues.Continue;
  }

  onLog(): void {
    log(LogLevelValues.info, "as done");
  }
}

registerRootContext((): RootContext => { return RootContextHelper.wrap(new AsRoot()); }, "");
registerRootContext((): RootContext => { return RootContextHelper.wrap(new AsRoot()); }, "as");
