//! Task tagging: a layer over the OpenAI routes that, in keys mode, admits a request by its
//! API key ([`super::keys`]), bounds its body's size, checks the body ([`super::request`]:
//! `max_tokens`, `n`, messages, input bytes, the stock request type), finds its task id,
//! picks the model that serves it (base or the task's adapter; or, where the no-harm check
//! routed them, the base model with the task's examples inserted as earlier chat turns:
//! [`super::specialise::guard`]), sets the body's `model`
//! to that engine model, names it in the `x-dnd-adapter` response header and shows the
//! client's public model name in the response instead of the engine's.
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

use super::config::{TaskSource, TenantMode};
use super::error::ApiError;
use super::request::{check_body, Fields, Text};
use super::Plugin;
use crate::adapters::{Route, ADAPTER_MODEL_PREFIX};

pub const ADAPTER_HEADER: &str = "x-dnd-adapter";
const MAX_TASK_ID: usize = 128;

/// Tokens a chat template adds beyond what a body's bytes account for: a default system
/// message and the assistant's header (SmolLM2's: about 25). Each message's own markers
/// take fewer tokens than the bytes of its JSON braces, keys and role.
const TEMPLATE_TOKENS: usize = 64;

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
    body: &Fields,
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
                let (key, value) = if *source == TaskSource::Body {
                    ("task_id", &body.task_id)
                } else {
                    ("user", &body.user)
                };
                match value {
                    None => (None, None),
                    Some(Text::Str(s)) => (Some(s.to_string()), Some(key)),
                    Some(Text::NotString) => {
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
    body: &Fields,
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
        Ok((req, route, shown)) => {
            let shown = shown.as_deref();
            let public = req.extensions().get::<PublicModel>().cloned();
            let label = match &route {
                Route::Base if shown.is_some() => "base+examples".to_string(),
                Route::Base => "base".to_string(),
                Route::Adapter(r) => format!("{}@{}", r.task, r.hash),
            };
            // Places of the task and on the engine model (bounded waits, 429/503 past them),
            // held with the route until the answer has ended or its client has gone (see
            // `admission`).
            let slot = match super::admission::admit(&plugin, &route, shown).await {
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

/// The request rewritten for its engine model, the route, and the task when its examples
/// were shown (inserted before its messages: the base model answers); `tenant`: the tenant
/// of the request's key (keys mode).
async fn route_request(
    plugin: &Arc<Plugin>,
    req: Request,
    tenant: Option<&str>,
) -> Result<(Request, Route, Option<String>), ApiError> {
    let (mut parts, body) = req.into_parts();
    let pc = &plugin.config.plugin;
    require_json(&parts.headers)?;
    let bytes = read_body(body, &parts.headers, pc.max_request_bytes).await?;
    // Every check that can refuse the request comes before its prompt is kept and a model
    // chosen, so that a refused request changes nothing.
    let checked = check_body(pc, &plugin.base_dirs, parts.uri.path(), &bytes)?;
    let task = match tenant {
        Some(t) => Some(keyed_task_id(
            t,
            &pc.task_header,
            &parts.headers,
            &checked.fields,
        )?),
        None => find_task_id(
            &pc.task_id_sources,
            &pc.task_header,
            &parts.headers,
            &checked.fields,
        )?,
    };
    if let (Some(t), Some(sp)) = (&task, &plugin.specialiser) {
        sp.observe(t, checked.stock.prompt_text())?;
    }
    let mut body = checked.body;
    // A chat request of a task the no-harm check routed to its examples shown. A
    // byte-level BPE token is a byte at least, so a body within the context in bytes (less
    // room for the chat template's own tokens) fits it in tokens; a longer one is answered
    // without the examples, by the task's adapter or the base, rather than refused by the
    // engine for a length its client did not send.
    let room = plugin.context_tokens.saturating_sub(TEMPLATE_TOKENS);
    let shown = match (&task, &plugin.specialiser) {
        (Some(t), Some(sp)) if parts.uri.path() == "/v1/chat/completions" => {
            sp.shown(t).is_some_and(|pool| {
                let demonstrations = sp.demonstrations(&pool);
                // The request's text is gathered only where it picks the examples.
                let prompt = match demonstrations.chooses() {
                    true => checked.stock.prompt_text().unwrap_or_default(),
                    false => String::new(),
                };
                let shown = demonstrations.pick(&prompt);
                body.show(shown.iter().map(|e| (&*e.prompt, &*e.answer)), room)
            })
        }
        _ => false,
    };
    // The parsed copy of the body is not held through a wait for the task's adapter.
    drop(checked.stock);
    let route = match &task {
        Some(t) if !shown => {
            plugin
                .table
                .route(t, Duration::from_millis(pc.load_wait_ms))
                .await
        }
        _ => Route::Base,
    };
    let (model, served_by) = match &route {
        Route::Base if shown => (plugin.table.engine().base_id(), "examples"),
        Route::Base => (plugin.table.engine().base_id(), "base"),
        Route::Adapter(r) => (r.engine_id.as_str(), "adapter"),
    };
    plugin
        .metrics
        .requests
        .with_label_values(&[served_by])
        .inc();
    body.set_model(model);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.extensions.insert(PublicModel(checked.public));
    Ok((
        Request::from_parts(parts, Body::from(body.into_text())),
        route,
        task.filter(|_| shown),
    ))
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

    /// A body's text, for its [`Fields`].
    fn text(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
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
            let b = text(b);
            keyed_task_id("acme", "x-task-id", &h, &Fields::parse(&b).unwrap())
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
            let b = text(b);
            find_task_id(
                &sources,
                "x-task-id",
                &header_map(h),
                &Fields::parse(&b).unwrap(),
            )
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
