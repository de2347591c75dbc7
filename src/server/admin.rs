//! The admin API under `/admin`: list, inspect, hot-load, evict, pin and unpin adapters.
//! Every route needs `Authorization: Bearer TOKEN` when a token is configured (compared in
//! constant time).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::tagging::validate_task_id;
use super::Plugin;
use crate::adapters::Source;
use crate::format::peft::{CONFIG_FILE, WEIGHTS_FILE};
use crate::format::{LoraAdapter, PeftConfig};

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
        .layer(axum::middleware::from_fn_with_state(
            plugin.clone(),
            require_token,
        ))
        // Adapters are larger than axum's 2 MB default body limit.
        .layer(DefaultBodyLimit::max(plugin.config.server.max_body_bytes))
        .with_state(plugin)
}

async fn require_token(State(plugin): State<Arc<Plugin>>, req: Request, next: Next) -> Response {
    if let Some(token) = &plugin.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "missing or invalid admin token")
                .into_response();
        }
    }
    next.run(req).await
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
    Json(serde_json::json!({ "adapters": adapters, "dropped_tasks": dropped }))
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
    let sp = p.specialiser.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no generator configured (plugin.generator)",
        )
    })?;
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
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (adapter, source) = if ctype.starts_with("multipart/form-data") {
        let mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
        (read_multipart(mp).await?, Source::Upload)
    } else if ctype.starts_with("application/json") {
        let Json(body) = Json::<PathImport>::from_request(req, &())
            .await
            .map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))?;
        (read_import(&p, &body.path)?, Source::Path)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send multipart/form-data with adapter_config.json and adapter_model.safetensors, or JSON {\"path\": DIR}",
        ));
    };
    adapter
        .validate(p.table.dims())
        .map_err(|e| ApiError::bad_request(format!("invalid adapter: {e:#}")))?;
    match p.table.install(&task, &adapter, source).await {
        Ok(info) => Ok((StatusCode::CREATED, Json(info)).into_response()),
        Err(e) => Err(ApiError::internal(format!(
            "adapter stored but not loaded: {e:#}"
        ))),
    }
}

async fn read_multipart(mut mp: Multipart) -> Result<LoraAdapter, ApiError> {
    let (mut config, mut weights) = (None, None);
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?
    {
        let name = field
            .file_name()
            .map(str::to_string)
            .or_else(|| field.name().map(str::to_string))
            .unwrap_or_default();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("bad multipart body: {e}")))?;
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
    parse_adapter(&config, &weights)
}

fn parse_adapter(config: &[u8], weights: &[u8]) -> Result<LoraAdapter, ApiError> {
    let cfg: PeftConfig = serde_json::from_slice(config).map_err(|e| {
        ApiError::bad_request(format!("{CONFIG_FILE} is not a valid LoRA config: {e}"))
    })?;
    LoraAdapter::from_parts(cfg, weights).map_err(|e| ApiError::bad_request(format!("{e:#}")))
}

fn read_import(p: &Plugin, path: &std::path::Path) -> Result<LoraAdapter, ApiError> {
    let root = p.config.plugin.import_root.as_ref().ok_or_else(|| {
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
    let read = |f: &str| {
        std::fs::read(dir.join(f))
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", dir.join(f).display())))
    };
    parse_adapter(&read(CONFIG_FILE)?, &read(WEIGHTS_FILE)?)
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
    if q.forget {
        if let Some(s) = &p.specialiser {
            s.forget(&task);
        }
    }
    match p.table.evict(&task, q.forget).await {
        Ok(true) => Ok(Json(
            serde_json::json!({ "task": task, "evicted": true, "forgotten": q.forget }),
        )
        .into_response()),
        Ok(false) => Err(ApiError::not_found(format!("no adapter for task {task}"))),
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
