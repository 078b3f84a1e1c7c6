// Command callouts is a Proxy-Wasm test plugin for pyproxywasm that makes
// outbound HTTP calls (proxy_http_call) with the Go SDK.
//
// Its behaviour is chosen by the JSON plugin configuration ("mode": auth,
// tick, multi or post); ../README.md gives the exact log lines, header names
// and statuses the tests rely on.
package main

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

// config is the plugin configuration. Zero values are replaced by defaults.
type config struct {
	Mode          string      `json:"mode"`
	Cluster       string      `json:"cluster"`
	Path          string      `json:"path"`
	Authority     string      `json:"authority"`
	TimeoutMs     *uint32     `json:"timeout_ms"`
	TickMs        uint32      `json:"tick_ms"`
	Count         int         `json:"count"`
	Method        string      `json:"method"`
	Body          string      `json:"body"`
	Headers       [][2]string `json:"headers"`
	Trailers      [][2]string `json:"trailers"`
	ForwardHeader string      `json:"forward_header"`
	UserHeader    string      `json:"user_header"`
}

func (c *config) applyDefaults() {
	if c.Cluster == "" {
		c.Cluster = "callout"
	}
	if c.Path == "" {
		c.Path = "/"
	}
	if c.Authority == "" {
		c.Authority = "callout.local"
	}
	if c.TimeoutMs == nil {
		t := uint32(1000)
		c.TimeoutMs = &t
	}
	if c.TickMs == 0 {
		c.TickMs = 100
	}
	if c.Count == 0 {
		c.Count = 2
	}
	if c.Method == "" {
		if c.Mode == "post" {
			c.Method = "POST"
		} else {
			c.Method = "GET"
		}
	}
	if c.ForwardHeader == "" {
		c.ForwardHeader = "x-user"
	}
	if c.UserHeader == "" {
		c.UserHeader = "x-auth-user"
	}
}

// statusText turns an SDK error into the host status name ("bad argument").
func statusText(err error) string {
	return strings.TrimPrefix(err.Error(), "error status returned by host: ")
}

func logIfErr(what string, err error) {
	if err != nil {
		proxywasm.LogWarnf("%s: %v", what, err)
	}
}

// callResponseStatus reads the callout's :status ("none" when absent); ok is
// false for a failed call (no headers).
func callResponseStatus(numHeaders int) (string, bool) {
	if numHeaders == 0 {
		return "", false
	}
	status, err := callResponseHeader(":status")
	if err != nil {
		return "none", true
	}
	return status, true
}

// callResponseHeader looks a header up in the callout's response headers
// (the SDK only reads them as a list of pairs).
func callResponseHeader(name string) (string, error) {
	headers, err := proxywasm.GetHttpCallResponseHeaders()
	if err != nil {
		return "", err
	}
	for _, kv := range headers {
		if kv[0] == name {
			return kv[1], nil
		}
	}
	return "", types.ErrorStatusNotFound
}

func callResponseBody(bodySize int) []byte {
	if bodySize <= 0 {
		return nil
	}
	body, err := proxywasm.GetHttpCallResponseBody(0, bodySize)
	if err != nil {
		proxywasm.LogWarnf("get http call response body: %v", err)
		return nil
	}
	return body
}

// ---------------------------------------------------------------------------
// VM context

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) NewPluginContext(contextID uint32) types.PluginContext {
	return &pluginContext{contextID: contextID}
}

// ---------------------------------------------------------------------------
// Plugin (root) context

