// Command httpfilter is a Proxy-Wasm HTTP test plugin for pyproxywasm.
//
// The plugin configuration is a whitespace-separated list of feature words
// ("word" or "word=value"); see ../README.md for the exact behaviour of each
// feature. All state lives in the plugin (root) context so that several
// plugins with different root ids and configurations can share one VM.
package main

import (
	"encoding/binary"
	"errors"
	"strconv"
	"strings"

	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm"
	"github.com/proxy-wasm/proxy-wasm-go-sdk/proxywasm/types"
)

func main() {}

func init() {
	proxywasm.SetVMContext(&vmContext{})
}

// ---------------------------------------------------------------------------
// Helpers

// parseFeatures turns "a b=1 c" into {"a": "", "b": "1", "c": ""}.
func parseFeatures(config string) map[string]string {
	features := map[string]string{}
	for _, word := range strings.Fields(config) {
		name, value, _ := strings.Cut(word, "=")
		features[name] = value
	}
	return features
}

// propertyString returns the property as a string, or "missing" on error.
func propertyString(path ...string) string {
	v, err := proxywasm.GetProperty(path)
	if err != nil {
		return "missing"
	}
	return string(v)
}

// requestHasHeader reports whether the current request carries the header.
func requestHasHeader(name string) bool {
	_, err := proxywasm.GetHttpRequestHeader(name)
	return err == nil
}

func logIfErr(what string, err error) {
	if err != nil {
		proxywasm.LogWarnf("%s: %v", what, err)
	}
}

// readBody reads a whole HTTP body buffer; an empty buffer is not an error.
func readBody(get func(int, int) ([]byte, error), size int) ([]byte, error) {
	if size <= 0 {
		return nil, nil
	}
	b, err := get(0, size)
	if errors.Is(err, types.ErrorStatusNotFound) {
		return nil, nil
	}
	return b, err
}

// updateSharedData applies f to the value stored under key, using a CAS loop.
func updateSharedData(key string, f func(old []byte) []byte) ([]byte, error) {
	for attempt := 0; attempt < 1000; attempt++ {
		old, cas, err := proxywasm.GetSharedData(key)
		if errors.Is(err, types.ErrorStatusNotFound) {
			old, cas, err = nil, 0, nil
		}
		if err != nil {
			return nil, err
		}
		next := f(old)
		err = proxywasm.SetSharedData(key, next, cas)
		if errors.Is(err, types.ErrorStatusCasMismatch) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return next, nil
	}
	return nil, errors.New("too many CAS mismatches")
}

// ---------------------------------------------------------------------------
// VM context

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) OnVMStart(int) types.OnVMStartStatus {
	cfg, err := proxywasm.GetVMConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogWarnf("get vm configuration: %v", err)
	}
	proxywasm.LogInfof("vm_start: %s", string(cfg))
	if string(cfg) == "fail-vm" {
		return types.OnVMStartStatusFailed
	}
	return types.OnVMStartStatusOK
}

func (*vmContext) NewPluginContext(contextID uint32) types.PluginContext {
	return &pluginContext{contextID: contextID}
}

// ---------------------------------------------------------------------------
// Plugin (root) context

type pluginContext struct {
	types.DefaultPluginContext
	contextID uint32
	rootID    string
	vmID      string
	features  map[string]string

	// metrics
	requestsTotal proxywasm.MetricCounter
	inflight      proxywasm.MetricGauge
	bodySize      proxywasm.MetricHistogram
	ticks         proxywasm.MetricCounter
	ticksDefined  bool
	tickCount     uint64

	// queue
	queueID uint32

	// pause
	pausedRequests  []uint32
	pausedResponses []uint32
}

