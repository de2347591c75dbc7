//! The one error type of the HTTP API: a status and a reason, answered in the OpenAI error
//! shape `{"error": {"message", "type", "param", "code"}}` so that OpenAI clients raise
//! their usual exceptions.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault (`max_tokens`, `messages`, ...), when there is one.
    pub param: Option<&'static str>,
    /// A machine-readable reason (`model_not_found`, ...), when there is one.
    pub code: Option<&'static str>,
    /// Seconds a client should wait before trying again (the `Retry-After` header), for a
    /// refusal that a later retry may get past (429, 503).
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
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
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
    fn a_refusal_says_when_to_retry() {
        let resp = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy")
            .with_retry_after(3)
            .into_response();
        assert_eq!(resp.headers()["retry-after"], "3");
        let resp = ApiError::bad_request("no").into_response();
        assert!(resp.headers().get("retry-after").is_none());
    }
}
