//! The daemons' Prometheus endpoints (`--metrics ADDR`), scraped while real clients work:
//! fio over NBD on the mount daemon, cvol's NFS client on `cvol nfs serve`, HTTP calls on
//! `cvol provider serve`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{cvol, free_port, tool, tool_output, Env, NfsServe, ProviderServe};

/// The endpoint's text.
fn scrape(port: u16) -> String {
    let url = format!("http://127.0.0.1:{port}/metrics");
    // The endpoint answers as soon as the daemon is up; a daemon still starting gets a
    // few more tries.
    for _ in 0..100 {
        if let Ok(mut response) = ureq::get(&url).call() {
            return response.body_mut().read_to_string().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no metrics at {url}");
}

/// The sum of the samples of `name` whose labels contain every one of `labels` (e.g.
/// `volume="vol-…"`); 0 when there are none.
fn value(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name && labels.iter().all(|l| rest.contains(l))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// fio's JSON summary of one job, whatever it printed before it.
fn fio(args: &[&str]) -> serde_json::Value {
    let out = tool("fio", args);
    let json: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    json["jobs"][0].clone()
}

fn assert_within_1_percent(got: f64, want: f64, what: &str) {
    assert!(
        want > 0.0 && (got - want).abs() <= want / 100.0,
        "{what}: the metrics say {got}, the client did {want}"
    );
}

#[test]
fn volume_counters_rise_by_what_fio_did_over_nbd() {
    volume_counters_on(Env::datastore_on_cvol_nfs());
}

#[test]
fn volume_and_cache_counters_on_an_object_pool() {
    volume_counters_on(Env::datastore_on_object());
}

fn volume_counters_on(env: Env) {
    env.ok(&["vm", "create", "demo", "--disk", "64M"]);
    let volume = env.volume_of("demo/demo");
    let socket = env.tmp.path().join("nbd.sock");
    let port = free_port();
    let m = env.mount_with(&[
        "--nbd",
        &format!("unix:{}", socket.display()),
        "--metrics",
        &format!("127.0.0.1:{port}"),
    ]);
    let uri = format!("nbd+unix:///demo/demo?socket={}", socket.display());
    let of_volume = format!("volume=\"{volume}\"");
    let counter = |text: &str, name: &str| value(text, name, &[&of_volume]);

    let before = scrape(port);
    let write = fio(&[
        "--name=w",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--size=64M",
        "--io_size=8M",
        "--fsync=64",
        "--output-format=json",
    ]);
    let read = fio(&[
        "--name=r",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=read",
        "--bs=64k",
        "--iodepth=4",
        "--size=64M",
        "--output-format=json",
    ]);
    let after = scrape(port);
    let delta = |name: &str| counter(&after, name) - counter(&before, name);

    let written = write["write"]["io_bytes"].as_f64().unwrap();
    let writes = write["write"]["total_ios"].as_f64().unwrap();
    let flushes = write["sync"]["total_ios"].as_f64().unwrap();
    let read_bytes = read["read"]["io_bytes"].as_f64().unwrap();
    let reads = read["read"]["total_ios"].as_f64().unwrap();
    assert_within_1_percent(
        delta("cvol_volume_written_bytes_total"),
        written,
        "bytes written",
    );
    assert_within_1_percent(delta("cvol_volume_write_seconds_count"), writes, "writes");
    assert_within_1_percent(
        delta("cvol_volume_read_bytes_total"),
        read_bytes,
        "bytes read",
    );
    assert_within_1_percent(delta("cvol_volume_read_seconds_count"), reads, "reads");
    // The daemon adds a flush of its own at every detach: each fio job connects twice
    // (once to learn the size, once to run), and the disk is detached after each.
    let flushed = delta("cvol_volume_flush_seconds_count");
    assert!(
        flushed >= flushes && flushed <= flushes + 4.0,
        "fio flushed {flushes} times, the metrics say {flushed}"
    );
    assert!(
        delta("cvol_volume_write_seconds_sum") > 0.0,
        "write latency recorded"
    );
    assert_eq!(counter(&after, "cvol_volume_errors_total"), 0.0, "{after}");
    // fio is gone, so is the attachment.
    assert_eq!(value(&after, "cvol_attached_volumes", &[]), 0.0, "{after}");

    if env.server.is_some() {
        assert!(
            value(&after, "cvol_nfs_client_rpc_seconds_count", &[]) > 0.0,
            "the share's NFS calls: {after}"
        );
    }
    if env.object_url.is_some() {
        let hits = value(&after, "cvol_object_cache_hits_total", &[&of_volume]);
        assert!(hits > 0.0, "cache hits: {after}");
        assert!(
            value(
                &after,
                "cvol_object_store_request_seconds_count",
                &["op=\"put\""]
            ) > 0.0,
            "chunk uploads: {after}"
        );
    }
    m.stop();
}

#[test]
fn the_nfs_server_and_the_provider_service_count_their_calls() {
    let env = Env::empty();
    let nfs_port = free_port();
    let nfs = NfsServe::start_with(
        &env.share,
        "127.0.0.1:0".parse().unwrap(),
        &[
            "--no-root-squash",
            "--metrics",
            &format!("127.0.0.1:{nfs_port}"),
        ],
        Stdio::null(),
    );
    let idle = scrape(nfs_port);
    assert_eq!(
        value(&idle, "cvol_nfs_server_rpc_seconds_count", &[]),
        0.0,
        "{idle}"
    );

    let provider_port = free_port();
    let mut command = cvol();
    command.env("CVOL_METRICS", format!("127.0.0.1:{provider_port}"));
    let spec = format!("file:{}", env.pool.display());
    let service = ProviderServe::start_spec(&spec, None, "127.0.0.1:0", command);

    // A datastore on the served share whose pool is the service.
    let run = |args: &[&str]| {
        let out = cvol()
            .arg("--share")
            .arg(&nfs.url)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cvol {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "datastore",
        "create",
        "--name",
        "m",
        "--provider",
        &format!("pool=remote:{}", service.url),
    ]);
    run(&["vm", "create", "demo", "--disk", "1M"]);

    let nfs_metrics = scrape(nfs_port);
    for procedure in ["NFSPROC3_LOOKUP", "NFSPROC3_MKDIR", "NFSPROC3_WRITE"] {
        assert!(
            value(
                &nfs_metrics,
                "cvol_nfs_server_rpc_seconds_count",
                &[&format!("procedure=\"{procedure}\"")]
            ) > 0.0,
            "{procedure}: {nfs_metrics}"
        );
    }

    let calls = scrape(provider_port);
    let volumes_created = value(
        &calls,
        "cvol_provider_request_seconds_count",
        &["method=\"POST\"", "route=\"/v1/volumes\"", "status=\"201\""],
    );
    assert_eq!(volumes_created, 1.0, "one disk, one volume: {calls}");
    assert!(
        !calls.contains("vol-"),
        "routes are templates, not volume ids: {calls}"
    );
}

/// Every metric the Grafana dashboard queries is one the README documents and the code
/// records: a renamed metric must not leave the dashboard blank.
#[test]
fn the_dashboard_queries_documented_metrics_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dashboard = std::fs::read_to_string(root.join("docs/grafana.json")).unwrap();
    let _: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut sources = String::new();
    for dir in ["crates", "vendor"] {
        let out = tool(
            "grep",
            &[
                "-rhoE",
                "\"cvol_[a-z_]+\"",
                root.join(dir).to_str().unwrap(),
            ],
        );
        sources.push_str(&out);
    }
    let mut names: Vec<&str> = dashboard
        .match_indices("cvol_")
        .map(|(at, _)| {
            let rest = &dashboard[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name)
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            readme.contains(&format!("`{name}`")),
            "{name} is not in the README's metrics table"
        );
        assert!(
            sources.contains(&format!("\"{name}\"")),
            "{name} is recorded nowhere in the code"
        );
    }
}

/// The RPCs `cvol nfs serve` has answered so far, by its own count.
fn rpcs(port: u16) -> f64 {
    value(&scrape(port), "cvol_nfs_server_rpc_seconds_count", &[])
}

/// The calls of NFS procedure `procedure` (READ, LOOKUP…) `cvol nfs serve` has answered
/// so far.
fn rpcs_of(port: u16, procedure: &str) -> f64 {
    value(
        &scrape(port),
        "cvol_nfs_server_rpc_seconds_count",
        &[&format!("procedure=\"NFSPROC3_{procedure}\"")],
    )
}

/// A datastore of VMs a, b and c (an 8 MiB disk and 256 MiB of memory each) on a share
/// served by `cvol nfs serve`, and the port of its metrics endpoint.
fn three_vms_on_a_metered_nfs_share() -> (Env, u16) {
    let mut env = Env::empty();
    let port = free_port();
    let nfs = NfsServe::start_with(
        &env.share,
        "127.0.0.1:0".parse().unwrap(),
        &[
            "--no-root-squash",
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ],
        Stdio::null(),
    );
    env.share_arg = nfs.url.clone();
    env.server = Some(nfs);
    env.create_datastore_with(&format!("pool=file:{}", env.pool.display()));
    for vm in ["a", "b", "c"] {
        env.ok(&["vm", "create", vm, "--disk", "8M", "--memory", "256"]);
    }
    (env, port)
}

/// Within the attribute-cache window a repeated listing of unchanged folders, and their
/// attributes, cost the server no RPC at all; a change made through the server by
/// another host (another client) is seen once the window has passed, without a remount.
#[test]
fn warm_listings_cost_no_rpcs_and_another_hosts_change_is_seen_after_the_window() {
    const WINDOW: Duration = Duration::from_secs(5);
    let (env, port) = three_vms_on_a_metered_nfs_share();
    // The kernel's 1 s, shorter than the window: nothing is watched (see
    // `the_kernel_keeps_what_the_daemon_watches_and_drops_what_changed`).
    let m = env.mount_with(&[
        "--attr-cache-ms",
        &WINDOW.as_millis().to_string(),
        "--kernel-cache-ms",
        "1000",
    ]);
    // Every VM folder's entries with their sizes, and the root's: what `ls -l */` shows.
    let listing = || {
        let names = |dir: std::path::PathBuf| {
            let mut names: Vec<(String, u64)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect();
            names.sort();
            names
        };
        let root = names(m.path(""));
        let folders: Vec<_> = root.iter().map(|(vm, _)| names(m.path(vm))).collect();
        (root, folders)
    };

    // The first listing asks the server; the same listing again within the window (the
    // kernel asks the daemon again on every open of a folder) is answered from the
    // daemon's cache.
    let cold = listing();
    assert!(
        cold.1[0]
            .iter()
            .any(|(n, s)| n == "a-flat.vmdk" && *s == 8 << 20),
        "{cold:?}"
    );
    let started = Instant::now();
    let before = rpcs(port);
    let warm = listing();
    let after = rpcs(port);
    assert!(
        started.elapsed() < WINDOW,
        "the machine is too slow for a {WINDOW:?} window"
    );
    assert_eq!(warm, cold);
    assert_eq!(after, before, "a warm listing sent {} RPCs", after - before);

    // Another host (its own client of the server) creates a VM; this daemon lists it
    // once the window has passed (and the kernel's own 1 s), with no remount.
    let created = Instant::now();
    let other = common::cvol()
        .args([
            "--share",
            &env.share_arg,
            "vm",
            "create",
            "d",
            "--disk",
            "8M",
        ])
        .output()
        .unwrap();
    assert!(other.status.success(), "{other:?}");
    loop {
        let (root, _) = listing();
        if root.iter().any(|(n, _)| n == "d") {
            break;
        }
        assert!(
            created.elapsed() < WINDOW + Duration::from_secs(10),
            "another host's VM unseen after {:?}: {root:?}",
            created.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A walk through a crowded directory that outlasts the attribute cache: once what was
/// known of its entries expired, one READDIRPLUS of the directory brings them all back,
/// where each entry would cost a LOOKUP of its own (the kernel client's heuristic). A
/// look at one entry long after the directory was last listed is not worth a listing.
#[test]
fn a_crowded_directory_walked_past_the_window_is_listed_again_not_looked_up_entry_by_entry() {
    const WINDOW: Duration = Duration::from_secs(1);
    let (env, port) = three_vms_on_a_metered_nfs_share();
    let crowd = env.share.join("crowd");
    std::fs::create_dir(&crowd).unwrap();
    for i in 0..100 {
        std::fs::write(crowd.join(format!("f{i}")), "x".repeat(i)).unwrap();
    }
    // The kernel's 1 s, no longer than the window: nothing is watched.
    let m = env.mount_with(&[
        "--attr-cache-ms",
        &WINDOW.as_millis().to_string(),
        "--kernel-cache-ms",
        "1000",
    ]);
    let calls = |procedure| rpcs_of(port, procedure);
    let sizes = || -> Vec<u64> {
        (0..100)
            .map(|i| {
                std::fs::symlink_metadata(m.path(&format!("crowd/f{i}")))
                    .unwrap()
                    .len()
            })
            .collect()
    };
    let expected: Vec<u64> = (0..100).collect();
    let listed = Instant::now();
    assert_eq!(std::fs::read_dir(m.path("crowd")).unwrap().count(), 100);
    assert_eq!(sizes(), expected);

    // Past the share's window and the kernel's 1 s, within three windows of the listing
    // (on a machine too slow for that, only the sizes are checked).
    std::thread::sleep(WINDOW + Duration::from_millis(200));
    let before = (calls("READDIRPLUS"), calls("LOOKUP") + calls("GETATTR"));
    assert_eq!(sizes(), expected);
    let after = (calls("READDIRPLUS"), calls("LOOKUP") + calls("GETATTR"));
    if listed.elapsed() < WINDOW * 3 {
        assert!(after.0 > before.0, "the directory was not listed again");
        assert!(
            after.1 - before.1 < 10.0,
            "{} entries looked up one by one",
            after.1 - before.1
        );
    }

    // Long after the last listing, one look is one call.
    std::thread::sleep(WINDOW * 3);
    let plus = calls("READDIRPLUS");
    assert_eq!(
        std::fs::symlink_metadata(m.path("crowd/f7")).unwrap().len(),
        7
    );
    assert_eq!(
        calls("READDIRPLUS"),
        plus,
        "a single look listed the directory"
    );
}

/// How many requests `op` of the kernel's the container's metrics `text` counted.
fn fuse_requests(text: &str, op: &str) -> f64 {
    value(text, "cvol_fuse_requests_total", &[&format!("op=\"{op}\"")])
}

/// The names in directory `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// With `--kernel-cache-ms 0` the kernel trusts nothing it was told: every read of a
/// folder asks the daemon for the folder's attributes, an unchanged folder is read from
/// the kernel's cache, and a file made behind the container's back shows at once.
#[test]
fn with_no_kernel_cache_every_read_of_a_folder_asks_the_daemon() {
    let env = Env::datastore();
    env.ok(&["vm", "create", "a", "--disk", "1M"]);
    let port = free_port();
    let m = env.mount_with(&[
        "--kernel-cache-ms",
        "0",
        "--metrics",
        &format!("127.0.0.1:{port}"),
    ]);
    // The daemon's listings of folders, and every request it answered about them.
    let requests = || {
        let text = scrape(port);
        let listings = fuse_requests(&text, "readdirplus") + fuse_requests(&text, "readdir");
        let asked = listings + fuse_requests(&text, "getattr") + fuse_requests(&text, "lookup");
        (listings, asked)
    };
    assert_eq!(names_in(&m.path("a")), ["a-flat.vmdk", "a.vmdk", "a.vmx"]);
    for round in 0..3 {
        // A read at once after another (which the default answers from the kernel).
        let (listings, asked) = requests();
        names_in(&m.path("a"));
        let (listings_again, asked_again) = requests();
        assert!(
            asked_again > asked,
            "an unchanged folder read without asking"
        );
        assert_eq!(listings_again, listings, "an unchanged folder listed again");
        let note = format!("note{round}.txt");
        std::fs::write(env.share.join("a").join(&note), "made on the share\n").unwrap();
        assert!(
            names_in(&m.path("a")).contains(&note),
            "{note}, made on the share, not seen at once"
        );
        assert!(
            requests().0 > listings_again,
            "the folder was not listed again"
        );
    }
}

/// Waits, at most `limit`, until `seen` holds; says what was awaited if it never does.
fn wait_until(limit: Duration, what: &str, mut seen: impl FnMut() -> bool) {
    let started = Instant::now();
    while !seen() {
        assert!(started.elapsed() < limit, "{what}: not after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// While the kernel keeps what it was told, the daemon watches it on the share. A folder
/// read again long past the share's window is served by the kernel alone (no OPENDIR
/// either), while each round of the watch costs the server a listing per watched folder
/// and not one LOOKUP or GETATTR. A file made, grown or removed behind the container's
/// back is seen within a few rounds, long before the kernel's lifetime ends.
#[test]
fn the_kernel_keeps_what_the_daemon_watches_and_drops_what_changed() {
    const WINDOW: Duration = Duration::from_millis(500);
    const KERNEL: Duration = Duration::from_secs(120);
    let (env, server) = three_vms_on_a_metered_nfs_share();
    let port = free_port();
    let m = env.mount_with(&[
        "--attr-cache-ms",
        &WINDOW.as_millis().to_string(),
        "--kernel-cache-ms",
        &KERNEL.as_millis().to_string(),
        "--metrics",
        &format!("127.0.0.1:{port}"),
    ]);
    let requests = || {
        let text = scrape(port);
        ["readdirplus", "readdir", "lookup", "getattr", "opendir"]
            .map(|op| fuse_requests(&text, op))
    };
    let rounds = || value(&scrape(port), "cvol_fuse_watch_rounds_total", &[]);
    let calls = |procedure| rpcs_of(server, procedure);
    // What `ls -l a` reads: the names, and each file's size.
    let ls_l = || -> Vec<(String, u64)> {
        names_in(&m.path("a"))
            .into_iter()
            .map(|n| {
                let len = std::fs::symlink_metadata(m.path(&format!("a/{n}")))
                    .unwrap()
                    .len();
                (n, len)
            })
            .collect()
    };
    let listed = ls_l();
    assert_eq!(
        listed.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a-flat.vmdk", "a.vmdk", "a.vmx"]
    );

    // Three rounds of the watch, past the share's window. (The second read of a folder
    // asks for its attributes once more: the kernel marks its access time stale after a
    // read from the daemon.)
    assert_eq!(ls_l(), listed);
    let asked = requests();
    let (plus, looked) = (calls("READDIRPLUS"), calls("LOOKUP") + calls("GETATTR"));
    let first = rounds();
    wait_until(WINDOW * 20, "three rounds of the watch", || {
        rounds() >= first + 3.0
    });
    assert!(
        calls("READDIRPLUS") >= plus + 3.0,
        "the watched folders were not listed again"
    );
    assert_eq!(
        calls("LOOKUP") + calls("GETATTR"),
        looked,
        "the watch looked files up one by one"
    );
    assert_eq!(ls_l(), listed);
    assert_eq!(requests(), asked, "a folder read again asked the daemon");

    // Changes behind the container's back, each seen once a whole round of the watch
    // has passed since (the round under way may have listed before the change), long
    // before the kernel's lifetime ends.
    let after_a_whole_round = |what: &str, seen: &dyn Fn() -> bool| {
        let now = rounds();
        wait_until(WINDOW * 20, "two rounds of the watch", || {
            rounds() >= now + 2.0
        });
        assert!(seen(), "{what}: unseen after a whole round of the watch");
    };
    let on_share = env.share.join("a");
    std::fs::write(on_share.join("notes.txt"), "made on the share\n").unwrap();
    after_a_whole_round("a file made on the share", &|| {
        names_in(&m.path("a")).contains(&"notes.txt".to_string())
    });
    let vmx = m.path("a/a.vmx");
    let grown = std::fs::metadata(&vmx).unwrap().len() + 7;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(on_share.join("a.vmx"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"# grown").unwrap();
    after_a_whole_round("a file grown in place on the share", &|| {
        std::fs::metadata(&vmx).unwrap().len() == grown
    });
    // A removal is seen by the next round that ends: its listing shows the file gone,
    // which overrules what the round before learnt of the file (still fresh). Unless the
    // round under way listed before the removal: so three tries, one of which must.
    let mut seen_at_once = 0;
    for i in 0..3 {
        let note = format!("note{i}.txt");
        std::fs::write(on_share.join(&note), "made on the share\n").unwrap();
        after_a_whole_round("a file made on the share", &|| {
            std::fs::symlink_metadata(m.path(&format!("a/{note}"))).is_ok()
        });
        let now = rounds();
        std::fs::remove_file(on_share.join(&note)).unwrap();
        wait_until(WINDOW * 20, "a round of the watch", || {
            rounds() >= now + 1.0
        });
        let gone = || std::fs::symlink_metadata(m.path(&format!("a/{note}"))).is_err();
        if gone() {
            seen_at_once += 1;
        }
        after_a_whole_round("a file removed on the share", &gone);
    }
    assert!(seen_at_once > 0, "removals seen a round late only");
    let dropped = value(&scrape(port), "cvol_fuse_invalidations_total", &[]);
    assert!(dropped >= 3.0, "{dropped} invalidations");
}

/// A listing of the container's root reads the VM folders' listings ahead, many at
/// once: the reads of the folders that follow (`ls -l */`) ask the server nothing more.
#[test]
fn a_listing_of_the_root_reads_the_vm_folders_ahead() {
    const WINDOW: Duration = Duration::from_secs(10);
    let (env, server) = three_vms_on_a_metered_nfs_share();
    let m = env.mount_with(&["--attr-cache-ms", &WINDOW.as_millis().to_string()]);
    let listings = || rpcs_of(server, "READDIRPLUS");
    let before = listings();
    let started = Instant::now();
    assert_eq!(names_in(&m.path("")), ["a", "b", "c"]);
    wait_until(WINDOW / 2, "the root and its 3 folders listed", || {
        listings() >= before + 4.0
    });
    let ahead = listings();
    for vm in ["a", "b", "c"] {
        assert_eq!(
            names_in(&m.path(vm)),
            [
                format!("{vm}-flat.vmdk"),
                format!("{vm}.vmdk"),
                format!("{vm}.vmx")
            ]
        );
    }
    assert!(started.elapsed() < WINDOW, "the machine is too slow");
    assert_eq!(listings(), ahead, "a folder read ahead was listed again");
}

/// What one run read from the share is kept for the next (`--cache-dir`): a second walk
/// of unchanged VMs reads no file again, only the folders' listings; a file changed in
/// place between runs, even to the same size, is read again; a damaged cache file is
/// ignored; `--cache-dir ''` keeps nothing.
#[test]
fn a_second_walk_reads_only_what_changed_since_the_last_run() {
    let (env, port) = three_vms_on_a_metered_nfs_share();
    let cache = env.tmp.path().join("cache");
    let cache_arg = cache.to_str().unwrap();
    // `vm list` with the cache: the memory of each VM, and the READs it cost the server.
    let list = |cache_arg: &str| {
        let reads = || rpcs_of(port, "READ");
        let before = reads();
        let out = env.ok(&["--cache-dir", cache_arg, "--json", "vm", "list"]);
        let vms: serde_json::Value = serde_json::from_str(&out).unwrap();
        let memory: Vec<u64> = vms
            .as_array()
            .unwrap()
            .iter()
            .map(|vm| vm["memory_mib"].as_u64().unwrap())
            .collect();
        (memory, reads() - before)
    };

    let (memory, cold) = list(cache_arg);
    assert_eq!(memory, [256, 256, 256]);
    assert!(cold >= 6.0, "a .vmx and a descriptor per VM: {cold} READs");
    let saved: Vec<_> = std::fs::read_dir(cache.join("nfs")).unwrap().collect();
    assert_eq!(saved.len(), 1, "one file for the share: {saved:?}");
    assert_eq!(
        list(cache_arg),
        (vec![256, 256, 256], 0.0),
        "nothing changed"
    );

    // Changed on the server in place, to the same size: the version's times tell.
    let vmx = env.share.join("b/b.vmx");
    let text = std::fs::read_to_string(&vmx).unwrap();
    let changed = text.replace("memSize = \"256\"", "memSize = \"512\"");
    assert_ne!(changed, text);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vmx)
        .and_then(|mut f| std::io::Write::write_all(&mut f, changed.as_bytes()))
        .unwrap();
    assert_eq!(
        list(cache_arg),
        (vec![256, 512, 256], 1.0),
        "b.vmx read again"
    );

    // A damaged cache file is no cache at all.
    let file = saved[0].as_ref().unwrap().path();
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&file, bytes).unwrap();
    let (memory, reads) = list(cache_arg);
    assert_eq!(memory, [256, 512, 256]);
    assert_eq!(reads, cold, "every file read again");

    let (memory, reads) = list("");
    assert_eq!(
        (memory, reads),
        (vec![256, 512, 256], cold),
        "no cache: all read"
    );
    assert_eq!(std::fs::read_dir(cache.join("nfs")).unwrap().count(), 1);
}

/// Metrics off loopback carry a host's volumes and traffic: served over HTTPS and behind
/// a bearer token when asked, and then to nobody without them.
#[test]
fn metrics_over_https_need_the_ca_and_the_token() {
    let env = Env::empty();
    let ca = common::pki::Ca::new(env.tmp.path(), "metrics");
    let server = ca.sign("nfs1", &["127.0.0.1"]);
    let token_file = env.tmp.path().join("metrics.token");
    common::write_secret(&token_file, "scrape-7f3a\n");
    let port = free_port();
    let nfs = NfsServe::start_with(
        &env.share,
        "127.0.0.1:0".parse().unwrap(),
        &[
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--metrics-tls-cert",
            server.cert.to_str().unwrap(),
            "--metrics-tls-key",
            server.key.to_str().unwrap(),
            "--metrics-token-file",
            token_file.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    let url = format!("https://127.0.0.1:{port}/metrics");
    let ca_file = ca.cert.to_str().unwrap();
    let status = |args: &[&str]| {
        let mut all = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        tool_output("curl", &all)
    };
    let nfs_port = nfs.addr.port();
    tool(
        "nfs-ls",
        &[&format!(
            "nfs://127.0.0.1/?nfsport={nfs_port}&mountport={nfs_port}"
        )],
    );
    let ok = status(&[
        "--cacert",
        ca_file,
        "-H",
        "Authorization: Bearer scrape-7f3a",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200");
    let body = tool(
        "curl",
        &[
            "-s",
            "--cacert",
            ca_file,
            "-H",
            "Authorization: Bearer scrape-7f3a",
            &url,
        ],
    );
    assert!(body.contains("cvol_nfs_server_rpc_seconds_count"), "{body}");
    let no_token = status(&["--cacert", ca_file, &url]);
    assert_eq!(String::from_utf8_lossy(&no_token.stdout), "401");
    let wrong = status(&[
        "--cacert",
        ca_file,
        "-H",
        "Authorization: Bearer guess",
        &url,
    ]);
    assert_eq!(String::from_utf8_lossy(&wrong.stdout), "401");
    // An untrusted certificate, and plain HTTP on the TLS port: no answer at all.
    let untrusted = status(&["-H", "Authorization: Bearer scrape-7f3a", &url]);
    assert!(!untrusted.status.success());
    let plain = status(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
}

/// `datastore fsck` reads every lease as a walk reads VM folders: the lease folders'
/// listings together, and a lease file only when it changed since this host last read
/// it; a lease corrupted in place is read again and reported.
#[test]
fn fsck_reads_a_lease_file_again_only_when_it_changed() {
    let (env, port) = three_vms_on_a_metered_nfs_share();
    let cache = env.tmp.path().join("cache");
    let cache = cache.to_str().unwrap();
    let calls = |procedure| rpcs_of(port, procedure);
    // The READs and LOOKUPs of one fsck, and what it printed.
    let fsck = || {
        let (reads, lookups) = (calls("READ"), calls("LOOKUP"));
        let out = env
            .command()
            .args(["--cache-dir", cache, "datastore", "fsck"])
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        (
            out.status.code(),
            printed,
            calls("READ") - reads,
            calls("LOOKUP") - lookups,
        )
    };
    // What fsck looks up with no leases, once it has read the datastore before.
    fsck();
    let (_, _, _, lookups_without_leases) = fsck();
    for vm in ["a", "b", "c"] {
        let folder = env.share.join(".cvol/leases").join(vm);
        std::fs::create_dir_all(&folder).unwrap();
        let lease = format!(
            "vm = \"{vm}\"\nepoch = 1\nowner = \"h1\"\nboot_id = \"b1\"\nheartbeat = 3\n\n[state]\nkind = \"stopped\"\n"
        );
        std::fs::write(folder.join("1"), lease).unwrap();
    }
    let (code, printed, cold_reads, _) = fsck();
    assert_eq!(code, Some(0), "{printed}");
    assert_eq!(cold_reads, 3.0, "the three leases, each read once");
    let (code, printed, reads, lookups) = fsck();
    assert_eq!((code, reads), (Some(0), 0.0), "nothing changed: {printed}");
    assert_eq!(
        lookups, lookups_without_leases,
        "lease files looked up one by one, not taken from their folders' listings"
    );

    std::fs::write(env.share.join(".cvol/leases/b/1"), "vm = \"b\"\nepoch =").unwrap();
    let (code, printed, reads, _) = fsck();
    assert_eq!(code, Some(4), "{printed}");
    assert!(
        printed.contains(".cvol/leases/b/1: corrupt lease of VM b"),
        "{printed}"
    );
    assert_eq!(reads, 1.0, "only the changed lease read again");
}

/// A host's scan reads every lease of the datastore from the server: the lease folders
/// listed together on each scan, and a lease file looked up and read only when its
/// listing shows it changed (a renewal writes a new file). Ten unchanged leases cost no
/// LOOKUP or READ per scan (those left are of the host records); renewed ones are read.
#[test]
fn a_hosts_scan_reads_only_the_leases_that_changed() {
    const LEASES: usize = 10;
    let (env, server) = three_vms_on_a_metered_nfs_share();
    let lease = |vm: usize, heartbeat: u32| {
        format!(
            "vm = \"v{vm}\"\nepoch = 1\nowner = \"h1\"\nboot_id = \"b1\"\nheartbeat = {heartbeat}\n\n[state]\nkind = \"running\"\n"
        )
    };
    for vm in 0..LEASES {
        let folder = env.share.join(format!(".cvol/leases/v{vm}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("1"), lease(vm, 0)).unwrap();
    }
    let dir = env.tmp.path().join("host");
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let port = free_port();
    let mut command = env.command();
    command
        .args(["--host-id", "h2", "host", "run", "--lease-renew-ms", "300"])
        .arg("--mountpoint")
        .arg(dir.join("mnt"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--metrics", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _host = common::Up::new(common::spawn_tied(command).unwrap(), &dir);
    let scans = || value(&scrape(port), "cvol_cluster_scans_total", &[]);
    let wait_scans = |n: f64| {
        wait_until(Duration::from_secs(60), &format!("{n} scans"), || {
            scans() >= n
        })
    };
    let calls = |procedure| rpcs_of(server, procedure);
    // Past the first scan, which reads every lease once.
    wait_scans(2.0);
    let (s0, reads0, listings0) = (scans(), calls("READ"), calls("READDIRPLUS"));
    let lookups0 = calls("LOOKUP");
    wait_scans(s0 + 4.0);
    let (s1, reads1, listings1) = (scans(), calls("READ"), calls("READDIRPLUS"));
    let lookups = calls("LOOKUP") - lookups0;
    let scanned = s1 - s0;
    assert!(
        listings1 - listings0 >= (scanned - 1.0) * LEASES as f64,
        "{} listings in {scanned} scans: the lease folders are not listed on each",
        listings1 - listings0
    );
    assert!(
        lookups < LEASES as f64 && reads1 - reads0 < LEASES as f64,
        "{lookups} LOOKUPs and {} READs in {scanned} scans of {LEASES} unchanged leases",
        reads1 - reads0
    );

    // Another host renews every lease (a new file in each one's place): each is read.
    for vm in 0..LEASES {
        let folder = env.share.join(format!(".cvol/leases/v{vm}"));
        std::fs::write(folder.join(".1.tmp"), lease(vm, 1)).unwrap();
        std::fs::rename(folder.join(".1.tmp"), folder.join("1")).unwrap();
    }
    let (s2, reads2) = (scans(), calls("READ"));
    wait_scans(s2 + 2.0);
    assert!(
        calls("READ") - reads2 >= LEASES as f64,
        "{} READs: the renewed leases were not read",
        calls("READ") - reads2
    );
}
