//! Task tagging: a layer over the OpenAI routes that, in keys mode, admits a request by its
//! API key ([`super::keys`]), bounds it (body size, `max_tokens`, `n`, messages, input
//! bytes), finds its task id, picks the model that serves it (base or the task's adapter),
//! rewrites the body's `model` field to that engine model, names it in the `x-dnd-adapter`
//! response header and shows the client's public model name in the response instead of the
//! engine's.
//!
//! Where the task id comes from depends on `plugin.tenants`:
//! - `open`: from the request, the configured `task_id_sources` in order ([`find_task_id`]);
//!   no credentials, so any client may name any task.
//! - `keys`: every `/v1/` request needs a key (401 `invalid_api_key` without one, 429
//!   `rate_limit_exceeded` past its limit); `/health`, `/` and CORS preflights do not. The
//!   key's tenant is the task, always ([`keyed_task_id`]), so `x-dnd-adapter` can only ever
//!   name the caller's own adapter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::config::{PluginConfig, TaskSource, TenantMode};
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
    // Also keeps ids off the store's own names (its lock, quarantine and temp files).
    if id.starts_with('.') {
        return Err(ApiError::bad_request("task id may not start with '.'"));
    }
    Ok(())
}

/// Finds the task id in the configured sources, in order. `Ok(None)`: untagged. A bad id
/// is a 400 whose `param` names the body field it came from (`task_id`, `user`; none for
/// the header).
pub fn find_task_id(
    sources: &[TaskSource],
    header: &str,
    headers: &HeaderMap,
    body: &serde_json::Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    for source in sources {
        let (found, param) = match source {
            TaskSource::Header => match headers.get(header) {
                Some(v) => (
                    Some(
                        v.to_str()
                            .map_err(|_| {
                                ApiError::bad_request(format!(
                                    "task id in header {header} is not ASCII text"
                                ))
                            })?
                            .to_string(),
                    ),
                    None,
                ),
                None => (None, None),
            },
            TaskSource::Body | TaskSource::User => {
                let key = if *source == TaskSource::Body {
                    "task_id"
                } else {
                    "user"
                };
                match body.get(key) {
                    None | Some(Value::Null) => (None, None),
                    Some(Value::String(s)) => (Some(s.clone()), Some(key)),
                    Some(_) => {
                        return Err(ApiError::bad_request(format!(
                            "body field {key} must be a string"
                        ))
                        .with_param(key))
                    }
                }
            }
        };
        if let Some(id) = found {
            validate_task_id(&id).map_err(|e| match param {
                Some(p) => e.with_param(p),
                None => e,
            })?;
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// The task of a request made with a key of `tenant` (keys mode): the tenant, whatever the
/// request says. An `X-Task-Id` header (the configured `header`) or `task_id` field that
/// names the tenant itself is accepted, so clients written for open mode keep working; one
/// that names any other task is a 403 `tenant_mismatch` (whether that task exists or not),
/// so that the client learns at once that its key reaches its own tenant only instead of
/// being answered quietly by another adapter than the one it asked for. The `user` field is
/// not read: OpenAI clients send their own end user's id there.
pub fn keyed_task_id(
    tenant: &str,
    header: &str,
    headers: &HeaderMap,
    body: &serde_json::Map<String, Value>,
) -> Result<String, ApiError> {
    for (source, param) in [
        (TaskSource::Header, None),
        (TaskSource::Body, Some("task_id")),
    ] {
        let Some(named) = find_task_id(&[source], header, headers, body)? else {
            continue;
        };
        if named != tenant {
            let what = match param {
                Some(p) => format!("body field {p}"),
                None => format!("header {header}"),
            };
            let mut e = ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "this API key is for tenant {tenant}, but {what} names {named}; with \
                     plugin.tenants = \"keys\" the key alone chooses the tenant"
                ),
            )
            .with_code("tenant_mismatch");
            if let Some(p) = param {
                e = e.with_param(p);
            }
            return Err(e);
        }
    }
    Ok(tenant.to_string())
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

/// Route prefixes hidden like [`HIDDEN`]: the Responses API keeps state per response and
/// would need its own tagging; it is off until it is routed like chat.
const HIDDEN_PREFIXES: &[&str] = &["/v1/responses"];

/// Whether the plugin hides `path` (404 with a reason).
fn is_hidden(path: &str) -> bool {
    HIDDEN.contains(&path)
        || HIDDEN_PREFIXES.iter().any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// The layer: applied to the stock OpenAI router.
pub async fn tag_request(State(plugin): State<Arc<Plugin>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_hidden(&path) {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{path} is disabled by the mistralrs-dnd plugin"),
        )
        .into_response();
    }
    let tenant = match authenticate(&plugin, &req) {
        Ok(tenant) => tenant,
        Err(e) => return e.into_response(),
    };
    if path == "/v1/models" {
        return hide_adapter_models(next.run(req).await).await;
    }
    // Only a POST is a chat or completion: the stock router answers other methods (405,
    // CORS preflights) without a body to read.
    if !(path == "/v1/chat/completions" || path == "/v1/completions")
        || req.method() != Method::POST
    {
        return next.run(req).await;
    }
    let started = Instant::now();
    match route_request(&plugin, req, tenant.as_deref()).await {
        Ok((req, route)) => {
            let public = req.extensions().get::<PublicModel>().cloned();
            let label = match &route {
                Route::Base => "base".to_string(),
                Route::Adapter(r) => format!("{}@{}", r.task, r.hash),
            };
            // Places of the task and on the engine model (bounded waits, 429/503 past them),
            // held with the route until the answer has ended or its client has gone (see
            // `admission`).
            let slot = match super::admission::admit(&plugin, &route).await {
                Ok(slot) => slot,
                Err(e) => return e.into_response(),
            };
            let before = started.elapsed();
            // A client that goes away drops this future, the handler and its receiver: the
            // engine cancels the sequence at its next step (vendor patch 0004).
            let mut resp = next.run(req).await;
            let after = Instant::now();
            let guard = (route, slot);
            if let Some(public) = public {
                resp = show_public_model(resp, public.0).await;
            }
            let layer = before + after.elapsed();
            plugin.metrics.layer_seconds.observe(layer.as_secs_f64());
            if let Ok(v) = HeaderValue::from_str(&label) {
                resp.headers_mut().insert(ADAPTER_HEADER, v);
            }
            // Keep the route (the adapter model) and the place until the (possibly
            // streamed) body is done.
            let (parts, body) = resp.into_parts();
            let guarded = Body::new(GuardedBody {
                inner: body,
                guard: Some(guard),
            });
            Response::from_parts(parts, guarded)
        }
        Err(e) => e.into_response(),
    }
}

/// The tenant of a request's API key in keys mode, the request counted against the key's
/// limit. `None` in open mode, and for what needs no key: routes outside `/v1/` (`/health`,
/// `/`) and CORS preflights, which browsers send without credentials.
fn authenticate(plugin: &Plugin, req: &Request) -> Result<Option<String>, ApiError> {
    if plugin.config.plugin.tenants == TenantMode::Open
        || !req.uri().path().starts_with("/v1/")
        || req.method() == Method::OPTIONS
    {
        return Ok(None);
    }
    plugin.keys.admit(req.headers(), Instant::now()).map(Some)
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

/// The request rewritten for its engine model, and the route; `tenant`: the tenant of the
/// request's key (keys mode).
async fn route_request(
    plugin: &Arc<Plugin>,
    req: Request,
    tenant: Option<&str>,
) -> Result<(Request, Route), ApiError> {
    let (mut parts, body) = req.into_parts();
    let pc = &plugin.config.plugin;
    require_json(&parts.headers)?;
    let bytes = read_body(body, &parts.headers, pc.max_request_bytes).await?;
    let mut json: serde_json::Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("request body is not a JSON object: {e}")))?;
    // Every check that can refuse the request comes before its prompt is kept and a model
    // chosen, so that a refused request changes nothing.
    let public = check_body(pc, &plugin.base_dirs, parts.uri.path(), &mut json)?;
    let task = match tenant {
        Some(t) => Some(keyed_task_id(t, &pc.task_header, &parts.headers, &json)?),
        None => find_task_id(&pc.task_id_sources, &pc.task_header, &parts.headers, &json)?,
    };
    json.remove("task_id");
    if let (Some(t), Some(sp)) = (&task, &plugin.specialiser) {
        sp.observe(t, super::specialise::prompt_text(&json))?;
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
    json.insert("model".into(), Value::String(model));
    let body = serde_json::to_vec(&json).map_err(|e| ApiError::internal(e.to_string()))?;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.extensions.insert(PublicModel(public));
    Ok((Request::from_parts(parts, Body::from(body)), route))
}

/// A chat or completion body is JSON (`application/json` or `application/*+json`), as the
/// stock handlers require: 415 otherwise, answered here rather than by the stock handler so
/// that it comes before anything of the request is kept.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let media = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("request body must be sent as Content-Type: application/json, got {media:?}"),
        ))
    }
}

