//! `rustfilter`: a Proxy-Wasm test plugin for pyproxywasm, written with the Rust SDK
//! (crate `proxy-wasm` 0.2.2, ABI marker `proxy_abi_version_0_2_1`).
//!
//! The behaviour is a contract asserted by the test suite; see README.md. Every log line,
//! header name and value below is matched byte for byte, so change them only together
//! with the tests.

use log::info;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_context_id| -> Box<dyn RootContext> {
        Box::new(FilterRoot { config: String::new() })
    });
}}

fn utf8(bytes: Option<Vec<u8>>) -> String {
    bytes
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

struct FilterRoot {
    config: String,
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        let vm_config = utf8(self.get_vm_configuration());
        info!("rust vm_start: {}", vm_config);
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        self.config = utf8(self.get_plugin_configuration());
        info!("rust configure: {}", self.config);
        if self.config == "fail" {
            return false;
        }
        // Any configuration containing the substring "tick" turns the 10 ms timer on.
        if self.config.contains("tick") {
            self.set_tick_period(Duration::from_millis(10));
        }
        true
    }

    fn on_tick(&mut self) {
        info!("rust tick");
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(FilterStream {
            config: self.config.clone(),
        }))
    }
}

struct FilterStream {
    config: String,
}

impl Context for FilterStream {}

impl HttpContext for FilterStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let tag = if self.config.is_empty() {
            "none"
        } else {
            self.config.as_str()
        };
        self.add_http_request_header("x-rust-req", tag);
        self.set_http_request_header("x-rust-replace", Some("rust"));

        if self.get_http_request_header("x-rust-deny").is_some() {
            self.send_http_response(418, vec![("x-rust-reason", "deny")], Some(b"rust denied"));
            return Action::Pause;
        }

        let path = self.get_http_request_header(":path").unwrap_or_default();
        info!("rust path={}", path);

        let root_id = match self.get_property(vec!["plugin_root_id"]) {
            Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            None => String::from("missing"),
        };
        self.set_http_request_header("x-rust-root-id", Some(&root_id));

        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // Let the host buffer the body until the last chunk.
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size) {
            let upper = body.to_ascii_uppercase();
            self.set_http_request_body(0, body_size, &upper);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-rust-resp", Some("1"));
        Action::Continue
    }

    fn on_log(&mut self) {
        let status = self
            .get_http_response_header(":status")
            .unwrap_or_else(|| String::from("none"));
        info!("rust log status={}", status);
    }
}
