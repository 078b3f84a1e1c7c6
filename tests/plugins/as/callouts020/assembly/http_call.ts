// pyproxywasm test plugin: AssemblyScript, @solo-io/proxy-runtime 0.1.8, ABI 0.2.0.
// An auth-like HTTP call through the SDK's RootContext.httpCall (proxy_http_call).
// Behaviour contract: ../README.md ("as_http_call.wasm"); tests match the strings exactly.

// Exports proxy_abi_version_0_2_0, proxy_on_*, malloc and free.
export * from "@solo-io/proxy-runtime/proxy";

import {
  RootContext,
  Context,
  BaseContext,
  registerRootContext,
  FilterHeadersStatusValues,
  WasmResultValues,
  GrpcStatusValues,
  HeaderPair,
  Headers,
  stream_context,
  send_local_response,
  continue_request,
} from "@solo-io/proxy-runtime";
import {
  MAP_HTTP_CALL_RESPONSE_HEADERS,
  MAP_HTTP_CALL_RESPONSE_TRAILERS,
  BUFFER_HTTP_CALL_RESPONSE_BODY,
  MAP_REQUEST_HEADERS,
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

class AuthRoot extends RootContext {
  config: string = "";
  cluster: string = "callout";
  path: string = "/";
  authority: string = "callout.local";
  timeout: u32 = 1000;

  constructor(context_id: u32) {
    super(context_id);
  }

  createContext(context_id: u32): Context {
    return new AuthHttp(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    this.config = readPluginConfiguration(configuration_size);
    info("as http_call configure: " + this.config);
    this.cluster = configValue(this.config, "cluster", "callout");
    this.path = configValue(this.config, "path", "/");
    this.authority = configValue(this.config, "authority", "callout.local");
    this.timeout = <u32>I32.parseInt(configValue(this.config, "timeout_ms", "1000"));
    return true;
  }
}

// The callback of the call (no closures in AssemblyScript 0.14: a plain function).
function onAuthResponse(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  info("as auth: response headers=" + headers.toString() + " body=" + body_size.toString() +
       " trailers=" + trailers.toString());
  if (headers == 0) {
    const st = hostStatus();
    info("as auth: callout failed status=" + st.code.toString() + " message=" + st.message);
    reply(503, [], "auth unavailable");
    return;
  }
  let status = "none";
  const s = mapValue(MAP_HTTP_CALL_RESPONSE_HEADERS, ":status");
  if (s !== null) {
    status = s;
  }
  const body = readBuffer(BUFFER_HTTP_CALL_RESPONSE_BODY, <u32>body_size);
  const callTrailers = mapPairs(MAP_HTTP_CALL_RESPONSE_TRAILERS);
  for (let i = 0; i < callTrailers.length; i++) {
    info("as auth: trailer " + callTrailers[i].key + "=" + callTrailers[i].value);
  }
  if (status != "200") {
    info("as auth: denied status=" + status);
    const extra: Headers = [];
    extra.push(pair("x-auth-status", status));
    reply(403, extra, body);
    return;
  }
  let user = body;
  const u = mapValue(MAP_HTTP_CALL_RESPONSE_HEADERS, "x-auth-user");
  if (u !== null) {
    user = u;
  }
  stream_context.headers.request.replace("x-auth-user", user);
  info("as auth: allowed user=" + user);
  continue_request();
}

class AuthHttp extends Context {
  root: AuthRoot;

  constructor(context_id: u32, root: AuthRoot) {
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
    const headers: Headers = [];
    headers.push(pair(":method", "GET"));
    headers.push(pair(":path", root.path));
    headers.push(pair(":authority", root.authority));
    const user = mapValue(MAP_REQUEST_HEADERS, "x-user");
    if (user !== null) {
      headers.push(pair("x-user", user));
    }
    info("as auth: calling " + cluster + " " + root.path);
    const result = root.httpCall(cluster, headers, new ArrayBuffer(0), [], root.timeout, this,
                                 onAuthResponse);
    if (result != WasmResultValues.Ok) {
      const code = (<u32>result).toString();
      info("as auth: http_call failed: " + code);
      reply(500, [], "http_call failed: " + code);
      return FilterHeadersStatusValues.StopIteration;
    }
    info("as auth: paused");
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32): RootContext => { return new AuthRoot(context_id); }, "");
