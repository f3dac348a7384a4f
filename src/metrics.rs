//! Prometheus metrics, served at `/metrics` (behind `[metrics] token` when it is set).
//!
//! Counters and histograms are recorded where things happen, through the `metrics`
//! facade; queue depths and adapter health are read when Prometheus scrapes, so they
//! are exact rather than sampled.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::{AdapterHealth, ChannelRegistry};
use crate::secrets::constant_time_eq;
use crate::store::{self, Store, outbox};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds buckets for latencies from a millisecond to a few minutes.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0];

/// Installs the process-wide recorder once; later calls return the same handle.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder installed first (a test harness) only means ours stays empty.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// What `/metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    pub store: Store,
    pub registry: Arc<ChannelRegistry>,
    /// `[metrics] token`: scrapes must carry it as `Authorization: Bearer`.
    pub token: Option<String>,
}

pub fn router(state: MetricsState) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(state)
}

/// Prometheus text exposition.
async fn scrape(State(state): State<MetricsState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|token| constant_time_eq(token, expected)) {
            let body = match given {
                None => "metrics need Authorization: Bearer <metrics.token>\n",
                Some(_) => "wrong metrics token: send the one in [metrics] token (or MOSAIC_AS_METRICS_TOKEN)\n",
            };
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response();
        }
    }
    match render(&state.store, &state.registry).await {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(error) => {
            tracing::warn!(%error, "metrics unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable: the database does not answer\n").into_response()
        }
    }
}

pub fn transaction_received(events: usize) {
    counter!("mosaic_transactions_received_total").increment(1);
    counter!("mosaic_events_received_total").increment(events as u64);
}

/// Time from a pushed event's arrival to the end of its processing.
pub fn event_processed(received_at_ms: i64) {
    let lag_ms = (store::now_ms() - received_at_ms).max(0);
    histogram!("mosaic_inbox_lag_seconds").record(lag_ms as f64 / 1000.0);
}

pub fn job_retried(queue: &str) {
    counter!("mosaic_outbox_retries_total", "queue" => queue_label(queue)).increment(1);
}

/// One send to a surface: `ok`, `transient` or `terminal`.
pub fn send_finished(channel: &str, result: &'static str) {
    counter!("mosaic_sends_total", "channel" => channel.to_string(), "result" => result).increment(1);
}

/// One agent turn: `answered`, `failed` or `retry`, with its duration.
pub fn agent_turn(agent: &str, result: &'static str, seconds: f64) {
    counter!("mosaic_agent_turns_total", "agent" => agent.to_string(), "result" => result).increment(1);
    histogram!("mosaic_agent_turn_seconds", "agent" => agent.to_string()).record(seconds);
}

pub fn agent_tokens(agent: &str, input: u64, output: u64) {
    counter!("mosaic_agent_tokens_total", "agent" => agent.to_string(), "direction" => "input").increment(input);
    counter!("mosaic_agent_tokens_total", "agent" => agent.to_string(), "direction" => "output").increment(output);
}

/// One `!link <token>`: `linked`, `rejected` or `rate_limited`.
pub fn link_attempt(result: &'static str) {
    counter!("mosaic_link_attempts_total", "result" => result).increment(1);
}

/// Agent lanes (one per agent and conversation) are summed up as `agents`, so that the
/// number of series stays small.
fn queue_label(queue: &str) -> String {
    store::dead_letters::queue_family(queue).to_string()
}

fn health_value(health: AdapterHealth) -> f64 {
    match health {
        AdapterHealth::Connected => 1.0,
        AdapterHealth::Degraded => 0.5,
        AdapterHealth::Disconnected => 0.0,
    }
}

/// The text exposition: recorded metrics plus the current queue depths, inbox backlog
/// and adapter health.
pub async fn render(store: &Store, registry: &ChannelRegistry) -> store::Result<String> {
    let mut text = install().render();
    let mut conn = store.conn().await?;
    let mut depths = std::collections::BTreeMap::<String, i64>::new();
    for (queue, count) in outbox::depth_by_queue(&mut conn).await? {
        *depths.entry(queue_label(&queue)).or_default() += count;
    }
    for adapter in registry.list() {
        depths.entry(adapter.name().to_string()).or_default();
    }
    let backlog = store::inbox::pending_count(&mut conn).await?;
    let dead = store::dead_letters::counts(&mut conn).await?;
    drop(conn);
    text.push_str("# HELP mosaic_dead_letters Work given up after its retries, until retried or dropped (`mosaic-as jobs`).\n# TYPE mosaic_dead_letters gauge\n");
    for (queue, reason, count) in dead {
        text.push_str(&format!("mosaic_dead_letters{{queue=\"{queue}\",reason=\"{reason}\"}} {count}\n"));
    }
    text.push_str("# HELP mosaic_outbox_depth Unfinished jobs per queue.\n# TYPE mosaic_outbox_depth gauge\n");
    for (queue, count) in depths {
        text.push_str(&format!("mosaic_outbox_depth{{queue=\"{queue}\"}} {count}\n"));
    }
    text.push_str("# HELP mosaic_inbox_pending Pushed events not yet processed.\n# TYPE mosaic_inbox_pending gauge\n");
    text.push_str(&format!("mosaic_inbox_pending {backlog}\n"));
    text.push_str(
        "# HELP mosaic_adapter_health 1 connected, 0.5 degraded, 0 disconnected.\n# TYPE mosaic_adapter_health gauge\n",
    );
    for (channel, health) in registry.health_all() {
        text.push_str(&format!("mosaic_adapter_health{{channel=\"{channel}\"}} {}\n", health_value(health)));
    }
    Ok(text)
}
