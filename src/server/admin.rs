//! The admin API under `/admin` (adapters: list, inspect, hot-load, evict, pin, unpin,
//! regenerate, labelled examples of the no-harm check; tenant API keys: create, list, revoke), `/metrics`, and who may call them.
//!
//! With an admin token, every route needs `Authorization: Bearer TOKEN` (`/metrics` too,
//! unless `plugin.metrics_need_token` is off). Without one (loopback only, see
//! [`Config::check`](super::Config::check)) a web page the operator visits must not drive
//! the API: requests must name a loopback `Host` (no DNS rebinding), any `Origin` must be
//! that host, and writes must carry a JSON body (or a multipart upload on PUT), which a
//! cross-site form cannot send.

use std::net::IpAddr;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::multipart::MultipartError;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::specialise::guard::Example;
use super::tagging::validate_task_id;
use super::Plugin;
use crate::adapters::{Source, StoreFull};
use crate::format::peft::{CONFIG_FILE, WEIGHTS_FILE};
use crate::format::{LlamaDims, LoraAdapter, PeftConfig};

const METRICS: &str = "/metrics";
const EXAMPLES_BODY_BYTES: usize = 4 << 20;

pub fn router(plugin: Arc<Plugin>) -> Router {
    Router::new()
        .route("/admin/adapters", get(list))
        .route(
            "/admin/adapters/{task}",
            get(show).put(put_adapter).delete(evict),
        )
        .route("/admin/adapters/{task}/pin", post(pin))
        .route("/admin/adapters/{task}/unpin", post(unpin))
        .route("/admin/adapters/{task}/regenerate", post(regenerate))
        .route(
            "/admin/adapters/{task}/examples",
            get(get_examples)
                .put(put_examples)
                .delete(delete_examples)
                // At most 64 examples of 2 x max_prompt_bytes: no upload-sized bodies.
                .layer(DefaultBodyLimit::max(EXAMPLES_BODY_BYTES)),
        )
        .route("/admin/keys", get(list_keys).post(create_key))
        .route("/admin/keys/{id}", delete(revoke_key))
        .route(METRICS, get(super::metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(plugin.clone(), guard))
        // Adapters are larger than axum's 2 MB default body limit.
        .layer(DefaultBodyLimit::max(plugin.config.server.max_body_bytes))
        .with_state(plugin)
}

/// Serves a request only when its caller may use the route (see the module doc).
async fn guard(State(plugin): State<Arc<Plugin>>, req: Request, next: Next) -> Response {
    let checked = match &plugin.admin_token {
        Some(_) if req.uri().path() == METRICS && !plugin.config.plugin.metrics_need_token => {
            Ok(())
        }
        Some(token) => check_token(req.headers(), token),
        None => check_same_site(
            req.method(),
            req.headers(),
            plugin.config.server.listen.ip(),
        ),
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check_token(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compared as SHA-256 digests: both sides are 32 bytes, so the comparison's time tells
    // nothing about the token's length (`ct_eq` on the raw bytes returns early on it).
    let (given, token) = (Sha256::digest(given), Sha256::digest(token));
    if bool::from(given.as_slice().ct_eq(token.as_slice())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid admin token",
        ))
    }
}

/// The checks of token-less (loopback) mode: a loopback `Host`, an `Origin` (when sent)
/// naming that host, and a content type on writes that browsers only send cross-site
/// after a CORS preflight, which this server never grants.
fn check_same_site(method: &Method, headers: &HeaderMap, bind: IpAddr) -> Result<(), ApiError> {
    let forbidden = |why: String| {
        let mode = "without an admin token only same-site loopback requests are served";
        ApiError::new(StatusCode::FORBIDDEN, format!("{why} ({mode})"))
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_local_host(host, bind) {
        return Err(forbidden(format!(
            "Host {host:?} is not localhost, a loopback address or the bind address"
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !authority.is_some_and(|a| a.eq_ignore_ascii_case(host)) {
            return Err(forbidden(format!(
                "Origin {origin:?} does not match Host {host:?}"
            )));
        }
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        let media = media_type(headers);
        // Multipart is only taken by the adapter upload (PUT, which browsers preflight).
        let upload = *method == Method::PUT && media == "multipart/form-data";
        if !(media == "application/json" || upload) {
            return Err(forbidden(format!(
                "{method} needs Content-Type: application/json (or multipart/form-data for \
                 an upload), got {media:?}"
            )));
        }
    }
    Ok(())
}

/// Whether `host` (a `Host` header: name or IP, optional port) is this machine's loopback
/// or the address the server is bound to; a name that DNS rebinding points at 127.0.0.1
/// is neither.
fn is_local_host(host: &str, bind: IpAddr) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip == bind)
}

/// The request's media type, lowercased and without parameters (`multipart/form-data`).
fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn task_param(task: &str) -> Result<(), ApiError> {
    validate_task_id(task)
}

/// A task as the admin API shows it: its adapter entry plus, with automatic
/// specialisation on, its prompt collection and generation state.
fn task_json(p: &Plugin, task: &str) -> Option<serde_json::Value> {
    let info = p.table.info(task);
    let generation = p.specialiser.as_ref().and_then(|s| s.info(task));
    if info.is_none() && generation.is_none() {
        return None;
    }
    let mut v = match info {
        Some(i) => serde_json::to_value(i).ok()?,
        None => serde_json::json!({ "task": task, "state": "none" }),
    };
    v["generation"] = serde_json::to_value(generation).ok()?;
    Some(v)
}

async fn list(State(p): State<Arc<Plugin>>) -> impl IntoResponse {
    let mut tasks: Vec<String> = p.table.list().into_iter().map(|i| i.task).collect();
    let mut dropped = Vec::new();
    if let Some(s) = &p.specialiser {
        let (collecting, d) = s.list();
        tasks.extend(collecting.into_iter().map(|(t, _)| t));
        dropped = d;
    }
    tasks.sort();
    tasks.dedup();
    let adapters: Vec<_> = tasks.iter().filter_map(|t| task_json(&p, t)).collect();
    // Corrupt records moved aside: their tasks are otherwise absent until a new upload.
    Json(serde_json::json!({
        "adapters": adapters,
        "dropped_tasks": dropped,
        "quarantined": p.table.quarantined(),
    }))
}

async fn show(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    match task_json(&p, &task) {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(ApiError::not_found(format!("no adapter for task {task}"))),
    }
}

#[derive(Deserialize, Default)]
struct RegenerateBody {
    #[serde(default)]
    prompts: Option<Vec<String>>,
}

/// `POST /admin/adapters/{task}/regenerate`, optionally with `{"prompts": [...]}`.
async fn regenerate(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    let sp = specialiser(&p)?;
    let body: RegenerateBody = if body.is_empty() {
        RegenerateBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("body must be {{\"prompts\": [...]}}: {e}"))
        })?
    };
    let info = sp.regenerate(&task, body.prompts)?;
    Ok((StatusCode::ACCEPTED, Json(info)).into_response())
}

