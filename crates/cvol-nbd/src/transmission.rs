//! The transmission phase ("Transmission" in the spec): requests are read in order and
//! answered as they finish. On a device that may block on a network (an object pool)
//! they run concurrently on blocking threads and are answered out of order; on local
//! storage small reads and writes run in turn on the connection's task.

use std::sync::Arc;

use cvol_provider::{AsyncIo, BlockDevice, BlockError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::handshake::{Negotiated, ALLOCATION_CONTEXT, MIN_BLOCK};
use crate::proto::*;
use crate::server::Settings;

/// Requests one connection may have running at once; more wait, bounding memory.
const MAX_IN_FLIGHT: u32 = 64;
/// Reads and writes up to this size on local storage run on the connection's task.
const INLINE_MAX: u32 = 64 << 10;
/// Extents one block status reply describes at most.
const MAX_EXTENTS: usize = 1024;

/// What a request runs against.
struct Context {
    device: Arc<dyn BlockDevice>,
    size: u64,
    structured: bool,
    allocation: bool,
    block_size_agreed: bool,
    readonly: bool,
    max_request: u32,
    log_failures: bool,
}

/// Serves requests until the client disconnects or breaks the protocol.
pub async fn serve<R, W>(mut r: R, w: W, session: Negotiated, settings: &Settings, peer: &str)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(Context {
        device: session.export.device.clone(),
        size: session.size,
        structured: session.structured,
        allocation: session.allocation,
        block_size_agreed: session.block_size_agreed,
        readonly: settings.readonly,
        max_request: settings.max_request,
        log_failures: settings.log_failures,
    });
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT as usize);
    let writer = tokio::spawn(async move {
        // Replies that are ready together go out in one write.
        let mut w = tokio::io::BufWriter::with_capacity(256 << 10, w);
        while let Some(reply) = rx.recv().await {
            w.write_all(&reply).await?;
            while let Ok(more) = rx.try_recv() {
                w.write_all(&more).await?;
            }
            w.flush().await?;
        }
        std::io::Result::Ok(())
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize));
    let mut header = [0u8; REQUEST_LEN];
    loop {
        if let Err(e) = r.read_exact(&mut header).await {
            tracing::info!(peer, "NBD client went away without NBD_CMD_DISC: {e}");
            break;
        }
        let request = match Request::parse(&header) {
            Ok(request) => request,
            Err(e) => {
                tracing::warn!(peer, "closing NBD connection: {e}");
                break;
            }
        };
        if request.kind == CMD_DISC {
            tracing::debug!(peer, "NBD_CMD_DISC");
            break;
        }
        let payload = if request.kind == CMD_WRITE {
            if request.length > ctx.max_request {
                // The payload cannot be skipped safely at any size: hang up.
                tracing::warn!(
                    peer,
                    "closing NBD connection: write of {} bytes, over the {} advertised",
                    request.length,
                    ctx.max_request
                );
                break;
            }
            let mut payload = vec![0; request.length as usize];
            if let Err(e) = r.read_exact(&mut payload).await {
                tracing::warn!(peer, "NBD client went away in the middle of a write: {e}");
                break;
            }
            payload
        } else {
            Vec::new()
        };
        // Local storage (or a cache) answers a small read or write faster than a
        // hand-off to another thread and back (BENCHMARKS.md): run it here, as nbdkit's
        // threads do. Large ones, flushes (FUA included) and reads that wait on a
        // network still run concurrently.
        let small = request.flags & CMD_FLAG_FUA == 0 && request.length <= INLINE_MAX;
        let inline = match request.kind {
            CMD_READ if small && check(&ctx, &request).is_ok() => read(&ctx, &request, peer, true),
            CMD_WRITE if small && !ctx.device.may_block() => {
                Some(execute(&ctx, &request, &payload, peer))
            }
            _ => None,
        };
        if let Some(reply) = inline {
            if tx.send(reply).await.is_err() {
                break;
            }
            continue;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let run = match request.kind {
            CMD_READ | CMD_WRITE if request.flags & CMD_FLAG_FUA == 0 => {
                if let Err(errno) = check(&ctx, &request) {
                    tracing::info!(peer, ?request, errno, "NBD request refused");
                    let reply = failure(&ctx, &request, errno, "invalid request");
                    drop(permit);
                    if tx.send(reply).await.is_err() {
                        break;
                    }
                    continue;
                }
                let io = async_io(&ctx, request, payload, peer, permit, tx.clone());
                if ctx.device.submits_async() {
                    // Started here; its completion answers.
                    ctx.device.submit(io);
                    continue;
                }
                Run::Io(io)
            }
            _ => Run::Request {
                request,
                payload,
                permit,
            },
        };
        let device = ctx.device.clone();
        let (ctx, tx) = (ctx.clone(), tx.clone());
        let peer = peer.to_string();
        tokio::task::spawn_blocking(move || match run {
            Run::Io(io) => device.submit(io),
            Run::Request {
                request,
                payload,
                permit,
            } => {
                let reply = execute(&ctx, &request, &payload, &peer);
                drop(permit);
                let _ = tx.blocking_send(reply);
            }
        });
    }
    // Let every request already received finish and be answered, then close.
    let _ = in_flight.acquire_many(MAX_IN_FLIGHT).await;
    drop(tx);
    if let Ok(Err(e)) = writer.await {
        tracing::info!(peer, "NBD connection: {e}");
    }
    tracing::info!(peer, export = session.name, "NBD connection closed");
}

