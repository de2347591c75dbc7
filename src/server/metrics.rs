//! `GET /metrics`: Prometheus text format. Counters and histograms are updated where things
//! happen; the gauges (tasks by state, resident and stored adapters) are read from the table
//! when scraped, so they cannot drift.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::Plugin;
use crate::adapters::State as AdapterState;

pub struct Metrics {
    registry: Registry,
    /// Requests by what served them (`base`, `adapter`, or `examples`: the base model shown
    /// the task's examples).
    pub requests: IntCounterVec,
    /// Requests refused past their engine model's in-flight bound, by status (503, 429).
    pub rejected: IntCounterVec,
    pub generation_seconds: Histogram,
    pub registration_seconds: Histogram,
    /// The tagging layer's own time on a chat or completion request, outside the stock
    /// handler: reading, checking and routing the body before it (a wait for a place or
    /// for an adapter load included), showing the public model name after it.
    pub layer_seconds: Histogram,
    pub queue_depth: IntGauge,
    pub evictions: IntCounter,
    /// Adapter models loaded (uploads, generations, reloads of stored adapters).
    pub loads: IntCounter,
    /// Failures by kind (`generation`, `load`).
    pub failures: IntCounterVec,
    pub dropped_tasks: IntCounter,
    /// Requests of new tasks refused: no room among the tracked tasks.
    pub refused_tasks: IntCounter,
    /// Corrupt task records moved to the store's quarantine folder.
    pub quarantined: IntCounter,
    /// No-harm checks of generated adapters, by outcome (`accepted`, `rejected`).
    pub checks: IntCounterVec,
    tasks: IntGaugeVec,
    /// Tasks answered by the base model shown their examples (`plugin.demonstrations`).
    shown_tasks: IntGauge,
    adapters: IntGaugeVec,
    adapter_bytes: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("dnd".into()), None).expect("valid prefix");
        let buckets = vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
        let hist = |name: &str, help: &str| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.clone()))
                .expect("valid histogram")
        };
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new("requests_total", "Inference requests by what served them"),
                &["served_by"],
            )
            .expect("valid metric"),
            rejected: IntCounterVec::new(
                Opts::new(
                    "requests_rejected_total",
                    "Requests refused past the in-flight bound of their engine model",
                ),
                &["status"],
            )
            .expect("valid metric"),
            generation_seconds: hist("generation_seconds", "Time to generate an adapter"),
            registration_seconds: hist(
                "registration_seconds",
                "Time to store, load, merge and register an adapter",
            ),
            layer_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "layer_seconds",
                    "Time the plugin's layer adds to a chat or completion request, outside the stock handler (waits for a place or an adapter load included)",
                )
                .buckets(vec![
                    10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 1e-2, 0.1, 1.0,
                ]),
            )
            .expect("valid histogram"),
            queue_depth: IntGauge::new("generation_queue_depth", "Generation jobs waiting")
                .expect("valid metric"),
            evictions: IntCounter::new("evictions_total", "Resident adapters evicted")
                .expect("valid metric"),
            loads: IntCounter::new(
                "adapter_loads_total",
                "Adapter models loaded into the engine: uploads, generations, and stored adapters loaded again after an eviction or a restart",
            )
            .expect("valid metric"),
            failures: IntCounterVec::new(
                Opts::new("failures_total", "Failed generations and loads"),
                &["kind"],
            )
            .expect("valid metric"),
            dropped_tasks: IntCounter::new(
                "dropped_tasks_total",
                "Collecting tasks dropped past the tracked-task limit",
            )
            .expect("valid metric"),
            refused_tasks: IntCounter::new(
                "refused_tasks_total",
                "Requests of new tasks refused (503): the tracked-task limit was reached and no collecting task could be dropped",
            )
            .expect("valid metric"),
            quarantined: IntCounter::new(
                "quarantined_records_total",
                "Corrupt task records moved to the store's quarantine folder",
            )
            .expect("valid metric"),
            checks: IntCounterVec::new(
                Opts::new(
                    "guard_checks_total",
                    "No-harm checks of generated adapters against the base model on their task's labelled examples, by outcome",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            tasks: IntGaugeVec::new(Opts::new("tasks", "Tasks by adapter state"), &["state"])
                .expect("valid metric"),
            shown_tasks: IntGauge::new(
                "tasks_shown_examples",
                "Tasks answered by the base model shown their first labelled examples",
            )
            .expect("valid metric"),
            adapters: IntGaugeVec::new(
                Opts::new("adapters", "Adapters by where they are"),
                &["where"],
            )
            .expect("valid metric"),
            adapter_bytes: IntGaugeVec::new(
                Opts::new("adapter_bytes", "Adapter bytes by where they are"),
                &["where"],
            )
            .expect("valid metric"),
            registry,
        };
        for c in [
            Box::new(m.requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.rejected.clone()),
            Box::new(m.generation_seconds.clone()),
            Box::new(m.registration_seconds.clone()),
            Box::new(m.layer_seconds.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.evictions.clone()),
            Box::new(m.loads.clone()),
            Box::new(m.failures.clone()),
            Box::new(m.dropped_tasks.clone()),
            Box::new(m.refused_tasks.clone()),
            Box::new(m.quarantined.clone()),
            Box::new(m.checks.clone()),
            Box::new(m.tasks.clone()),
            Box::new(m.shown_tasks.clone()),
            Box::new(m.adapters.clone()),
            Box::new(m.adapter_bytes.clone()),
        ] {
            m.registry.register(c).expect("unique metric");
        }
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub async fn metrics(State(p): State<Arc<Plugin>>) -> impl IntoResponse {
    let m = &p.metrics;
    // The table counts without knowing about metrics; catch the counters up here.
    let catch_up = |c: &IntCounter, total: u64| c.inc_by(total.saturating_sub(c.get()));
    catch_up(&m.evictions, p.table.evictions.load(Ordering::Relaxed));
    catch_up(&m.loads, p.table.loads.load(Ordering::Relaxed));
    catch_up(
        &m.failures.with_label_values(&["load"]),
        p.table.load_failures.load(Ordering::Relaxed),
    );
    catch_up(&m.quarantined, p.table.quarantined().len() as u64);
    let list = p.table.list();
    for s in ["none", "loading", "resident", "stored", "failed"] {
        m.tasks.with_label_values(&[s]).set(0);
    }
    let (mut resident, mut resident_bytes, mut stored, mut stored_bytes) = (0, 0, 0, 0);
    for t in &list {
        let s = match &t.state {
            AdapterState::None => "none",
            AdapterState::Loading => "loading",
            AdapterState::Resident => "resident",
            AdapterState::Stored => "stored",
            AdapterState::Failed(_) => "failed",
        };
        m.tasks.with_label_values(&[s]).inc();
        if t.hash.is_some() {
            stored += 1;
            stored_bytes += t.bytes as i64;
        }
        if t.resident_bytes > 0 {
            resident += 1;
            resident_bytes += t.resident_bytes as i64;
        }
    }
    if let Some(sp) = &p.specialiser {
        m.shown_tasks.set(sp.shown_tasks() as i64);
    }
    m.adapters.with_label_values(&["resident"]).set(resident);
    m.adapters.with_label_values(&["stored"]).set(stored);
    m.adapter_bytes
        .with_label_values(&["resident"])
        .set(resident_bytes);
    m.adapter_bytes
        .with_label_values(&["stored"])
        .set(stored_bytes);
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut out);
    (
        [(
            header::CONTENT_TYPE,
            TextEncoder::new().format_type().to_string(),
        )],
        out,
    )
}