fn specialiser(p: &Plugin) -> Result<&Arc<super::specialise::Specialiser>, ApiError> {
    p.specialiser.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no generator configured (plugin.generator)",
        )
    })
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct ExamplesBody {
    examples: Vec<Example>,
}

/// `GET /admin/adapters/{task}/examples`: the labelled examples of the no-harm check.
async fn get_examples(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    let examples = specialiser(&p)?
        .examples(&task)
        .await
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(Json(ExamplesBody { examples }).into_response())
}

/// `PUT /admin/adapters/{task}/examples` with `{"examples": [{"prompt", "answer"}, ...]}`:
/// replaces them; the task's next generated adapter is routed only if it answers about as
/// many as the base model does, or more ([`crate::server::specialise::guard`]).
async fn put_examples(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    let sp = specialiser(&p)?;
    let body: ExamplesBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "body must be {{\"examples\": [{{\"prompt\": ..., \"answer\": ...}}, ...]}}: {e}"
        ))
    })?;
    let n = body.examples.len();
    sp.set_examples(&task, Some(body.examples)).await?;
    Ok(Json(serde_json::json!({ "task": task, "examples": n })).into_response())
}

/// `DELETE /admin/adapters/{task}/examples`: no more checks for the task.
async fn delete_examples(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    specialiser(&p)?.set_examples(&task, None).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct PathImport {
    path: PathBuf,
}

/// `PUT /admin/adapters/{task}`: multipart (`adapter_config.json`,
/// `adapter_model.safetensors`) or JSON `{"path": DIR}` inside the import root.
async fn put_adapter(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    let dims = p.table.dims().clone();
    let (adapter, source) = match media_type(req.headers()).as_str() {
        "multipart/form-data" => {
            let mp = Multipart::from_request(req, &())
                .await
                .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
            let (config, weights) = read_multipart(mp).await?;
            let adapter = off_runtime(move || parse_adapter(&config, &weights, &dims)).await?;
            (adapter, Source::Upload)
        }
        "application/json" => {
            let Json(body) = Json::<PathImport>::from_request(req, &())
                .await
                .map_err(|e| {
                    ApiError::new(client_status(e.status()), format!("bad JSON body: {e}"))
                })?;
            let root = p.config.plugin.import_root.clone();
            let adapter = off_runtime(move || {
                let (config, weights) = read_import(root.as_deref(), &body.path)?;
                parse_adapter(&config, &weights, &dims)
            })
            .await?;
            (adapter, Source::Path)
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send multipart/form-data with adapter_config.json and adapter_model.safetensors, or JSON {\"path\": DIR}",
            ))
        }
    };
    let before = p.table.installs();
    let installed = p.table.install(&task, &adapter, source).await;
    // Stored as current (even if the engine then failed to load it): the operator's adapter
    // takes the place of whatever automatic specialisation routed or is about to.
    if let (Some(sp), true) = (&p.specialiser, p.table.installed_at(&task) > before) {
        sp.adapter_uploaded(&task).await;
    }
    match installed {
        Ok(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Err(e) if e.downcast_ref::<StoreFull>().is_some() => Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            format!("adapter not stored: {e:#}"),
        )
        .with_code("store_full")),
        Err(e) => Err(ApiError::internal(format!(
            "adapter stored but not loaded: {e:#}"
        ))),
    }
}