/// A request handed to a blocking thread.
enum Run {
    /// A read or write, for a device that waits for it in `submit`.
    Io(AsyncIo),
    /// Any other request, run by [`execute`].
    Request {
        request: Request,
        payload: Vec<u8>,
        permit: OwnedSemaphorePermit,
    },
}

/// READ or WRITE `req` (checked, no FUA) as an [`AsyncIo`] whose completion sends the
/// reply and gives back `permit`. A completion runs on a thread of the device's, which
/// must not block: the reply is sent by a task of this runtime.
fn async_io(
    ctx: &Arc<Context>,
    req: Request,
    payload: Vec<u8>,
    peer: &str,
    permit: OwnedSemaphorePermit,
    tx: mpsc::Sender<Vec<u8>>,
) -> AsyncIo {
    let write = req.kind == CMD_WRITE;
    let (buf, start) = if write {
        (payload, 0)
    } else {
        let (mut reply, start) = read_reply_header(ctx, &req);
        reply.resize(start + req.length as usize, 0);
        (reply, start)
    };
    let (ctx, peer) = (ctx.clone(), peer.to_string());
    let runtime = tokio::runtime::Handle::current();
    AsyncIo {
        buf,
        start,
        offset: req.offset,
        write,
        done: Box::new(move |buf, result| {
            let reply = match result {
                Ok(()) if write => simple_reply(req.cookie, 0, &[]),
                Ok(()) => buf,
                Err(e) => failure(&ctx, &req, errno_of(&e, &ctx, &peer), &e.to_string()),
            };
            runtime.spawn(async move {
                let _ = tx.send(reply).await;
                drop(permit);
            });
        }),
    }
}

/// Checks a request against the export; the error is the NBD errno to answer with.
fn check(ctx: &Context, req: &Request) -> Result<(), u32> {
    let known_flags =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    if req.flags & !known_flags != 0 {
        return Err(EINVAL);
    }
    let writes = matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    if writes && ctx.readonly {
        return Err(EPERM);
    }
    if req.flags & CMD_FLAG_FAST_ZERO != 0 && req.kind != CMD_WRITE_ZEROES {
        return Err(EINVAL);
    }
    match req.kind {
        CMD_FLUSH => return Ok(()),
        CMD_BLOCK_STATUS if !ctx.allocation => return Err(EINVAL),
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_CACHE | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => {}
        _ => return Err(EINVAL),
    }
    if req.kind == CMD_READ && req.length > ctx.max_request {
        return Err(if ctx.structured { EOVERFLOW } else { EINVAL });
    }
    let end = req
        .offset
        .checked_add(u64::from(req.length))
        .ok_or(EINVAL)?;
    if end > ctx.size {
        return Err(if matches!(req.kind, CMD_WRITE | CMD_WRITE_ZEROES) {
            ENOSPC
        } else {
            EINVAL
        });
    }
    let aligned = |v: u64| v.is_multiple_of(u64::from(MIN_BLOCK));
    if ctx.block_size_agreed
        && req.kind != CMD_BLOCK_STATUS
        && !(aligned(req.offset) && aligned(u64::from(req.length)))
    {
        return Err(EINVAL);
    }
    Ok(())
}

fn errno_of(e: &BlockError, ctx: &Context, peer: &str) -> u32 {
    match e {
        BlockError::OutOfRange { .. } => EINVAL,
        BlockError::Fenced { .. } | BlockError::Standby => {
            if ctx.log_failures {
                tracing::error!(peer, "NBD request refused: {e}");
            }
            EIO
        }
        BlockError::Io(io) => {
            if ctx.log_failures {
                tracing::error!(peer, "NBD request failed: {e}");
            }
            match io.raw_os_error() {
                Some(28) => ENOSPC,
                _ => EIO,
            }
        }
    }
}

