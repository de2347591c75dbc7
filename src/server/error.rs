//! The one error type of the HTTP API: a status and a reason, answered in the OpenAI error
//! shape `{"error": {"message", "type", "param", "code"}}` so that OpenAI clients raise
//! their usual exceptions (and, on a 429, with `Retry-After`, which they wait for).
//! [`openai_shape`], a layer over every route, puts the errors that other code answers
//! (axum's rejections, the stock handlers') into that shape too.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`max_tokens`, `messages`, ...), when there is one.
    pub param: Option<&'static str>,
    /// A machine-readable reason (`model_not_found`, ...), when there is one.
    pub code: Option<&'static str>,
    /// Seconds until the client may try again, sent as `Retry-After` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The OpenAI error type of the status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": {
            "message": self.message,
            "type": self.kind(),
            "param": self.param,
            "code": self.code,
        } });
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The answer to a route the server does not have: a 404 naming it. Set as the fallback of
/// the whole router, so that no route's layer (the admin guard's token check, which merging
/// the routers would otherwise put there) answers in its place.
pub async fn no_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

/// Bytes of an error answer read to reshape it; a longer one keeps only its status.
const MAX_ERROR_BODY: usize = 64 << 10;

/// A layer over every route: an error answer (4xx, 5xx) not yet in the OpenAI shape gets
/// it, with its status and its other headers (`Allow`, `Retry-After`, `x-dnd-adapter`)
/// kept. What it reshapes is answered by code other than [`ApiError`]: axum's plain-text
/// rejections (no such route, a method a route does not take, a bad query string, a body
/// past `DefaultBodyLimit`) and the stock handlers' `{"message": ...}`. The message is the
/// one given, or the status's reason and the route when there is none.
pub async fn openai_shape(req: Request, next: Next) -> Response {
    // Cheap clones (the URI shares its bytes): the route is only written for an error.
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if json.as_ref().is_some_and(is_openai_error) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let given = json
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
    let message = if given.is_empty() {
        let reason = status.canonical_reason().unwrap_or("error");
        format!("{reason}: {method} {}", uri.path())
    } else {
        given
    };
    let mut shaped = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().append(name.clone(), value.clone());
        }
    }
    shaped
}

/// Whether `v` is an error in the OpenAI shape: `{"error": {"message": "...", "type", ...}}`.
pub fn is_openai_error(v: &Value) -> bool {
    v.get("error").is_some_and(|e| {
        e.get("message").is_some_and(Value::is_string)
            && e.get("type").is_some_and(Value::is_string)
            && e.get("param").is_some()
            && e.get("code").is_some()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_have_the_openai_shape() {
        let (status, v) = body_of(
            ApiError::bad_request("max_tokens is too large")
                .with_param("max_tokens")
                .with_code("max_tokens_too_large"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            v,
            serde_json::json!({"error": {
                "message": "max_tokens is too large",
                "type": "invalid_request_error",
                "param": "max_tokens",
                "code": "max_tokens_too_large",
            }})
        );
        let (_, v) = body_of(ApiError::not_found("no such model")).await;
        assert_eq!(v["error"]["type"], "not_found_error");
        assert!(v["error"]["param"].is_null() && v["error"]["code"].is_null());
        for (status, kind) in [
            (StatusCode::UNAUTHORIZED, "authentication_error"),
            (StatusCode::FORBIDDEN, "permission_error"),
            (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
        ] {
            let (_, v) = body_of(ApiError::new(status, "x")).await;
            assert_eq!(v["error"]["type"], kind, "{status}");
        }
    }

    #[test]
    fn a_rate_limit_says_when_to_come_back() {
        let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
            .with_code("rate_limit_exceeded")
            .with_retry_after(12);
        let resp = e.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "12");
        let resp = ApiError::bad_request("x").into_response();
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }

    /// What axum and the stock handlers answer, reshaped; what is already shaped, and
    /// success, passed on untouched.
    #[tokio::test]
    async fn other_errors_are_put_into_the_openai_shape() {
        use axum::routing::{get, post};
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route(
                "/stock",
                post(|| async {
                    (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Json(serde_json::json!({"message": "bad prompt"})),
                    )
                }),
            )
            .route(
                "/text",
                get(|| async {
                    (
                        StatusCode::BAD_REQUEST,
                        "Failed to deserialize query string",
                    )
                }),
            )
            .route(
                "/shaped",
                get(|| async {
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "slow down")
                        .with_code("rate_limit_exceeded")
                        .with_retry_after(3)
                }),
            )
            .layer(axum::middleware::from_fn(openai_shape));
        let call = |method: &str, uri: &str| {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap();
            let app = app.clone();
            async move {
                let resp = app.oneshot(req).await.unwrap();
                let (status, headers) = (resp.status(), resp.headers().clone());
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
                    .await
                    .unwrap();
                (status, headers, bytes)
            }
        };
        let (status, _, bytes) = call("GET", "/ok").await;
        assert_eq!((status, &bytes[..]), (StatusCode::OK, &b"fine"[..]));
        for (method, uri, status, message) in [
            ("POST", "/stock", 422, "bad prompt"),
            ("GET", "/text", 400, "Failed to deserialize query string"),
            ("GET", "/nowhere", 404, "Not Found: GET /nowhere"),
            ("GET", "/stock", 405, "Method Not Allowed: GET /stock"),
        ] {
            let (got, headers, bytes) = call(method, uri).await;
            assert_eq!(got.as_u16(), status, "{uri}");
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(is_openai_error(&v), "{uri}: {v}");
            assert_eq!(v["error"]["message"], message, "{uri}");
            let kind = if status == 404 {
                "not_found_error"
            } else {
                "invalid_request_error"
            };
            assert_eq!(v["error"]["type"], kind, "{uri}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{uri}");
            if status == 405 {
                assert!(headers.contains_key(header::ALLOW), "{headers:?}");
            }
        }
        let (status, headers, bytes) = call("GET", "/shaped").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "3");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }
}
