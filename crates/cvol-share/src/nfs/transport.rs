//! The byte stream under `nfs3_client`: a blocking socket, made safe against servers
//! that close the connection, lie about lengths or stop answering.
//!
//! Every call is driven to its end by the thread that makes it (a walk's threads, the
//! container's FUSE threads), so the stream blocks in the kernel instead of going through
//! an async runtime: a call is one send and, thanks to the read buffer, mostly one
//! receive, with no wakeups passed between threads (through a runtime each call cost
//! four thread switches, more CPU than the server's work on a small call).
//! `nfs3_client`'s futures over this stream are ready when first polled.
//!
//! `nfs3_client` 0.9 reads whatever record length a reply announces into one buffer:
//! this stream refuses records longer than any reply cvol asks for, ends a read at EOF
//! with an error, and gives up on a server that sends nothing for the share's timeout,
//! so a dead, hung or hostile server costs an error, not a stuck thread or gigabytes of
//! memory.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use nfs3_client::io::{AsyncRead, AsyncWrite};
use nfs3_client::net::Connector;

/// The longest RPC record accepted: a 1 MiB READ or a 256 KiB READDIRPLUS reply and
/// their headers fit with room to spare.
pub(super) const MAX_RECORD: u32 = 4 << 20;

/// ONC RPC record marking (RFC 5531, section 11): the top bit of the 4-byte header ends
/// the record, the rest is the fragment's length.
const LAST_FRAGMENT: u32 = 1 << 31;

/// Bytes read from the socket at once: a walk's replies (attributes, a small file, a
/// folder's listing) arrive whole in one receive.
const READ_BUFFER: usize = 64 << 10;

/// A stream carrying RPC records to and from a server.
pub(super) struct RecordStream<S: Read> {
    stream: BufReader<S>,
    /// True when the next exact read is a record header (`nfs3_client` reads each reply
    /// as a 4-byte header, then the body it announces).
    at_header: bool,
}

impl<S: Read> RecordStream<S> {
    /// Wraps a connected stream (whose reads time out, if they should).
    pub(super) fn new(stream: S) -> Self {
        Self {
            stream: BufReader::with_capacity(READ_BUFFER, stream),
            at_header: true,
        }
    }

    /// The next record whole, with the limits the calls of `nfs3_client` get: at most
    /// [`MAX_RECORD`] bytes, in one fragment (as `nfs3_client` takes replies).
    pub(super) fn read_record(&mut self) -> std::io::Result<Vec<u8>> {
        let mut header = [0; 4];
        self.stream.read_exact(&mut header).map_err(read_error)?;
        let length = announced_length(header)?;
        if u32::from_be_bytes(header) & LAST_FRAGMENT == 0 {
            return Err(std::io::Error::new(
                ErrorKind::InvalidData,
                "the server sent a reply in several fragments (one expected)",
            ));
        }
        let mut record = vec![0; length as usize];
        self.stream.read_exact(&mut record).map_err(read_error)?;
        Ok(record)
    }

    /// Whether a whole record has arrived already, so that reading it will not wait.
    pub(super) fn has_record(&self) -> bool {
        let buffered = self.stream.buffer();
        buffered.len() >= 4 && {
            let header = u32::from_be_bytes(buffered[..4].try_into().expect("4 bytes"));
            buffered.len() - 4 >= (header & !LAST_FRAGMENT) as usize
        }
    }
}

impl<S: Read + Write> RecordStream<S> {
    /// Sends `bytes` (whole records) as they are.
    pub(super) fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes).map_err(read_error)
    }
}

/// The errors of a read, said so that a log line explains them.
/// The length record-marking header `header` announces, refused past [`MAX_RECORD`].
fn announced_length(header: [u8; 4]) -> std::io::Result<u32> {
    let length = u32::from_be_bytes(header) & !LAST_FRAGMENT;
    if length > MAX_RECORD {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("the server announced a {length}-byte reply (at most {MAX_RECORD} expected)"),
        ));
    }
    Ok(length)
}

fn read_error(e: std::io::Error) -> std::io::Error {
    match e.kind() {
        ErrorKind::UnexpectedEof => std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the server closed the connection (EOF) before its reply was whole",
        ),
        // What a read past its timeout (SO_RCVTIMEO) fails with.
        ErrorKind::WouldBlock | ErrorKind::TimedOut => std::io::Error::new(
            ErrorKind::TimedOut,
            "the server sent no reply within the share's timeout",
        ),
        _ => e,
    }
}

