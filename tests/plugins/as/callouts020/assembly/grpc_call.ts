// pyproxywasm test plugin: AssemblyScript, @solo-io/proxy-runtime 0.1.8, ABI 0.2.0.
// gRPC calls through the SDK's raw imports (the SDK has no gRPC wrapper): a unary
// proxy_grpc_call (10 params) or a proxy_grpc_stream (7 params) + proxy_grpc_send.
// Behaviour contract: ../README.md ("as_grpc_call.wasm"); tests match the strings exactly.

// Exports proxy_abi_version_0_2_0, proxy_on_* (including the old name
// proxy_on_grpc_trailing_metadata), malloc and free.
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext,
  Context,
  registerRootContext,
  FilterHeadersStatusValues,
  WasmResultValues,
  GrpcStatusValues,
  HeaderPair,
  Headers,
  stream_context,
  send_local_response,
  continue_request,
  proxy_set_effective_context,
} from "@solo-io/proxy-runtime";
import * as imports from "@solo-io/proxy-runtime/imports";
import {
  MAP_REQUEST_HEADERS,
  MAP_GRPC_INITIAL_METADATA,
  MAP_GRPC_TRAILING_METADATA,
  BUFFER_GRPC_MESSAGE,
  Pair,
  readPluginConfiguration,
  readBuffer,
  mapPairs,
  mapValue,
  hostStatus,
  configValue,
  info,
} from "./common";

function pair(key: string, value: string): HeaderPair {
  return new HeaderPair(String.UTF8.encode(key), String.UTF8.encode(value));
}

function reply(status: u32, headers: Headers, body: string): void {
  send_local_response(status, "", String.UTF8.encode(body), headers, GrpcStatusValues.InvalidCode);
}

function logPairs(what: string, pairs: Pair[]): void {
  for (let i = 0; i < pairs.length; i++) {
    info("as grpc: " + what + " " + pairs[i].key + "=" + pairs[i].value);
  }
}

// What the root knows about one outstanding call or stream.
class Outstanding {
  http: GrpcHttp;
  stream: bool;
  received: u32 = 0;
  constructor(http: GrpcHttp, stream: bool) {
    this.http = http;
    this.stream = stream;
  }
}

class GrpcRoot extends RootContext {
  config: string = "";
  mode: string = "call";
  cluster: string = "callout";
  service: string = "test.Echo";
  method: string = "Unary";
  timeout: u32 = 1000;
  calls: Map<u32, Outstanding> = new Map();

  constructor(context_id: u32) {
    super(context_id);
  }

  createContext(context_id: u32): Context {
    return new GrpcHttp(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    this.config = readPluginConfiguration(configuration_size);
    info("as grpc configure: " + this.config);
    this.mode = configValue(this.config, "mode", "call");
    this.cluster = configValue(this.config, "cluster", "callout");
    this.service = configValue(this.config, "service", "test.Echo");
    let method = "Unary";
    if (this.mode == "stream") {
      method = "Stream";
    }
    this.method = configValue(this.config, "method", method);
    this.timeout = <u32>I32.parseInt(configValue(this.config, "timeout_ms", "1000"));
    return true;
  }

  // Looks the token up and makes its HTTP stream the effective context; null if unknown.
  enter(token: u32, what: string): Outstanding | null {
    if (!this.calls.has(token)) {
      info("as grpc: " + what + " for unknown token");
      return null;
    }
    const o = this.calls.get(token);
    proxy_set_effective_context(o.http.context_id);
    return o;
  }

  on_grpc_receive_initial_metadata(token: u32, headers: u32): void {
    info("as grpc: initial metadata " + headers.toString());
    if (this.enter(token, "initial metadata") === null) return;
    logPairs("initial", mapPairs(MAP_GRPC_INITIAL_METADATA));
  }

  on_grpc_trailing_metadata(token: u32, trailers: u32): void {
    info("as grpc: trailing metadata " + trailers.toString());
    if (this.enter(token, "trailing metadata") === null) return;
    logPairs("trailing", mapPairs(MAP_GRPC_TRAILING_METADATA));
  }

  on_grpc_receive(token: u32, response_size: u32): void {
    const found = this.enter(token, "message");
    if (found === null) return;
    const o = <Outstanding>found;
    const message = readBuffer(BUFFER_GRPC_MESSAGE, response_size);
    o.received += 1;
    info("as grpc: message " + o.received.toString() + " size=" + response_size.toString() +
         " " + message);
    if (!o.stream) {
      this.calls.delete(token);
      stream_context.headers.request.replace("x-grpc-status", "0");
      stream_context.headers.request.replace("x-grpc-reply", message);
      continue_request();
    }
  }

  on_grpc_close(token: u32, status_code: u32): void {
    const found = this.enter(token, "close");
    const st = hostStatus();
    info("as grpc: close status=" + status_code.toString() + " get_status=" + st.code.toString() +
         " message=" + st.message);
    if (found === null) return;
    const o = <Outstanding>found;
    this.calls.delete(token);
    if (o.stream) {
      stream_context.headers.request.replace("x-stream-status", status_code.toString());
      stream_context.headers.request.replace("x-stream-received", o.received.toString());
      continue_request();
      return;
    }
    const extra: Headers = [];
    extra.push(pair("x-grpc-status", status_code.toString()));
    reply(503, extra, "grpc failed: " + status_code.toString() + " " + st.message);
  }
}

class GrpcHttp extends Context {
  root: GrpcRoot;

