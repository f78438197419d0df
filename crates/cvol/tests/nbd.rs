//! The NBD data plane, driven by real clients (qemu-img, qemu-io, nbdinfo, nbdcopy, fio)
//! and by a hostile one written here.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{free_port, tool, tool_output, Env, Mounted};
use cvol_nbd::proto::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Nbd {
    env: Env,
    m: Mounted,
    socket: PathBuf,
}

impl Nbd {
    fn start(extra: &[&str]) -> Self {
        Self::start_on(Env::datastore(), extra)
    }

    fn start_on(env: Env, extra: &[&str]) -> Self {
        env.ok(&["vm", "create", "demo", "--disk", "64M"]);
        env.ok(&["vm", "create", "other", "--disk", "1M"]);
        let socket = env.tmp.path().join("nbd.sock");
        let listen = format!("unix:{}", socket.display());
        let mut args = vec!["--nbd", listen.as_str()];
        args.extend_from_slice(extra);
        let m = env.mount_with(&args);
        Self { env, m, socket }
    }

    fn uri(&self, export: &str) -> String {
        format!("nbd+unix:///{export}?socket={}", self.socket.display())
    }
}

#[test]
fn real_clients_read_write_map_and_copy() {
    real_clients_read_write_map_and_copy_on(Env::datastore());
}

#[test]
fn real_clients_read_write_map_and_copy_on_an_object_pool() {
    real_clients_read_write_map_and_copy_on(Env::datastore_on_object());
}

#[test]
fn real_clients_read_write_map_and_copy_on_s3() {
    real_clients_read_write_map_and_copy_on(Env::datastore_on_s3());
}

#[test]
fn real_clients_read_write_map_and_copy_on_a_sealed_object_pool() {
    real_clients_read_write_map_and_copy_on(Env::datastore_on_sealed_object());
}

#[test]
fn real_clients_read_write_map_and_copy_on_sealed_s3() {
    real_clients_read_write_map_and_copy_on(Env::datastore_on_sealed_s3());
}

#[test]
fn real_clients_read_write_map_and_copy_on_rbd() {
    real_clients_read_write_map_and_copy_on(Env::datastore_on_rbd());
}

fn real_clients_read_write_map_and_copy_on(env: Env) {
    let port = free_port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    let nbd = Nbd::start_on(env, &["--nbd", &tcp]);
    let uri = nbd.uri("demo/demo");

    let list = tool("nbdinfo", &["--list", &nbd.uri("")]);
    assert!(
        list.contains("export=\"demo/demo\"") && list.contains("export=\"other/other\""),
        "{list}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", &uri])).unwrap();
    assert_eq!(info["virtual-size"], 64 << 20);
    let tcp_uri = format!("nbd://127.0.0.1:{port}/demo/demo");
    assert!(tool("qemu-img", &["info", &tcp_uri]).contains("64 MiB"));

    let out = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x11 0 1M",
            "-c",
            "write -P 0x22 2M 1M",
            "-c",
            "write -z 2M 512k",
            "-c",
            "discard 2560k 512k",
            "-c",
            "write -P 0x33 8M 64k",
            "-c",
            "flush",
            &uri,
        ],
    );
    assert!(out.contains("wrote 65536/65536"), "{out}");
    let out = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0x11 0 1M",
            "-c",
            "read -P 0 2M 1M",
            "-c",
            "read -P 0x33 8M 64k",
            &uri,
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");

    // The same bytes through the container's flat file and in the pool (as flushed).
    let flat = std::fs::read(nbd.m.path("demo/demo-flat.vmdk")).unwrap();
    assert!(flat[..1 << 20].iter().all(|&b| b == 0x11));
    assert!(flat[8 << 20..(8 << 20) + 65536].iter().all(|&b| b == 0x33));
    assert!(flat == nbd.env.volume_bytes("demo/demo"));

    // Holes are reported, so copies can skip them.
    let map: serde_json::Value = serde_json::from_str(&tool(
        "qemu-img",
        &["map", "-f", "raw", "--output=json", &uri],
    ))
    .unwrap();
    let extents = map.as_array().unwrap();
    assert!(
        extents.iter().any(|e| e["data"] == true && e["start"] == 0),
        "{map}"
    );
    assert!(
        extents
            .iter()
            .any(|e| e["data"] == false && e["zero"] == true),
        "{map}"
    );
    let nbd_map = tool("nbdinfo", &["--map", &uri]);
    assert!(
        nbd_map.contains("data") && nbd_map.contains("hole,zero"),
        "{nbd_map}"
    );

    let out_raw = nbd.env.tmp.path().join("out.raw");
    tool("nbdcopy", &[&uri, s(&out_raw)]);
    assert!(
        std::fs::read(&out_raw).unwrap() == flat,
        "nbdcopy out copies the disk"
    );
    let converted = nbd.env.tmp.path().join("conv.raw");
    tool(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, s(&converted)],
    );
    tool(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", &uri, s(&converted)],
    );

    let in_raw = nbd.env.tmp.path().join("in.raw");
    let pattern: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&in_raw, &pattern).unwrap();
    let other = nbd.uri("other/other");
    tool("nbdcopy", &["--flush", s(&in_raw), &other]);
    assert!(
        nbd.env.volume_bytes("other/other") == pattern,
        "nbdcopy in, flushed"
    );

    let out = tool(
        "fio",
        &[
            "--name=nbd",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ],
    );
    assert!(!out.contains("verify: bad"), "{out}");
}