/// The top-level fields of the stock chat and completion requests (mistral.rs 0.8.1's
/// `ChatCompletionRequest` and `CompletionRequest`), as `param` of an error naming one.
const REQUEST_FIELDS: &[&str] = &[
    "messages",
    "prompt",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "best_of",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stream",
    "stop",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "tools",
    "tool_choice",
    "response_format",
    "web_search_options",
    "grammar",
    "dry_multiplier",
    "dry_base",
    "dry_allowed_length",
    "dry_sequence_breakers",
    "enable_thinking",
    "reasoning_effort",
    "truncate_sequence",
    "echo",
    "suffix",
    "user",
];

/// Checks a chat (`path` `/v1/chat/completions`) or completion body against the stock
/// handler's request type, the one it will be parsed into: a field of the wrong type
/// (`"temperature": "hot"`, `"messages": 5`) or a missing one (`messages`, `prompt`) is a
/// 400 naming the field, instead of the stock handler's plain-text 422 once the request has
/// been tagged and routed.
pub fn check_fields(path: &str, body: &serde_json::Map<String, Value>) -> Result<(), ApiError> {
    use mistralrs_server_core::openai::{ChatCompletionRequest, CompletionRequest};
    let error = if path == "/v1/chat/completions" {
        first_error::<ChatCompletionRequest>(body)
    } else {
        first_error::<CompletionRequest>(body)
    };
    let Some(e) = error else {
        return Ok(());
    };
    let inner = e.inner().to_string();
    // The top-level field at fault: where the error is, or the one missing.
    let field = match e.path().iter().next() {
        Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
        _ => inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string),
    };
    let param = field.and_then(|f| REQUEST_FIELDS.iter().copied().find(|k| *k == f));
    let mut err = ApiError::bad_request(format!("invalid request body: {e}"));
    if let Some(p) = param {
        err = err.with_param(p);
    }
    Err(err)
}

