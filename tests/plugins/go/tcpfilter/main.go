// Command tcpfilter is a Proxy-Wasm network (TCP) test plugin for pyproxywasm.
//
// The plugin configuration is a whitespace-separated list of feature words
// ("word" or "word=value", possibly empty); see ../README.md for the exact
// behaviour. All state lives in the plugin (root) context.
package main

import (
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

func parseFeatures(config string) map[string]string {
	features := map[string]string{}
	for _, word := range strings.Fields(config) {
		name, value, _ := strings.Cut(word, "=")
		features[name] = value
	}
	return features
}

func logIfErr(what string, err error) {
	if err != nil {
		proxywasm.LogWarnf("%s: %v", what, err)
	}
}

// readData reads a whole TCP data buffer; an empty buffer is not an error.
func readData(get func(int, int) ([]byte, error), size int) []byte {
	if size <= 0 {
		return nil
	}
	b, err := get(0, size)
	if err != nil {
		if !errors.Is(err, types.ErrorStatusNotFound) {
			proxywasm.LogWarnf("read data: %v", err)
		}
		return nil
	}
	return b
}

// ---------------------------------------------------------------------------

type vmContext struct {
	types.DefaultVMContext
}

func (*vmContext) NewPluginContext(contextID uint32) types.PluginContext {
	return &pluginContext{contextID: contextID}
}

// ---------------------------------------------------------------------------

type pluginContext struct {
	types.DefaultPluginContext
	contextID  uint32
	features   map[string]string
	bytesTotal proxywasm.MetricCounter
	paused     []uint32
}

func (p *pluginContext) has(feature string) bool {
	_, ok := p.features[feature]
	return ok
}

func (p *pluginContext) OnPluginStart(int) types.OnPluginStartStatus {
	cfg, err := proxywasm.GetPluginConfiguration()
	if err != nil && !errors.Is(err, types.ErrorStatusNotFound) {
		proxywasm.LogWarnf("get plugin configuration: %v", err)
	}
	p.features = parseFeatures(string(cfg))
	p.bytesTotal = proxywasm.DefineCounterMetric("tcp_bytes_total")
	proxywasm.LogInfof("tcp configure: %s", string(cfg))
	if p.has("tick") {
		ms, err := strconv.ParseUint(p.features["tick"], 10, 32)
		if err != nil {
			proxywasm.LogWarnf("bad tick value %q: %v", p.features["tick"], err)
		} else {
			logIfErr("set tick period", proxywasm.SetTickPeriodMilliSeconds(uint32(ms)))
		}
	}
	return types.OnPluginStartStatusOK
}

func (p *pluginContext) OnTick() {
	if !p.has("resume") {
		return
	}
	ids := p.paused
	p.paused = nil
	for _, id := range ids {
		if err := proxywasm.SetEffectiveContext(id); err != nil {
			proxywasm.LogWarnf("resume %d: %v", id, err)
			continue
		}
		logIfErr("continue tcp stream", proxywasm.ContinueTcpStream())
		proxywasm.LogInfof("resumed %d", id)
	}
}

func (p *pluginContext) NewTcpContext(contextID uint32) types.TcpContext {
	return &tcpContext{contextID: contextID, plugin: p}
}

func (*pluginContext) NewHttpContext(uint32) types.HttpContext { return nil }

// ---------------------------------------------------------------------------

type tcpContext struct {
	types.DefaultTcpContext
	contextID uint32
	plugin    *pluginContext
}

func (t *tcpContext) OnNewConnection() types.Action {
	proxywasm.LogInfo("new connection")
	return types.ActionContinue
}

func (t *tcpContext) OnDownstreamData(dataSize int, endOfStream bool) types.Action {
	p := t.plugin
	data := string(readData(proxywasm.GetDownstreamData, dataSize))
	if dataSize > 0 {
		p.bytesTotal.Increment(uint64(dataSize))
	}
	proxywasm.LogInfof("downstream %s eos=%t", data, endOfStream)
	switch {
	case strings.Contains(data, "pause"):
		if p.has("resume") {
			p.paused = append(p.paused, t.contextID)
		}
		return types.ActionPause
	case strings.Contains(data, "close"):
		logIfErr("close downstream", proxywasm.CloseDownstream())
		return types.ActionContinue
	}
	if len(data) > 0 {
		logIfErr("replace downstream data", proxywasm.ReplaceDownstreamData([]byte(strings.ToUpper(data))))
	}
	return types.ActionContinue
}

func (t *tcpContext) OnUpstreamData(dataSize int, endOfStream bool) types.Action {
	p := t.plugin
	data := string(readData(proxywasm.GetUpstreamData, dataSize))
	if dataSize > 0 {
		p.bytesTotal.Increment(uint64(dataSize))
	}
	logIfErr("prepend upstream data", proxywasm.PrependUpstreamData([]byte("up:")))
	proxywasm.LogInfof("upstream %s eos=%t", data, endOfStream)
	return types.ActionContinue
}

func (t *tcpContext) OnDownstreamClose(peer types.PeerType) {
	proxywasm.LogInfof("downstream close peer=%d", uint32(peer))
}

func (t *tcpContext) OnUpstreamClose(peer types.PeerType) {
	proxywasm.LogInfof("upstream close peer=%d", uint32(peer))
}

func (t *tcpContext) OnStreamDone() {
	proxywasm.LogInfo("tcp done")
}