/// Runs file reads and writes, parsing and validation on the blocking pool: a large adapter
/// or a slow disk would otherwise stall one of the runtime's workers, and every request
/// queued on it.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("file work on the blocking pool: {e}")))?
}

/// The status of a refused body: 413 past the body limit (`server.max_body_bytes`), 400 for
/// anything else the client sent wrong.
fn client_status(status: StatusCode) -> StatusCode {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        status
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn multipart_error(e: MultipartError) -> ApiError {
    ApiError::new(
        client_status(e.status()),
        format!("bad multipart body: {}", e.body_text()),
    )
}

/// The config and weights parts of an upload.
async fn read_multipart(mut mp: Multipart) -> Result<(Bytes, Bytes), ApiError> {
    let (mut config, mut weights) = (None, None);
    while let Some(field) = mp.next_field().await.map_err(multipart_error)? {
        let name = field
            .file_name()
            .map(str::to_string)
            .or_else(|| field.name().map(str::to_string))
            .unwrap_or_default();
        let data = field.bytes().await.map_err(multipart_error)?;
        match name.as_str() {
            CONFIG_FILE => config = Some(data),
            WEIGHTS_FILE => weights = Some(data),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unexpected multipart part {other:?}"
                )))
            }
        }
    }
    let config =
        config.ok_or_else(|| ApiError::bad_request(format!("missing part {CONFIG_FILE}")))?;
    let weights =
        weights.ok_or_else(|| ApiError::bad_request(format!("missing part {WEIGHTS_FILE}")))?;
    Ok((config, weights))
}

/// Parses an adapter (the bytes of its config and weights files) and validates it against
/// the base model: 400 with the reason. What an upload and a path import go through.
pub fn parse_adapter(
    config: &[u8],
    weights: &[u8],
    dims: &LlamaDims,
) -> Result<LoraAdapter, ApiError> {
    let cfg: PeftConfig = serde_json::from_slice(config).map_err(|e| {
        ApiError::bad_request(format!("{CONFIG_FILE} is not a valid LoRA config: {e}"))
    })?;
    let adapter = LoraAdapter::from_parts(cfg, weights)
        .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    adapter
        .validate(dims)
        .map_err(|e| ApiError::bad_request(format!("invalid adapter: {e:#}")))?;
    Ok(adapter)
}

/// The config and weights files of `path`, a folder inside the import `root`.
fn read_import(root: Option<&FsPath>, path: &FsPath) -> Result<(Vec<u8>, Vec<u8>), ApiError> {
    let root = root.ok_or_else(|| {
        ApiError::bad_request("path import is disabled: set plugin.import_root in the config")
    })?;
    let root = root
        .canonicalize()
        .map_err(|e| ApiError::internal(format!("import root {}: {e}", root.display())))?;
    let dir = path
        .canonicalize()
        .map_err(|e| ApiError::bad_request(format!("{}: {e}", path.display())))?;
    if !dir.starts_with(&root) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is outside the import root {}",
                dir.display(),
                root.display()
            ),
        ));
    }
    Ok((
        read_regular(&dir.join(CONFIG_FILE))?,
        read_regular(&dir.join(WEIGHTS_FILE))?,
    ))
}

