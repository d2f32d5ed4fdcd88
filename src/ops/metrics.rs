//! Prometheus metrics, served as text on the admin listener's `/metrics`. Names are prefixed
//! `dify_gateway_`; labels are bounded (route prefixes and upstream names come from the
//! configuration, never from the request) so a hostile client cannot blow up the series count.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    pub received_bytes: IntCounter,
    pub sent_bytes: IntCounter,
    pub in_flight: IntGauge,
    pub open_connections: IntGauge,
    pub sso_signins: IntCounterVec,
    pub app_requests: IntCounterVec,
    pub sso_exchange_duration: Histogram,
    pub config_reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub config_info: IntGaugeVec,
    pub dify_info: IntGaugeVec,
}

/// Latency buckets from 1 ms to an hour-long LLM run.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
    3600.0,
];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

fn name(n: &str) -> String {
    format!("dify_gateway_{n}")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |n: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name(n), help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram_vec = |n: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name(n), help).buckets(BUCKETS.to_vec());
            let h = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let counter = |n: &str, help: &str| {
            let c = IntCounter::new(name(n), help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |n: &str, help: &str| {
            let g = IntGauge::new(name(n), help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let exchange = Histogram::with_opts(
            HistogramOpts::new(
                name("sso_exchange_duration_seconds"),
                "Time the SSO exchange call took",
            )
            .buckets(BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(exchange.clone()))
            .expect("unique metric");
        let info = IntGaugeVec::new(
            Opts::new(
                name("config_info"),
                "The configuration in force (value 1), by its hash",
            ),
            &["hash"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(info.clone()))
            .expect("unique metric");
        let dify_info = IntGaugeVec::new(
            Opts::new(
                name("dify_info"),
                "The Dify version the gateway behaves for (value 1): detected, set by dify.version, or unknown",
            ),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(dify_info.clone()))
            .expect("unique metric");
        Metrics {
            dify_info,
            requests: counter_vec(
                "requests_total",
                "Requests answered, by route prefix, upstream and status class",
                &["route", "upstream", "status_class"],
            ),
            request_duration: histogram_vec(
                "request_duration_seconds",
                "Time from request to the end of the answer",
                &["route"],
            ),
            upstream_duration: histogram_vec(
                "upstream_duration_seconds",
                "Time until the upstream's response headers",
                &["upstream"],
            ),
            upstream_errors: counter_vec(
                "upstream_errors_total",
                "Failed upstream attempts by kind",
                &["upstream", "kind"],
            ),
            received_bytes: counter(
                "received_bytes_total",
                "Request body bytes read from clients",
            ),
            sent_bytes: counter("sent_bytes_total", "Response body bytes sent to clients"),
            in_flight: gauge(
                "requests_in_flight",
                "Requests (and upgraded connections) being served now",
            ),
            open_connections: gauge(
                "open_connections",
                "Client connections open on the public listeners",
            ),
            sso_signins: counter_vec(
                "sso_signins_total",
                "Sign-in attempts by protocol, outcome and reason",
                &["protocol", "outcome", "reason"],
            ),
            app_requests: counter_vec(
                "app_requests_total",
                "Published-app requests checked against the app rules, by app (its code when a rule names it, else default) and outcome",
                &["app", "outcome"],
            ),
            sso_exchange_duration: exchange,
            config_reloads: counter_vec(
                "config_reloads_total",
                "Configuration reloads by result",
                &["result"],
            ),
            config_generation: gauge("config_generation", "How many configurations were loaded"),
            config_info: info,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// Marks `hash` as the configuration in force.
    pub fn set_config(&self, generation: u64, hash: &str) {
        self.config_generation.set(generation as i64);
        self.config_info.reset();
        self.config_info.with_label_values(&[hash]).set(1);
    }
}

impl Metrics {
    /// Marks `version` (or `unknown`) as the Dify behind the gateway.
    pub fn set_dify_version(&self, version: &str) {
        self.dify_info.reset();
        self.dify_info.with_label_values(&[version]).set(1);
    }
}

/// `2xx`, `4xx`, ... (`0` when nothing was answered).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_text() {
        METRICS
            .requests
            .with_label_values(&["/", "web", "2xx"])
            .inc();
        METRICS.set_config(3, "abc");
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(text.contains(
            "dify_gateway_requests_total{route=\"/\",status_class=\"2xx\",upstream=\"web\"}"
        ));
        assert!(text.contains("dify_gateway_config_generation 3"));
        assert!(text.contains("dify_gateway_config_info{hash=\"abc\"} 1"));
        METRICS.set_dify_version("1.17.1");
        let text = String::from_utf8(METRICS.render()).unwrap();
        assert!(
            text.contains("dify_gateway_dify_info{version=\"1.17.1\"} 1"),
            "{text}"
        );
    }
}
