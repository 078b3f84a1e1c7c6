// Helpers shared by the AssemblyScript callout plugins (http_call.ts, grpc_call.ts).
//
// They use the SDK's raw imports where the SDK's wrappers would abort the plugin on a
// non-OK status (get_status) or do not exist (map pairs of any map type).

import { log, LogLevelValues, WasmResultValues } from "@solo-io/proxy-runtime";
import * as imports from "@solo-io/proxy-runtime/imports";
import { free } from "@solo-io/proxy-runtime/malloc";

// Proxy-Wasm enum values (spec numbering, which proxy-runtime 0.1.8 also uses).
export const MAP_REQUEST_HEADERS: i32 = 0;
export const MAP_GRPC_INITIAL_METADATA: i32 = 4;
export const MAP_GRPC_TRAILING_METADATA: i32 = 5;
export const MAP_HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
export const MAP_HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
export const BUFFER_HTTP_CALL_RESPONSE_BODY: i32 = 4;
export const BUFFER_GRPC_MESSAGE: i32 = 5;
export const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;

// Reads the (ptr, size) pair the host wrote into `cells` (two u32 slots) as a UTF-8
// string, then frees the host-allocated block.
export function takeHostString(cells: ArrayBuffer): string {
  const base = changetype<usize>(cells);
  const ptr = load<u32>(base);
  const size = load<u32>(base + 4);
  if (ptr == 0) {
    return "";
  }
  const s = String.UTF8.decodeUnsafe(<usize>ptr, <usize>size);
  free(<usize>ptr);
  return s;
}

// A buffer's bytes [0, size) as a string; "" when empty or not OK.
export function readBuffer(typ: i32, size: u32): string {
  const cells = new ArrayBuffer(8);
  const base = changetype<usize>(cells);
  const res = imports.proxy_get_buffer_bytes(typ, 0, size, base, base + 4);
  if (res != WasmResultValues.Ok) {
    return "";
  }
  return takeHostString(cells);
}

// PLUGIN_CONFIGURATION as a string; "" when empty or unavailable.
export function readPluginConfiguration(size: u32): string {
  return readBuffer(BUFFER_PLUGIN_CONFIGURATION, size);
}

// One header-map entry.
export class Pair {
  key: string;
  value: string;
  constructor(key: string, value: string) {
    this.key = key;
    this.value = value;
  }
}

// Every entry of a header map, in order (proxy_get_header_map_pairs); [] when not OK.
export function mapPairs(typ: i32): Pair[] {
  const out: Pair[] = [];
  const cells = new ArrayBuffer(8);
  const base = changetype<usize>(cells);
  const res = imports.proxy_get_header_map_pairs(typ, base, base + 4);
  if (res != WasmResultValues.Ok) {
    return out;
  }
  const ptr = <usize>load<u32>(base);
  const size = <usize>load<u32>(base + 4);
  if (ptr == 0) {
    return out;
  }
  if (size >= 4) {
    const n = <usize>load<u32>(ptr);
    if (n * 8 + 4 <= size) {
      let data = ptr + n * 8 + 4;
      const end = ptr + size;
      for (let i: usize = 0; i < n; i++) {
        const klen = <usize>load<u32>(ptr + i * 8 + 4);
        const vlen = <usize>load<u32>(ptr + i * 8 + 8);
        if (data + klen + 1 + vlen + 1 > end) {
          break;
        }
        const k = String.UTF8.decodeUnsafe(data, klen);
        const v = String.UTF8.decodeUnsafe(data + klen + 1, vlen);
        out.push(new Pair(k, v));
        data += klen + 1 + vlen + 1;
      }
    }
  }
  free(ptr);
  return out;
}

// The value of `name` in a header map, or null when absent (exact key match over the pairs).
export function mapValue(typ: i32, name: string): string | null {
  const pairs = mapPairs(typ);
  for (let i = 0; i < pairs.length; i++) {
    if (pairs[i].key == name) {
      return pairs[i].value;
    }
  }
  return null;
}

// proxy_get_status as "<code> <message>" parts; the code is the host's u32, the message
// "" when the host returns none. A non-OK result gives code 4294967295 and message "".
export class HostStatus {
  code: u32;
  message: string;
  constructor(code: u32, message: string) {
    this.code = code;
    this.message = message;
  }
}

export function hostStatus(): HostStatus {
  const code = new ArrayBuffer(4);
  const cells = new ArrayBuffer(8);
  const base = changetype<usize>(cells);
  const res = imports.proxy_get_status(changetype<usize>(code), base, base + 4);
  if (res != WasmResultValues.Ok) {
    return new HostStatus(<u32>-1, "");
  }
  return new HostStatus(load<u32>(changetype<usize>(code)), takeHostString(cells));
}

// Configuration words "key=value" separated by spaces; the last one for a key wins.
export function configValue(config: string, key: string, fallback: string): string {
  const words = config.split(" ");
  let value = fallback;
  for (let i = 0; i < words.length; i++) {
    const word = words[i];
    const eq = word.indexOf("=");
    if (eq > 0 && word.substring(0, eq) == key) {
      value = word.substring(eq + 1);
    }
  }
  return value;
}

export function info(message: string): void {
  log(LogLevelValues.info, message);
}
