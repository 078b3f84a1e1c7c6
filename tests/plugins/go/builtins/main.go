// Command builtins is a Proxy-Wasm test plugin for pyproxywasm that calls the foreign
// functions Envoy registers (compress, uncompress, declare_property,
// set_envoy_filter_state, clear_route_cache, expr_create / expr_evaluate / expr_delete)
// and reads the properties Envoy fills, with the Go SDK.
//
// At start it declares the property "my.state" (read-only, string) twice and logs both
// statuses, and logs the plugin_* / node / listener properties it reads. Each request
// header it knows is one call; the answer goes into a request header the test reads
// (x-<what>-status: "ok" or the SDK's error text, and the result where there is one).
// x-set-twice sets a property twice in one stream (a read-only one refuses the second).
package main

import (
	"encoding/binary"
	"encoding/hex"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

type vmContext struct{ types.DefaultVMContext }

func (*vmContext) NewPluginContext(uint32) types.PluginContext { return &pluginContext{} }

type pluginContext struct{ types.DefaultPluginContext }

// field appends one length-delimited protobuf field.
func field(b []byte, num int, v []byte) []byte {
	b = append(b, byte(num<<3|2))
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// varintField appends one varint protobuf field.
func varintField(b []byte, num int, v uint64) []byte {
	b = append(b, byte(num<<3))
	return binary.AppendUvarint(b, v)
}

func status(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func declare(name string) error {
	var args []byte
	args = field(args, 1, []byte(name))
	args = varintField(args, 2, 1) // readonly
	args = varintField(args, 3, 1) // String
	args = varintField(args, 5, 1) // DownstreamRequest
	_, err := proxywasm.CallForeignFunction("declare_property", args)
	return err
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	proxywasm.LogInfof("declare my.state: %s", status(declare("my.state")))
	proxywasm.LogInfof("declare my.state again: %s", status(declare("my.state")))
	for _, path := range [][]string{
		{"plugin_name"}, {"plugin_root_id"}, {"plugin_vm_id"}, {"node", "id"},
		{"node", "cluster"}, {"xds", "node", "id"}, {"cluster_name"}, {"route_name"},
		{"xds", "cluster_name"}, {"xds", "route_name"},
	} {
		v, err := proxywasm.GetProperty(path)
		proxywasm.LogInfof("property %s = %q (%s)", strings.Join(path, "."), string(v), status(err))
	}
	v, err := proxywasm.GetProperty([]string{"listener_direction"})
	if err == nil && len(v) == 8 {
		proxywasm.LogInfof("property listener_direction = %d", binary.LittleEndian.Uint64(v))
	} else {
		proxywasm.LogInfof("property listener_direction: %s", status(err))
	}
	// A filter state key from the root context: Envoy has no stream there.
	var args []byte
	args = field(args, 1, []byte("envoy.tcp_proxy.cluster"))
	args = field(args, 2, []byte("c1"))
	_, err = proxywasm.CallForeignFunction("set_envoy_filter_state", args)
	proxywasm.LogInfof("root set_envoy_filter_state: %s", status(err))
	return types.OnPluginStartStatusOK
}

func (*pluginContext) NewHttpContext(uint32) types.HttpContext { return &httpContext{} }

type httpContext struct{ types.DefaultHttpContext }

func header(name string) (string, bool) {
	v, err := proxywasm.GetHttpRequestHeader(name)
	return v, err == nil
}

func put(name, value string) {
	if err := proxywasm.ReplaceHttpRequestHeader(name, value); err != nil {
		proxywasm.LogWarnf("set %s: %v", name, err)
	}
}

func (*httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	if text, ok := header("x-compress"); ok {
		out, err := proxywasm.CallForeignFunction("compress", []byte(text))
		put("x-compress-status", status(err))
		put("x-compressed", hex.EncodeToString(out))
		back, err := proxywasm.CallForeignFunction("uncompress", out)
		put("x-uncompress-status", status(err))
		put("x-roundtrip", string(back))
	}
	if text, ok := header("x-uncompress"); ok {
		_, err := proxywasm.CallForeignFunction("uncompress", []byte(text))
		put("x-uncompress-status", status(err))
	}
	if kv, ok := header("x-filter-state"); ok {
		key, value, _ := strings.Cut(kv, "=")
		var args []byte
		args = field(args, 1, []byte(key))
		args = field(args, 2, []byte(value))
		_, err := proxywasm.CallForeignFunction("set_envoy_filter_state", args)
		put("x-filter-state-status", status(err))
		v, err := proxywasm.GetProperty([]string{"filter_state", key})
		put("x-filter-state-read", string(v)+" ("+status(err)+")")
	}
	if _, ok := header("x-clear-route"); ok {
		_, err := proxywasm.CallForeignFunction("clear_route_cache", nil)
		put("x-clear-route-status", status(err))
	}
	if v, ok := header("x-set-declared"); ok {
		err := proxywasm.SetProperty([]string{"my.state"}, []byte(v))
		put("x-set-declared-status", status(err))
		got, err := proxywasm.GetProperty([]string{"my.state"})
		put("x-get-declared", string(got)+" ("+status(err)+")")
	}
	// x-declare: a declaration made from this stream context (Envoy keeps it on the
	// stream, where setting the property never looks).
	if name, ok := header("x-declare"); ok {
		put("x-declare-status", status(declare(name)))
	}
	// x-set-twice: sets the named property to "first" then "second" in this stream.
	if name, ok := header("x-set-twice"); ok {
		put("x-set-first-status", status(proxywasm.SetProperty([]string{name}, []byte("first"))))
		put("x-set-second-status", status(proxywasm.SetProperty([]string{name}, []byte("second"))))
		got, err := proxywasm.GetProperty([]string{name})
		put("x-set-twice-value", string(got)+" ("+status(err)+")")
	}
	if expr, ok := header("x-expr"); ok {
		tok, err := proxywasm.CallForeignFunction("expr_create", []byte(expr))
		put("x-expr-create-status", status(err))
		if err == nil {
			out, err := proxywasm.CallForeignFunction("expr_evaluate", tok)
			put("x-expr-evaluate-status", status(err))
			put("x-expr-value", hex.EncodeToString(out))
			_, err = proxywasm.CallForeignFunction("expr_delete", tok)
			put("x-expr-delete-status", status(err))
			_, err = proxywasm.CallForeignFunction("expr_evaluate", tok)
			put("x-expr-after-delete-status", status(err))
		}
	}
	return types.ActionContinue
}
