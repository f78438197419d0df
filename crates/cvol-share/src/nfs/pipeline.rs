//! Many calls in flight on one connection. NFSv3 over TCP matches each reply to its
//! call by xid (RFC 5531), so a walk that lists thousands of VM folders sends their
//! READDIRPLUS back to back and reads the replies as they come, instead of waiting a
//! round trip (and a wakeup on each side) for every folder.
//!
//! `nfs3_client` sends a call and waits for its reply before the next, so this module
//! frames the calls itself; `nfs3_types` codes the messages, and [`RecordStream`] reads
//! the replies with the limits every other call has (size, timeout, EOF).

use std::collections::HashMap;
use std::io::{Cursor, ErrorKind};
use std::net::TcpStream;

use nfs3_client::nfs3_types::nfs3;
use nfs3_client::nfs3_types::rpc::{
    accept_stat_data, call_body, fragment_header, msg_body, opaque_auth, reply_body, rpc_msg,
    RPC_VERSION_2,
};
use nfs3_client::nfs3_types::xdr_codec::{Pack, Unpack};

use super::transport::RecordStream;

/// Calls sent ahead of their replies, at most. Their bytes (a READDIRPLUS call is about
/// 150) fit in the socket's send buffer, so a send never waits on a server that is
/// itself waiting for this side to read its replies.
pub(super) const WINDOW: usize = 64;

/// One connection carrying pipelined calls to the NFS program.
pub(super) struct Pipeline {
    stream: RecordStream<TcpStream>,
    credential: opaque_auth<'static>,
    next_xid: u32,
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message)
}

impl Pipeline {
    /// Calls over `stream`, made as `credential`.
    pub(super) fn new(stream: RecordStream<TcpStream>, credential: opaque_auth<'static>) -> Self {
        Self {
            stream,
            credential,
            // Random, as `nfs3_client`'s: a server's duplicate-request cache must not take
            // these calls for an earlier connection's.
            next_xid: uuid::Uuid::new_v4().as_u128() as u32,
        }
    }

    /// Calls procedure `procedure` once with each of `args`, up to [`WINDOW`] in flight,
    /// and gives each call's reply in the order of `args`: `None` for one the server
    /// refused at the RPC level (not an NFS status, which is in the reply). An error of
    /// the connection (or a reply that is not one) ends all the calls.
    pub(super) fn call_all<A: Pack, R: Unpack>(
        &mut self,
        procedure: nfs3::NFS_PROGRAM,
        args: &[A],
    ) -> std::io::Result<Vec<Option<R>>> {
        let mut replies: Vec<Option<R>> = args.iter().map(|_| None).collect();
        let mut waiting: HashMap<u32, usize> = HashMap::new();
        let mut next = 0;
        let mut outgoing = Vec::new();
        while next < args.len() || !waiting.is_empty() {
            while next < args.len() && waiting.len() < WINDOW {
                let xid = self.next_xid;
                self.next_xid = xid.wrapping_add(1);
                self.frame(&mut outgoing, xid, procedure, &args[next])?;
                waiting.insert(xid, next);
                next += 1;
            }
            if !outgoing.is_empty() {
                self.stream.send(&outgoing)?;
                outgoing.clear();
            }
            // One reply, then every other that has arrived whole: the calls they make
            // room for go out together.
            loop {
                let (xid, reply) = self.reply::<R>()?;
                let index = waiting.remove(&xid).ok_or_else(|| {
                    invalid(format!("the server answered xid {xid}, which was not sent"))
                })?;
                replies[index] = reply;
                if !self.stream.has_record() {
                    break;
                }
            }
        }
        Ok(replies)
    }

    fn frame<A: Pack>(
        &self,
        out: &mut Vec<u8>,
        xid: u32,
        procedure: nfs3::NFS_PROGRAM,
        args: &A,
    ) -> std::io::Result<()> {
        let message = rpc_msg {
            xid,
            body: msg_body::CALL(call_body {
                rpcvers: RPC_VERSION_2,
                prog: nfs3::PROGRAM,
                vers: nfs3::VERSION,
                proc: procedure as u32,
                cred: self.credential.borrow(),
                verf: opaque_auth::default(),
            }),
        };
        let length = message.packed_size() + args.packed_size();
        fragment_header::new(
            u32::try_from(length).map_err(|_| invalid("a call too long".into()))?,
            true,
        )
        .pack(out)
        .map_err(|e| invalid(e.to_string()))?;
        message.pack(out).map_err(|e| invalid(e.to_string()))?;
        args.pack(out).map_err(|e| invalid(e.to_string()))?;
        Ok(())
    }

