//! Every error answer: a status and a JSON [`ErrorBody`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cvol_provider::remote::api::ErrorBody;
use cvol_provider::ProviderError;

/// A refused or failed call.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    // Boxed: handlers return it in every Result.
    body: Box<ErrorBody>,
}

impl ApiError {
    /// An error with `status`, stable `code` and `message`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: Box::new(ErrorBody {
                error: code.to_string(),
                message: message.into(),
                volume: None,
                snapshot: None,
                holder: None,
            }),
        }
    }

    /// Names the volume (and snapshot) the error is about.
    fn about(mut self, volume: &str, snapshot: Option<&str>) -> Self {
        self.body.volume = Some(volume.to_string());
        self.body.snapshot = snapshot.map(str::to_string);
        self
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Its stable code.
    pub fn code(&self) -> &str {
        &self.body.error
    }

    /// A malformed request.
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        let message = e.to_string();
        let (status, code) = match &e {
            ProviderError::VolumeNotFound { volume, .. } => {
                return Self::new(StatusCode::NOT_FOUND, "volume_not_found", message)
                    .about(volume, None)
            }
            ProviderError::SnapshotNotFound {
                volume, snapshot, ..
            } => {
                return Self::new(StatusCode::NOT_FOUND, "snapshot_not_found", message)
                    .about(volume, Some(snapshot))
            }
            ProviderError::VolumeExists { volume, .. } => {
                return Self::new(StatusCode::CONFLICT, "volume_exists", message)
                    .about(volume, None)
            }
            ProviderError::SnapshotExists {
                volume, snapshot, ..
            } => {
                return Self::new(StatusCode::CONFLICT, "snapshot_exists", message)
                    .about(volume, Some(snapshot))
            }
            ProviderError::AttachedElsewhere { volume, holder, .. } => {
                let mut error = Self::new(StatusCode::CONFLICT, "attached_elsewhere", message)
                    .about(volume, None);
                error.body.holder = Some(holder.clone());
                return error;
            }
            ProviderError::ShrinkRefused { .. } => (StatusCode::CONFLICT, "shrink_refused"),
            ProviderError::InvalidSize { .. } => (StatusCode::BAD_REQUEST, "invalid_size"),
            ProviderError::Pool { .. } => (StatusCode::SERVICE_UNAVAILABLE, "pool_unavailable"),
            ProviderError::Service { .. }
            | ProviderError::Unreachable { .. }
            | ProviderError::Store { .. } => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            ProviderError::Setting { .. }
            | ProviderError::Corrupt { .. }
            | ProviderError::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "pool_failed"),
        };
        if status.is_server_error() {
            tracing::error!("{message}");
        }
        Self::new(status, code, message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "not_json",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            _ => "malformed_json",
        };
        Self::new(status, code, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request("invalid_path", rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("invalid_query", rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is never read, so this connection is closed after the
            // answer: saying so keeps clients from sending their next call down it.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