#[test]
fn readonly_exports_refuse_writes() {
    let nbd = Nbd::start(&["--nbd-readonly"]);
    let out = tool_output(
        "qemu-io",
        &["-f", "raw", "-c", "write 0 4k", &nbd.uri("demo/demo")],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("read-only")
            || text.contains("Operation not permitted")
            || text.contains("denied"),
        "{text}"
    );
    tool(
        "qemu-io",
        &["-f", "raw", "-r", "-c", "read 0 4k", &nbd.uri("demo/demo")],
    );
}

/// A deliberately naive client that can say anything.
struct RawClient(UnixStream);

impl RawClient {
    fn connect(socket: &Path) -> Self {
        let s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Self(s)
    }

    fn read_n(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut b = vec![0; n];
        self.0.read_exact(&mut b)?;
        Ok(b)
    }

    /// Reads the greeting and sends fixed-newstyle, no-zeroes client flags.
    fn greet(&mut self) {
        let g = self.read_n(18).unwrap();
        assert_eq!(&g[..8], &NBDMAGIC.to_be_bytes());
        self.0
            .write_all(&(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES).to_be_bytes())
            .unwrap();
    }

    fn option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_be_bytes().to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.0.write_all(&b).unwrap();
    }

    /// Reads one option reply: (type, data).
    fn option_reply(&mut self) -> (u32, Vec<u8>) {
        let h = self.read_n(20).unwrap();
        let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        (kind, self.read_n(len).unwrap())
    }

    /// NBD_OPT_GO on `name`, asking for block sizes; reads up to the ACK.
    fn go(&mut self, name: &str) -> u64 {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&1u16.to_be_bytes());
        data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        self.option(OPT_GO, &data);
        let mut size = 0;
        loop {
            let (kind, data) = self.option_reply();
            match kind {
                REP_INFO if data[..2] == INFO_EXPORT.to_be_bytes() => {
                    size = u64::from_be_bytes(data[2..10].try_into().unwrap())
                }
                REP_INFO => {}
                REP_ACK => return size,
                other => panic!(
                    "GO failed with reply {other:#x}: {}",
                    String::from_utf8_lossy(&data)
                ),
            }
        }
    }

    /// Sends a request and reads a simple reply's error.
    fn request(&mut self, kind: u16, offset: u64, length: u32, payload: &[u8]) -> u32 {
        let r = Request {
            flags: 0,
            kind,
            cookie: 42,
            offset,
            length,
        };
        self.0.write_all(&r.encode()).unwrap();
        self.0.write_all(payload).unwrap();
        let h = self.read_n(16).unwrap();
        assert_eq!(&h[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
        assert_eq!(
            &h[8..16],
            &42u64.to_be_bytes(),
            "the reply carries the cookie"
        );
        let error = u32::from_be_bytes(h[4..8].try_into().unwrap());
        if error == 0 && kind == CMD_READ {
            self.read_n(length as usize).unwrap();
        }
        error
    }

    /// True once the server has closed the connection.
    fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.0.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn hostile_clients_get_errors_or_a_closed_connection_and_hurt_nobody() {
    let nbd = Nbd::start(&["--nbd-max-connections", "4"]);
    // A well-behaved client stays connected throughout.
    let mut good = RawClient::connect(&nbd.socket);
    good.greet();
    assert_eq!(good.go("demo/demo"), 64 << 20);

    // Bad option magic: closed.
    let mut c = RawClient::connect(&nbd.socket);
    c.greet();
    c.0.write_all(&[0xde; 16]).unwrap();
    assert!(c.is_closed());
    drop(c);

    // Unknown options and unknown exports are refused, and the client can go on.
    let mut c = RawClient::connect(&nbd.socket);
    c.greet();
    c.option(77, b"whatever");
    assert_eq!(c.option_reply().0, REP_ERR_UNSUP);
    c.option(OPT_STARTTLS, &[]);
    assert_eq!(c.option_reply().0, REP_ERR_POLICY);
    let mut data = 9u32.to_be_bytes().to_vec();
    data.extend_from_slice(b"no/such!!");
    data.extend_from_slice(&0u16.to_be_bytes());
    c.option(OPT_GO, &data);
    assert_eq!(c.option_reply().0, REP_ERR_UNKNOWN);
    c.option(OPT_GO, &[0, 0, 0, 200]);
    assert_eq!(
        c.option_reply().0,
        REP_ERR_INVALID,
        "a name longer than its option"
    );
    assert_eq!(c.go("demo/demo"), 64 << 20);

    // Requests out of bounds, overflowing, unaligned, unknown: errors, not a crash.
    assert_eq!(
        c.request(CMD_READ, 64 << 20, 512, &[]),
        EINVAL,
        "read past the end"
    );
    assert_eq!(
        c.request(CMD_WRITE, (64 << 20) - 512, 1024, &[0; 1024]),
        ENOSPC,
        "write past the end"
    );
    assert_eq!(
        c.request(CMD_READ, u64::MAX - 100, 512, &[]),
        EINVAL,
        "offset + length overflows"
    );
    assert_eq!(
        c.request(CMD_READ, 100, 512, &[]),
        EINVAL,
        "unaligned after agreeing to 512-byte blocks"
    );
    assert_eq!(
        c.request(CMD_BLOCK_STATUS, 0, 512, &[]),
        EINVAL,
        "no metadata context was negotiated"
    );
    assert_eq!(c.request(99, 0, 512, &[]), EINVAL, "unknown command");
    assert_eq!(
        c.request(CMD_READ, 0, 40 << 20, &[]),
        EINVAL,
        "read over the advertised maximum"
    );
    assert_eq!(c.request(CMD_WRITE, 4096, 512, &[7; 512]), 0);
    assert_eq!(c.request(CMD_FLUSH, 0, 0, &[]), 0);
    // A write over the maximum cannot be skipped: the connection is closed.
    let r = Request {
        flags: 0,
        kind: CMD_WRITE,
        cookie: 1,
        offset: 0,
        length: 64 << 20,
    };
    c.0.write_all(&r.encode()).unwrap();
    assert!(c.is_closed());

    // Gone in the middle of a write payload.
    let mut c = RawClient::connect(&nbd.socket);
    c.greet();
    c.go("other/other");
    let r = Request {
        flags: 0,
        kind: CMD_WRITE,
        cookie: 1,
        offset: 0,
        length: 4096,
    };
    c.0.write_all(&r.encode()).unwrap();
    c.0.write_all(&[1; 100]).unwrap();
    drop(c);

    // Bounded connections: with `good` open, three more fit; the rest are closed at once.
    std::thread::sleep(Duration::from_millis(200));
    let mut extra: Vec<UnixStream> = (0..10)
        .map(|_| UnixStream::connect(&nbd.socket).unwrap())
        .collect();
    let mut greeted = 0;
    for s in &mut extra {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut g = [0u8; 18];
        if s.read_exact(&mut g).is_ok() {
            greeted += 1;
        }
    }
    assert_eq!(greeted, 3, "max connections is 4, one of which is taken");
    drop(extra);

    // Through all of it the good client was served.
    assert_eq!(good.request(CMD_READ, 4096, 512, &[]), 0);
    std::thread::sleep(Duration::from_millis(200));
    tool("qemu-img", &["info", &nbd.uri("demo/demo")]);
    let log = nbd.m.log();
    for expected in [
        "bad option magic",
        "over the 33554432 advertised",
        "in the middle of a write",
        "connections already",
    ] {
        assert!(log.contains(expected), "log lacks {expected:?}:\n{log}");
    }
}

#[test]
fn exports_a_datastore_whose_share_is_on_ganesha() {
    exports_a_datastore_whose_share_is_on_nfs(Env::datastore_on_nfs());
}

#[test]
fn exports_a_datastore_whose_share_is_on_cvol_nfs() {
    exports_a_datastore_whose_share_is_on_nfs(Env::datastore_on_cvol_nfs());
}

fn exports_a_datastore_whose_share_is_on_nfs(env: Env) {
    // NBD requests run on tokio's blocking threads, from where the NFS client must not
    // try to enter a runtime of its own (it used to panic there).
    let nbd = Nbd::start_on(env, &[]);
    assert!(tool("qemu-img", &["info", &nbd.uri("demo/demo")]).contains("64 MiB"));
    let out = tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x42 0 64k",
            "-c",
            "read -P 0x42 0 64k",
            &nbd.uri("demo/demo"),
        ],
    );
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert!(tool("nbdinfo", &["--list", &nbd.uri("")]).contains("other/other"));
}