    /// The next reply: its xid, and its result unless the server refused the call.
    fn reply<R: Unpack>(&mut self) -> std::io::Result<(u32, Option<R>)> {
        let record = self.stream.read_record()?;
        let length = record.len() as u64;
        let mut cursor = Cursor::new(record);
        let (message, _) = rpc_msg::unpack(&mut cursor).map_err(|e| invalid(e.to_string()))?;
        let xid = message.xid;
        let accepted = match message.body {
            msg_body::REPLY(reply_body::MSG_ACCEPTED(accepted)) => accepted,
            msg_body::REPLY(reply_body::MSG_DENIED(_)) => return Ok((xid, None)),
            msg_body::CALL(_) => return Err(invalid("the server sent a call".into())),
        };
        if !matches!(accepted.reply_data, accept_stat_data::SUCCESS) {
            return Ok((xid, None));
        }
        let (result, _) = R::unpack(&mut cursor).map_err(|e| invalid(e.to_string()))?;
        if cursor.position() != length {
            return Err(invalid(format!(
                "the reply to xid {xid} has bytes past its end"
            )));
        }
        Ok((xid, Some(result)))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use nfs3_client::nfs3_types::nfs3::NFS_PROGRAM;
    use nfs3_client::nfs3_types::rpc::opaque_auth;

    use super::{Pipeline, WINDOW};
    use crate::nfs::transport::TcpConnector;

    /// One call as the test server sees it: its xid and its argument (a `u32`).
    fn read_call(stream: &mut TcpStream) -> Option<(u32, u32)> {
        let mut mark = [0; 4];
        stream.read_exact(&mut mark).ok()?;
        let length = (u32::from_be_bytes(mark) & !(1 << 31)) as usize;
        let mut record = vec![0; length];
        stream.read_exact(&mut record).ok()?;
        let word = |at: usize| u32::from_be_bytes(record[at..at + 4].try_into().unwrap());
        Some((word(0), word(length - 4)))
    }

    /// An accepted reply to `xid` whose result is `value`.
    fn reply(xid: u32, value: u32) -> Vec<u8> {
        let words = [xid, 1, 0, 0, 0, 0, value];
        let mut out = (0x8000_0000u32 | 28).to_be_bytes().to_vec();
        out.extend(words.iter().flat_map(|w| w.to_be_bytes()));
        out
    }

    /// Runs `serve` on the server side of a connection and sends `args` through a
    /// pipeline on the client side.
    fn call_all(
        args: &[u32],
        serve: impl FnOnce(TcpStream) + Send + 'static,
    ) -> std::io::Result<Vec<Option<u32>>> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            serve(stream);
        });
        let connector = TcpConnector {
            timeout: Duration::from_secs(5),
        };
        let mut pipeline = Pipeline::new(connector.connect_now(address)?, opaque_auth::default());
        let replies = pipeline.call_all::<u32, u32>(NFS_PROGRAM::NFSPROC3_GETATTR, args);
        drop(pipeline);
        server.join().unwrap();
        replies
    }

    #[test]
    fn calls_go_out_before_their_replies_come_back_and_are_matched_by_xid() {
        let args: Vec<u32> = (0..WINDOW as u32).collect();
        let replies = call_all(&args, |mut stream| {
            // Not one reply until every call is in: a client that waited for each
            // reply would time out here.
            let calls: Vec<(u32, u32)> =
                (0..WINDOW).map_while(|_| read_call(&mut stream)).collect();
            assert_eq!(calls.len(), WINDOW, "the calls did not all come");
            for &(xid, arg) in calls.iter().rev() {
                stream.write_all(&reply(xid, arg * 10)).unwrap();
            }
        })
        .expect("the replies");
        let expected: Vec<Option<u32>> = args.iter().map(|a| Some(a * 10)).collect();
        assert_eq!(replies, expected, "each reply goes with its own call");
    }

    #[test]
    fn more_calls_than_the_window_are_all_answered() {
        let args: Vec<u32> = (0..1000).collect();
        let replies = call_all(&args, |mut stream| {
            while let Some((xid, arg)) = read_call(&mut stream) {
                stream.write_all(&reply(xid, arg + 1)).unwrap();
            }
        })
        .expect("the replies");
        assert!(replies.iter().zip(&args).all(|(r, a)| *r == Some(a + 1)));
    }

    #[test]
    fn a_server_that_answers_wrong_or_goes_away_fails_the_calls() {
        let unknown = call_all(&[1, 2], |mut stream| {
            let (xid, _) = read_call(&mut stream).unwrap();
            stream.write_all(&reply(xid.wrapping_add(100), 0)).unwrap();
        })
        .expect_err("a reply to a call never made");
        assert!(unknown.to_string().contains("not sent"), "{unknown}");

        let gone = call_all(&[1, 2, 3], |mut stream| {
            let calls: Vec<(u32, u32)> = (0..3).map_while(|_| read_call(&mut stream)).collect();
            stream.write_all(&reply(calls[0].0, calls[0].1)).unwrap();
        })
        .expect_err("a server that closed with calls unanswered");
        assert!(gone.to_string().contains("EOF"), "{gone}");
    }
}