/// Where `body` fails to parse as a `T`, if it does. The plain parse first: it is a third of
/// the cost of one that tracks the path (0.6 against 1.7 us in a hot loop), which is only
/// wanted for the error.
fn first_error<T: serde::de::DeserializeOwned>(
    body: &serde_json::Map<String, Value>,
) -> Option<serde_path_to_error::Error<serde_json::Error>> {
    if T::deserialize(body).is_ok() {
        return None;
    }
    serde_path_to_error::deserialize::<_, T>(body).err()
}

/// Reads a chat or completion body, 413 past `limit` bytes (checked on the announced length
/// first, so that an oversized body is not read at all).
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {limit} bytes (plugin.max_request_bytes)"),
        )
    };
    let announced = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!("reading request body: {e}"))),
    }
}

/// The model name a client asked for, shown in the response instead of the engine's
/// (extension of the rewritten request).
#[derive(Clone)]
struct PublicModel(String);

/// The public model name of a request (its `model`, default `default`). Engine model ids
/// are not public: an adapter model (`dnd:TASK@HASH`, another tenant's) or the base
/// folder path is a 404, as for an unknown model.
pub fn public_model_name(
    body: &serde_json::Map<String, Value>,
    base_dirs: &[String],
) -> Result<String, ApiError> {
    let name = match body.get("model") {
        None | Some(Value::Null) => return Ok("default".into()),
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(
                ApiError::bad_request("body field model must be a string").with_param("model")
            )
        }
    };
    if name.starts_with(ADAPTER_MODEL_PREFIX) || base_dirs.iter().any(|d| d == name) {
        return Err(ApiError::not_found(format!(
            "The model `{name}` does not exist or you do not have access to it."
        ))
        .with_param("model")
        .with_code("model_not_found"));
    }
    Ok(name.clone())
}