/// An NBD server requiring TLS (x509), on TCP and a unix socket, and a directory of the
/// files QEMU's tls-creds-x509 and libnbd's tls-certificates read (`ca-cert.pem`, and
/// with `client`, `client-cert.pem` and `client-key.pem`).
struct TlsNbd {
    nbd: Nbd,
    port: u16,
    ca: common::pki::Ca,
}

impl TlsNbd {
    fn start(mode: &str, client_ca: bool) -> Self {
        let env = Env::datastore();
        let ca = common::pki::Ca::new(env.tmp.path(), "nbd");
        let server = ca.sign("server", &["127.0.0.1", "localhost"]);
        let port = free_port();
        let tcp = format!("tcp:127.0.0.1:{port}");
        let mut args = vec![
            "--nbd",
            &tcp,
            "--nbd-tls",
            mode,
            "--nbd-tls-cert",
            s(&server.cert),
            "--nbd-tls-key",
            s(&server.key),
        ];
        if client_ca {
            args.extend(["--nbd-tls-client-ca", s(&ca.cert)]);
        }
        let nbd = Nbd::start_on(env, &args);
        Self { nbd, port, ca }
    }

    /// A credentials directory trusting this server's CA, with a client certificate
    /// signed by `signer` if given.
    fn credentials(&self, name: &str, signer: Option<&common::pki::Ca>) -> PathBuf {
        let dir = self.nbd.env.tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(&self.ca.cert, dir.join("ca-cert.pem")).unwrap();
        if let Some(signer) = signer {
            let client = signer.sign(name, &[]);
            std::fs::rename(&client.cert, dir.join("client-cert.pem")).unwrap();
            std::fs::rename(&client.key, dir.join("client-key.pem")).unwrap();
        }
        dir
    }