type pluginContext struct {
	types.DefaultPluginContext
	contextID uint32
	cfg       config

	// tick mode
	tickCount uint64
	ok        proxywasm.MetricCounter
	failed    proxywasm.MetricCounter
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	raw, err := proxywasm.GetPluginConfiguration()
	if err != nil && err != types.ErrorStatusNotFound {
		proxywasm.LogWarnf("get plugin configuration: %v", err)
	}
	proxywasm.LogInfof("callouts configure: %s", string(raw))
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &p.cfg); err != nil {
			proxywasm.LogErrorf("callouts bad configuration: %v", err)
			return types.OnPluginStartStatusFailed
		}
	}
	p.cfg.applyDefaults()
	switch p.cfg.Mode {
	case "auth", "multi", "post":
	case "tick":
		p.ok = proxywasm.DefineCounterMetric("callout_ok")
		p.failed = proxywasm.DefineCounterMetric("callout_failed")
		logIfErr("set tick period", proxywasm.SetTickPeriodMilliSeconds(p.cfg.TickMs))
	default:
		proxywasm.LogErrorf("callouts bad mode: %q", p.cfg.Mode)
		return types.OnPluginStartStatusFailed
	}
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) OnTick() {
	p.tickCount++
	n := p.tickCount
	cfg := &p.cfg
	headers := [][2]string{
		{":method", "GET"},
		{":path", "/tick/" + strconv.FormatUint(n, 10)},
		{":authority", cfg.Authority},
	}
	_, err := proxywasm.DispatchHttpCall(cfg.Cluster, headers, nil, nil, *cfg.TimeoutMs,
		func(numHeaders, bodySize, numTrailers int) {
			status, ok := callResponseStatus(numHeaders)
			if !ok {
				p.failed.Increment(1)
				proxywasm.LogInfof("tick %d: failed", n)
				return
			}
			p.ok.Increment(1)
			proxywasm.LogInfof("tick %d: status=%s body=%d", n, status, bodySize)
		})
	if err != nil {
		p.failed.Increment(1)
		proxywasm.LogInfof("tick %d: http_call failed: %s", n, statusText(err))
		return
	}
	proxywasm.LogInfof("tick %d: dispatched", n)
}

func (p *pluginContext) NewHttpContext(contextID uint32) types.HttpContext {
	return &httpContext{contextID: contextID, plugin: p}
}

// ---------------------------------------------------------------------------
// HTTP context

type httpContext struct {
	types.DefaultHttpContext
	contextID uint32
	plugin    *pluginContext

	// multi mode
	pending int
	aborted bool
}

// callHeaders builds the callout's request headers, applying the error-case
// request headers (x-callout-no-method, x-callout-no-path,
// x-callout-no-authority).
func (h *httpContext) callHeaders(method, path string) [][2]string {
	cfg := &h.plugin.cfg
	var headers [][2]string
	if _, err := proxywasm.GetHttpRequestHeader("x-callout-no-method"); err != nil {
		headers = append(headers, [2]string{":method", method})
	}
	if _, err := proxywasm.GetHttpRequestHeader("x-callout-no-path"); err != nil {
		headers = append(headers, [2]string{":path", path})
	}
	if _, err := proxywasm.GetHttpRequestHeader("x-callout-no-authority"); err != nil {
		headers = append(headers, [2]string{":authority", cfg.Authority})
	}
	return headers
}

// target returns the cluster and timeout, overridden by the request headers
// x-callout-cluster and x-callout-timeout.
func (h *httpContext) target() (string, uint32) {
	cfg := &h.plugin.cfg
	cluster, timeout := cfg.Cluster, *cfg.TimeoutMs
	if v, err := proxywasm.GetHttpRequestHeader("x-callout-cluster"); err == nil {
		cluster = v
	}
	if v, err := proxywasm.GetHttpRequestHeader("x-callout-timeout"); err == nil {
		if t, err := strconv.ParseUint(v, 10, 32); err == nil {
			timeout = uint32(t)
		}
	}
	return cluster, timeout
}

// dispatchFailed logs the refusal and answers a local 500 naming the status.
func (h *httpContext) dispatchFailed(err error) types.Action {
	mode := h.plugin.cfg.Mode
	text := statusText(err)
	proxywasm.LogInfof("%s: http_call failed: %s", mode, text)
	logIfErr("send http response", proxywasm.SendHttpResponse(500,
		[][2]string{{"x-callout-error", text}}, []byte("http_call failed: "+text), -1))
	return types.ActionPause
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	switch h.plugin.cfg.Mode {
	case "auth":
		return h.auth()
	case "multi":
		return h.multi()
	case "post":
		return h.post()
	}
	return types.ActionContinue
}