/// Checks a chat (`path` `/v1/chat/completions`) or completion body before anything of it
/// is used, in this order: its public model name ([`public_model_name`]: 404 for an engine
/// model id), the bounds ([`apply_bounds`], which also sets the default `max_tokens`) and
/// the stock request type ([`check_fields`]). Returns the public name, which the body's
/// `model` is set to until the route replaces it with the engine's.
pub fn check_body(
    pc: &PluginConfig,
    base_dirs: &[String],
    path: &str,
    body: &mut serde_json::Map<String, Value>,
) -> Result<String, ApiError> {
    let public = public_model_name(body, base_dirs)?;
    apply_bounds(pc, body)?;
    body.insert("model".into(), Value::String(public.clone()));
    check_fields(path, body)?;
    Ok(public)
}

/// Applies the request bounds of the plugin config before anything reaches the engine: a
/// request without `max_tokens` gets the default, and `max_tokens`, `n`, `best_of`, the
/// message count and the input text are checked against their ceilings (400 with the
/// field at fault, worded as OpenAI words it). A bound sent as `null` is not sent: removed,
/// so that the engine's request type (which takes `max_completion_tokens` as another name
/// of `max_tokens`, and no `null` for `n`) sees what the client meant.
pub fn apply_bounds(
    pc: &PluginConfig,
    body: &mut serde_json::Map<String, Value>,
) -> Result<(), ApiError> {
    body.retain(|key, v| {
        !(v.is_null()
            && matches!(
                key.as_str(),
                "max_tokens" | "max_completion_tokens" | "n" | "best_of"
            ))
    });
    let mut named = false;
    for key in ["max_tokens", "max_completion_tokens"] {
        let Some(v) = body.get(key) else {
            continue;
        };
        named = true;
        let n = positive_integer(key, v)?;
        if n > pc.max_tokens_limit as u64 {
            return Err(ApiError::bad_request(format!(
                "{key} is too large: {n}. This model supports at most {} completion tokens, whereas you provided {n}.",
                pc.max_tokens_limit
            ))
            .with_param(key));
        }
    }
    if !named {
        body.insert("max_tokens".into(), pc.default_max_tokens.into());
    }
    for key in ["n", "best_of"] {
        if let Some(v) = body.get(key) {
            let n = positive_integer(key, v)?;
            if n > pc.max_n as u64 {
                return Err(ApiError::bad_request(format!(
                    "{n} is greater than the maximum of {} - '{key}'",
                    pc.max_n
                ))
                .with_param(key));
            }
        }
    }
    if let Some(Value::Array(messages)) = body.get("messages") {
        if messages.len() > pc.max_messages {
            return Err(ApiError::bad_request(format!(
                "{} messages is more than the maximum of {} - 'messages'",
                messages.len(),
                pc.max_messages
            ))
            .with_param("messages"));
        }
    }
    for key in ["messages", "prompt"] {
        let bytes = body.get(key).map_or(0, text_bytes);
        if bytes > pc.max_input_bytes {
            return Err(ApiError::bad_request(format!(
                "the {key} hold {bytes} bytes of text, more than the maximum of {} (plugin.max_input_bytes)",
                pc.max_input_bytes
            ))
            .with_param(key));
        }
    }
    Ok(())
}

fn positive_integer(key: &'static str, v: &Value) -> Result<u64, ApiError> {
    match v.as_u64() {
        Some(n) if n >= 1 => Ok(n),
        _ => Err(ApiError::bad_request(format!(
            "{v} is not a valid value for '{key}': a positive integer is expected"
        ))
        .with_param(key)),
    }
}

/// Bytes of all the strings in a value (message contents, roles and names alike).
fn text_bytes(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len(),
        Value::Array(a) => a.iter().map(text_bytes).sum(),
        Value::Object(o) => o.values().map(text_bytes).sum(),
        _ => 0,
    }
}

