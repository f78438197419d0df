//! Fixed newstyle negotiation ("Newstyle negotiation" and "Option types" in the spec):
//! greets the client, answers its options, and ends with an export opened or the
//! connection closed.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::exports::{ExportError, Exports, OpenExport};
use crate::proto::*;
use crate::server::Settings;

/// Largest option data accepted; names are at most 4096 bytes, so anything bigger is a
/// broken or hostile client.
const MAX_OPTION_LEN: u32 = 64 << 10;
/// The context id given to `base:allocation`.
pub const ALLOCATION_CONTEXT: u32 = 1;
/// Smallest block a client that asked for constraints must respect.
pub const MIN_BLOCK: u32 = 512;
/// The block size clients should prefer.
pub const PREFERRED_BLOCK: u32 = 4096;

/// The outcome of a successful negotiation.
pub struct Negotiated {
    /// The export's name.
    pub name: String,
    /// The opened export.
    pub export: OpenExport,
    /// Its size at the time it was opened.
    pub size: u64,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected.
    pub allocation: bool,
    /// The client asked for block size constraints, and so promised to respect them.
    pub block_size_agreed: bool,
}

/// Why a negotiation ended without an export.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The connection failed or closed.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol badly enough to close on it.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

fn transmission_flags(settings: &Settings, structured: bool) -> u16 {
    let mut flags = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_CACHE
        // Every connection to an export shares one attached device, whose flush makes
        // all writes completed on any connection durable.
        | FLAG_CAN_MULTI_CONN;
    if settings.readonly {
        flags |= FLAG_READ_ONLY;
    } else {
        flags |= FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES | FLAG_SEND_FAST_ZERO;
    }
    if structured {
        // Reads are always answered in one chunk, so "don't fragment" always holds.
        flags |= FLAG_SEND_DF;
    }
    flags
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)
}

/// How a negotiation ended well.
pub enum Negotiation {
    /// An export is open: transmission starts.
    Session(Negotiated),
    /// The client aborted.
    Aborted,
    /// The client asked for TLS and was told yes: the TLS handshake comes next on the
    /// same connection, then the options go on ([`haggle`] again, with TLS on).
    StartTls,
}

/// Greets the client on `w` and reads its flags from `r`; true if it asked for no
/// zeroes after an export (NBD_FLAG_C_NO_ZEROES).
pub async fn greet<R, W>(r: &mut R, w: &mut W) -> Result<bool, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_u64(NBDMAGIC).await?;
    w.write_u64(IHAVEOPT).await?;
    w.write_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).await?;
    w.flush().await?;
    let client_flags = r.read_u32().await?;
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(HandshakeError::Protocol(format!(
            "unknown client flags {client_flags:#x}"
        )));
    }
    Ok(client_flags & FLAG_C_NO_ZEROES != 0)
}

