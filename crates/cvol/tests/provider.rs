//! `cvol provider serve` for real: its HTTP API against hostile requests, two host daemons
//! racing for one disk, a forced takeover fencing the old holder, and kill -9 of the
//! service in the middle of a create/clone/delete loop.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{cvol, write_secret, Env, Mounted, ProviderServe};

/// A client of a service's API.
struct Api {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// An answer: status and JSON body (Null when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Api {
    fn of(service: &ProviderServe) -> Self {
        let token = service
            .token_file
            .as_ref()
            .map(|f| std::fs::read_to_string(f).unwrap().trim().to_string());
        Self {
            url: service.url.clone(),
            token,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent(),
        }
    }

    /// Sends `body` as is (it may be anything) with `content_type`.
    fn raw(&self, method: &str, path: &str, content_type: &str, body: Vec<u8>) -> Answer {
        self.try_raw(method, path, content_type, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// [`Api::raw`], with a broken connection as an error.
    fn try_raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Answer, ureq::Error> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url))
            .header("content-type", content_type);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut response = self.agent.run(request.body(body).unwrap())?;
        let status = response.status().as_u16();
        let bytes = response.body_mut().read_to_vec()?;
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: HTTP {status} with a body that is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Ok(Answer { status, body })
    }

    fn call(&self, method: &str, path: &str, body: serde_json::Value) -> Answer {
        let bytes = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.raw(method, path, "application/json", bytes)
    }

    fn create(&self, id: &str, size: u64) -> Answer {
        self.call(
            "POST",
            "/v1/volumes",
            serde_json::json!({"id": id, "owner": "test", "size": size}),
        )
    }

    fn attach(&self, id: &str, host: &str, force: bool) -> Answer {
        self.call(
            "POST",
            &format!("/v1/volumes/{id}/attachments"),
            serde_json::json!({"host_id": host, "force": force}),
        )
    }

    fn volume_ids(&self) -> Vec<String> {
        let mut ids = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.call(
                "GET",
                &format!("/v1/volumes?limit=7{after}"),
                serde_json::Value::Null,
            );
            assert_eq!(page.status, 200, "{page:?}");
            for v in page.body["volumes"].as_array().unwrap() {
                ids.push(v["id"].as_str().unwrap().to_string());
            }
            match page.body["next"].as_str() {
                Some(next) => after = format!("&after={next}"),
                None => break,
            }
        }
        ids.sort();
        ids
    }
}

fn new_id() -> String {
    format!("vol-{}", common::uuid_like())
}

/// Asserts an error answer: its status, its JSON error code.
fn refused(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{answer:?}");
    assert_eq!(answer.body["error"], code, "{answer:?}");
    assert!(
        answer.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
}

/// A token file every user may read holds no secret: the service and the hosts refuse
/// it, naming the file and its mode, and print no part of the token.
#[test]
fn world_readable_token_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::empty();
    let token_file = env.tmp.path().join("token");
    write_secret(&token_file, "s3cr3t-t0ken");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let token_arg = token_file.to_str().unwrap();
    let pool = format!("file:{}", env.pool.display());
    let served = cvol()
        .args([
            "provider",
            "serve",
            "--pool",
            &pool,
            "--token-file",
            token_arg,
        ])
        .output()
        .unwrap();
    let refused = String::from_utf8_lossy(&served.stderr);
    assert!(!served.status.success(), "the service started: {refused}");
    for expected in [token_arg, "mode 0644", "chmod o-rwx"] {
        assert!(refused.contains(expected), "{expected} not in: {refused}");
    }
    assert!(
        !refused.contains("s3cr3t"),
        "the token was printed: {refused}"
    );

    let out = env.run_with_env(
        &[
            "datastore",
            "create",
            "--name",
            "ds",
            "--provider",
            "pool=remote:http://127.0.0.1:9",
        ],
        &[("CVOL_PROVIDER_TOKEN_FILE", token_arg)],
    );
    let refused = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{refused}");
    assert!(
        refused.contains("mode 0644") && refused.contains(token_arg),
        "{refused}"
    );
    assert!(
        !refused.contains("s3cr3t"),
        "the token was printed: {refused}"
    );
}

