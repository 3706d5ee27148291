//! Prometheus metrics of a mount (`--metrics-addr`, off by default): the
//! latency of every FUSE request and of every object-store call, and the
//! figures `status` shows, as gauges. Without `--metrics-addr` no recorder
//! is installed and each measurement is a no-op.
//!
//! Nothing here names a file: labels are operation names and outcomes.

use std::net::SocketAddr;
use std::time::Instant;

pub const FUSE_SECONDS: &str = "s3vault_fuse_request_seconds";
pub const STORE_SECONDS: &str = "s3vault_store_request_seconds";

/// Histogram buckets, in seconds: from a cached getattr (tens of µs) to a
/// store call riding out retries (tens of seconds).
const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Serves `/metrics` on `addr` from the current tokio runtime.
pub fn serve(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&BUCKETS)
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| e.to_string())
}

/// Measures one request from its creation to its drop.
pub struct Timer {
    metric: &'static str,
    op: &'static str,
    start: Instant,
}

impl Timer {
    /// A FUSE request of kind `op` (`lookup`, `read`, ...).
    pub fn fuse(op: &'static str) -> Timer {
        Timer {
            metric: FUSE_SECONDS,
            op,
            start: Instant::now(),
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        metrics::histogram!(self.metric, "op" => self.op).record(self.start.elapsed().as_secs_f64());
    }
}

/// Records one object-store call of kind `op` that took `seconds`.
pub fn store_call(op: &'static str, outcome: &'static str, seconds: f64) {
    metrics::histogram!(STORE_SECONDS, "op" => op, "outcome" => outcome).record(seconds);
}

/// Sets a gauge `s3vault_<section>_<name>` for every number (and boolean,
/// as 0 or 1) of the `status` answer, e.g. `cache.dirty_bytes` becomes
/// `s3vault_cache_dirty_bytes` and `cache.last_upload_ns`
/// `s3vault_cache_last_upload_timestamp_seconds`.
pub fn publish(status: &serde_json::Value) {
    fn walk(prefix: &str, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    // Times (ns since the epoch) in Prometheus's convention.
                    match (key.strip_suffix("_ns"), value.as_f64()) {
                        (Some(stem), Some(ns)) => {
                            let name = format!("{prefix}_{}_timestamp_seconds", metric_name(stem));
                            metrics::gauge!(name).set(ns / 1e9);
                        }
                        _ => walk(&format!("{prefix}_{}", metric_name(key)), value),
                    }
                }
            }
            serde_json::Value::Number(n) => {
                if let Some(v) = n.as_f64() {
                    metrics::gauge!(prefix.to_string()).set(v);
                }
            }
            serde_json::Value::Bool(b) => metrics::gauge!(prefix.to_string()).set(f64::from(u8::from(*b))),
            _ => {}
        }
    }
    walk("s3vault", status);
}

/// A status key as a Prometheus name part: letters, digits and `_`.
fn metric_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keys_become_metric_names() {
        assert_eq!(metric_name("dirty_bytes"), "dirty_bytes");
        assert_eq!(metric_name("live-ratio.x"), "live_ratio_x");
    }

    #[test]
    fn requests_and_status_reach_the_exposition() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .unwrap()
            .build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            drop(Timer::fuse("getattr"));
            store_call("get", "not_found", 0.001);
            publish(&serde_json::json!({
                "cache": {"dirty_bytes": 3, "full": true, "last_upload_ns": 1_500_000_000},
                "volume": {"url": "s3://b"}
            }));
        });
        let text = handle.render();
        assert!(
            text.contains("s3vault_fuse_request_seconds_count{op=\"getattr\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("s3vault_store_request_seconds_count{op=\"get\",outcome=\"not_found\"} 1"),
            "{text}"
        );
        assert!(text.contains("s3vault_cache_dirty_bytes 3"), "{text}");
        assert!(text.contains("s3vault_cache_full 1"), "{text}");
        assert!(
            text.contains("s3vault_cache_last_upload_timestamp_seconds 1.5"),
            "{text}"
        );
        assert!(!text.contains("url"), "{text}");
    }
}
