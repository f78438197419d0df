//! A real S3 server for the tests: a single-node Garage (`garage`, installed by
//! ./scripts/test.sh) on loopback, with one bucket and one key.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, random_hex, spawn_tied};

/// The bucket every test server has; tests keep apart by prefix.
pub const BUCKET: &str = "cvol";

/// A running Garage node.
pub struct Garage {
    dir: PathBuf,
    config: PathBuf,
    /// The network namespace it runs in, if not this process's.
    netns: Option<String>,
    /// The S3 endpoint, `http://ADDR:PORT`.
    pub endpoint: String,
    pub key_id: String,
    pub secret: String,
    child: Option<Child>,
}

/// The Garage server this test binary shares (started on first use).
pub fn garage() -> &'static Garage {
    static GARAGE: std::sync::OnceLock<Garage> = std::sync::OnceLock::new();
    GARAGE.get_or_init(Garage::start)
}

impl Garage {
    /// A fresh node on loopback in its own directory, with bucket [`BUCKET`] and a key
    /// allowed on it.
    pub fn start() -> Self {
        Self::start_at(None, "127.0.0.1")
    }

    /// The same in network namespace `netns` (if any), listening on `ip`.
    pub fn start_at(netns: Option<&str>, ip: &str) -> Self {
        let dir = super::server_dir("garage");
        let (rpc, s3_port, admin) = (free_port(), free_port(), free_port());
        let config = dir.join("garage.toml");
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{dir}/meta\"\n\
                 data_dir = \"{dir}/data\"\n\
                 db_engine = \"sqlite\"\n\
                 replication_factor = 1\n\
                 rpc_bind_addr = \"{ip}:{rpc}\"\n\
                 rpc_public_addr = \"{ip}:{rpc}\"\n\
                 rpc_secret = \"{secret}\"\n\
                 [s3_api]\n\
                 s3_region = \"garage\"\n\
                 api_bind_addr = \"{ip}:{s3_port}\"\n\
                 root_domain = \".s3.garage.localhost\"\n\
                 [admin]\n\
                 api_bind_addr = \"{ip}:{admin}\"\n",
                dir = dir.display(),
                secret = random_hex(32),
            ),
        )
        .unwrap();
        let mut garage = Self {
            dir,
            config,
            netns: netns.map(str::to_string),
            endpoint: format!("http://{ip}:{s3_port}"),
            key_id: format!("GK{}", random_hex(12)),
            secret: random_hex(32),
            child: None,
        };
        garage.run_server();
        let node = garage.cli(&["node", "id", "-q"]);
        let node = node.trim().split('@').next().unwrap().to_string();
        garage.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &node]);
        garage.cli(&["layout", "apply", "--version", "1"]);
        garage.cli(&["bucket", "create", BUCKET]);
        let (key_id, secret) = (garage.key_id.clone(), garage.secret.clone());
        garage.cli(&["key", "import", "--yes", "-n", "cvol", &key_id, &secret]);
        garage.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", &key_id,
        ]);
        garage
    }

    /// `garage`, in the node's namespace.
    fn garage(&self) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns, "garage"]);
                command
            }
            None => Command::new("garage"),
        }
    }

    fn run_server(&mut self) {
        let mut command = self.garage();
        command
            .arg("-c")
            .arg(&self.config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("garage.log")).unwrap());
        self.child = Some(spawn_tied(command).expect(
            "garage is needed (./scripts/test.sh installs it: cargo install garage --version 2.5.0)",
        ));
        let start = Instant::now();
        while !self.s3_listens() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "garage did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the S3 port accepts connections (tried from the node's namespace).
    fn s3_listens(&self) -> bool {
        let addr = self.endpoint.trim_start_matches("http://");
        match &self.netns {
            None => std::net::TcpStream::connect(addr).is_ok(),
            Some(ns) => {
                let (ip, port) = addr.rsplit_once(':').unwrap();
                Command::new("ip")
                    .args(["netns", "exec", ns, "bash", "-c"])
                    .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            }
        }
    }

    /// Runs the `garage` CLI against this node, retried while the node comes up.
    fn cli(&self, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let out = self
                .garage()
                .arg("-c")
                .arg(&self.config)
                .args(args)
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "garage {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default()
    }

    /// The AWS environment that points a client at this server.
    pub fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", self.key_id.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.as_str()),
            ("AWS_REGION", "garage"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// A new, empty pool URL in the bucket.
    pub fn new_pool_url(&self) -> String {
        format!("s3://{BUCKET}/{}", super::uuid_like())
    }

    /// Kills the server (kill -9), as a store that goes away.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed server again, on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.run_server();
        // Up when it answers S3 again, not only accepts connections.
        self.cli(&["bucket", "info", BUCKET]);
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
