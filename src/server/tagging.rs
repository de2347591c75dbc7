//! Task tagging: a layer over the OpenAI routes that finds a request's task id, picks the
//! model that serves it (base or the task's adapter), rewrites the body's `model` field to
//! that engine model and names it in the `x-dnd-adapter` response header.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::config::TaskSource;
use super::error::ApiError;
use super::Plugin;
use crate::adapters::{Route, ADAPTER_MODEL_PREFIX};

pub const ADAPTER_HEADER: &str = "x-dnd-adapter";
const MAX_TASK_ID: usize = 128;

/// Checks a task id: `[A-Za-z0-9._-]`, 1 to 128 characters.
pub fn validate_task_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::bad_request("task id is empty"));
    }
    if id.len() > MAX_TASK_ID {
        return Err(ApiError::bad_request(format!(
            "task id is {} characters long; at most {MAX_TASK_ID} are allowed",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ApiError::bad_request(format!(
            "task id contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    if id == "." || id == ".." {
        return Err(ApiError::bad_request("task id may not be '.' or '..'"));
    }
    Ok(())
}

/// Finds the task id in the configured sources, in order. `Ok(None)`: untagged.
pub fn find_task_id(
    sources: &[TaskSource],
    header: &str,
    headers: &HeaderMap,
    body: &serde_json::Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    for source in sources {
        let found = match source {
            TaskSource::Header => match headers.get(header) {
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| {
                            ApiError::bad_request(format!(
                                "task id in header {header} is not ASCII text"
                            ))
                        })?
                        .to_string(),
                ),
                None => None,
            },
            TaskSource::Body | TaskSource::User => {
                let key = if *source == TaskSource::Body {
                    "task_id"
                } else {
                    "user"
                };
                match body.get(key) {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(_) => {
                        return Err(ApiError::bad_request(format!(
                            "body field {key} must be a string"
                        )))
                    }
                }
            }
        };
        if let Some(id) = found {
            validate_task_id(&id)?;
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Routes that the stock server exposes but that could reach or corrupt adapter models
/// (stock reload merges LoRAs twice, trap 1 of engine.md), or that leak internals.
const HIDDEN: &[&str] = &[
    "/v1/models/unload",
    "/v1/models/reload",
    "/v1/models/tune",
    "/v1/models/status",
    "/v1/system/doctor",
    "/re_isq",
];

/// The layer: applied to the stock OpenAI router.
pub async fn tag_request(State(plugin): State<Arc<Plugin>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if HIDDEN.contains(&path.as_str()) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{path} is disabled by the mistralrs-dnd plugin"),
        )
        .into_response();
    }
    if path == "/v1/models" {
        return hide_adapter_models(next.run(req).await).await;
    }
    if !(path == "/v1/chat/completions" || path == "/v1/completions") {
        return next.run(req).await;
    }
    match route_request(&plugin, req).await {
        Ok((req, route, _)) => {
            let label = match &route {
                Route::Base => "base".to_string(),
                Route::Adapter(r) => format!("{}@{}", r.task, r.hash),
            };
            let mut resp = next.run(req).await;
            if let Ok(v) = HeaderValue::from_str(&label) {
                resp.headers_mut().insert(ADAPTER_HEADER, v);
            }
            // Keep the adapter model alive until the (possibly streamed) body is done.
            let (parts, body) = resp.into_parts();
            let guarded = Body::from_stream(GuardedStream {
                inner: body.into_data_stream(),
                _guard: route,
            });
            Response::from_parts(parts, guarded)
        }
        Err(e) => e.into_response(),
    }
}

/// Drops adapter engine models from the stock model list: their ids name tasks (tenants),
/// which other clients must not see.
async fn hide_adapter_models(resp: Response) -> Response {
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return ApiError::internal("reading the model list").into_response();
    };
    let mut v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    if let Some(list) = v.get_mut("data").and_then(Value::as_array_mut) {
        list.retain(|m| {
            !m.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with(ADAPTER_MODEL_PREFIX))
        });
    }
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        Body::from(serde_json::to_vec(&v).unwrap_or_default()),
    )
}

/// The request rewritten for its engine model, the route, and the engine model id.
async fn route_request(
    plugin: &Arc<Plugin>,
    req: Request,
) -> Result<(Request, Route, String), ApiError> {
    let (mut parts, body) = req.into_parts();
    let bytes: Bytes = axum::body::to_bytes(body, plugin.config.server.max_body_bytes)
        .await
        .map_err(|e| ApiError::bad_request(format!("reading request body: {e}")))?;
    let mut json: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not a JSON object: {e}")))?;
    let pc = &plugin.config.plugin;
    let task = find_task_id(&pc.task_id_sources, &pc.task_header, &parts.headers, &json)?;
    json.remove("task_id");
    if let (Some(t), Some(sp)) = (&task, &plugin.specialiser) {
        sp.observe(t, super::specialise::prompt_text(&json));
    }
    let route = match &task {
        None => Route::Base,
        Some(t) => {
            plugin
                .table
                .route(t, Duration::from_millis(pc.load_wait_ms))
                .await
        }
    };
    let (model, served_by) = match &route {
        Route::Base => (plugin.table.engine().base_id().to_string(), "base"),
        Route::Adapter(r) => (r.engine_id.clone(), "adapter"),
    };
    plugin
        .metrics
        .requests
        .with_label_values(&[served_by])
        .inc();
    json.insert("model".into(), Value::String(model.clone()));
    let body = serde_json::to_vec(&json).map_err(|e| ApiError::internal(e.to_string()))?;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Ok((Request::from_parts(parts, Body::from(body)), route, model))
}

/// A body stream that holds a value until the stream is dropped.
struct GuardedStream<S, G> {
    inner: S,
    _guard: G,
}

impl<S: futures::Stream + Unpin, G: Unpin> futures::Stream for GuardedStream<S, G> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::pin::Pin::new(&mut self.inner).poll_next(cx)
    }
}