/// Shows `name` as the response's `model` (the engine puts its own id or the base folder
/// path there): a JSON body is rewritten whole, a server-sent event stream event by event.
async fn show_public_model(resp: Response, name: String) -> Response {
    let content_type = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (mut parts, body) = resp.into_parts();
    if content_type.starts_with("text/event-stream") {
        let stream = PublicModelEvents {
            inner: body.into_data_stream(),
            pending: Vec::new(),
            name,
        };
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    if !content_type.starts_with("application/json") {
        return Response::from_parts(parts, body);
    }
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::internal(format!("reading the engine's answer: {e}")).into_response()
        }
    };
    match with_model(&bytes, &name) {
        Some(rewritten) => {
            parts.headers.remove(axum::http::header::CONTENT_LENGTH);
            Response::from_parts(parts, Body::from(rewritten))
        }
        None => Response::from_parts(parts, Body::from(bytes)),
    }
}

/// `json` with its top-level `model` set to `name`; `None` when it is not an object with a
/// `model` ([`super::member`], which leaves every other byte as it is).
fn with_model(json: &[u8], name: &str) -> Option<Vec<u8>> {
    super::member::with_member(json, "model", name)
}

/// One server-sent event (its lines, without the blank line that ends it) with the `model`
/// of each JSON `data:` line set to `name`.
fn event_with_model(event: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(event.len());
    for (i, line) in event.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let rewritten = line
            .strip_prefix(b"data:")
            .and_then(|data| with_model(data.trim_ascii(), name));
        match rewritten {
            Some(json) => {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&json);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// An event stream with the `model` of each event rewritten ([`event_with_model`]); holds
/// back at most one incomplete event.
struct PublicModelEvents<S> {
    inner: S,
    pending: Vec<u8>,
    name: String,
}

impl<S> futures::Stream for PublicModelEvents<S>
where
    S: futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            let this = &mut *self;
            if let Some(end) = this.pending.windows(2).position(|w| w == b"\n\n") {
                let rest = this.pending.split_off(end + 2);
                let event = std::mem::replace(&mut this.pending, rest);
                let mut out = event_with_model(&event[..end], &this.name);
                out.extend_from_slice(b"\n\n");
                return Poll::Ready(Some(Ok(Bytes::from(out))));
            }
            match std::pin::Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => this.pending.extend_from_slice(&chunk),
                Poll::Ready(None) if !this.pending.is_empty() => {
                    let event = std::mem::take(&mut this.pending);
                    return Poll::Ready(Some(Ok(Bytes::from(event_with_model(
                        &event, &this.name,
                    )))));
                }
                other => return other,
            }
        }
    }
}

/// A response body that holds a value until the body ends or is dropped, whichever comes
/// first, and is otherwise its inner body: the same frames and the same size hint, so that
/// an answer of known length keeps its Content-Length. (Wrapped as a stream, every answer
/// went out chunked: more bytes and writes per request than the stock router's, seen in
/// `bench overhead`.)
struct GuardedBody<G> {
    inner: Body,
    guard: Option<G>,
}

