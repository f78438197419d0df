//! The byte stream under `nfs3_client`, made safe against servers that close the
//! connection or lie about lengths.
//!
//! `nfs3_client` 0.9's own tokio stream loops forever when the server closes the
//! connection mid-reply (a read of 0 bytes is retried, not an error) and reads whatever
//! record length a reply announces into one buffer. This stream ends a read at EOF with
//! an error and refuses records longer than any reply cvol asks for, so a dead or hostile
//! server costs an error, not a spinning thread or gigabytes of memory.

use std::net::SocketAddr;

use nfs3_client::io::{AsyncRead, AsyncWrite};
use nfs3_client::net::Connector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest RPC record accepted: a 1 MiB READ or a 256 KiB READDIRPLUS reply and
/// their headers fit with room to spare.
pub(super) const MAX_RECORD: u32 = 4 << 20;

/// ONC RPC record marking (RFC 5531, section 11): the top bit of the 4-byte header ends
/// the record, the rest is the fragment's length.
const LAST_FRAGMENT: u32 = 1 << 31;

/// A stream carrying RPC records to and from a server.
pub(super) struct RecordStream<S> {
    stream: S,
    /// True when the next exact read is a record header (`nfs3_client` reads each reply
    /// as a 4-byte header, then the body it announces).
    at_header: bool,
}

impl<S> RecordStream<S> {
    /// Wraps a connected stream.
    pub(super) fn new(stream: S) -> Self {
        Self {
            stream,
            at_header: true,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin + Send> AsyncRead for RecordStream<S> {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf).await
    }

    async fn async_read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        // tokio's read_exact fails with UnexpectedEof where the connection ends.
        self.stream.read_exact(buf).await?;
        if self.at_header && buf.len() == 4 {
            let header = u32::from_be_bytes(buf.try_into().expect("4 bytes"));
            let length = header & !LAST_FRAGMENT;
            if length > MAX_RECORD {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the server announced a {length}-byte reply (at most {MAX_RECORD} expected)"),
                ));
            }
            self.at_header = false;
        } else {
            self.at_header = true;
        }
        Ok(())
    }
}

impl<S: tokio::io::AsyncWrite + Unpin + Send> AsyncWrite for RecordStream<S> {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf).await
    }
}

/// Opens TCP connections as [`RecordStream`]s.
pub(super) struct TcpConnector;

impl Connector for TcpConnector {
    type Connection = RecordStream<tokio::net::TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Connection> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RecordStream::new(stream))
    }

    async fn connect_with_port(
        &self,
        addr: SocketAddr,
        local_port: u16,
    ) -> std::io::Result<Self::Connection> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        let local = match addr {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], local_port)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], local_port)),
        };
        socket.bind(local)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RecordStream::new(stream))
    }
}

/// Hostile replies on demand, for the tests and the `nfs_reply` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use nfs3_client::nfs3_types::nfs3::{nfs_fh3, GETATTR3args, READ3args, READDIRPLUS3args};
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    use nfs3_client::Nfs3Client;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::RecordStream;

    /// Sends GETATTR, READ and READDIRPLUS, each to a "server" that answers `reply` (with
    /// the call's xid written over bytes 4..8, so the reply reaches the decoders) and then
    /// closes. Returns what each call made of it; panics if one hangs.
    pub fn answer_nfs_calls_with(reply: &[u8]) -> Vec<Result<(), String>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let fh = || nfs_fh3 {
            data: Opaque::owned(vec![1; 8]),
        };
        runtime.block_on(async {
            let mut outcomes = Vec::new();
            for call in 0..3 {
                let (client_end, server_end) = tokio::io::duplex(1 << 16);
                let server = tokio::spawn(serve(server_end, reply.to_vec()));
                let mut client = Nfs3Client::new(RecordStream::new(client_end));
                let outcome = async {
                    let e = |e: nfs3_client::RpcError| e.to_string();
                    match call {
                        0 => client
                            .getattr(&GETATTR3args { object: fh() })
                            .await
                            .map(drop)
                            .map_err(e),
                        1 => client
                            .read(&READ3args {
                                file: fh(),
                                offset: 0,
                                count: 4096,
                            })
                            .await
                            .map(drop)
                            .map_err(e),
                        _ => client
                            .readdirplus(&READDIRPLUS3args {
                                dir: fh(),
                                cookie: 0,
                                cookieverf: Default::default(),
                                dircount: 4096,
                                maxcount: 16384,
                            })
                            .await
                            .map(drop)
                            .map_err(e),
                    }
                };
                let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), outcome)
                    .await
                    .expect("the client hung on a hostile reply");
                server.await.expect("the fake server");
                outcomes.push(outcome);
            }
            outcomes
        })
    }

    async fn serve(mut stream: tokio::io::DuplexStream, mut reply: Vec<u8>) {
        let mut request = vec![0u8; 1024];
        let Ok(n) = stream.read(&mut request).await else {
            return;
        };
        if n >= 8 && reply.len() >= 8 {
            reply[4..8].copy_from_slice(&request[4..8]);
        }
        let _ = stream.write_all(&reply).await;
    }
}

#[cfg(test)]
mod tests {
    use super::fuzzing::answer_nfs_calls_with;

    fn errors(reply: &[u8]) -> Vec<String> {
        answer_nfs_calls_with(reply)
            .into_iter()
            .map(|outcome| outcome.expect_err("a hostile reply was accepted"))
            .collect()
    }

    #[test]
    fn hostile_or_dead_servers_give_errors() {
        // The connection ends before, inside and after a record header.
        for reply in [&[][..], &[0x80, 0], &[0x80, 0, 0, 40, 1, 2, 3, 4, 5]] {
            for e in errors(reply) {
                assert!(e.to_lowercase().contains("eof"), "{reply:?}: {e}");
            }
        }
        // A record of 2 GiB is refused before anything is allocated for it.
        for e in errors(&[0xff, 0xff, 0xff, 0xff]) {
            assert!(e.contains("at most"), "{e}");
        }
        // An accepted reply whose body is cut short, and one of garbage.
        let mut accepted = vec![0x80, 0, 0, 28];
        accepted.extend([
            0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]);
        accepted.extend([0, 0, 0, 0]);
        errors(&accepted);
        let mut garbage = vec![0x80, 0, 0, 64];
        garbage.extend((0..64).map(|i| (i * 37) as u8));
        errors(&garbage);
    }
}