impl<S: Read + Write + Send> AsyncRead for RecordStream<S> {
    async fn async_read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.read(buf).map_err(read_error)
    }

    async fn async_read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        self.stream.read_exact(buf).map_err(read_error)?;
        if self.at_header && buf.len() == 4 {
            announced_length(buf.try_into().expect("4 bytes"))?;
            self.at_header = false;
        } else {
            self.at_header = true;
        }
        Ok(())
    }
}

impl<S: Read + Write + Send> AsyncWrite for RecordStream<S> {
    async fn async_write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Writing past the read buffer is fine: a call is only sent once the previous
        // reply has been read whole.
        self.stream.get_mut().write(buf).map_err(read_error)
    }
}

/// Opens TCP connections as [`RecordStream`]s whose connects, reads and writes give up
/// after `timeout`.
pub(super) struct TcpConnector {
    /// How long a connect, or a wait for the next bytes of a reply, may take.
    pub(super) timeout: Duration,
}

impl TcpConnector {
    /// A connection to `addr`, made on the calling thread.
    pub(super) fn connect_now(&self, addr: SocketAddr) -> std::io::Result<RecordStream<TcpStream>> {
        // A zero timeout is refused by the socket calls; it means "no patience at all".
        let timeout = self.timeout.max(Duration::from_millis(100));
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(RecordStream::new(stream))
    }
}

impl Connector for TcpConnector {
    type Connection = RecordStream<TcpStream>;

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Self::Connection> {
        self.connect_now(addr)
    }

    async fn connect_with_port(
        &self,
        _addr: SocketAddr,
        _local_port: u16,
    ) -> std::io::Result<Self::Connection> {
        Err(std::io::Error::new(
            ErrorKind::Unsupported,
            "cvol connects from unprivileged ports (the server must allow that: ganesha's \
             PrivilegedPort = false, the kernel server's `insecure` export option)",
        ))
    }
}

/// Hostile replies on demand, for the tests and the `nfs_reply` fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use nfs3_client::nfs3_types::nfs3::{nfs_fh3, GETATTR3args, READ3args, READDIRPLUS3args};
    use nfs3_client::nfs3_types::xdr_codec::Opaque;
    use nfs3_client::Nfs3Client;

    use super::RecordStream;

    /// Sends GETATTR, READ and READDIRPLUS, each to a "server" that answers `reply` (with
    /// the call's xid written over bytes 4..8, so the reply reaches the decoders) and then
    /// closes. Returns what each call made of it; panics if one hangs.
    pub fn answer_nfs_calls_with(reply: &[u8]) -> Vec<Result<(), String>> {
        let fh = || nfs_fh3 {
            data: Opaque::owned(vec![1; 8]),
        };
        let mut outcomes = Vec::new();
        for call in 0..3 {
            let (client_end, server_end) = UnixStream::pair().expect("a socket pair");
            client_end
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("a read timeout");
            let reply = reply.to_vec();
            let server = std::thread::spawn(move || serve(server_end, reply));
            let mut client = Nfs3Client::new(RecordStream::new(client_end));
            let outcome = futures::executor::block_on(async {
                match call {
                    0 => client
                        .getattr(&GETATTR3args { object: fh() })
                        .await
                        .map(drop),
                    1 => client
                        .read(&READ3args {
                            file: fh(),
                            offset: 0,
                            count: 4096,
                        })
                        .await
                        .map(drop),
                    _ => client
                        .readdirplus(&READDIRPLUS3args {
                            dir: fh(),
                            cookie: 0,
                            cookieverf: Default::default(),
                            dircount: 4096,
                            maxcount: 16384,
                        })
                        .await
                        .map(drop),
                }
            });
            if let Err(nfs3_client::RpcError::Io(e)) = &outcome {
                assert_ne!(
                    e.kind(),
                    ErrorKind::TimedOut,
                    "the client hung on a hostile reply"
                );
            }
            server.join().expect("the fake server");
            outcomes.push(outcome.map_err(|e| e.to_string()));
        }
        outcomes
    }

    fn serve(mut stream: UnixStream, mut reply: Vec<u8>) {
        let mut request = vec![0u8; 1024];
        let Ok(n) = stream.read(&mut request) else {
            return;
        };
        if n >= 8 && reply.len() >= 8 {
            reply[4..8].copy_from_slice(&request[4..8]);
        }
        let _ = stream.write_all(&reply);
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
