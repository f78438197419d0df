//! cvol: added. Who made the call being served, for file systems whose answers depend on
//! it (an export policy by client network, AUTH_SYS identities acted as).
//!
//! The RPC layer sets it for the time it serves each call, as a task-local, so a
//! [`NfsFileSystem`](crate::vfs::NfsFileSystem) method reads it with [`with_caller`]
//! without every method of the trait taking another argument.

use std::future::Future;
use std::net::SocketAddr;

use nfs3_types::rpc::auth_unix;

/// The client of the call being served.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The client's address, as the connection came from.
    pub addr: SocketAddr,
    /// Its AUTH_UNIX (AUTH_SYS) credential; `None` for AUTH_NULL and other flavors.
    pub auth: Option<auth_unix>,
}

tokio::task_local! {
    static CALLER: Caller;
}

/// Runs `f` with the caller of the call being served (`None` outside a call, e.g. when
/// a file system is used directly).
pub fn with_caller<R>(f: impl FnOnce(Option<&Caller>) -> R) -> R {
    let mut f = Some(f);
    match CALLER.try_with(|c| (f.take().expect("called once"))(Some(c))) {
        Ok(r) => r,
        Err(_) => (f.take().expect("not called yet"))(None),
    }
}

/// Serves `call` on behalf of `caller`.
pub async fn serve_as<F: Future>(caller: Caller, call: F) -> F::Output {
    CALLER.scope(caller, call).await
}
