// Command header_rewrite is a small Proxy-Wasm HTTP filter that rewrites
// request and response headers and can reject requests by path prefix, in the
// style of an Envoy header-manipulation filter. It is the plugin that
// `pyproxywasm run` loads when no other plugin is given.
//
// The plugin configuration is an optional JSON object:
//
//	{
//	  "request_headers":        {"name": "value", ...},
//	  "response_headers":       {"name": "value", ...},
//	  "remove_request_headers": ["name", ...],
//	  "deny_path_prefix":       "/admin"
//	}
//
// Every field is optional; a field that is absent (or null) takes its default,
// so an empty configuration means
//
//	{"request_headers": {"x-pyproxywasm": "hello"},
//	 "response_headers": {"x-powered-by": "pyproxywasm"}}
//
// See README.md for details.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

// ---------------------------------------------------------------------------
// Configuration

// rawConfig is the JSON form of the plugin configuration. Pointer and nil-able
// types tell "absent" (use the default) apart from "explicitly empty".
type rawConfig struct {
	RequestHeaders       map[string]string `json:"request_headers"`
	ResponseHeaders      map[string]string `json:"response_headers"`
	RemoveRequestHeaders []string          `json:"remove_request_headers"`
	DenyPathPrefix       *string           `json:"deny_path_prefix"`
}

// config is the validated configuration used while handling requests.
type config struct {
	requestHeaders       [][2]string // sorted by name, so hosts see a stable order
	responseHeaders      [][2]string
	removeRequestHeaders []string
	denyPathPrefix       string // "" disables the check
}

var (
	defaultRequestHeaders  = map[string]string{"x-pyproxywasm": "hello"}
	defaultResponseHeaders = map[string]string{"x-powered-by": "pyproxywasm"}
)

const (
	denyStatus = 403
	denyBody   = "forbidden by header_rewrite\n"
)

// parseConfig parses and validates the plugin configuration. Empty (or
// whitespace-only) data yields the default configuration.
func parseConfig(data []byte) (*config, error) {
	var raw rawConfig
	if len(bytes.TrimSpace(data)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields() // catch typos such as "request_header"
		if err := dec.Decode(&raw); err != nil {
			return nil, err
		}
		if _, err := dec.Token(); err != io.EOF {
			return nil, errors.New("unexpected data after the JSON object")
		}
	}

	if raw.RequestHeaders == nil {
		raw.RequestHeaders = defaultRequestHeaders
	}
	if raw.ResponseHeaders == nil {
		raw.ResponseHeaders = defaultResponseHeaders
	}

	cfg := &config{}
	var err error
	if cfg.requestHeaders, err = headerList("request_headers", raw.RequestHeaders); err != nil {
		return nil, err
	}
	if cfg.responseHeaders, err = headerList("response_headers", raw.ResponseHeaders); err != nil {
		return nil, err
	}
	for _, name := range raw.RemoveRequestHeaders {
		if name = normalizeName(name); name == "" {
			return nil, errors.New("remove_request_headers: empty header name")
		}
		cfg.removeRequestHeaders = append(cfg.removeRequestHeaders, name)
	}
	if raw.DenyPathPrefix != nil {
		cfg.denyPathPrefix = *raw.DenyPathPrefix
	}
	return cfg, nil
}

// headerList turns a header map into a list of (name, value) pairs sorted by
// name, with lower-cased names as HTTP/2 and Envoy expect.
func headerList(field string, headers map[string]string) ([][2]string, error) {
	list := make([][2]string, 0, len(headers))
	seen := make(map[string]bool, len(headers))
	for name, value := range headers {
		n := normalizeName(name)
		if n == "" {
			return nil, fmt.Errorf("%s: empty header name", field)
		}
		if seen[n] {
			return nil, fmt.Errorf("%s: header %q given more than once", field, n)
		}
		seen[n] = true
		list = append(list, [2]string{n, value})
	}
	sort.Slice(list, func(i, j int) bool { return list[i][0] < list[j][0] })
	return list, nil
}

func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSpace(name))
}

// ---------------------------------------------------------------------------
// VM and plugin contexts

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) NewPluginContext(uint32) types.PluginContext {
	return &pluginContext{}
}

type pluginContext struct {
	types.DefaultPluginContext
	cfg *config
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	data, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogErrorf("header_rewrite: cannot read plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	cfg, err := parseConfig(data)
	if err != nil {
		proxywasm.LogErrorf("header_rewrite: invalid plugin configuration: %v", err)
		return types.OnPluginStartStatusFailed
	}
	p.cfg = cfg
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) NewHttpContext(uint32) types.HttpContext {
	return &httpContext{cfg: p.cfg}
}

// ---------------------------------------------------------------------------
// HTTP context

type httpContext struct {
	types.DefaultHttpContext
	cfg *config
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	method, _ := proxywasm.GetHttpRequestHeader(":method")
	path, _ := proxywasm.GetHttpRequestHeader(":path")
	proxywasm.LogInfof("request %s %s", method, path)

	if h.cfg.denyPathPrefix != "" && strings.HasPrefix(path, h.cfg.denyPathPrefix) {
		err := proxywasm.SendHttpResponse(denyStatus,
			[][2]string{{"content-type", "text/plain"}}, []byte(denyBody), -1)
		if err != nil {
			proxywasm.LogErrorf("header_rewrite: send local response: %v", err)
		}
		return types.ActionPause
	}

	// Like Envoy's header mutations: removals first, then additions, so a
	// header that is both removed and set ends up with the configured value.
	for _, name := range h.cfg.removeRequestHeaders {
		logIfErr("remove request header "+name, proxywasm.RemoveHttpRequestHeader(name))
	}
	for _, kv := range h.cfg.requestHeaders {
		logIfErr("set request header "+kv[0], proxywasm.ReplaceHttpRequestHeader(kv[0], kv[1]))
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	status, _ := proxywasm.GetHttpResponseHeader(":status")
	proxywasm.LogInfof("response %s", status)

	for _, kv := range h.cfg.responseHeaders {
		logIfErr("set response header "+kv[0], proxywasm.ReplaceHttpResponseHeader(kv[0], kv[1]))
	}
	return types.ActionContinue
}

func (*httpContext) OnHttpStreamDone() {
	proxywasm.LogDebug("stream done")
}

func logIfErr(what string, err error) {
	if err != nil {
		proxywasm.LogWarnf("header_rewrite: %s: %v", what, err)
	}
}
