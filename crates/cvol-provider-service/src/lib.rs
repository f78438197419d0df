//! The provider service (`cvol provider serve`): a storage pool's control plane over
//! HTTP/JSON, so that several hosts share one pool and the service alone decides which
//! host holds a volume. `openapi.yaml` documents the API; the `remote` provider of
//! `cvol-provider` is its client.
//!
//! The service keeps no state of its own: the pool's records (written by fsync and
//! rename, see the provider) are the state, so a service killed at any moment restarts
//! with everything it acknowledged and nothing half done visible.

mod error;
mod handlers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use cvol_provider::Provider;

pub use error::ApiError;
use handlers::Service;

/// The largest request body accepted: every call's body is a few hundred bytes.
pub const MAX_BODY: usize = 16 * 1024;

/// The OpenAPI description of the API, also served at `GET /v1/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../openapi.yaml");

/// The API over `provider`. With a `token`, every call must carry it as a bearer token.
pub fn router(provider: Arc<dyn Provider>, token: Option<String>) -> Router {
    let service = Arc::new(Service { provider });
    let api = Router::new()
        .route("/v1/openapi.yaml", get(openapi))
        .route("/v1/pool", get(handlers::pool))
        .route(
            "/v1/volumes",
            get(handlers::list_volumes).post(handlers::create_volume),
        )
        .route(
            "/v1/volumes/{id}",
            get(handlers::get_volume)
                .patch(handlers::resize_volume)
                .delete(handlers::delete_volume),
        )
        .route(
            "/v1/volumes/{id}/snapshots",
            get(handlers::list_snapshots).post(handlers::create_snapshot),
        )
        .route(
            "/v1/volumes/{id}/snapshots/{name}",
            delete(handlers::delete_snapshot),
        )
        .route("/v1/volumes/{id}/revert", post(handlers::revert_volume))
        .route("/v1/volumes/{id}/attachments", post(handlers::attach))
        .route(
            "/v1/volumes/{id}/attachments/{host_id}",
            delete(handlers::detach),
        )
        .route("/v1/reclaim", post(handlers::reclaim))
        .fallback(no_route)
        .method_not_allowed_fallback(no_method)
        .with_state(service);
    with_bearer_token(api.layer(DefaultBodyLimit::max(MAX_BODY)), token)
        .layer(middleware::from_fn(log_call))
}

/// Refuses every call of `router` that does not carry `token` as its bearer token (401);
/// with no token, lets every call through. Also guards the host agent's peer API.
pub fn with_bearer_token(router: Router, token: Option<String>) -> Router {
    router.layer(middleware::from_fn_with_state(
        Arc::new(token),
        authenticate,
    ))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no_such_call", "no such API call")
}

async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this call does not take that method",
    )
}

/// Refuses calls without the bearer token. The token is compared in constant time and
/// never logged.
async fn authenticate(
    State(token): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = token.as_deref() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same(given.as_bytes(), token.as_bytes()) {
            let mut refusal = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this API needs its bearer token (Authorization: Bearer …)",
            )
            .into_response();
            refusal.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            return refusal;
        }
    }
    next.run(request).await
}

/// Equality of secrets whose time depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Logs each call's method, path and status (never its headers, which hold the token),
/// and records its time by method, route (the template, so volume ids do not multiply the
/// series) and status.
async fn log_call(request: Request, next: Next) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_string());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics::histogram!(
        "cvol_provider_request_seconds",
        "method" => method.to_string(),
        "route" => route,
        "status" => status.to_string()
    )
    .record(started.elapsed());
    tracing::debug!(%method, path, status, "call");
    response
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
