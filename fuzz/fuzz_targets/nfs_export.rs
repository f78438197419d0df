//! `cvol nfs serve` (cvol-nfs-server over the vendored nfs3_server) on arbitrary bytes
//! from a client: the bytes are sent on a fresh TCP connection, which is then half-closed;
//! the server must answer what it can and close the connection within 5 s, never panic
//! or hang, and keep accepting connections. The export is a temporary directory.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;

struct Server {
    server: cvol_nfs_server::NfsServer,
    _dir: tempfile::TempDir,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("vm1")).unwrap();
        std::fs::write(dir.path().join("vm1/vm1.vmx"), "displayName = \"vm1\"\n").unwrap();
        let server =
            cvol_nfs_server::NfsServer::start(dir.path(), "127.0.0.1:0".parse().unwrap())
                .unwrap();
        Server { server, _dir: dir }
    })
}

fuzz_target!(|data: &[u8]| {
    let addr = server().server.local_addr();
    let mut stream = TcpStream::connect(addr).expect("the server accepts connections");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The server may close first, refusing the rest: that is an answer too.
    let _ = stream.write_all(data);
    let _ = stream.shutdown(Shutdown::Write);
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server neither answered nor closed: {e}"),
    }
});