func (h *httpContext) auth() types.Action {
	cfg := &h.plugin.cfg
	cluster, timeout := h.target()
	headers := h.callHeaders(cfg.Method, cfg.Path)
	if v, err := proxywasm.GetHttpRequestHeader(cfg.ForwardHeader); err == nil {
		headers = append(headers, [2]string{cfg.ForwardHeader, v})
	}
	proxywasm.LogInfof("auth: calling %s %s", cluster, cfg.Path)
	_, err := proxywasm.DispatchHttpCall(cluster, headers, nil, nil, timeout,
		func(numHeaders, bodySize, numTrailers int) {
			status, ok := callResponseStatus(numHeaders)
			if !ok {
				proxywasm.LogInfo("auth: callout failed")
				logIfErr("send http response",
					proxywasm.SendHttpResponse(503, nil, []byte("auth unavailable"), -1))
				return
			}
			body := callResponseBody(bodySize)
			proxywasm.LogInfof("auth: response status=%s body=%d", status, bodySize)
			if status != "200" {
				proxywasm.LogInfof("auth: denied status=%s", status)
				logIfErr("send http response", proxywasm.SendHttpResponse(403,
					[][2]string{{"x-auth-status", status}}, body, -1))
				return
			}
			user, err := callResponseHeader(cfg.UserHeader)
			if err != nil {
				user = string(body)
			}
			logIfErr("set "+cfg.UserHeader, proxywasm.ReplaceHttpRequestHeader(cfg.UserHeader, user))
			proxywasm.LogInfof("auth: allowed user=%s", user)
			logIfErr("resume http request", proxywasm.ResumeHttpRequest())
		})
	if err != nil {
		return h.dispatchFailed(err)
	}
	proxywasm.LogInfo("auth: paused")
	return types.ActionPause
}

func (h *httpContext) multi() types.Action {
	cfg := &h.plugin.cfg
	cluster, timeout := h.target()
	for i := 1; i <= cfg.Count; i++ {
		i := i
		path := "/multi/" + strconv.Itoa(i)
		_, err := proxywasm.DispatchHttpCall(cluster, h.callHeaders(cfg.Method, path), nil, nil, timeout,
			func(numHeaders, bodySize, numTrailers int) {
				status, ok := callResponseStatus(numHeaders)
				if !ok {
					status = "failed"
				}
				proxywasm.LogInfof("multi: %d status=%s", i, status)
				if h.aborted {
					return
				}
				logIfErr("set x-multi", proxywasm.ReplaceHttpRequestHeader("x-multi-"+strconv.Itoa(i), status))
				h.pending--
				if h.pending == 0 {
					proxywasm.LogInfof("multi: all %d answered", cfg.Count)
					logIfErr("resume http request", proxywasm.ResumeHttpRequest())
				}
			})
		if err != nil {
			h.aborted = true
			return h.dispatchFailed(err)
		}
		h.pending++
	}
	proxywasm.LogInfof("multi: dispatched %d", cfg.Count)
	return types.ActionPause
}

func (h *httpContext) post() types.Action {
	cfg := &h.plugin.cfg
	cluster, timeout := h.target()
	headers := append(h.callHeaders(cfg.Method, cfg.Path), cfg.Headers...)
	proxywasm.LogInfof("post: calling %s %s %s body=%d trailers=%d",
		cluster, cfg.Method, cfg.Path, len(cfg.Body), len(cfg.Trailers))
	_, err := proxywasm.DispatchHttpCall(cluster, headers, []byte(cfg.Body), cfg.Trailers, timeout,
		func(numHeaders, bodySize, numTrailers int) {
			status, ok := callResponseStatus(numHeaders)
			if !ok {
				proxywasm.LogInfo("post: callout failed")
				logIfErr("send http response",
					proxywasm.SendHttpResponse(503, nil, []byte("post unavailable"), -1))
				return
			}
			body := callResponseBody(bodySize)
			proxywasm.LogInfof("post: response status=%s body=%d trailers=%d", status, bodySize, numTrailers)
			reply := [][2]string{
				{"x-callout-status", status},
				{"x-callout-body-size", strconv.Itoa(bodySize)},
			}
			if numTrailers > 0 {
				trailers, err := proxywasm.GetHttpCallResponseTrailers()
				logIfErr("get http call response trailers", err)
				for _, kv := range trailers {
					reply = append(reply, [2]string{"x-callout-trailer-" + kv[0], kv[1]})
				}
			}
			logIfErr("send http response", proxywasm.SendHttpResponse(200, reply, body, -1))
		})
	if err != nil {
		return h.dispatchFailed(err)
	}
	return types.ActionPause
}