    fn qemu_args(&self, creds: &Path) -> [String; 4] {
        [
            "--object".into(),
            format!("tls-creds-x509,id=tls0,dir={},endpoint=client", creds.display()),
            "--image-opts".into(),
            format!(
                "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={},export=demo/demo,tls-creds=tls0",
                self.port
            ),
        ]
    }

    fn nbds_uri(&self, creds: &Path) -> String {
        format!(
            "nbds://127.0.0.1:{}/demo/demo?tls-certificates={}",
            self.port,
            creds.display()
        )
    }
}

#[test]
fn real_clients_over_tls_and_no_export_without_it() {
    let t = TlsNbd::start("require", false);
    let creds = t.credentials("client", None);
    let qemu = t.qemu_args(&creds);
    let qemu: Vec<&str> = qemu.iter().map(String::as_str).collect();

    let mut write = qemu.clone();
    write.extend(["-c", "write -P 0x5a 0 1M", "-c", "flush"]);
    tool("qemu-io", &write);
    let mut info = vec!["info"];
    info.extend(&qemu);
    assert!(tool("qemu-img", &info).contains("64 MiB"));

    let uri = t.nbds_uri(&creds);
    assert!(
        tool("nbdinfo", &["--size", &uri]).trim() == (64u64 << 20).to_string(),
        "nbdinfo over TLS"
    );
    let copy = t.nbd.env.tmp.path().join("copy.raw");
    tool("nbdcopy", &[&uri, s(&copy)]);
    let bytes = std::fs::read(&copy).unwrap();
    assert!(bytes[..1 << 20].iter().all(|&b| b == 0x5a));
    assert!(bytes[1 << 20..].iter().all(|&b| b == 0));
    assert_eq!(
        t.nbd.env.volume_bytes("demo/demo")[..1 << 20],
        bytes[..1 << 20],
        "the pool file holds what was written over TLS"
    );

    // Without TLS, nothing: the spec's NBD_REP_ERR_TLS_REQD.
    let out = tool_output(
        "nbdinfo",
        &[&format!("nbd://127.0.0.1:{}/demo/demo", t.port)],
    );
    assert!(!out.status.success(), "a plain client reached the export");
    let log = t.nbd.m.log();
    assert!(log.contains("this server requires TLS"), "{log}");
}

