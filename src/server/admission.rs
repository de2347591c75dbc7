//! Admission: a bound on the chat and completion requests in flight per engine model (the
//! base, or one adapter), so that no client can pile up requests, and their bodies, without
//! limit. A routed request takes a place on its engine model, waiting at most
//! `plugin.admission_wait_ms` for one; past that it is refused in the OpenAI error shape
//! with `Retry-After`:
//!
//! - **503** (`server_overloaded`) on the base model: every untagged request and every task
//!   without a resident adapter share it, so its being full is the server's saturation, not
//!   the caller's doing;
//! - **429** (`rate_limit_exceeded`) on an adapter model: only its task's requests reach it,
//!   so that task alone is over its share, and other tasks are not held up.
//!
//! OpenAI clients retry both after the `Retry-After` delay.
//!
//! A place is held until its answer has ended: a non-streamed one until the engine's handler
//! returns it, a streamed one until the stream is read to its end or dropped (the tagging
//! layer's `GuardedStream`). A client that goes away drops the handler, and with it the
//! receiver of the engine's responses; the engine then cancels the sequence at its next
//! step (vendor patch 0004), so the place is freed one decode step before the engine
//! drops the sequence, instead of the engine generating on to `max_tokens` for nobody.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use super::Plugin;
use crate::adapters::Route;

/// A request's place on an engine model; dropping it frees the place.
pub type Slot = OwnedSemaphorePermit;

/// The places of every engine model with requests in flight or waiting.
pub struct Admission {
    limit: usize,
    wait: Duration,
    models: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Admission {
    /// `limit` requests in flight per engine model; a request waits at most `wait` for a
    /// place (zero: refused at once).
    pub fn new(limit: usize, wait: Duration) -> Self {
        Self {
            limit: limit.max(1),
            wait,
            models: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The places of `model`. Models that nobody holds or waits for are dropped from the
    /// map here (adapter models come and go with every load): a model's semaphore is shared
    /// only by its places and waiters, and new shares are only made under this lock.
    fn places(&self, model: &str) -> Arc<Semaphore> {
        let mut models = self.lock();
        models.retain(|m, s| m == model || Arc::strong_count(s) > 1);
        models
            .entry(model.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone()
    }

    /// Takes a place on engine model `model`, waiting for one at most the admission wait
    /// (waiters are served first come, first served). `shared`: whether the model is the
    /// base, which makes a refusal the server's (503) rather than the task's (429).
    pub async fn admit(&self, model: &str, shared: bool) -> Result<Slot, ApiError> {
        let places = self.places(model);
        let slot = if self.wait.is_zero() {
            places.try_acquire_owned().ok()
        } else {
            tokio::time::timeout(self.wait, places.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        };
        slot.ok_or_else(|| self.refusal(shared))
    }

    /// Requests holding a place on `model` now.
    pub fn in_flight(&self, model: &str) -> usize {
        self.lock()
            .get(model)
            .map_or(0, |s| self.limit - s.available_permits())
    }

    fn refusal(&self, shared: bool) -> ApiError {
        let wait_ms = self.wait.as_millis();
        let secs = wait_ms.div_ceil(1000).max(1) as u64;
        let (status, code, model) = if shared {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                "the server's base model",
            )
        } else {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "this task's adapter",
            )
        };
        ApiError::new(
            status,
            format!(
                "{model} has {} requests in flight, its limit (plugin.max_in_flight_per_model), and no place came free within {wait_ms} ms; retry after {secs} s",
                self.limit
            ),
        )
        .with_code(code)
        .with_retry_after(secs)
    }
}

/// Admits a routed request on the engine model of its route, counting refusals in the
/// metrics by status.
pub async fn admit(plugin: &Plugin, route: &Route) -> Result<Slot, ApiError> {
    let admitted = match route {
        Route::Base => {
            let base = plugin.table.engine().base_id();
            plugin.admission.admit(base, true).await
        }
        Route::Adapter(m) => plugin.admission.admit(&m.engine_id, false).await,
    };
    admitted.inspect_err(|e| {
        plugin
            .metrics
            .rejected
            .with_label_values(&[e.status.as_str()])
            .inc()
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn places_are_bounded_per_model_and_refused_with_retry_after() {
        let a = Admission::new(2, Duration::ZERO);
        let first = a.admit("base", true).await.unwrap();
        let _second = a.admit("base", true).await.unwrap();
        assert_eq!(a.in_flight("base"), 2);
        let e = a.admit("base", true).await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            (e.code, e.retry_after),
            (Some("server_overloaded"), Some(1))
        );
        assert_eq!(e.kind(), "server_error");
        assert!(
            e.message.contains("max_in_flight_per_model"),
            "{}",
            e.message
        );

        // An adapter model has places of its own, and its refusal is the task's.
        let _a1 = a.admit("dnd:t:h:0", false).await.unwrap();
        let _a2 = a.admit("dnd:t:h:0", false).await.unwrap();
        let e = a.admit("dnd:t:h:0", false).await.unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            (e.code, e.kind()),
            (Some("rate_limit_exceeded"), "rate_limit_error")
        );

        drop(first);
        assert_eq!(a.in_flight("base"), 1);
        let _again = a.admit("base", true).await.unwrap();
    }

    #[tokio::test]
    async fn a_request_waits_for_a_place_at_most_the_admission_wait() {
        let wait = Duration::from_millis(300);
        let a = Arc::new(Admission::new(1, wait));
        let held = a.admit("m", false).await.unwrap();
        let t = Instant::now();
        let e = a.admit("m", false).await.unwrap_err();
        assert!(t.elapsed() >= wait, "{:?}", t.elapsed());
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(1))
        );

        // A place that comes free during the wait goes to the waiter.
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit("m", false).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn models_nobody_uses_are_forgotten() {
        let a = Admission::new(1, Duration::ZERO);
        for i in 0..100 {
            drop(a.admit(&format!("dnd:t:h:{i}"), false).await.unwrap());
        }
        let _held = a.admit("base", true).await.unwrap();
        assert_eq!(a.lock().len(), 1, "only the model in use is kept");
        assert_eq!(a.in_flight("dnd:t:h:0"), 0);
    }
}