/// Runs one request and returns its reply.
/// The reply to `req` that failed with `errno`.
fn failure(ctx: &Context, req: &Request, errno: u32, message: &str) -> Vec<u8> {
    if ctx.structured && matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS) {
        error_chunk(req.cookie, errno, message)
    } else {
        simple_reply(req.cookie, errno, &[])
    }
}

/// The reply to READ `req` (checked); with `now`, only if the device has the bytes at
/// hand, `None` when it would wait.
fn read(ctx: &Context, req: &Request, peer: &str, now: bool) -> Option<Vec<u8>> {
    let (mut reply, start) = read_reply_header(ctx, req);
    reply.resize(start + req.length as usize, 0);
    let buf = &mut reply[start..];
    let result = if now {
        ctx.device.read_now(buf, req.offset)?
    } else {
        ctx.device.read_at(buf, req.offset)
    };
    Some(match result {
        Ok(()) => reply,
        Err(e) => failure(ctx, req, errno_of(&e, ctx, peer), &e.to_string()),
    })
}

fn execute(ctx: &Context, req: &Request, payload: &[u8], peer: &str) -> Vec<u8> {
    let fail = |errno: u32, message: &str| failure(ctx, req, errno, message);
    if let Err(errno) = check(ctx, req) {
        tracing::info!(peer, ?req, errno, "NBD request refused");
        return fail(errno, "invalid request");
    }
    let dev = &ctx.device;
    let (offset, len) = (req.offset, u64::from(req.length));
    let result = match req.kind {
        CMD_READ => return read(ctx, req, peer, false).expect("a read that may wait answers"),
        CMD_WRITE => dev.write_at(payload, offset).and_then(|()| fua(dev, req)),
        CMD_FLUSH => dev.flush(),
        CMD_TRIM => dev.discard(offset, len).and_then(|()| fua(dev, req)),
        CMD_WRITE_ZEROES if req.flags & CMD_FLAG_NO_HOLE != 0 => {
            dev.write_zeroes(offset, len).and_then(|()| fua(dev, req))
        }
        // Without NO_HOLE the range may become a hole: a discard reads back as zeros.
        CMD_WRITE_ZEROES => dev.discard(offset, len).and_then(|()| fua(dev, req)),
        CMD_CACHE => Ok(()),
        CMD_BLOCK_STATUS => {
            return match dev.extents(offset, len.max(1).min(ctx.size - offset)) {
                Ok(runs) => block_status_reply(req, &runs),
                Err(e) => fail(errno_of(&e, ctx, peer), &e.to_string()),
            }
        }
        _ => unreachable!("checked"),
    };
    match result {
        Ok(()) => simple_reply(req.cookie, 0, &[]),
        Err(e) => fail(errno_of(&e, ctx, peer), &e.to_string()),
    }
}

fn fua(dev: &Arc<dyn BlockDevice>, req: &Request) -> Result<(), BlockError> {
    if req.flags & CMD_FLAG_FUA != 0 {
        dev.flush()
    } else {
        Ok(())
    }
}

/// The header of a successful READ's reply, with room for the data after it, so the
/// device reads straight into the buffer that is sent: returns it and where data starts.
fn read_reply_header(ctx: &Context, req: &Request) -> (Vec<u8>, usize) {
    let mut b = Vec::with_capacity(28 + req.length as usize);
    if ctx.structured {
        chunk_header(
            &mut b,
            REPLY_FLAG_DONE,
            REPLY_TYPE_OFFSET_DATA,
            req.cookie,
            8 + req.length,
        );
        b.extend_from_slice(&req.offset.to_be_bytes());
    } else {
        b.extend_from_slice(&simple_reply(req.cookie, 0, &[]));
    }
    let start = b.len();
    (b, start)
}

fn block_status_reply(req: &Request, runs: &[cvol_provider::BlockExtent]) -> Vec<u8> {
    // Lengths are u32: split longer runs, on 512-byte boundaries.
    const MAX_RUN: u64 = (u32::MAX as u64) & !511;
    let mut descriptors = Vec::new();
    'runs: for run in runs {
        let mut left = run.length;
        while left > 0 {
            let length = left.min(MAX_RUN);
            let flags = if run.hole { STATE_HOLE | STATE_ZERO } else { 0 };
            descriptors.push((length as u32, flags));
            left -= length;
            if descriptors.len() == MAX_EXTENTS || req.flags & CMD_FLAG_REQ_ONE != 0 {
                break 'runs;
            }
        }
    }
    let mut b = Vec::with_capacity(24 + 8 * descriptors.len());
    chunk_header(
        &mut b,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        req.cookie,
        4 + 8 * descriptors.len() as u32,
    );
    b.extend_from_slice(&ALLOCATION_CONTEXT.to_be_bytes());
    for (length, flags) in descriptors {
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
    }
    b
}