/// Answers the client's options on `r`/`w` until it picks an export, aborts or starts
/// TLS. `tls` says whether the connection already runs over TLS; a server that requires
/// TLS answers every other option before it with NBD_REP_ERR_TLS_REQD.
pub async fn haggle<R, W>(
    r: &mut R,
    w: &mut W,
    no_zeroes: bool,
    tls: bool,
    exports: &Arc<dyn Exports>,
    settings: &Settings,
    peer: &str,
) -> Result<Negotiation, HandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let tls_required = settings.tls.as_ref().is_some_and(|t| t.require) && !tls;
    let mut state = OptionState {
        tls,
        ..OptionState::default()
    };
    loop {
        let magic = r.read_u64().await?;
        if magic != IHAVEOPT {
            return Err(HandshakeError::Protocol(format!(
                "bad option magic {magic:#x}"
            )));
        }
        let option = r.read_u32().await?;
        let len = r.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(HandshakeError::Protocol(format!(
                "option {option} with {len} bytes of data"
            )));
        }
        let mut data = vec![0; len as usize];
        r.read_exact(&mut data).await?;
        tracing::debug!(peer, option, len, "NBD option");
        let answer = if tls_required && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
            if option == OPT_EXPORT_NAME {
                // It has no error reply: all the spec allows is closing.
                return Err(HandshakeError::Protocol(
                    "NBD_OPT_EXPORT_NAME without TLS on a server that requires it".into(),
                ));
            }
            Answer::Refuse(
                REP_ERR_TLS_REQD,
                "this server requires TLS: send NBD_OPT_STARTTLS first".into(),
            )
        } else {
            answer_option(option, data, &mut state, exports, settings).await?
        };
        match answer {
            Answer::Reply(bytes) => w.write_all(&bytes).await?,
            Answer::Refuse(kind, message) => {
                tracing::info!(peer, option, "NBD option refused: {message}");
                w.write_all(&option_reply(option, kind, message.as_bytes()))
                    .await?;
            }
            Answer::Abort => {
                w.write_all(&option_reply(option, REP_ACK, &[])).await?;
                w.flush().await?;
                return Ok(Negotiation::Aborted);
            }
            Answer::StartTls => {
                w.write_all(&option_reply(option, REP_ACK, &[])).await?;
                w.flush().await?;
                return Ok(Negotiation::StartTls);
            }
            Answer::Go(bytes, session) => {
                w.write_all(&bytes).await?;
                w.flush().await?;
                return Ok(Negotiation::Session(session));
            }
            Answer::ExportName(session) => {
                // The old way to pick an export: the size, the flags, and padding.
                w.write_u64(session.size).await?;
                w.write_u16(transmission_flags(settings, state.structured))
                    .await?;
                if !no_zeroes {
                    w.write_all(&[0; 124]).await?;
                }
                w.flush().await?;
                return Ok(Negotiation::Session(session));
            }
        }
        w.flush().await?;
    }
}

/// What the options so far have settled.
#[derive(Default)]
struct OptionState {
    structured: bool,
    allocation: bool,
    /// The connection runs over TLS.
    tls: bool,
}

/// How to answer one option.
enum Answer {
    /// Send these replies and go on.
    Reply(Vec<u8>),
    /// Send this error reply and go on.
    Refuse(u32, String),
    /// Acknowledge and close.
    Abort,
    /// Acknowledge, then the TLS handshake.
    StartTls,
    /// Send these replies and start transmission.
    Go(Vec<u8>, Negotiated),
    /// Start transmission the old way (NBD_OPT_EXPORT_NAME).
    ExportName(Negotiated),
}

