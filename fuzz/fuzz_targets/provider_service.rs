//! The provider service (`cvol provider serve`) on arbitrary HTTP calls against a file
//! pool: every call gets an answer, a refusal is a 4xx, and nothing panics. The pool is
//! made afresh every few thousand calls so that the volumes the fuzzer creates stay few.
#![no_main]

use std::cell::RefCell;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use cvol_format::ProviderId;
use cvol_provider::FileProvider;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";
const CALLS_PER_POOL: u32 = 2000;

struct Pool {
    router: axum::Router,
    calls: u32,
    _dir: tempfile::TempDir,
}

impl Pool {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let id = ProviderId::new("pool").unwrap();
        let provider = Arc::new(FileProvider::open(&id, dir.path()).unwrap());
        Self {
            router: cvol_provider_service::router(provider, Some(TOKEN.into())),
            calls: 0,
            _dir: dir,
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::new());
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
}

fuzz_target!(|data: &[u8]| {
    let [method, flags, path_len, rest @ ..] = data else {
        return;
    };
    let method = [Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::PUT]
        [usize::from(*method) % 5]
        .clone();
    let (path, body) = rest.split_at(usize::from(*path_len).min(rest.len()));
    let mut uri = String::from("/v1/");
    uri.push_str(&String::from_utf8_lossy(path));
    let mut request = Request::builder().method(method).uri(uri.as_str());
    if flags & 1 != 0 {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    if flags & 2 != 0 {
        request = request.header("content-type", "application/json");
    }
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let router = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.calls += 1;
        if pool.calls > CALLS_PER_POOL {
            *pool = Pool::new();
        }
        pool.router.clone()
    });
    let response = RUNTIME.with(|rt| rt.block_on(router.oneshot(request))).unwrap();
    assert!(
        !response.status().is_server_error(),
        "{} for {uri:?} with {:?}",
        response.status(),
        String::from_utf8_lossy(body)
    );
});