func (p *pluginContext) has(feature string) bool {
	_, ok := p.features[feature]
	return ok
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	if v, err := proxywasm.GetProperty([]string{"plugin_root_id"}); err == nil {
		p.rootID = string(v)
	}
	if v, err := proxywasm.GetProperty([]string{"plugin_vm_id"}); err == nil {
		p.vmID = string(v)
	}
	cfg, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogWarnf("get plugin configuration: %v", err)
	}
	proxywasm.LogInfof("configure %s: %s", p.rootID, string(cfg))
	p.features = parseFeatures(string(cfg))

	if p.has("fail") {
		return types.OnPluginStartStatusFailed
	}
	if p.has("metrics") {
		p.requestsTotal = proxywasm.DefineCounterMetric("requests_total")
		p.inflight = proxywasm.DefineGaugeMetric("inflight")
		p.bodySize = proxywasm.DefineHistogramMetric("body_size")
	}
	if p.has("queue") {
		id, err := proxywasm.RegisterSharedQueue("events")
		logIfErr("register shared queue", err)
		p.queueID = id
	}
	if p.has("tick") {
		ms, err := strconv.ParseUint(p.features["tick"], 10, 32)
		if err != nil {
			proxywasm.LogWarnf("bad tick value %q: %v", p.features["tick"], err)
		} else {
			p.ticks = proxywasm.DefineCounterMetric("ticks")
			p.ticksDefined = true
			logIfErr("set tick period", proxywasm.SetTickPeriodMilliSeconds(uint32(ms)))
		}
	}
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) OnTick() {
	if p.has("pause") {
		reqs, resps := p.pausedRequests, p.pausedResponses
		p.pausedRequests, p.pausedResponses = nil, nil
		for _, id := range reqs {
			if err := proxywasm.SetEffectiveContext(id); err != nil {
				proxywasm.LogWarnf("resume %d: %v", id, err)
				continue
			}
			logIfErr("resume http request", proxywasm.ResumeHttpRequest())
			proxywasm.LogInfof("resumed %d", id)
		}
		for _, id := range resps {
			if err := proxywasm.SetEffectiveContext(id); err != nil {
				proxywasm.LogWarnf("resume %d: %v", id, err)
				continue
			}
			logIfErr("resume http response", proxywasm.ResumeHttpResponse())
			proxywasm.LogInfof("resumed %d", id)
		}
		return
	}
	p.tickCount++
	if p.ticksDefined {
		p.ticks.Increment(1)
	}
	proxywasm.LogInfof("tick %d", p.tickCount)
}

func (p *pluginContext) OnQueueReady(queueID uint32) {
	for {
		item, err := proxywasm.DequeueSharedQueue(queueID)
		if errors.Is(err, types.ErrorStatusEmpty) {
			return
		}
		if err != nil {
			proxywasm.LogWarnf("dequeue %d: %v", queueID, err)
			return
		}
		s := string(item)
		proxywasm.LogInfof("dequeued %s", s)
		_, err = updateSharedData("dequeued", func(old []byte) []byte {
			if len(old) == 0 {
				return []byte(s)
			}
			return []byte(string(old) + "," + s)
		})
		logIfErr("append to shared data dequeued", err)
	}
}

func (p *pluginContext) NewHttpContext(contextID uint32) types.HttpContext {
	return &httpContext{contextID: contextID, plugin: p}
}

func (*pluginContext) NewTcpContext(uint32) types.TcpContext { return nil }

// ---------------------------------------------------------------------------
// HTTP context

type httpContext struct {
	types.DefaultHttpContext
	contextID     uint32
	plugin        *pluginContext
	pauseResponse bool
}