/// The bytes of `path` when it is a regular file. A symlink is refused because it may
/// point outside the import root (canonicalising the folder does not resolve the files in
/// it), a FIFO or device because reading it may block or never end.
fn read_regular(path: &FsPath) -> Result<Vec<u8>, ApiError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |why: String| ApiError::bad_request(format!("{}: {why}", path.display()));
    let meta = std::fs::symlink_metadata(path).map_err(|e| refuse(e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(refuse(
            "is a symlink; path imports read regular files only".into(),
        ));
    }
    if !meta.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    // Opened without following a symlink and checked again once open, in case the file
    // was swapped after the check above; O_NONBLOCK keeps a swapped-in FIFO from blocking.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| refuse(e.to_string()))?;
    if !f.metadata().map_err(|e| refuse(e.to_string()))?.is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| refuse(e.to_string()))?;
    Ok(bytes)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    tenant: String,
    /// Requests per minute; default `plugin.default_key_rpm`.
    #[serde(default)]
    rpm: Option<u32>,
}

/// `POST /admin/keys` with `{"tenant": ID, "rpm": N}`: 201 with the new key, which is
/// shown this once (the server keeps its hash only).
async fn create_key(State(p): State<Arc<Plugin>>, body: Bytes) -> Result<Response, ApiError> {
    let req: KeyRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("body must be {{\"tenant\": ID, \"rpm\": N}}: {e}"))
    })?;
    validate_task_id(&req.tenant).map_err(|e| e.with_param("tenant"))?;
    let rpm = req.rpm.unwrap_or(p.config.plugin.default_key_rpm);
    if rpm == 0 {
        return Err(ApiError::bad_request("rpm must be at least 1").with_param("rpm"));
    }
    let created = off_runtime(move || {
        p.keys
            .create(&req.tenant, rpm)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /admin/keys`: every key's id (a prefix of its hash), tenant, creation and limit.
async fn list_keys(State(p): State<Arc<Plugin>>) -> impl IntoResponse {
    Json(serde_json::json!({ "keys": p.keys.list() }))
}

/// `DELETE /admin/keys/{id}`: the key is refused from now on.
async fn revoke_key(
    State(p): State<Arc<Plugin>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let wanted = id.clone();
    let revoked = off_runtime(move || {
        p.keys
            .revoke(&wanted)
            .map_err(|e| ApiError::internal(format!("{e:#}")))
    })
    .await?;
    match revoked {
        Some(info) => Ok(Json(serde_json::json!({
            "id": info.id,
            "tenant": info.tenant,
            "revoked": true,
        }))
        .into_response()),
        None => Err(ApiError::not_found(format!("no API key with id {id}"))),
    }
}

#[derive(Deserialize)]
struct EvictQuery {
    #[serde(default)]
    forget: bool,
}

async fn evict(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
    Query(q): Query<EvictQuery>,
) -> Result<Response, ApiError> {
    task_param(&task)?;
    // The specialiser first: a generation of the task that ends after this is dropped
    // (see `AdapterTable::install_if`). Forgetting takes the task's examples too.
    let tracked = match (&p.specialiser, q.forget) {
        (Some(s), true) => {
            s.set_examples(&task, None).await?;
            s.forget(&task)
        }
        _ => false,
    };
    match p.table.evict(&task, q.forget).await {
        Ok(found) if found || tracked => Ok(Json(
            serde_json::json!({ "task": task, "evicted": true, "forgotten": q.forget }),
        )
        .into_response()),
        Ok(_) => Err(ApiError::not_found(format!("no adapter for task {task}"))),
        Err(e) => Err(ApiError::new(StatusCode::CONFLICT, format!("{e:#}"))),
    }
}

async fn pin(State(p): State<Arc<Plugin>>, Path(task): Path<String>) -> Result<Response, ApiError> {
    set_pin(p, task, true).await
}

async fn unpin(
    State(p): State<Arc<Plugin>>,
    Path(task): Path<String>,
) -> Result<Response, ApiError> {
    set_pin(p, task, false).await
}

async fn set_pin(p: Arc<Plugin>, task: String, pinned: bool) -> Result<Response, ApiError> {
    task_param(&task)?;
    if p.table.info(&task).is_none() {
        return Err(ApiError::not_found(format!("no adapter for task {task}")));
    }
    p.table
        .set_pinned(&task, pinned)
        .await
        .map(|info| Json(info).into_response())
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_must_match_exactly() {
        let ok = headers(&[(header::AUTHORIZATION, "Bearer s3cret")]);
        assert!(check_token(&ok, "s3cret").is_ok());
        for given in [
            "Bearer s3cre",
            "Bearer s3cret2",
            "Bearer ",
            "s3cret",
            "Basic s3cret",
        ] {
            let e = check_token(&headers(&[(header::AUTHORIZATION, given)]), "s3cret");
            assert_eq!(e.unwrap_err().status, StatusCode::UNAUTHORIZED, "{given}");
        }
        assert!(check_token(&HeaderMap::new(), "s3cret").is_err());
    }

    #[test]
    fn only_loopback_hosts_are_local() {
        let bind: IpAddr = "127.0.0.1".parse().unwrap();
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_local_host(host, bind), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.1:8080",
            "[::2]:8080",
        ] {
            assert!(!is_local_host(host, bind), "{host}");
        }
        assert!(is_local_host("10.0.0.1:8080", "10.0.0.1".parse().unwrap()));
    }

    /// What a web page can make a browser send, refused; what curl and the OpenAI-style
    /// clients send, served.
    #[test]
    fn tokenless_mode_refuses_cross_site_requests() {
        fn check(m: Method, h: &[(header::HeaderName, &str)]) -> Result<(), String> {
            let bind: IpAddr = "127.0.0.1".parse().unwrap();
            check_same_site(&m, &headers(h), bind).map_err(|e| {
                assert_eq!(e.status, StatusCode::FORBIDDEN);
                e.message
            })
        }
        let host = (header::HOST, "127.0.0.1:8080");
        let json = (header::CONTENT_TYPE, "application/json; charset=utf-8");
        assert!(check(Method::GET, std::slice::from_ref(&host)).is_ok());
        assert!(check(Method::POST, &[host.clone(), json.clone()]).is_ok());
        assert!(check(Method::DELETE, &[host.clone(), json.clone()]).is_ok());
        let multipart = (header::CONTENT_TYPE, "multipart/form-data; boundary=x");
        assert!(check(Method::PUT, &[host.clone(), multipart.clone()]).is_ok());
        let same_origin = (header::ORIGIN, "http://127.0.0.1:8080");
        assert!(check(Method::POST, &[host.clone(), json.clone(), same_origin]).is_ok());

        // A form posted from a page: text/plain, urlencoded or multipart to a POST route.
        for ctype in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let e = check(Method::POST, &[host.clone(), (header::CONTENT_TYPE, ctype)]);
            assert!(e.unwrap_err().contains("Content-Type"), "{ctype}");
        }
        let e = check(Method::POST, std::slice::from_ref(&host)).unwrap_err();
        assert!(e.contains("Content-Type"), "{e}");
        // Another site's page, even with a body type it could only send after a preflight.
        for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"] {
            let h = [host.clone(), json.clone(), (header::ORIGIN, origin)];
            assert!(
                check(Method::POST, &h).unwrap_err().contains("Origin"),
                "{origin}"
            );
            assert!(check(Method::GET, &h).is_err(), "{origin}");
        }
        // DNS rebinding: the page's own name resolves to 127.0.0.1.
        let rebound = [(header::HOST, "evil.example:8080"), json.clone()];
        assert!(check(Method::GET, &rebound).unwrap_err().contains("Host"));
        assert!(check(Method::GET, &[]).unwrap_err().contains("Host"));
    }

    #[test]
    fn path_imports_read_regular_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"bytes").unwrap();
        assert_eq!(read_regular(&file).unwrap(), b"bytes");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let e = read_regular(&link).unwrap_err();
        assert!(e.message.contains("symlink"), "{}", e.message);
        // A FIFO: a plain read would block until a writer comes.
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_regular(&fifo).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{}", e.message);
        assert!(read_regular(dir.path()).is_err(), "a folder");
        assert_eq!(
            read_regular(&link.with_file_name("absent"))
                .unwrap_err()
                .status,
            400
        );
    }
}
