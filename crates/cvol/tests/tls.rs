//! TLS on the provider service: a remote provider that trusts the service's CA works; a
//! wrong CA, an expired or self-signed server certificate, a plain-HTTP client on the TLS
//! port and a client without a certificate on a mutual-TLS port are all refused; plain
//! HTTP off loopback needs --insecure.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::pki::{self, Ca, Identity};
use common::{cvol, random_hex, write_secret, Env, ProviderServe};

/// A provider service over TLS with `identity`, asking for client certificates from
/// `client_ca` when given; its token in `token_file`.
fn serve_tls(
    env: &Env,
    identity: &Identity,
    client_ca: Option<&Path>,
    token_file: &Path,
) -> ProviderServe {
    let mut command = cvol();
    command
        .env("CVOL_TLS_CERT", &identity.cert)
        .env("CVOL_TLS_KEY", &identity.key);
    if let Some(ca) = client_ca {
        command.env("CVOL_TLS_CLIENT_CA", ca);
    }
    let spec = format!("file:{}", env.pool.display());
    let service = ProviderServe::start_spec(&spec, Some(token_file), "127.0.0.1:0", command);
    assert!(service.url.starts_with("https://"), "{}", service.url);
    service
}

struct Setup {
    env: Env,
    ca: Ca,
    token_file: std::path::PathBuf,
}

fn setup() -> Setup {
    let env = Env::empty();
    let ca = Ca::new(env.tmp.path(), "cluster");
    let token_file = env.tmp.path().join("token");
    write_secret(&token_file, &random_hex(24));
    Setup {
        env,
        ca,
        token_file,
    }
}

/// A new datastore whose pool is `service`, and a VM created in it (the first call that
/// reaches the service), with `vars` (the client's TLS files): the error, if any.
fn create_vm(s: &Setup, service: &ProviderServe, vars: &[(&str, &Path)]) -> Result<(), String> {
    let share = s.env.tmp.path().join(format!("share-{}", random_hex(4)));
    std::fs::create_dir(&share).unwrap();
    let run = |args: &[&str]| {
        let out = cvol()
            .arg("--share")
            .arg(&share)
            .env("CVOL_PROVIDER_TOKEN_FILE", &s.token_file)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(args)
            .output()
            .unwrap();
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    };
    let provider = format!("pool=remote:{}", service.url);
    run(&[
        "datastore",
        "create",
        "--name",
        "tls",
        "--provider",
        &provider,
    ])?;
    run(&["vm", "create", "demo", "--disk", "1M"])
}

#[test]
fn a_client_that_trusts_the_ca_uses_the_service() {
    let s = setup();
    let server = s.ca.sign("server", &["127.0.0.1", "localhost"]);
    let service = serve_tls(&s.env, &server, None, &s.token_file);
    create_vm(&s, &service, &[("CVOL_PROVIDER_CA_FILE", &s.ca.cert)]).unwrap();
    let volumes = std::fs::read_dir(s.env.pool.join("volumes"))
        .unwrap()
        .count();
    assert_eq!(volumes, 1);
}