impl<G: Unpin> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn bounded(v: Value) -> Result<serde_json::Map<String, Value>, ApiError> {
        let mut b = body(v);
        apply_bounds(&PluginConfig::default(), &mut b)?;
        Ok(b)
    }

    #[test]
    fn max_tokens_gets_the_default_and_a_ceiling() {
        let pc = PluginConfig::default();
        let b = bounded(json!({"messages": []})).unwrap();
        assert_eq!(b["max_tokens"], json!(pc.default_max_tokens));
        let b = bounded(json!({"max_tokens": 7})).unwrap();
        assert_eq!(b["max_tokens"], json!(7));
        let b = bounded(json!({"max_completion_tokens": 7})).unwrap();
        assert!(
            !b.contains_key("max_tokens"),
            "the client's own limit is kept"
        );
        assert_eq!(b["max_completion_tokens"], json!(7));
        for key in ["max_tokens", "max_completion_tokens"] {
            let e = bounded(json!({ key: pc.max_tokens_limit + 1 })).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert_eq!(e.param, Some(key));
            assert!(
                e.message.contains(&pc.max_tokens_limit.to_string()),
                "{}",
                e.message
            );
            for bad in [json!(0), json!(-1), json!(2.5), json!("9")] {
                assert_eq!(bounded(json!({ key: bad })).unwrap_err().param, Some(key));
            }
        }
        assert!(bounded(json!({"max_tokens": pc.max_tokens_limit})).is_ok());
        // A null bound is no bound (and never two names for max_tokens reach the engine).
        let b =
            bounded(json!({"max_completion_tokens": null, "n": null, "best_of": null})).unwrap();
        assert_eq!(b["max_tokens"], json!(pc.default_max_tokens));
        for key in ["max_completion_tokens", "n", "best_of"] {
            assert!(!b.contains_key(key), "{key}: {b:?}");
        }
    }

    /// The whole check of a body: a `null` or absent model is `default`, the body's model
    /// is the public name afterwards, and what the stock handler could not parse is a 400.
    #[test]
    fn a_body_is_checked_whole_before_use() {
        let pc = PluginConfig::default();
        let dirs = vec!["/models/smollm2".to_string()];
        let chat = "/v1/chat/completions";
        let msgs = json!([{"role": "user", "content": "hi"}]);
        for (model, public) in [(json!(null), "default"), (json!("gpt-4o"), "gpt-4o")] {
            let mut b = body(json!({"model": model, "messages": msgs}));
            assert_eq!(check_body(&pc, &dirs, chat, &mut b).unwrap(), public);
            assert_eq!(b["model"], json!(public));
            assert_eq!(b["max_tokens"], json!(pc.default_max_tokens));
        }
        let mut b = body(json!({"messages": msgs}));
        assert_eq!(check_body(&pc, &dirs, chat, &mut b).unwrap(), "default");
        let mut b = body(json!({"model": "/models/smollm2", "messages": msgs}));
        let e = check_body(&pc, &dirs, chat, &mut b).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::NOT_FOUND, Some("model_not_found"))
        );
        let mut b = body(json!({"messages": msgs, "n": null, "max_completion_tokens": null}));
        assert!(
            check_body(&pc, &dirs, chat, &mut b).is_ok(),
            "nulls are absent"
        );
        let mut b = body(json!({"messages": msgs, "top_p": "high"}));
        let e = check_body(&pc, &dirs, chat, &mut b).unwrap_err();
        assert_eq!(
            (e.status, e.param),
            (StatusCode::BAD_REQUEST, Some("top_p"))
        );
    }

    #[test]
    fn n_messages_and_input_are_bounded() {
        let pc = PluginConfig::default();
        for key in ["n", "best_of"] {
            assert!(bounded(json!({ key: pc.max_n })).is_ok());
            let e = bounded(json!({ key: 100_000 })).unwrap_err();
            assert_eq!((e.status, e.param), (StatusCode::BAD_REQUEST, Some(key)));
            assert_eq!(bounded(json!({ key: 0 })).unwrap_err().param, Some(key));
        }
        let msg = json!({"role": "user", "content": "hi"});
        let many = vec![msg.clone(); pc.max_messages + 1];
        let e = bounded(json!({ "messages": many })).unwrap_err();
        assert_eq!(e.param, Some("messages"));
        assert!(bounded(json!({ "messages": vec![msg; pc.max_messages] })).is_ok());
        let long = "x".repeat(pc.max_input_bytes + 1);
        let parts = json!([{"role": "user", "content": [{"type": "text", "text": long}]}]);
        assert_eq!(
            bounded(json!({ "messages": parts })).unwrap_err().param,
            Some("messages")
        );
        assert_eq!(
            bounded(json!({ "prompt": long })).unwrap_err().param,
            Some("prompt")
        );
        assert!(bounded(json!({ "prompt": &long[1..] })).is_ok());
    }

    /// Keys mode: the key's tenant is the task; a header or body field naming another
    /// task is refused (existing or not), `user` is not read.
    #[test]
    fn a_key_alone_chooses_the_tenant() {
        let keyed = |headers: &[(&str, &str)], b: Value| {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.insert(
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            keyed_task_id("acme", "x-task-id", &h, &body(b))
        };
        assert_eq!(keyed(&[], json!({})).unwrap(), "acme");
        assert_eq!(keyed(&[], json!({"user": "globex"})).unwrap(), "acme");
        assert_eq!(
            keyed(&[("x-task-id", "acme")], json!({"task_id": "acme"})).unwrap(),
            "acme"
        );
        for (h, b, param) in [
            (vec![("x-task-id", "globex")], json!({}), None),
            (vec![("x-task-id", "nobody")], json!({}), None),
            (
                vec![("x-task-id", "acme")],
                json!({"task_id": "globex"}),
                Some("task_id"),
            ),
            (
                vec![],
                json!({"task_id": "globex", "user": "acme"}),
                Some("task_id"),
            ),
        ] {
            let e = keyed(&h, b).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{}", e.message);
            assert_eq!((e.code, e.param), (Some("tenant_mismatch"), param));
            assert!(e.message.contains("acme"), "{}", e.message);
        }
        // A malformed id is the same 400 as in open mode.
        let e = keyed(&[("x-task-id", "../x")], json!({})).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_bad_task_id_names_the_field_it_came_from() {
        let sources = [TaskSource::Header, TaskSource::Body, TaskSource::User];
        let find = |h: &[(&str, &str)], b: Value| {
            find_task_id(&sources, "x-task-id", &header_map(h), &body(b))
        };
        let e = find(&[("x-task-id", "a b")], json!({})).unwrap_err();
        assert_eq!((e.status, e.param), (StatusCode::BAD_REQUEST, None));
        for (b, param) in [
            (json!({"task_id": "a b"}), "task_id"),
            (json!({"task_id": 5}), "task_id"),
            (json!({"user": "../x"}), "user"),
            (json!({"task_id": null, "user": [1]}), "user"),
        ] {
            let e = find(&[], b.clone()).unwrap_err();
            assert_eq!(
                (e.status, e.param),
                (StatusCode::BAD_REQUEST, Some(param)),
                "{b}"
            );
        }
        assert_eq!(
            find(&[], json!({"task_id": null, "user": "ok"})).unwrap(),
            Some("ok".to_string())
        );
    }

    #[test]
    fn chat_bodies_must_be_sent_as_json() {
        let ct = axum::http::header::CONTENT_TYPE.as_str();
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
        ] {
            assert!(require_json(&header_map(&[(ct, ok)])).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let e = require_json(&header_map(&[(ct, bad)])).unwrap_err();
            assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{bad}");
        }
        let e = require_json(&HeaderMap::new()).unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    /// Bodies the stock handler could not parse are refused before anything else, naming
    /// the field at fault; fields the stock request does not know (`task_id`, a chat's
    /// `user`) pass.
    #[test]
    fn bodies_that_do_not_fit_the_stock_request_name_the_field() {
        let (chat, completion) = ("/v1/chat/completions", "/v1/completions");
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let ok = json!({"messages": msgs, "task_id": "t", "user": "u", "max_tokens": 3});
        assert!(check_fields(chat, &body(ok)).is_ok());
        assert!(check_fields(chat, &body(json!({"messages": "hi"}))).is_ok());
        assert!(check_fields(completion, &body(json!({"prompt": "hi", "user": "u"}))).is_ok());
        for (path, b, param) in [
            (chat, json!({}), "messages"),
            (chat, json!({"messages": 5}), "messages"),
            (
                chat,
                json!({"messages": [{"role": 5, "content": "x"}]}),
                "messages",
            ),
            (
                chat,
                json!({"messages": msgs, "temperature": "hot"}),
                "temperature",
            ),
            (chat, json!({"messages": msgs, "stream": "yes"}), "stream"),
            (chat, json!({"messages": msgs, "logprobs": 3}), "logprobs"),
            (completion, json!({}), "prompt"),
            (completion, json!({"prompt": 5}), "prompt"),
            (completion, json!({"prompt": "x", "echo": "no"}), "echo"),
        ] {
            let e = check_fields(path, &body(b.clone())).unwrap_err();
            assert_eq!(
                (e.status, e.param),
                (StatusCode::BAD_REQUEST, Some(param)),
                "{path} {b}: {}",
                e.message
            );
            assert!(e.message.contains(param), "{}", e.message);
        }
    }

    #[test]
    fn task_ids_cannot_name_the_stores_own_files() {
        for id in [".", "..", ".quarantine", ".store.lock", ".t.tmp-1"] {
            assert!(validate_task_id(id).is_err(), "{id}");
        }
        for id in ["a.b", "support-fr", "t_1."] {
            assert!(validate_task_id(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn engine_model_ids_are_not_public() {
        let dirs = vec!["/models/smollm2".to_string()];
        let name = |v: Value| public_model_name(&body(v), &dirs);
        assert_eq!(name(json!({})).unwrap(), "default");
        assert_eq!(name(json!({"model": "gpt-4o"})).unwrap(), "gpt-4o");
        for id in ["dnd:other@0123", "/models/smollm2"] {
            let e = name(json!({ "model": id })).unwrap_err();
            assert_eq!(e.status, StatusCode::NOT_FOUND);
            assert_eq!((e.param, e.code), (Some("model"), Some("model_not_found")));
        }
        assert_eq!(name(json!({"model": 3})).unwrap_err().param, Some("model"));
    }

    #[test]
    fn the_responses_api_is_hidden() {
        for path in [
            "/v1/responses",
            "/v1/responses/resp_1",
            "/v1/responses/resp_1/cancel",
            "/re_isq",
        ] {
            assert!(is_hidden(path), "{path}");
        }
        for path in ["/v1/chat/completions", "/v1/responsesx", "/v1/models"] {
            assert!(!is_hidden(path), "{path}");
        }
    }

    /// The guard is held while the body is read and let go at its end; the body keeps its
    /// inner body's size (a known length stays known: the answer keeps its Content-Length).
    #[tokio::test]
    async fn a_guarded_body_lets_go_of_its_guard_when_it_ends() {
        use http_body::Body as _;
        use http_body_util::BodyExt;
        let guard = Arc::new(());
        let mut body = GuardedBody {
            inner: Body::from("abc"),
            guard: Some(guard.clone()),
        };
        assert_eq!(body.size_hint().exact(), Some(3));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from("abc"));
        assert_eq!(Arc::strong_count(&guard), 2, "held while the body is read");
        assert!(body.frame().await.is_none());
        assert_eq!(
            Arc::strong_count(&guard),
            1,
            "let go at the end, not at drop"
        );
        let chunks: Vec<Result<Bytes, axum::Error>> = vec![Ok(Bytes::from("a"))];
        let streamed = GuardedBody {
            inner: Body::from_stream(futures::stream::iter(chunks)),
            guard: Some(guard.clone()),
        };
        assert_eq!(
            streamed.size_hint().exact(),
            None,
            "a stream stays a stream"
        );
    }

    #[tokio::test]
    async fn streamed_events_show_the_public_name_whatever_the_chunking() {
        let events = [
            "data: {\"id\":\"a\",\"model\":\"/abs/base\",\"choices\":[]}\n\n",
            ": keep-alive\n\n",
            "data: {\"id\":\"b\",\"model\":\"dnd:t@h\"}\n\n",
            "data: [DONE]\n\n",
        ]
        .concat();
        // Cut into 3-byte chunks: events arrive split across chunks.
        let chunks: Vec<Result<Bytes, axum::Error>> = events
            .as_bytes()
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = PublicModelEvents {
            inner: futures::stream::iter(chunks),
            pending: Vec::new(),
            name: "default".into(),
        };
        let out: Vec<Bytes> = futures::StreamExt::collect::<Vec<_>>(stream)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(out.len(), 4, "one chunk per event");
        let text = String::from_utf8(out.concat()).unwrap();
        assert!(
            !text.contains("/abs/base") && !text.contains("dnd:"),
            "{text}"
        );
        let datas: Vec<&str> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert_eq!(datas.len(), 3, "{text}");
        for d in &datas[..2] {
            let v: Value = serde_json::from_str(d).unwrap();
            assert_eq!(v["model"], "default", "{text}");
        }
        assert_eq!(datas[2], "[DONE]");
        assert!(text.contains(": keep-alive\n\n") && text.ends_with("\n\n"));
    }
}
