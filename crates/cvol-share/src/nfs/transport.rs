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

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_client::nfs3_types::nfs3::{nfs_fh3, GETATTR3args};
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    use nfs3_client::Nfs3Client;

    /// Runs a GETATTR against a "server" that answers `reply` and then closes.
    fn getattr_against(reply: &[u8]) -> String {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client_end, mut server_end) = tokio::io::duplex(1 << 16);
            let reply = reply.to_vec();
            let server = tokio::spawn(async move {
                let mut request = [0u8; 256];
                let _ = server_end.read(&mut request).await;
                let _ = server_end.write_all(&reply).await;
            });
            let mut client = Nfs3Client::new(RecordStream::new(client_end));
            let args = GETATTR3args {
                object: nfs_fh3 {
                    data: Opaque::owned(vec![1; 8]),
                },
            };
            let outcome =
                tokio::time::timeout(std::time::Duration::from_secs(5), client.getattr(&args))
                    .await
                    .expect("the client gave up instead of hanging");
            server.await.unwrap();
            match outcome {
                Ok(reply) => panic!("a hostile reply was accepted: {reply:?}"),
                Err(e) => e.to_string(),
            }
        })
    }

    #[test]
    fn hostile_or_dead_servers_give_errors() {
        // The connection ends before, inside and after a record header.
        for reply in [&[][..], &[0x80, 0], &[0x80, 0, 0, 40, 1, 2, 3]] {
            let e = getattr_against(reply);
            assert!(e.contains("eof") || e.contains("EOF"), "{reply:?}: {e}");
        }
        // A record of 2 GiB is refused before anything is allocated for it.
        let e = getattr_against(&[0xff, 0xff, 0xff, 0xff]);
        assert!(e.contains("at most"), "{e}");
        // Garbage of a plausible length: a decoding error (or a wrong xid), no panic.
        let mut garbage = vec![0x80, 0, 0, 64];
        garbage.extend((0..64).map(|i| (i * 37) as u8));
        getattr_against(&garbage);
    }
}