#[test]
fn wrong_ca_expired_and_self_signed_certificates_are_refused() {
    let s = setup();
    let rogue = Ca::new(s.env.tmp.path(), "rogue");
    let cases: [(&str, Identity, &Path, &str); 3] = [
        (
            "signed by another CA",
            rogue.sign("server", &["127.0.0.1"]),
            &s.ca.cert,
            "UnknownIssuer",
        ),
        (
            "expired",
            s.ca.sign_expired("old", &["127.0.0.1"]),
            &s.ca.cert,
            "certificate expired",
        ),
        (
            "self-signed",
            pki::self_signed(s.env.tmp.path(), "lone", &["127.0.0.1"]),
            &s.ca.cert,
            "UnknownIssuer",
        ),
    ];
    for (what, identity, trusted, reason) in cases {
        let service = serve_tls(&s.env, &identity, None, &s.token_file);
        let e = create_vm(&s, &service, &[("CVOL_PROVIDER_CA_FILE", trusted)]).expect_err(what);
        assert!(
            e.contains(&service.url) && e.contains(reason),
            "{what}: {e}"
        );
    }
    // Nor does a client with no CA file trust a private CA's certificate.
    let service = serve_tls(
        &s.env,
        &s.ca.sign("server", &["127.0.0.1"]),
        None,
        &s.token_file,
    );
    let e = create_vm(&s, &service, &[]).expect_err("no CA file");
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_of_the_ca() {
    let s = setup();
    let server = s.ca.sign("server", &["127.0.0.1"]);
    let service = serve_tls(&s.env, &server, Some(&s.ca.cert), &s.token_file);

    let e = create_vm(&s, &service, &[("CVOL_PROVIDER_CA_FILE", &s.ca.cert)])
        .expect_err("no client certificate");
    assert!(e.contains(&service.url), "{e}");

    let rogue = Ca::new(s.env.tmp.path(), "rogue").sign("host9", &[]);
    let e = create_vm(
        &s,
        &service,
        &[
            ("CVOL_PROVIDER_CA_FILE", &s.ca.cert),
            ("CVOL_PROVIDER_CERT_FILE", &rogue.cert),
            ("CVOL_PROVIDER_KEY_FILE", &rogue.key),
        ],
    )
    .expect_err("a client certificate of another CA");
    assert!(e.contains(&service.url), "{e}");

    let host = s.ca.sign("host1", &[]);
    create_vm(
        &s,
        &service,
        &[
            ("CVOL_PROVIDER_CA_FILE", &s.ca.cert),
            ("CVOL_PROVIDER_CERT_FILE", &host.cert),
            ("CVOL_PROVIDER_KEY_FILE", &host.key),
        ],
    )
    .unwrap();
}

#[test]
fn plain_http_on_the_tls_port_gets_no_answer() {
    let s = setup();
    let server = s.ca.sign("server", &["127.0.0.1"]);
    let service = serve_tls(&s.env, &server, None, &s.token_file);
    let plain = service.url.replace("https://", "http://");
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let answer = agent.get(format!("{plain}/v1/pool")).call();
    assert!(answer.is_err(), "plain HTTP was answered: {answer:?}");
    // The service still serves TLS clients afterwards.
    create_vm(&s, &service, &[("CVOL_PROVIDER_CA_FILE", &s.ca.cert)]).unwrap();
}

#[test]
fn secrets_readable_by_everyone_are_refused() {
    let s = setup();
    let server = s.ca.sign("server", &["127.0.0.1"]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&server.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cvol()
        .args(["provider", "serve", "--pool"])
        .arg(format!("file:{}", s.env.pool.display()))
        .arg("--tls-cert")
        .arg(&server.cert)
        .arg("--tls-key")
        .arg(&server.key)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains(&server.key.display().to_string()) && e.contains("0644"),
        "{e}"
    );
}

#[test]
fn plain_http_off_loopback_needs_insecure() {
    let env = Env::empty();
    let pool = format!("file:{}", env.pool.display());
    let out = cvol()
        .args([
            "provider",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--pool",
            &pool,
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("without TLS") && e.contains("--insecure"),
        "{e}"
    );
    let mut command = cvol();
    command
        .args([
            "provider",
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--pool",
            &pool,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("http://0.0.0.0:"), "{line:?}");
}

/// A `tcpdump` of loopback TCP traffic to `ports`, written to `file` packet by packet.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(file: &Path, ports: &[u16]) -> Self {
        use std::io::BufRead;
        let filter = ports
            .iter()
            .map(|p| format!("tcp port {p}"))
            .collect::<Vec<_>>()
            .join(" or ");
        let mut child = std::process::Command::new("tcpdump")
            .args(["-i", "lo", "-U", "-s", "0", "-w"])
            .arg(file)
            .arg(filter)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("tcpdump is needed by this test (./scripts/test.sh installs it): {e}")
            });
        // It says so once it captures.
        let mut line = String::new();
        std::io::BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("listening on"), "tcpdump: {line}");
        Self {
            child,
            file: file.to_path_buf(),
        }
    }

    /// What was captured so far.
    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn the_token_never_crosses_the_wire_in_clear_text() {
    let s = setup();
    let server = s.ca.sign("server", &["127.0.0.1"]);
    let tls = serve_tls(&s.env, &server, None, &s.token_file);
    // The control: a plain-HTTP service on loopback with a token of its own, whose
    // token the capture must show, or it proves nothing.
    let plain_token = s.env.tmp.path().join("plain-token");
    write_secret(&plain_token, &random_hex(24));
    let control = Setup {
        token_file: plain_token.clone(),
        ..setup()
    };
    let plain = ProviderServe::start(&control.env.pool, Some(&plain_token));
    let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();

    let capture = Capture::start(
        &s.env.tmp.path().join("lo.pcap"),
        &[port(&tls.url), port(&plain.url)],
    );
    create_vm(&s, &tls, &[("CVOL_PROVIDER_CA_FILE", &s.ca.cert)]).unwrap();
    create_vm(&control, &plain, &[]).unwrap();

    // tcpdump writes packets in order: once the later plain call is in the file, so is
    // all of the TLS traffic before it.
    let plain_secret = std::fs::read_to_string(&plain_token).unwrap();
    let started = std::time::Instant::now();
    while !contains(&capture.bytes(), plain_secret.trim()) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the plain-HTTP token never showed in the capture"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let secret = std::fs::read_to_string(&s.token_file).unwrap();
    let captured = capture.bytes();
    assert!(captured.len() > 4096, "{} bytes captured", captured.len());
    assert!(
        !contains(&captured, secret.trim()),
        "the TLS service's token is in the capture"
    );
}
