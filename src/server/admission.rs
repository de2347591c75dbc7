//! Admission: a bound on the chat and completion requests in flight, so that no client can
//! pile up requests, and their bodies, without limit, and no task can take the places of
//! others. A routed request takes, waiting at most `plugin.admission_wait_ms` for each:
//!
//! 1. when an adapter serves it (or the base model shown the task's examples), a place of
//!    its **task** (at most `plugin.max_in_flight_per_task`): the task's share, so that one
//!    tenant cannot fill the engine model it shares with the others;
//! 2. a place on the **engine model** that computes it (at most
//!    `plugin.max_in_flight_per_model`): the base for untagged requests, for tasks without
//!    a resident adapter and, with `adapter_mode = "shared"`, for every adapter too (they
//!    all run in the base's batches); an adapter's own model with `adapter_mode = "merged"`.
//!
//! Past the wait it is refused in the OpenAI error shape with `Retry-After`:
//!
//! - **503** (`server_overloaded`) when the base model is full: its being full is the
//!   server's saturation, not the caller's doing;
//! - **429** (`rate_limit_exceeded`) when the task's share (or its merged adapter model,
//!   which only its requests reach) is full: that task alone is over its share.
//!
//! OpenAI clients retry both after the `Retry-After` delay. The task's place is taken first,
//! so that a task over its share waits without holding a place on the engine model.
//!
//! A place is held until its answer has ended: a non-streamed one until the engine's handler
//! returns it, a streamed one until the stream is read to its end or dropped (the tagging
//! layer's `GuardedBody`). A client that goes away drops the handler, and with it the
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
use crate::engine::AdapterMode;

/// A request's places; dropping it frees them.
#[derive(Debug)]
pub struct Slot {
    _task: Option<OwnedSemaphorePermit>,
    _model: OwnedSemaphorePermit,
}

/// Places of one kind (engine models, or tasks), `limit` each, for every key with requests
/// in flight or waiting.
struct Places {
    limit: usize,
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl Places {
    fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Semaphore>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The places of `key`. Keys that nobody holds or waits for are dropped from the map
    /// here (adapter models come and go with every load): a key's semaphore is shared only
    /// by its places and waiters, and new shares are only made under this lock.
    fn of(&self, key: &str) -> Arc<Semaphore> {
        let mut keys = self.lock();
        keys.retain(|k, s| k == key || Arc::strong_count(s) > 1);
        keys.entry(key.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone()
    }

    /// Takes a place of `key`, waiting at most `wait` (waiters are served first come, first
    /// served); `None` past it.
    async fn take(&self, key: &str, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let places = self.of(key);
        if wait.is_zero() {
            places.try_acquire_owned().ok()
        } else {
            tokio::time::timeout(wait, places.acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        }
    }

    fn in_flight(&self, key: &str) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |s| self.limit - s.available_permits())
    }
}

/// The places of every engine model and task with requests in flight or waiting.
pub struct Admission {
    wait: Duration,
    models: Places,
    tasks: Places,
}

/// Where a request runs: its engine model, whether that is the shared base (whose refusal
/// is the server's), and the task whose share it takes, if an adapter serves it.
pub struct Target<'a> {
    pub model: &'a str,
    pub base: bool,
    pub task: Option<&'a str>,
}

impl Admission {
    /// `per_model` requests in flight per engine model, `per_task` per task served by an
    /// adapter; a request waits at most `wait` for each place (zero: refused at once).
    pub fn new(per_model: usize, per_task: usize, wait: Duration) -> Self {
        Self {
            wait,
            models: Places::new(per_model),
            tasks: Places::new(per_task),
        }
    }

    /// Takes the places of `target`: the task's first, then the engine model's.
    pub async fn admit(&self, target: &Target<'_>) -> Result<Slot, ApiError> {
        let task = match target.task {
            Some(t) => Some(
                self.tasks
                    .take(t, self.wait)
                    .await
                    .ok_or_else(|| self.refusal(Full::Task))?,
            ),
            None => None,
        };
        let full = if target.base {
            Full::Base
        } else {
            Full::Adapter
        };
        let model = self
            .models
            .take(target.model, self.wait)
            .await
            .ok_or_else(|| self.refusal(full))?;
        Ok(Slot {
            _task: task,
            _model: model,
        })
    }

    /// Requests holding a place on engine model `model` now.
    pub fn in_flight(&self, model: &str) -> usize {
        self.models.in_flight(model)
    }

    /// Requests holding a place of task `task` now.
    pub fn task_in_flight(&self, task: &str) -> usize {
        self.tasks.in_flight(task)
    }

    fn refusal(&self, full: Full) -> ApiError {
        let wait_ms = self.wait.as_millis();
        let secs = wait_ms.div_ceil(1000).max(1) as u64;
        let (status, code, what, limit, key) = match full {
            Full::Base => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_overloaded",
                "the server's base model",
                self.models.limit,
                "max_in_flight_per_model",
            ),
            Full::Adapter => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "this task's adapter",
                self.models.limit,
                "max_in_flight_per_model",
            ),
            Full::Task => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                "this task",
                self.tasks.limit,
                "max_in_flight_per_task",
            ),
        };
        ApiError::new(
            status,
            format!(
                "{what} has {limit} requests in flight, its limit (plugin.{key}), and no place came free within {wait_ms} ms; retry after {secs} s"
            ),
        )
        .with_code(code)
        .with_retry_after(secs)
    }
}

