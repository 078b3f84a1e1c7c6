//! `rustcallouts`: a Proxy-Wasm test plugin for pyproxywasm that makes outbound calls
//! with the Rust SDK (crate `proxy-wasm` 0.2.2): an HTTP call (`auth`), a unary gRPC
//! call (`grpc`) and a gRPC stream (`stream`).
//!
//! The plugin configuration is a list of `key=value` words; `mode` picks the behaviour.
//! Every log line, header name and status below is asserted by the tests: see
//! ../README.md, and change them only together with it.

use log::info;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, Bytes, ContextType, LogLevel, Status};
use std::rc::Rc;
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(CalloutRoot { config: Rc::new(Config::default()) })
    });
}}

/// The parsed plugin configuration, shared by every HTTP context of the plugin.
#[derive(Default)]
struct Config {
    /// (key, value) in configuration order; the last word for a key wins. A Vec, not a
    /// HashMap, so the module needs no WASI random_get for hash seeds.
    words: Vec<(String, String)>,
}

impl Config {
    fn parse(text: &str) -> Config {
        let mut words = Vec::new();
        for word in text.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            words.push((k.to_string(), v.to_string()));
        }
        Config { words }
    }

    fn get<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.words
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or(default)
    }

    fn mode(&self) -> &str {
        self.get("mode", "")
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.get("timeout_ms", "1000").parse().unwrap_or(1000))
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The host status of `proxy_get_status`, as "<code> <message or none>".
fn grpc_status_text(status: (u32, Option<String>)) -> (u32, String) {
    (status.0, status.1.unwrap_or_else(|| "none".to_string()))
}

struct CalloutRoot {
    config: Rc<Config>,
}

impl Context for CalloutRoot {}

impl RootContext for CalloutRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let text = self
            .get_plugin_configuration()
            .map(|b| lossy(&b))
            .unwrap_or_default();
        info!("rustcallouts configure: {}", text);
        let config = Config::parse(&text);
        match config.mode() {
            "auth" | "grpc" | "stream" => {}
            other => {
                info!("rustcallouts bad mode: {}", other);
                return false;
            }
        }
        self.config = Rc::new(config);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CalloutStream {
            config: self.config.clone(),
            token: None,
            messages: Vec::new(),
        }))
    }
}

struct CalloutStream {
    config: Rc<Config>,
    /// The outstanding call or stream.
    token: Option<u32>,
    /// gRPC stream: the messages received so far.
    messages: Vec<String>,
}

impl CalloutStream {
    fn cluster(&self) -> String {
        self.get_http_request_header("x-callout-cluster")
            .unwrap_or_else(|| self.config.get("cluster", "callout").to_string())
    }

    /// Initial metadata for both gRPC modes.
    fn metadata(&self) -> Vec<(String, Vec<u8>)> {
        let mut md = vec![("x-plugin".to_string(), b"rustcallouts".to_vec())];
        if let Some(v) = self.get_http_request_header("x-grpc-md") {
            md.push(("x-grpc-md".to_string(), v.into_bytes()));
        }
        md
    }

    fn refused(&self, what: &str, status: Status) -> Action {
        let mode = self.config.mode();
        info!("{}: {} failed: {:?}", mode, what, status);
        let body = format!("{} failed: {:?}", what, status);
        self.send_http_response(500, vec![("x-callout-error", &format!("{:?}", status))],
                                Some(body.as_bytes()));
        Action::Pause
    }

    fn auth(&mut self) -> Action {
        let cluster = self.cluster();
        let path = self.config.get("path", "/").to_string();
        let authority = self.config.get("authority", "callout.local").to_string();
        let user = self.get_http_request_header("x-user");
        let mut headers = vec![(":method", "GET"), (":path", path.as_str()),
                               (":authority", authority.as_str())];
        if let Some(user) = user.as_deref() {
            headers.push(("x-user", user));
        }
        info!("auth: calling {} {}", cluster, path);
        match self.dispatch_http_call(&cluster, headers, None, vec![], self.config.timeout()) {
            Ok(token) => {
                self.token = Some(token);
                info!("auth: paused");
                Action::Pause
            }
            Err(status) => self.refused("http_call", status),
        }
    }

    fn grpc(&mut self) -> Action {
        let cluster = self.cluster();
        let service = self.config.get("service", "test.Echo").to_string();
        let method = self.config.get("method", "Unary").to_string();
        let message = self.get_http_request_header_bytes("x-grpc-message");
        let md = self.metadata();
        let md_refs: Vec<(&str, &[u8])> = md.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        info!("grpc: calling {} {}/{}", cluster, service, method);
        match self.dispatch_grpc_call(&cluster, &service, &method, md_refs, message.as_deref(),
                                      self.config.timeout()) {
            Ok(token) => {
                if self.get_http_request_header("x-grpc-cancel").is_some() {
                    let result = hostcalls::cancel_grpc_call(token);
                    info!("grpc: cancel {:?}", result);
                    self.set_http_request_header("x-grpc-result", Some("cancelled"));
                    return Action::Continue;
                }
                self.token = Some(token);
                info!("grpc: paused");
                Action::Pause
            }
            Err(status) => self.refused("grpc_call", status),
        }
    }