  constructor(context_id: u32, root: GrpcRoot) {
    super(context_id, root);
    this.root = root;
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const root = this.root;
    let cluster = root.cluster;
    const override = mapValue(MAP_REQUEST_HEADERS, "x-callout-cluster");
    if (override !== null) {
      cluster = override;
    }
    const up = String.UTF8.encode(cluster);
    const svc = String.UTF8.encode(root.service);
    const method = String.UTF8.encode(root.method);
    const token = new ArrayBuffer(4);
    const tokenPtr = changetype<usize>(token);
    const stream = root.mode == "stream";
    let result: i32 = 0;
    if (stream) {
      info("as grpc: opening " + cluster + " " + root.service + "/" + root.method);
      result = imports.proxy_grpc_stream(
        changetype<usize>(up), up.byteLength, changetype<usize>(svc), svc.byteLength,
        changetype<usize>(method), method.byteLength, tokenPtr);
    } else {
      let text = "";
      const m = mapValue(MAP_REQUEST_HEADERS, "x-grpc-message");
      if (m !== null) {
        text = m;
      }
      const msg = String.UTF8.encode(text);
      info("as grpc: calling " + cluster + " " + root.service + "/" + root.method);
      result = imports.proxy_grpc_call(
        changetype<usize>(up), up.byteLength, changetype<usize>(svc), svc.byteLength,
        changetype<usize>(method), method.byteLength, changetype<usize>(msg), msg.byteLength,
        root.timeout, tokenPtr);
    }
    let what = "grpc_call";
    if (stream) {
      what = "grpc_stream";
    }
    if (result != WasmResultValues.Ok) {
      const code = (<u32>result).toString();
      info("as grpc: " + what + " failed: " + code);
      reply(500, [], what + " failed: " + code);
      return FilterHeadersStatusValues.StopIteration;
    }
    const id = load<u32>(tokenPtr);
    root.calls.set(id, new Outstanding(this, stream));
    if (stream) {
      let list = "one,two";
      const l = mapValue(MAP_REQUEST_HEADERS, "x-stream-send");
      if (l !== null) {
        list = l;
      }
      const items = list.split(",");
      for (let i = 0; i < items.length; i++) {
        const data = String.UTF8.encode(items[i]);
        let end: u32 = 0;
        if (i == items.length - 1) {
          end = 1;
        }
        const r = imports.proxy_grpc_send(id, changetype<usize>(data), data.byteLength, end);
        info("as grpc: sent " + items[i] + " end_stream=" + end.toString() + " result=" +
             (<u32>r).toString());
      }
    }
    info("as grpc: paused");
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32): RootContext => { return new GrpcRoot(context_id); }, "");