/// Which places were full.
#[derive(Clone, Copy)]
enum Full {
    Base,
    Adapter,
    Task,
}

/// Admits a routed request (see the module doc), counting refusals in the metrics by
/// status; `shown`: the task of a request the base model answers with the task's examples
/// shown, which counts against the task's share as its adapter's requests do.
pub async fn admit(plugin: &Plugin, route: &Route, shown: Option<&str>) -> Result<Slot, ApiError> {
    let base = plugin.table.engine().base_id();
    let target = match route {
        Route::Base => Target {
            model: base,
            base: true,
            task: shown,
        },
        Route::Adapter(m) => match plugin.config.model.adapter_mode {
            AdapterMode::Shared => Target {
                model: base,
                base: true,
                task: Some(&m.task),
            },
            AdapterMode::Merged => Target {
                model: &m.engine_id,
                base: false,
                task: Some(&m.task),
            },
        },
    };
    plugin.admission.admit(&target).await.inspect_err(|e| {
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

    fn base() -> Target<'static> {
        Target {
            model: "base",
            base: true,
            task: None,
        }
    }

    fn on(model: &'static str, base: bool, task: &'static str) -> Target<'static> {
        Target {
            model,
            base,
            task: Some(task),
        }
    }

    #[tokio::test]
    async fn places_are_bounded_per_model_and_refused_with_retry_after() {
        let a = Admission::new(2, 2, Duration::ZERO);
        let first = a.admit(&base()).await.unwrap();
        let _second = a.admit(&base()).await.unwrap();
        assert_eq!(a.in_flight("base"), 2);
        let e = a.admit(&base()).await.unwrap_err();
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
        // A shared adapter runs on the base: the base being full refuses it too, as the
        // server's saturation, and the task's place it took is given back.
        let e = a.admit(&on("base", true, "t")).await.unwrap_err();
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.task_in_flight("t"), 0);

        // A merged adapter model has places of its own, and its refusal is the task's.
        let _a1 = a.admit(&on("dnd:t:h:0", false, "t")).await.unwrap();
        let _a2 = a.admit(&on("dnd:t:h:0", false, "u")).await.unwrap();
        let e = a.admit(&on("dnd:t:h:0", false, "v")).await.unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            (e.code, e.kind()),
            (Some("rate_limit_exceeded"), "rate_limit_error")
        );

        drop(first);
        assert_eq!(a.in_flight("base"), 1);
        let _again = a.admit(&base()).await.unwrap();
    }

    /// A task takes at most its share of a shared engine model: past it 429, naming the
    /// task limit, while other tasks and untagged requests still get places.
    #[tokio::test]
    async fn a_task_takes_at_most_its_share_of_the_shared_base() {
        let a = Admission::new(4, 2, Duration::ZERO);
        let _t1 = a.admit(&on("base", true, "t")).await.unwrap();
        let _t2 = a.admit(&on("base", true, "t")).await.unwrap();
        let e = a.admit(&on("base", true, "t")).await.unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::TOO_MANY_REQUESTS, Some("rate_limit_exceeded"))
        );
        assert!(
            e.message.contains("max_in_flight_per_task"),
            "{}",
            e.message
        );
        assert_eq!((a.in_flight("base"), a.task_in_flight("t")), (2, 2));
        let _u = a.admit(&on("base", true, "u")).await.unwrap();
        let _b = a.admit(&base()).await.unwrap();
        assert_eq!(a.in_flight("base"), 4);
    }

    #[tokio::test]
    async fn a_request_waits_for_a_place_at_most_the_admission_wait() {
        let wait = Duration::from_millis(300);
        let a = Arc::new(Admission::new(1, 1, wait));
        let m = || on("m", false, "t");
        let held = a.admit(&m()).await.unwrap();
        let t = Instant::now();
        let e = a.admit(&m()).await.unwrap_err();
        assert!(t.elapsed() >= wait, "{:?}", t.elapsed());
        assert_eq!(
            (e.status, e.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(1))
        );

        // A place that comes free during the wait goes to the waiter.
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit(&m()).await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn models_and_tasks_nobody_uses_are_forgotten() {
        let a = Admission::new(1, 1, Duration::ZERO);
        for i in 0..100 {
            let model = format!("dnd:t:h:{i}");
            let task = format!("t{i}");
            drop(
                a.admit(&Target {
                    model: &model,
                    base: false,
                    task: Some(&task),
                })
                .await
                .unwrap(),
            );
        }
        let _held = a.admit(&base()).await.unwrap();
        assert_eq!(a.models.lock().len(), 1, "only the model in use is kept");
        assert!(a.tasks.lock().len() <= 1, "at most the last task is kept");
        assert_eq!(a.in_flight("dnd:t:h:0"), 0);
    }
}