    fn stream(&mut self) -> Action {
        let cluster = self.cluster();
        let service = self.config.get("service", "test.Echo").to_string();
        let method = self.config.get("method", "Stream").to_string();
        let md = self.metadata();
        let md_refs: Vec<(&str, &[u8])> = md.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
        info!("stream: opening {} {}/{}", cluster, service, method);
        let token = match self.open_grpc_stream(&cluster, &service, &method, md_refs) {
            Ok(token) => token,
            Err(status) => return self.refused("grpc_stream", status),
        };
        let list = self
            .get_http_request_header("x-stream-send")
            .unwrap_or_else(|| "one,two,three".to_string());
        let items: Vec<&str> = list.split(',').collect();
        let cancel_after: Option<usize> = self
            .get_http_request_header("x-stream-cancel")
            .and_then(|v| v.parse().ok());
        let close = self.get_http_request_header("x-stream-close").is_some();
        for (i, item) in items.iter().enumerate() {
            if cancel_after == Some(i) {
                break;
            }
            let last = i + 1 == items.len() && !close && cancel_after.is_none();
            let result = hostcalls::send_grpc_stream_message(token, Some(item.as_bytes()), last);
            info!("stream: sent {} end_stream={} {:?}", item, last, result);
        }
        if cancel_after.is_some() {
            let result = hostcalls::cancel_grpc_stream(token);
            info!("stream: cancel {:?}", result);
            self.set_http_request_header("x-stream-result", Some("cancelled"));
            return Action::Continue;
        }
        if close {
            let result = hostcalls::close_grpc_stream(token);
            info!("stream: close {:?}", result);
        }
        self.token = Some(token);
        info!("stream: paused");
        Action::Pause
    }

    fn log_metadata(what: &str, md: Vec<(String, Bytes)>) {
        for (k, v) in md {
            info!("stream: {} {}={}", what, k, lossy(&v));
        }
    }
}

impl Context for CalloutStream {
    fn on_http_call_response(&mut self, _token: u32, num_headers: usize, body_size: usize,
                             _num_trailers: usize) {
        self.token = None;
        if num_headers == 0 {
            let (code, message) = grpc_status_text(self.get_grpc_status());
            info!("auth: callout failed status={} message={}", code, message);
            self.send_http_response(503, vec![], Some(b"auth unavailable"));
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_else(|| "none".to_string());
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        info!("auth: response status={} body={}", status, body_size);
        if status != "200" {
            info!("auth: denied status={}", status);
            self.send_http_response(403, vec![("x-auth-status", &status)], Some(&body));
            return;
        }
        let user = self
            .get_http_call_response_header("x-auth-user")
            .unwrap_or_else(|| lossy(&body));
        self.set_http_request_header("x-auth-user", Some(&user));
        info!("auth: allowed user={}", user);
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, _token: u32, status_code: u32, response_size: usize) {
        self.token = None;
        if status_code == 0 {
            let reply = self
                .get_grpc_call_response_body(0, response_size)
                .unwrap_or_default();
            let reply = lossy(&reply);
            info!("grpc: reply size={} message={}", response_size, reply);
            self.set_http_request_header("x-grpc-status", Some("0"));
            self.set_http_request_header("x-grpc-reply", Some(&reply));
            self.resume_http_request();
            return;
        }
        let (code, message) = grpc_status_text(self.get_grpc_status());
        info!("grpc: failed status={} get_status={} message={}", status_code, code, message);
        let status = status_code.to_string();
        let body = format!("grpc failed: {} {}", status_code, message);
        self.send_http_response(503, vec![("x-grpc-status", &status), ("x-grpc-message", &message)],
                                Some(body.as_bytes()));
    }

    fn on_grpc_stream_initial_metadata(&mut self, _token: u32, num_elements: u32) {
        info!("stream: initial metadata {}", num_elements);
        Self::log_metadata("initial", self.get_grpc_stream_initial_metadata());
    }

    fn on_grpc_stream_message(&mut self, _token: u32, message_size: usize) {
        let message = self
            .get_grpc_stream_message(0, message_size)
            .unwrap_or_default();
        let message = lossy(&message);
        info!("stream: message {} {}", self.messages.len() + 1, message);
        self.messages.push(message);
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token: u32, num_elements: u32) {
        info!("stream: trailing metadata {}", num_elements);
        Self::log_metadata("trailing", self.get_grpc_stream_trailing_metadata());
    }

    fn on_grpc_stream_close(&mut self, _token: u32, status_code: u32) {
        self.token = None;
        let (code, message) = grpc_status_text(self.get_grpc_status());
        info!("stream: closed status={} get_status={} message={}", status_code, code, message);
        self.set_http_request_header("x-stream-status", Some(&status_code.to_string()));
        self.set_http_request_header("x-stream-received", Some(&self.messages.len().to_string()));
        self.set_http_request_header("x-stream-messages", Some(&self.messages.join(",")));
        self.resume_http_request();
    }
}

impl HttpContext for CalloutStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.config.mode() {
            "auth" => self.auth(),
            "grpc" => self.grpc(),
            "stream" => self.stream(),
            _ => Action::Continue,
        }
    }
}