/// Decides the answer to `option` with `data` ("Option types" in the spec).
async fn answer_option(
    option: u32,
    data: Vec<u8>,
    state: &mut OptionState,
    exports: &Arc<dyn Exports>,
    settings: &Settings,
) -> Result<Answer, HandshakeError> {
    let reply = |kind: u32, data: &[u8]| option_reply(option, kind, data);
    let refuse = |kind: u32, message: &str| Ok(Answer::Refuse(kind, message.to_string()));
    let exports = exports.clone();
    match option {
        OPT_EXPORT_NAME => {
            // No way to say no: a bad name closes the connection.
            let name = String::from_utf8(data)
                .map_err(|_| HandshakeError::Protocol("export name is not UTF-8".into()))?;
            let opened = blocking({
                let name = name.clone();
                move || exports.open(&name)
            })
            .await?;
            let export =
                opened.map_err(|e| HandshakeError::Protocol(format!("export {name:?}: {e}")))?;
            let size = export.device.size();
            Ok(Answer::ExportName(Negotiated {
                name,
                export,
                size,
                structured: state.structured,
                allocation: state.allocation,
                block_size_agreed: false,
            }))
        }
        OPT_ABORT => Ok(Answer::Abort),
        OPT_LIST if !data.is_empty() => refuse(REP_ERR_INVALID, "NBD_OPT_LIST takes no data"),
        OPT_LIST => match blocking(move || exports.names()).await? {
            Ok(names) => {
                let mut out = Vec::new();
                for name in names {
                    let mut item = (name.len() as u32).to_be_bytes().to_vec();
                    item.extend_from_slice(name.as_bytes());
                    out.extend(reply(REP_SERVER, &item));
                }
                out.extend(reply(REP_ACK, &[]));
                Ok(Answer::Reply(out))
            }
            Err(e) => refuse(REP_ERR_INVALID, &e.to_string()),
        },
        OPT_STARTTLS if settings.tls.is_none() => refuse(
            REP_ERR_POLICY,
            "TLS is not offered here (the daemon's --nbd-tls is off)",
        ),
        OPT_STARTTLS if !data.is_empty() => {
            refuse(REP_ERR_INVALID, "NBD_OPT_STARTTLS takes no data")
        }
        OPT_STARTTLS if state.tls => refuse(REP_ERR_INVALID, "TLS is already on"),
        OPT_STARTTLS => Ok(Answer::StartTls),
        OPT_STRUCTURED_REPLY if !data.is_empty() => {
            refuse(REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data")
        }
        OPT_STRUCTURED_REPLY => {
            state.structured = true;
            Ok(Answer::Reply(reply(REP_ACK, &[])))
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let Ok(request) = MetaContextRequest::parse(&data) else {
                return refuse(REP_ERR_INVALID, "malformed meta context request");
            };
            if option == OPT_SET_META_CONTEXT && !state.structured {
                return refuse(REP_ERR_INVALID, "negotiate structured replies first");
            }
            let name = request.name.to_string();
            if let Err(e) = blocking(move || exports.size(&name)).await? {
                return refuse(REP_ERR_UNKNOWN, &e.to_string());
            }
            let selected = if request.queries.is_empty() {
                option == OPT_LIST_META_CONTEXT
            } else {
                request
                    .queries
                    .iter()
                    .any(|q| *q == BASE_ALLOCATION || *q == "base:")
            };
            if option == OPT_SET_META_CONTEXT {
                state.allocation = selected;
            }
            let mut out = Vec::new();
            if selected {
                let mut item = ALLOCATION_CONTEXT.to_be_bytes().to_vec();
                item.extend_from_slice(BASE_ALLOCATION.as_bytes());
                out.extend(reply(REP_META_CONTEXT, &item));
            }
            out.extend(reply(REP_ACK, &[]));
            Ok(Answer::Reply(out))
        }
        OPT_INFO | OPT_GO => {
            let Ok(request) = InfoRequest::parse(&data) else {
                return refuse(REP_ERR_INVALID, "malformed info request");
            };
            let name = request.name.to_string();
            let block_size_agreed = request.items.contains(&INFO_BLOCK_SIZE);
            let go = option == OPT_GO;
            let found = blocking({
                let name = name.clone();
                move || {
                    if go {
                        exports.open(&name).map(|e| (e.device.size(), Some(e)))
                    } else {
                        exports.size(&name).map(|s| (s, None))
                    }
                }
            })
            .await?;
            let (size, export) = match found {
                Ok(found) => found,
                Err(ExportError::Unknown(m)) => return refuse(REP_ERR_UNKNOWN, &m),
                Err(ExportError::Refused(m)) => return refuse(REP_ERR_POLICY, &m),
            };
            let mut info = INFO_EXPORT.to_be_bytes().to_vec();
            info.extend_from_slice(&size.to_be_bytes());
            info.extend_from_slice(&transmission_flags(settings, state.structured).to_be_bytes());
            let mut out = reply(REP_INFO, &info);
            if block_size_agreed {
                let mut info = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [MIN_BLOCK, PREFERRED_BLOCK, settings.max_request] {
                    info.extend_from_slice(&v.to_be_bytes());
                }
                out.extend(reply(REP_INFO, &info));
            }
            out.extend(reply(REP_ACK, &[]));
            Ok(match export {
                Some(export) => Answer::Go(
                    out,
                    Negotiated {
                        name,
                        export,
                        size,
                        structured: state.structured,
                        allocation: state.allocation,
                        block_size_agreed,
                    },
                ),
                None => Answer::Reply(out),
            })
        }
        _ => refuse(REP_ERR_UNSUP, &format!("option {option} is not supported")),
    }
}