func (h *httpContext) OnHttpRequestHeaders(int, bool) types.Action {
	p := h.plugin

	if p.has("panic") && requestHasHeader("x-panic") {
		panic("boom")
	}

	if p.has("loglevels") {
		proxywasm.LogTrace("t")
		proxywasm.LogDebug("d")
		proxywasm.LogInfo("i")
		proxywasm.LogWarn("w")
		proxywasm.LogError("e")
		proxywasm.LogCritical("c")
	}

	if p.has("metrics") {
		p.requestsTotal.Increment(1)
		p.inflight.Add(1)
	}

	path, pathErr := proxywasm.GetHttpRequestHeader(":path")

	if p.has("headers") {
		logIfErr("add x-wasm-req", proxywasm.AddHttpRequestHeader("x-wasm-req", p.rootID))
		logIfErr("replace x-replace", proxywasm.ReplaceHttpRequestHeader("x-replace", "replaced"))
		logIfErr("remove x-remove", proxywasm.RemoveHttpRequestHeader("x-remove"))
		proxywasm.LogInfof("request path=%s", path)
	}

	if p.has("props") {
		set := func(name, value string) {
			logIfErr("set "+name, proxywasm.ReplaceHttpRequestHeader(name, value))
		}
		set("x-plugin-name", propertyString("plugin_name"))
		set("x-root-id", propertyString("plugin_root_id"))
		set("x-vm-id", propertyString("plugin_vm_id"))
		set("x-path", propertyString("request", "path"))
		set("x-method", propertyString("request", "method"))
		set("x-source", propertyString("source", "address"))
		set("x-host", propertyString("request", "host"))
		logIfErr("set property custom.key", proxywasm.SetProperty([]string{"custom", "key"}, []byte("v1")))
		set("x-custom", propertyString("custom", "key"))
		port := "missing"
		if v, err := proxywasm.GetProperty([]string{"source", "port"}); err == nil {
			var buf [8]byte
			copy(buf[:], v)
			port = strconv.FormatUint(binary.LittleEndian.Uint64(buf[:]), 10)
		}
		set("x-source-port", port)
	}

	if p.has("shared") {
		next, err := updateSharedData("counter", func(old []byte) []byte {
			n, _ := strconv.ParseUint(strings.TrimSpace(string(old)), 10, 64)
			return []byte(strconv.FormatUint(n+1, 10))
		})
		if err != nil {
			proxywasm.LogWarnf("increment shared counter: %v", err)
		} else {
			logIfErr("set x-count", proxywasm.ReplaceHttpRequestHeader("x-count", string(next)))
		}
	}

	if p.has("queue") {
		qid, err := proxywasm.ResolveSharedQueue(p.vmID, "events")
		switch {
		case err != nil:
			proxywasm.LogWarnf("resolve shared queue events: %v", err)
		case path == "":
			// The SDK cannot enqueue an empty item.
			proxywasm.LogWarnf("not enqueueing empty path (%v)", pathErr)
		default:
			logIfErr("enqueue", proxywasm.EnqueueSharedQueue(qid, []byte(path)))
		}
	}

	if p.has("foreign") {
		ret, err := proxywasm.CallForeignFunction("echo", []byte(path))
		value := string(ret)
		if err != nil {
			value = "error:" + err.Error()
		}
		logIfErr("set x-foreign", proxywasm.ReplaceHttpRequestHeader("x-foreign", value))
	}

	if p.has("headers") && requestHasHeader("x-deny") {
		logIfErr("send http response", proxywasm.SendHttpResponse(403,
			[][2]string{{"x-deny-reason", "test"}}, []byte("denied by wasm"), -1))
		return types.ActionPause
	}

	if p.has("pause") {
		if requestHasHeader("x-pause-response") {
			h.pauseResponse = true
		}
		if requestHasHeader("x-pause") {
			p.pausedRequests = append(p.pausedRequests, h.contextID)
			return types.ActionPause
		}
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpRequestBody(bodySize int, endOfStream bool) types.Action {
	p := h.plugin
	if p.has("buffer") {
		if !endOfStream {
			return types.ActionPause
		}
		body, err := readBody(proxywasm.GetHttpRequestBody, bodySize)
		if err != nil {
			proxywasm.LogWarnf("get request body: %v", err)
			return types.ActionContinue
		}
		logIfErr("replace request body", proxywasm.ReplaceHttpRequestBody([]byte(strings.ToUpper(string(body)))))
		proxywasm.LogInfof("request body=%s", string(body))
		return types.ActionContinue
	}
	if p.has("stream") {
		logIfErr("append request body", proxywasm.AppendHttpRequestBody([]byte("|")))
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpRequestTrailers(int) types.Action {
	if h.plugin.has("trailers") {
		logIfErr("add request trailer", proxywasm.AddHttpRequestTrailer("x-wasm-trailer", "req"))
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseHeaders(int, bool) types.Action {
	p := h.plugin
	if p.has("headers") {
		logIfErr("add x-wasm-resp", proxywasm.AddHttpResponseHeader("x-wasm-resp", p.rootID))
		logIfErr("remove x-resp-remove", proxywasm.RemoveHttpResponseHeader("x-resp-remove"))
		status, _ := proxywasm.GetHttpResponseHeader(":status")
		proxywasm.LogInfof("response status=%s", status)
	}
	if p.has("pause") && h.pauseResponse {
		h.pauseResponse = false
		p.pausedResponses = append(p.pausedResponses, h.contextID)
		return types.ActionPause
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseBody(bodySize int, endOfStream bool) types.Action {
	p := h.plugin
	if p.has("metrics") && endOfStream {
		p.bodySize.Record(uint64(bodySize))
	}
	if p.has("buffer") {
		if !endOfStream {
			return types.ActionPause
		}
		logIfErr("append response body", proxywasm.AppendHttpResponseBody([]byte("-buffered")))
		return types.ActionContinue
	}
	if p.has("stream") {
		logIfErr("prepend response body", proxywasm.PrependHttpResponseBody([]byte(">")))
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpResponseTrailers(int) types.Action {
	if h.plugin.has("trailers") {
		logIfErr("add response trailer", proxywasm.AddHttpResponseTrailer("x-wasm-trailer", "resp"))
	}
	return types.ActionContinue
}

func (h *httpContext) OnHttpStreamDone() {
	p := h.plugin
	if p.has("metrics") {
		p.inflight.Add(-1)
	}
	if p.has("log") {
		status, err := proxywasm.GetHttpResponseHeader(":status")
		if err != nil {
			status = err.Error()
		}
		proxywasm.LogInfof("done status=%s", status)
		path, err := proxywasm.GetHttpRequestHeader(":path")
		if err != nil {
			path = err.Error()
		}
		proxywasm.LogInfof("done path=%s", path)
	}
}
