//! Every error the HTTP API returns: `{"error": {"code", "message", "field"?}}` with the fitting status.
//! Internal failures are logged with their cause and answered with a generic message: nothing internal leaks.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ops::OpsError;
use crate::validate::Problem;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `invalid_json`, `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `unsupported_media_type`, `method_not_allowed`, `unavailable`, `internal`.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The part of the request at fault, when there is one (`body`, `recipients[3]`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Every problem found, when a request has several (validation is all-or-nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub detail: ErrorDetail,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, detail: ErrorDetail { code, message: message.into(), field: None, problems: Vec::new() } }
    }
    pub fn field(mut self, f: impl Into<String>) -> Self {
        self.detail.field = Some(f.into());
        self
    }
    pub fn bad_request(code: &'static str, m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, m)
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", m)
    }
    pub fn unprocessable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", m)
    }
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this method is not allowed on this path")
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
    }
    /// Logs the cause; the client sees only that something failed on our side.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error.message = %cause, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it has been logged")
    }
    /// A Redis failure. Redis unavailable (the request may be retried): 503, logged as an outage. An error Redis
    /// answered to a command it could not run: 500, logged as the bug it is (input should be refused before it
    /// reaches Redis), so a client cannot make the server report an outage.
    pub fn redis(e: &redis::RedisError) -> Self {
        if shared::store::is_unavailable(e) {
            tracing::warn!(error.message = %e, "redis unavailable");
            Self::unavailable("storage is temporarily unavailable; retry later")
        } else {
            Self::internal(&format_args!("redis refused a command: {e}"))
        }
    }
    /// A validation failure naming every problem (the first one as `field`).
    pub fn invalid(problems: Vec<Problem>, total: usize) -> Self {
        let first = problems.first().map(|p| (p.field.clone(), format!("{}: {}", p.field, p.message)));
        let (field, message) = first.unwrap_or_default();
        let more = if total > 1 { format!(" (and {} more problems)", total - 1) } else { String::new() };
        let mut e = Self::unprocessable(format!("{message}{more}; nothing was changed")).field(field);
        e.detail.problems = problems;
        e
    }
}

/// The one mapping of an operation's failure to HTTP (the API answers it as JSON, the dashboard as a page).
impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::Invalid(invalid) => ApiError::invalid(invalid.problems, invalid.total),
            OpsError::NotFound(m) => ApiError::not_found(m),
            OpsError::Conflict { field, message } => {
                let e = ApiError::conflict(message);
                if let Some(f) = field { e.field(f) } else { e }
            }
            OpsError::Busy(m) => ApiError::conflict(m),
            OpsError::NotConfigured(m) | OpsError::Unavailable(m) => ApiError::unavailable(m),
            OpsError::Storage(r) => ApiError::redis(&r),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(ErrorBody { error: self.detail })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r
    }
}

/// `axum::Json`, with its rejections turned into our error shape: 400 malformed JSON, 415 wrong content type,
/// 413 too large, 422 well-formed JSON of the wrong shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(rejection) => Err(json_rejection(&rejection)),
        }
    }
}

fn json_rejection(r: &JsonRejection) -> ApiError {
    match r {
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {}", source(e)))
        }
        JsonRejection::JsonDataError(e) => {
            ApiError::unprocessable(format!("the JSON does not have the expected shape: {}", source(e)))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        other => ApiError::bad_request("invalid_body", format!("the body could not be read: {other}")),
    }
}

/// `axum::extract::Path`, with its rejections (e.g. a segment that is not UTF-8) in our error shape.
pub struct ApiPath<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::bad_request("invalid_id", format!("the path is not valid: {e}")).field("id")),
        }
    }
}

/// `axum::extract::Query`, with its rejections (an unknown parameter, a value of the wrong type) in our error shape.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => {
                Err(ApiError::bad_request("invalid_query", format!("the query string is not valid: {}", source(&e))))
            }
        }
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "the request body is larger than this endpoint accepts",
    )
}

/// The innermost error message (serde's "missing field `body` at line 1 column 2").
fn source(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