#[test]
fn bad_requests_get_a_4xx_with_a_json_error_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pool = tmp.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    let token_file = tmp.path().join("token");
    let token = common::uuid_like();
    write_secret(&token_file, &token);
    let log = tmp.path().join("service.log");
    let mut service = ProviderServe::start_logged(&pool, Some(&token_file), &log);
    let api = Api::of(&service);
    let id = new_id();
    assert_eq!(api.create(&id, 1 << 20).status, 201);

    // Authentication.
    let mut anonymous = Api::of(&service);
    anonymous.token = None;
    refused(
        &anonymous.call("GET", "/v1/volumes", serde_json::Value::Null),
        401,
        "unauthorized",
    );
    anonymous.token = Some(format!("{token}x"));
    refused(
        &anonymous.call("GET", &format!("/v1/volumes/{id}"), serde_json::Value::Null),
        401,
        "unauthorized",
    );
    refused(&anonymous.create(&new_id(), 1 << 20), 401, "unauthorized");

    // Bodies.
    let post = |body: &[u8]| api.raw("POST", "/v1/volumes", "application/json", body.to_vec());
    refused(&post(b"{\"id\": "), 400, "malformed_json");
    refused(&post(b"\xff\xfe"), 400, "malformed_json");
    refused(&post(b"[]"), 422, "invalid_body");
    refused(
        &api.raw("POST", "/v1/volumes", "text/plain", b"{}".to_vec()),
        415,
        "not_json",
    );
    let other = new_id();
    let create = |body: serde_json::Value| api.call("POST", "/v1/volumes", body);
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "size": 1048576, "colour": "red"})),
        422,
        "invalid_body",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "size": -512})),
        422,
        "invalid_body",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "size": 1e30})),
        422,
        "invalid_body",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "size": u64::MAX - 511})),
        400,
        "invalid_size",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "size": 1000})),
        400,
        "invalid_size",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "size": 0})),
        400,
        "invalid_size",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t"})),
        400,
        "invalid_body",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "", "size": 512})),
        400,
        "invalid_owner",
    );
    refused(
        &create(serde_json::json!({"id": "../../etc", "owner": "t", "size": 512})),
        400,
        "invalid_volume_id",
    );
    refused(
        &create(
            serde_json::json!({"id": other, "owner": "t", "source": {"volume": id, "snapshot": "../x"}}),
        ),
        400,
        "invalid_snapshot_name",
    );
    refused(
        &create(serde_json::json!({"id": other, "owner": "t", "source": {"volume": new_id()}})),
        404,
        "volume_not_found",
    );
    refused(&api.create(&id, 1 << 20), 409, "volume_exists");
    let huge = format!(
        "{{\"id\": \"{other}\", \"owner\": \"{}\", \"size\": 512}}",
        "x".repeat(64 << 10)
    );
    // The service answers 413 as soon as it reads the length and closes the connection,
    // while the client may still be sending: TCP may then reset the connection before the
    // client reads the answer. A client that reads in time sees the 413.
    let too_large = (0..20)
        .find_map(|_| {
            api.try_raw(
                "POST",
                "/v1/volumes",
                "application/json",
                huge.clone().into_bytes(),
            )
            .ok()
        })
        .expect("a 413 answer within 20 tries");
    refused(&too_large, 413, "body_too_large");

    // Ids in paths.
    let get = |path: &str| api.call("GET", path, serde_json::Value::Null);
    refused(
        &get(&format!("/v1/volumes/{}", new_id())),
        404,
        "volume_not_found",
    );
    for bad in ["..%2F..%2Fetc%2Fpasswd", "vol-..", "..", "vol-0123", "%00"] {
        let answer = get(&format!("/v1/volumes/{bad}"));
        assert!(
            answer.status == 400 || answer.status == 404,
            "{bad}: {answer:?}"
        );
        assert!(answer.body["error"].is_string(), "{bad}: {answer:?}");
    }
    refused(
        &api.call(
            "DELETE",
            &format!("/v1/volumes/{id}/snapshots/.."),
            serde_json::Value::Null,
        ),
        400,
        "invalid_snapshot_name",
    );
    refused(
        &get(&format!("/v1/volumes/{id}/snapshots/x")),
        405,
        "method_not_allowed",
    );
    refused(
        &api.call(
            "DELETE",
            &format!("/v1/volumes/{id}/snapshots/.hidden"),
            serde_json::Value::Null,
        ),
        400,
        "invalid_snapshot_name",
    );
    refused(&get("/v1/volumes?limit=0"), 400, "invalid_query");
    refused(&get("/v1/volumes?limit=abc"), 400, "invalid_query");
    refused(&get("/v1/volumes?after=../x"), 400, "invalid_volume_id");
    refused(&get("/v2/volumes"), 404, "no_such_call");
    refused(
        &api.call("PUT", "/v1/volumes", serde_json::Value::Null),
        405,
        "method_not_allowed",
    );
    refused(
        &api.call(
            "PATCH",
            &format!("/v1/volumes/{id}"),
            serde_json::json!({"size": 512}),
        ),
        409,
        "shrink_refused",
    );

    // Attachment rules.
    let first = api.attach(&id, "host-a", false);
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        api.attach(&id, "host-a", false).body["generation"],
        first.body["generation"]
    );
    let second = api.attach(&id, "host-b", false);
    refused(&second, 409, "attached_elsewhere");
    assert_eq!(second.body["holder"], "host-a");
    refused(&api.attach(&id, "", false), 400, "invalid_host_id");
    refused(&api.attach(&id, "a\nb", false), 400, "invalid_host_id");
    refused(
        &api.call(
            "DELETE",
            &format!("/v1/volumes/{id}"),
            serde_json::Value::Null,
        ),
        409,
        "attached_elsewhere",
    );
    let taken = api.attach(&id, "host-b", true);
    assert_eq!(taken.status, 200, "{taken:?}");
    assert!(taken.body["generation"].as_u64() > first.body["generation"].as_u64());
    let detach = |host: &str| {
        api.call(
            "DELETE",
            &format!("/v1/volumes/{id}/attachments/{host}"),
            serde_json::Value::Null,
        )
    };
    assert_eq!(detach("host-a").status, 204, "not attached there: a no-op");
    assert_eq!(
        get(&format!("/v1/volumes/{id}")).body["attached_to"],
        "host-b"
    );
    assert_eq!(detach("host-b").status, 204);
    assert_eq!(detach("host-b").status, 204, "detached twice: a no-op");
    assert_eq!(
        api.call(
            "DELETE",
            &format!("/v1/volumes/{id}"),
            serde_json::Value::Null
        )
        .status,
        204
    );

    // Nothing of the refused requests made a volume; nothing answered 5xx; the token
    // was never logged.
    assert!(api.volume_ids().is_empty());
    service.kill();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains(&token), "the token was logged");
    assert!(!log.contains("ERROR"), "{log}");
}