#[test]
fn client_certificates_are_checked_when_asked_for() {
    let t = TlsNbd::start("require", true);
    let own = t.credentials("host1", Some(&t.ca));
    assert!(tool("nbdinfo", &["--size", &t.nbds_uri(&own)]).contains(&(64u64 << 20).to_string()));

    let none = t.credentials("anonymous", None);
    let out = tool_output("nbdinfo", &["--size", &t.nbds_uri(&none)]);
    assert!(
        !out.status.success(),
        "a client without a certificate got in"
    );

    let rogue = common::pki::Ca::new(t.nbd.env.tmp.path(), "rogue");
    let other = t.credentials("intruder", Some(&rogue));
    let out = tool_output("nbdinfo", &["--size", &t.nbds_uri(&other)]);
    assert!(
        !out.status.success(),
        "a client certificate of another CA got in"
    );
}

#[test]
fn hostile_clients_get_no_export_before_tls() {
    let t = TlsNbd::start("require", false);
    let mut c = RawClient::connect(&t.nbd.socket);
    c.greet();
    // Options before STARTTLS, with data: refused, each with TLS_REQD.
    c.option(OPT_LIST, &[]);
    assert_eq!(c.option_reply().0, REP_ERR_TLS_REQD);
    let mut go = 9u32.to_be_bytes().to_vec();
    go.extend_from_slice(b"demo/demo");
    go.extend_from_slice(&0u16.to_be_bytes());
    c.option(OPT_GO, &go);
    assert_eq!(c.option_reply().0, REP_ERR_TLS_REQD);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_reply().0, REP_ERR_TLS_REQD);
    // NBD_OPT_EXPORT_NAME has no error reply: the connection closes.
    c.option(OPT_EXPORT_NAME, b"demo/demo");
    assert!(c.read_n(1).is_err(), "EXPORT_NAME without TLS was answered");

    // STARTTLS with plain bytes right behind it (an injection attempt): closed, the
    // bytes never taken as options.
    let mut c = RawClient::connect(&t.nbd.socket);
    c.greet();
    let mut both = IHAVEOPT.to_be_bytes().to_vec();
    both.extend_from_slice(&OPT_STARTTLS.to_be_bytes());
    both.extend_from_slice(&0u32.to_be_bytes());
    both.extend_from_slice(&IHAVEOPT.to_be_bytes());
    both.extend_from_slice(&OPT_EXPORT_NAME.to_be_bytes());
    both.extend_from_slice(&9u32.to_be_bytes());
    both.extend_from_slice(b"demo/demo");
    c.0.write_all(&both).unwrap();
    assert_eq!(c.option_reply().0, REP_ACK);
    let mut rest = Vec::new();
    let _ = c.0.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered after an injection: {rest:?}");

    // STARTTLS with data is invalid; the option loop goes on.
    let mut c = RawClient::connect(&t.nbd.socket);
    c.greet();
    c.option(OPT_STARTTLS, b"x");
    assert_eq!(c.option_reply().0, REP_ERR_INVALID);

    // The server still serves.
    let creds = t.credentials("client", None);
    assert!(tool("nbdinfo", &["--size", &t.nbds_uri(&creds)]).contains(&(64u64 << 20).to_string()));
}

#[test]
fn tls_on_lets_plain_clients_choose() {
    let t = TlsNbd::start("on", false);
    let plain = format!("nbd://127.0.0.1:{}/demo/demo", t.port);
    assert!(tool("nbdinfo", &["--size", &plain]).contains(&(64u64 << 20).to_string()));
    let creds = t.credentials("client", None);
    assert!(tool("nbdinfo", &["--size", &t.nbds_uri(&creds)]).contains(&(64u64 << 20).to_string()));
}