#[test]
fn the_openapi_file_is_served_and_lists_every_call() {
    let tmp = tempfile::tempdir().unwrap();
    let service = ProviderServe::start(tmp.path(), None);
    let api = Api::of(&service);
    let mut response = api
        .agent
        .get(format!("{}/v1/openapi.yaml", api.url))
        .call()
        .unwrap();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(
        text,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../cvol-provider-service/openapi.yaml"
        ))
        .unwrap()
    );
    for path in [
        "/v1/pool:",
        "/v1/volumes:",
        "/v1/volumes/{id}:",
        "/v1/volumes/{id}/snapshots:",
        "/v1/volumes/{id}/snapshots/{name}:",
        "/v1/volumes/{id}/attachments:",
        "/v1/volumes/{id}/attachments/{host_id}:",
        "/v1/reclaim:",
    ] {
        assert!(
            text.contains(&format!("\n  {path}\n")),
            "{path} is not documented"
        );
    }
}

/// Waits until the service says `id` is attached to nobody.
fn wait_detached(api: &Api, id: &str) {
    let start = Instant::now();
    loop {
        let v = api.call("GET", &format!("/v1/volumes/{id}"), serde_json::Value::Null);
        if v.body["attached_to"].is_null() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{id} stays attached: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A VM `demo` with a 1 MiB disk on a remote provider, its volume id, and two host
/// daemons (`host-a`, `host-b`) mounting the datastore.
fn demo_on_two_hosts() -> (Env, Api, String, Mounted, Mounted) {
    let env = Env::datastore_on_remote();
    env.ok(&["vm", "create", "demo", "--disk", "1M"]);
    let api = Api::of(env.service.as_ref().unwrap());
    let volume = env.json(&["disk", "list", "demo"])[0]["volume"]
        .as_str()
        .unwrap()
        .to_string();
    let a = env.mount_at("host-a", &["--host-id", "host-a"]);
    let b = env.mount_at("host-b", &["--host-id", "host-b"]);
    (env, api, volume, a, b)
}

#[test]
fn two_hosts_race_for_a_disk_and_exactly_one_wins_each_time() {
    let (env, api, volume, a, b) = demo_on_two_hosts();
    let paths = [a.path("demo/demo-flat.vmdk"), b.path("demo/demo-flat.vmdk")];
    let mut wins = [0usize; 2];
    for round in 0..1000 {
        let barrier = Barrier::new(2);
        let opened: Vec<std::io::Result<std::fs::File>> = std::thread::scope(|s| {
            let racers: Vec<_> = paths
                .iter()
                .map(|path| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(path)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let winners: Vec<usize> = (0..2).filter(|&i| opened[i].is_ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {opened:?}");
        let winner = winners[0];
        let loser = &opened[1 - winner];
        assert_eq!(
            loser.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EBUSY),
            "round {round}"
        );
        wins[winner] += 1;
        // The winner proves it holds the disk, then lets go.
        let file = opened.into_iter().nth(winner).unwrap().unwrap();
        file.write_all_at(&(round as u32).to_le_bytes(), 0).unwrap();
        drop(file);
        wait_detached(&api, &volume);
    }
    eprintln!("wins: host-a {}, host-b {}", wins[0], wins[1]);
    let (log_a, log_b) = (a.stop(), b.stop());
    for (wins_of_other, log, other) in [(wins[1], &log_a, "host-b"), (wins[0], &log_b, "host-a")] {
        if wins_of_other > 0 {
            assert!(
                log.contains(&format!("is attached to host \"{other}\"")),
                "the loser's error does not name the winner {other}: {log}"
            );
        }
    }
    let mut last = [0u8; 4];
    std::fs::File::open(env.volume_file("demo/demo"))
        .unwrap()
        .read_exact_at(&mut last, 0)
        .unwrap();
    assert_eq!(
        u32::from_le_bytes(last),
        999,
        "the last winner's write is on the volume"
    );
}

#[test]
fn a_forced_takeover_fences_the_old_holder() {
    let (env, api, volume, a, b) = demo_on_two_hosts();
    let old = common::open_rw(a.path("demo/demo-flat.vmdk"));
    old.write_all_at(&[b'a'; 4096], 0).unwrap();
    old.sync_all().unwrap();

    let taken = api.attach(&volume, "host-b", true);
    assert_eq!(taken.status, 200, "{taken:?}");
    let new = common::open_rw(b.path("demo/demo-flat.vmdk"));
    new.write_all_at(&[b'b'; 4096], 0).unwrap();
    new.sync_all().unwrap();

    let late = old
        .write_all_at(&[b'A'; 4096], 0)
        .and_then(|()| old.sync_all());
    assert_eq!(
        late.unwrap_err().raw_os_error(),
        Some(libc::EIO),
        "the old holder's write went through"
    );
    drop(old);
    let mut buf = [0u8; 4096];
    new.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [b'b'; 4096], "the new holder's data was overwritten");
    drop(new);
    wait_detached(&api, &volume);
    let mut on_pool = vec![0u8; 4096];
    std::fs::File::open(env.volume_file("demo/demo"))
        .unwrap()
        .read_exact_at(&mut on_pool, 0)
        .unwrap();
    assert_eq!(on_pool, [b'b'; 4096]);
    let log_a = a.stop();
    assert!(log_a.contains("fenced"), "{log_a}");
    b.stop();
}

#[test]
fn kill_9_of_the_service_in_a_create_clone_delete_loop_leaks_nothing() {
    let mut env = Env::datastore_on_remote();
    env.ok(&["vm", "create", "src", "--disk", "1M"]);
    // A VM has 15 disk slots: the copies spread over 8.
    let vms: Vec<String> = (0..8).map(|n| format!("d{n}")).collect();
    for vm in &vms {
        env.ok(&["vm", "create", vm]);
    }
    let mut service = env.service.take().unwrap();
    let api = Api::of(&service);
    let stop = AtomicBool::new(false);
    let kills = std::thread::scope(|s| {
        let killer = s.spawn(|| {
            let mut kills = 0;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(150));
                service.restart();
                kills += 1;
            }
            kills
        });
        // Stops the killer however the loop ends, a failed assertion included.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&stop);
        for i in 0..40 {
            let vm = &vms[i % vms.len()];
            env.ok(&["disk", "create", "src", "--size", "1M"]);
            env.ok(&["disk", "clone", "src/src", &format!("{vm}/c{i}")]);
            env.ok(&["disk", "snapshot", "src/src", &format!("s{i}")]);
            env.ok(&[
                "disk",
                "clone",
                &format!("src/src@s{i}"),
                &format!("{vm}/s{i}"),
            ]);
            env.ok(&["disk", "delete", "src/src_1"]);
            if i % 2 == 0 {
                env.ok(&["disk", "delete", &format!("{vm}/c{i}")]);
            }
        }
        drop(_stop);
        killer.join().unwrap()
    });
    assert!(kills >= 5, "the service was killed only {kills} times");
    env.service = Some(service);
    let fsck = env.run(&["datastore", "fsck"]);
    assert!(
        fsck.status.success(),
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let mut referenced: Vec<String> = std::iter::once(&"src".to_string())
        .chain(&vms)
        .flat_map(|vm| {
            env.json(&["disk", "list", vm])
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["volume"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    referenced.sort();
    assert_eq!(
        referenced.len(),
        1 + 40 + 20,
        "src, every snapshot clone, odd clones"
    );
    assert_eq!(api.volume_ids(), referenced, "leaked or phantom volumes");
}