/// A keys file in psktool's format, mode 0600, in its own directory as QEMU's
/// tls-creds-psk wants it (`DIR/keys.psk`).
#[cfg(feature = "tls-psk")]
fn psk_file(dir: &Path, lines: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("keys.psk");
    std::fs::write(&file, lines).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    file
}

#[cfg(feature = "tls-psk")]
#[test]
fn real_clients_over_tls_psk_and_wrong_keys_get_nothing() {
    const ALICE: &str = "5b0b8c1ad1a2c0f9e8d7c6b5a4938271605f4e3d2c1b0a99887766554433221f";
    let env = Env::datastore();
    let server_keys = psk_file(
        &env.tmp.path().join("server"),
        &format!("alice:{ALICE}\nbob:00112233445566778899aabbccddeeff\n"),
    );
    let port = free_port();
    let tcp = format!("tcp:127.0.0.1:{port}");
    let nbd = Nbd::start_on(
        env,
        &[
            "--nbd",
            &tcp,
            "--nbd-tls",
            "require",
            "--nbd-tls-psk",
            s(&server_keys),
        ],
    );
    let tmp = nbd.env.tmp.path();
    let alice = psk_file(&tmp.join("alice"), &format!("alice:{ALICE}\n"));
    let qemu = [
        "--object".to_string(),
        format!(
            "tls-creds-psk,id=tls0,dir={},username=alice,endpoint=client",
            alice.parent().unwrap().display()
        ),
        "--image-opts".to_string(),
        format!(
            "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},export=demo/demo,tls-creds=tls0"
        ),
    ];
    let qemu: Vec<&str> = qemu.iter().map(String::as_str).collect();
    let mut write = qemu.clone();
    write.extend(["-c", "write -P 0x3c 0 1M", "-c", "flush"]);
    tool("qemu-io", &write);
    let mut info = vec!["info"];
    info.extend(&qemu);
    assert!(tool("qemu-img", &info).contains("64 MiB"));

    let uri = |user: &str, keys: &Path| {
        format!(
            "nbds://{user}@127.0.0.1:{port}/demo/demo?tls-psk-file={}",
            keys.display()
        )
    };
    assert_eq!(
        tool("nbdinfo", &["--size", &uri("alice", &alice)]).trim(),
        (64u64 << 20).to_string()
    );
    let copy = tmp.join("copy.raw");
    tool("nbdcopy", &[&uri("alice", &alice), s(&copy)]);
    let bytes = std::fs::read(&copy).unwrap();
    assert!(bytes[..1 << 20].iter().all(|&b| b == 0x3c));
    assert!(bytes[1 << 20..].iter().all(|&b| b == 0));

    // A wrong key for a known identity, and an identity the server does not know.
    let wrong = psk_file(
        &tmp.join("wrong"),
        "alice:00112233445566778899aabbccddeeff\n",
    );
    let out = tool_output("nbdinfo", &["--size", &uri("alice", &wrong)]);
    assert!(!out.status.success(), "a wrong key got in");
    let mallory = psk_file(&tmp.join("mallory"), &format!("mallory:{ALICE}\n"));
    let out = tool_output("nbdinfo", &["--size", &uri("mallory", &mallory)]);
    assert!(!out.status.success(), "an unknown identity got in");
    let out = tool_output("nbdinfo", &[&format!("nbd://127.0.0.1:{port}/demo/demo")]);
    assert!(!out.status.success(), "a plain client reached the export");
    let log = nbd.m.log();
    assert!(
        log.contains("unknown identity") && log.contains("mallory"),
        "{log}"
    );
    assert!(!log.contains(ALICE), "the key is in the log");
}

#[cfg(feature = "tls-psk")]
#[test]
fn a_keys_file_every_user_may_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::datastore();
    let keys = psk_file(&env.tmp.path().join("keys"), "alice:00ff\n");
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mnt = env.tmp.path().join("mnt-psk");
    std::fs::create_dir(&mnt).unwrap();
    let tcp = format!("tcp:127.0.0.1:{}", free_port());
    let err = env.fails(&[
        "mount",
        s(&mnt),
        "--nbd",
        &tcp,
        "--nbd-tls",
        "require",
        "--nbd-tls-psk",
        s(&keys),
    ]);
    assert!(
        err.contains("mode 0644") && err.contains("keys.psk"),
        "{err}"
    );
}
