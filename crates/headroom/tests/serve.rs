//! `headroom serve` through real HTTP: the API on SQLite and PostgreSQL,
//! the token, a `kill -9` mid-copy and the resume from the checkpoint,
//! history and deletions across restarts.

mod common;

use std::time::Duration;

use common::serve::{Api, Backend, Service, ended, raw_get};
use common::{Faults, S3Server, tree, write_numbered, write_tree};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(180);

/// An S3 server that stalls every other request for `ms`: slow enough that
/// a task is caught running.
fn slow_s3(ms: u64) -> S3Server {
    S3Server::stalling(2, Duration::from_millis(ms))
}

fn create(api: &Api, svc: &Service, spec: Value) -> Value {
    let (status, task) = api.post(&svc.url("/api/tasks"), spec);
    assert_eq!(status, 201, "{task}");
    // The answer is the row just after it was written: the scheduler may
    // have claimed it (or even finished a dry run) in between.
    assert!(
        matches!(
            task["status"].as_str(),
            Some("queued" | "running" | "succeeded")
        ),
        "{task}"
    );
    task
}

/// The value of gauge `name` (without labels) in `/metrics`.
fn gauge(api: &Api, svc: &Service, name: &str) -> u64 {
    let (_, m) = api.get(&svc.url("/metrics"));
    let text = m.as_str().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

fn id(task: &Value) -> String {
    task["id"].as_str().unwrap().to_string()
}

/// The API suite, against one backend.
fn api_suite(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("serve-bucket");
    let svc = Service::start_with(backend, &["--memory", "128MiB"], &s3.env());
    let api = svc.api();

    // Health and the document.
    assert_eq!(api.get(&svc.url("/healthz")).0, 200);
    assert_eq!(api.get(&svc.url("/readyz")).0, 200);
    let (status, doc) = api.get(&svc.url("/api/openapi.json"));
    assert_eq!(status, 200);
    assert!(doc["paths"]["/api/tasks"]["post"].is_object(), "{doc}");

    // A copy runs to completion and its files arrive.
    let src = work.path().join("src");
    let files = write_numbered(&src, 12, 50_000, 0);
    let dst = work.path().join("dst");
    let task = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": dst}),
    );
    let done = api.wait_task(&svc, &id(&task), LONG, ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["objects_copied"], 12);
    assert_eq!(done["bytes_copied"], 12 * 50_000);
    for (name, data) in &files {
        assert_eq!(&std::fs::read(dst.join(name)).unwrap(), data, "{name}");
    }

    // Live progress while running, then cancel: a slow copy to S3.
    let big = work.path().join("big");
    write_numbered(&big, 40, 4 << 20, 0);
    let slow = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": big, "destination": "s3://serve-bucket/slow",
               "memory": "8MiB", "concurrency": 1}),
    );
    let running = api.wait_task(&svc, &id(&slow), LONG, |t| {
        t["status"] == "running" && t["live"]["bytes_copied"].as_u64().unwrap_or(0) > 0
    });
    let live = &running["live"];
    assert_eq!(live["memory_share"], 8 << 20, "{running}");
    assert!(
        live["memory_reserved"].as_u64().unwrap() <= 8 << 20,
        "{running}"
    );
    // The slow task does not hold up a small one: it has its own share.
    let small = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": work.path().join("dst-small")}),
    );
    let small = api.wait_task(&svc, &id(&small), LONG, ended);
    assert_eq!(small["status"], "succeeded", "{small}");
    let (_, slow_now) = api.get(&svc.url(&format!("/api/tasks/{}", id(&slow))));
    assert_eq!(
        slow_now["status"], "running",
        "the small task finished first: {slow_now}"
    );
    let (status, _) = api.post(
        &svc.url(&format!("/api/tasks/{}/cancel", id(&slow))),
        json!({}),
    );
    assert_eq!(status, 200);
    let cancelled = api.wait_task(&svc, &id(&slow), LONG, ended);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(
        cancelled["objects_copied"].as_u64().unwrap() < 40,
        "cancelled before the end: {cancelled}"
    );
    assert!(bucket.exists());
    let (status, again) = api.post(
        &svc.url(&format!("/api/tasks/{}/cancel", id(&slow))),
        json!({}),
    );
    assert_eq!(status, 409, "{again}");

    // Deleting a running task stops it.
    let doomed = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": big, "destination": "s3://serve-bucket/doomed",
               "memory": "8MiB", "concurrency": 1}),
    );
    api.wait_task(&svc, &id(&doomed), LONG, |t| t["status"] == "running");
    let doomed_url = svc.url(&format!("/api/tasks/{}", id(&doomed)));
    assert_eq!(api.call("DELETE", &doomed_url, None).0, 204);
    assert_eq!(api.get(&doomed_url).0, 404);
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let (_, m) = api.get(&svc.url("/metrics"));
        if m.as_str()
            .unwrap()
            .contains("headroom_tasks_running_here 0")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted task still runs: {m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A task that fails, and the cleanup of failed tasks.
    let bad = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": work.path().join("missing"), "destination": dst}),
    );
    let failed = api.wait_task(&svc, &id(&bad), LONG, ended);
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("does not exist"),
        "{failed}"
    );
    let (_, page) = api.get(&svc.url("/api/tasks?status=failed"));
    assert_eq!(page["total"], 1, "{page}");
    let (status, cleaned) = api.call("DELETE", &svc.url("/api/tasks?status=failed"), None);
    assert_eq!(
        (status, cleaned["deleted"].clone()),
        (200, json!(1)),
        "{cleaned}"
    );
    assert_eq!(api.get(&svc.url("/api/tasks?status=failed")).1["total"], 0);
    assert_eq!(
        api.get(&svc.url(&format!("/api/tasks/{}", id(&bad)))).0,
        404
    );

    // A purge task: old files go, new ones stay.
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let old_time = filetime::FileTime::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(40 * 86400),
    );
    for i in 0..8 {
        let f = logs.join(format!("app{i}.log"));
        std::fs::write(&f, vec![b'l'; 1000]).unwrap();
        if i < 5 {
            filetime::set_file_mtime(&f, old_time).unwrap();
        }
    }
    let purge = create(
        &api,
        &svc,
        json!({"kind": "purge", "target": logs, "older_than": "30d"}),
    );
    let purged = api.wait_task(&svc, &id(&purge), LONG, ended);
    assert_eq!(purged["status"], "succeeded", "{purged}");
    assert_eq!(purged["files_deleted"], 5, "{purged}");
    assert_eq!(purged["bytes_freed"], 5000, "{purged}");
    assert_eq!(purged["files_kept"], 3, "{purged}");
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 3);
    // A dry run says what it would delete, never that it deleted.
    for i in 0..2 {
        let f = logs.join(format!("app{i}.old"));
        std::fs::write(&f, vec![b'l'; 10]).unwrap();
        filetime::set_file_mtime(&f, old_time).unwrap();
    }
    let dry = create(
        &api,
        &svc,
        json!({"kind": "purge", "target": logs, "older_than": "30d", "dry_run": true}),
    );
    let dry = api.wait_task(&svc, &id(&dry), LONG, ended);
    assert_eq!(dry["status"], "succeeded", "{dry}");
    assert_eq!(dry["files_to_delete"], 2, "{dry}");
    assert_eq!(dry["bytes_to_free"], 20, "{dry}");
    assert!(dry.get("files_deleted").is_none(), "{dry}");
    assert_eq!(std::fs::read_dir(&logs).unwrap().count(), 5);

    // Listing: filter and pagination, newest first.
    for _ in 0..3 {
        let t = create(
            &api,
            &svc,
            json!({"kind": "copy", "source": src, "destination": dst, "dry_run": true}),
        );
        api.wait_task(&svc, &id(&t), LONG, ended);
    }
    let (_, all) = api.get(&svc.url("/api/tasks"));
    assert_eq!(all["total"], 8, "{all}");
    let (_, first) = api.get(&svc.url("/api/tasks?limit=2"));
    let (_, rest) = api.get(&svc.url("/api/tasks?limit=2&offset=2"));
    let ids =
        |v: &Value| -> Vec<String> { v["tasks"].as_array().unwrap().iter().map(id).collect() };
    assert_eq!(ids(&first).len(), 2);
    assert_eq!(ids(&rest).len(), 2);
    assert!(ids(&first).iter().all(|i| !ids(&rest).contains(i)));
    assert_eq!(ids(&all)[..2], ids(&first)[..], "newest first");
    let (_, succeeded) = api.get(&svc.url("/api/tasks?status=succeeded"));
    assert_eq!(succeeded["total"], 7, "{succeeded}");

    // Delete one.
    let url = svc.url(&format!("/api/tasks/{}", id(&task)));
    assert_eq!(api.call("DELETE", &url, None).0, 204);
    assert_eq!(api.get(&url).0, 404);
    assert_eq!(api.call("DELETE", &url, None).0, 404);

    // Bad input: 400 naming the field; unknown ids: 404.
    for (spec, words) in [
        (
            json!({"kind": "mirror", "source": "/a", "destination": "/b"}),
            "kind",
        ),
        (json!({"kind": "purge", "target": "/tmp/x"}), "older_than"),
        (
            json!({"kind": "purge", "target": "/tmp/x", "older_than": "soon"}),
            "older_than",
        ),
        (
            json!({"kind": "copy", "source": "/a", "destination": "/b", "target": "/c"}),
            "target",
        ),
        (
            json!({"kind": "copy", "source": "s3://", "destination": "/b"}),
            "source",
        ),
        (
            json!({"kind": "copy", "source": "/a", "destination": "s3:///x"}),
            "destination",
        ),
        (
            json!({"kind": "copy", "source": "/a", "destination": "/b", "memory": "lots"}),
            "memory",
        ),
        (
            json!({"kind": "copy", "source": "/a", "destination": "/b", "bogus": 1}),
            "bogus",
        ),
        (json!({"kind": "copy", "destination": "/b"}), "source"),
        // A spec past 16 KiB: what a page of 500 tasks holds is bounded.
        (
            json!({"kind": "copy", "source": "s3://serve-bucket/a", "destination": "s3://serve-bucket/b",
                   "exclude": (0..2000).map(|i| format!("*.ext{i}")).collect::<Vec<_>>()}),
            "at most 16384",
        ),
    ] {
        let (status, body) = api.post(&svc.url("/api/tasks"), spec.clone());
        assert_eq!(status, 400, "{spec} -> {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(words), "{spec}: {msg}");
    }
    assert_eq!(api.get(&svc.url("/api/tasks?status=bogus")).0, 400);
    assert_eq!(api.get(&svc.url("/api/tasks?limit=0")).0, 400);
    assert_eq!(api.get(&svc.url("/api/tasks/nope")).0, 404);
    assert_eq!(
        api.post(&svc.url("/api/tasks/nope/cancel"), json!({})).0,
        404
    );

    // Metrics.
    let (status, metrics) = api.get(&svc.url("/metrics"));
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap();
    for line in [
        "headroom_tasks{status=\"succeeded\"} 6",
        "headroom_tasks{status=\"cancelled\"} 1",
        "headroom_memory_budget_bytes ",
        "headroom_memory_reserved_bytes ",
        "headroom_rss_bytes ",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    // The totals count what was done, not what dry runs would have done.
    assert_eq!(gauge(&api, &svc, "headroom_files_deleted"), 5);
    assert_eq!(gauge(&api, &svc, "headroom_bytes_freed"), 5000);
    let (_, copies) = api.get(&svc.url("/api/tasks?limit=100"));
    let copied: u64 = copies["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "copy" && t["spec"]["dry_run"] != true)
        .map(|t| t["objects_copied"].as_u64().unwrap())
        .sum();
    assert!(copied >= 12, "a whole copy of 12 at least: {copies}");
    assert_eq!(gauge(&api, &svc, "headroom_objects_copied"), copied);

    sync_and_check_tasks(&api, &svc, work.path());
}

/// A check task fails on differences and lists them in its report; a sync
/// task refuses to delete more than `max_delete`, then makes the copy
/// exact; the check then succeeds.
fn sync_and_check_tasks(api: &Api, svc: &Service, work: &std::path::Path) {
    let (src, dst) = (work.join("sync-src"), work.join("sync-dst"));
    write_tree(&src, &[("a", 10), ("b", 20), ("c/d", 30)]);
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("a"), dst.join("a")).unwrap();
    let a_time =
        filetime::FileTime::from_last_modification_time(&std::fs::metadata(src.join("a")).unwrap());
    filetime::set_file_mtime(dst.join("a"), a_time).unwrap();
    std::fs::write(dst.join("b"), b"another b").unwrap();
    std::fs::write(dst.join("z"), b"only here").unwrap();
    let pair = json!({"source": src, "destination": dst});
    let with = |kind: &str, extra: Value| {
        let mut spec = pair.clone();
        spec["kind"] = kind.into();
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        spec
    };
    let run = |spec: Value| {
        let t = create(api, svc, spec);
        api.wait_task(svc, &id(&t), LONG, ended)
    };

    let check = run(with("check", json!({})));
    assert_eq!(check["status"], "failed", "{check}");
    assert!(
        check["error"].as_str().unwrap().contains("3 differences"),
        "{check}"
    );
    assert_eq!(check["differences"], 3, "{check}");
    assert_eq!(check["entries_same"], 1, "{check}");
    assert_eq!(
        check["report"]["differences"],
        json!(["* b", "- c/d", "+ z"]),
        "{check}"
    );

    let copied = || gauge(api, svc, "headroom_objects_copied");
    let before = copied();
    let dry = run(with("sync", json!({"dry_run": true})));
    assert_eq!(dry["status"], "succeeded", "{dry}");
    assert_eq!(dry["objects_copied"], 2, "would copy: {dry}");
    assert!(dst.join("z").exists(), "a dry run deletes nothing");
    assert_eq!(copied(), before, "a dry run is not counted as copied");
    assert_eq!(
        dry["report"]["deletions"]["deleted"], 1,
        "would delete: {dry}"
    );
    let deleted = || gauge(api, svc, "headroom_objects_deleted_by_sync");
    assert_eq!(deleted(), 0, "nor as deleted");

    let refused = run(with("sync", json!({"max_delete": 0})));
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["objects_copied"], 2, "{refused}");
    assert_eq!(copied(), before + 2, "a sync's copies are counted");
    let why = refused["report"]["deletions"]["refused"].as_str().unwrap();
    assert!(why.contains("more than --max-delete 0"), "{refused}");
    assert!(dst.join("z").exists(), "nothing deleted past max_delete");

    let synced = run(with("sync", json!({})));
    assert_eq!(synced["status"], "succeeded", "{synced}");
    assert_eq!(synced["objects_copied"], 0, "{synced}");
    assert_eq!(synced["report"]["deletions"]["deleted"], 1, "{synced}");
    assert_eq!(deleted(), 1, "a sync's deletion is counted");
    assert!(!dst.join("z").exists());
    assert_eq!(tree(&dst), tree(&src));

    let same = run(with("check", json!({})));
    assert_eq!(same["status"], "succeeded", "{same}");
    assert_eq!(same["entries_same"], 3, "{same}");
    assert_eq!(same["report"]["differences"], json!([]), "{same}");

    for (spec, field) in [
        (with("check", json!({"dry_run": true})), "dry_run"),
        (with("copy", json!({"max_delete": 3})), "max_delete"),
        (
            json!({"kind": "sync", "source": "gdrive://root/x", "destination": dst}),
            "source",
        ),
    ] {
        let (status, body) = api.post(&svc.url("/api/tasks"), spec.clone());
        assert_eq!(status, 400, "{spec} -> {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{spec}: {msg}");
    }
}

#[test]
fn the_api_works_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    api_suite(Backend::sqlite(dir.path()));
}

#[test]
fn the_api_works_on_postgres() {
    api_suite(Backend::postgres());
}

#[test]
fn every_request_but_probes_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_with(
        Backend::sqlite(dir.path()),
        &[],
        &[("HEADROOM_TOKEN", "s3cret-token-of-some-length".to_string())],
    );
    let mut api = Api::default();
    let spec = json!({"kind": "copy", "source": dir.path(), "destination": dir.path().join("d"), "dry_run": true});
    let (status, body) = api.post(&svc.url("/api/tasks"), spec.clone());
    assert_eq!(status, 401, "{body}");
    for path in ["/api/tasks", "/api/tasks/t1", "/metrics"] {
        assert_eq!(api.get(&svc.url(path)).0, 401, "{path} needs the token");
    }
    assert_eq!(
        api.call("DELETE", &svc.url("/api/tasks?status=failed"), None)
            .0,
        401
    );
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(api.get(&svc.url(path)).0, 200, "{path} is open");
    }
    api.token = Some("s3cret-token-of-some-lengtX".into());
    assert_eq!(api.post(&svc.url("/api/tasks"), spec.clone()).0, 401);
    api.token = Some("s3cret".into());
    assert_eq!(
        api.get(&svc.url("/api/tasks")).0,
        401,
        "a prefix is not the token"
    );
    api.token = Some("s3cret-token-of-some-length".into());
    assert_eq!(api.post(&svc.url("/api/tasks"), spec).0, 201);
    assert_eq!(api.get(&svc.url("/metrics")).0, 200);
    // The scheme is case-insensitive (RFC 7235).
    let host = svc.base.trim_start_matches("http://").to_string();
    let lower = raw_get(
        &svc.base,
        "/api/tasks",
        &[
            ("host".into(), host),
            (
                "authorization".into(),
                "bearer s3cret-token-of-some-length".into(),
            ),
        ],
    );
    assert_eq!(lower, 200);
}

#[test]
fn without_a_token_one_is_generated_once_kept_0600_and_required() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tasks.db");
    let run = |listen: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args(["serve", "--listen", listen, "--db"])
            .arg(&db)
            .env_remove("HEADROOM_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        (line, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (line, err) = run("127.0.0.1:0");
    assert!(line.starts_with("listening on"), "{line}{err}");
    let file = dir.path().join("headroom.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "{token}");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        err.contains(&token) && err.contains("#token="),
        "printed at first start: {err}"
    );
    // Beyond loopback too: the generated token guards it.
    let (line, err) = run("0.0.0.0:0");
    assert!(line.starts_with("listening on"), "{line}{err}");
    assert!(
        !err.contains(&token),
        "printed at the first start only: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        token,
        "kept"
    );
}

#[test]
fn foreign_hosts_and_origins_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_with(
        Backend::sqlite(dir.path()),
        &["--allow-host", "headroom.internal"],
        &[],
    );
    let port = svc.base.rsplit(':').next().unwrap().to_string();
    let get = |host: &str, origin: Option<&str>| {
        let mut headers = vec![
            ("host".to_string(), host.to_string()),
            ("authorization".to_string(), format!("Bearer {}", svc.token)),
        ];
        if let Some(o) = origin {
            headers.push(("origin".to_string(), o.to_string()));
        }
        raw_get(&svc.base, "/api/tasks", &headers)
    };
    assert_eq!(get(&format!("127.0.0.1:{port}"), None), 200);
    assert_eq!(get(&format!("localhost:{port}"), None), 200);
    assert_eq!(get(&format!("headroom.internal:{port}"), None), 200);
    assert_eq!(get(&format!("[::1]:{port}"), None), 200);
    // A DNS name pointed at 127.0.0.1 by a web page (rebinding).
    assert_eq!(get(&format!("attacker.example:{port}"), None), 421);
    assert_eq!(get("attacker.example", None), 421);
    let host = format!("127.0.0.1:{port}");
    assert_eq!(get(&host, Some(&format!("http://{host}"))), 200);
    assert_eq!(get(&host, Some("http://attacker.example")), 403);
    assert_eq!(get(&host, Some("null")), 403);
}

#[test]
fn local_paths_are_confined_to_the_allowed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(root.join("in")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
    let svc = Service::start_with(
        Backend::sqlite(dir.path()),
        &["--allow-path", root.to_str().unwrap()],
        &[],
    );
    let api = svc.api();
    let task = |source: String, destination: String| {
        api.post(
            &svc.url("/api/tasks"),
            json!({"kind": "copy", "source": source, "destination": destination, "dry_run": true}),
        )
    };
    let inside = |p: &str| root.join(p).display().to_string();
    assert_eq!(task(inside("in"), inside("out/new")).0, 201);
    for (source, destination, field) in [
        ("/etc/shadow".to_string(), inside("out"), "source"),
        (inside("in"), "/root/.ssh".to_string(), "destination"),
        (inside("etc-link/shadow"), inside("out"), "source"),
        (inside("in"), inside("../escape"), "destination"),
        (inside("in"), inside("new/../../escape"), "destination"),
    ] {
        let (status, body) = task(source.clone(), destination.clone());
        assert_eq!(status, 400, "{source} -> {destination}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with(field), "{body}");
    }
    let (status, body) = api.post(
        &svc.url("/api/tasks"),
        json!({"kind": "purge", "target": "/var/log", "older_than": "30d"}),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn without_allowed_paths_tasks_are_s3_only() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_s3_only(Backend::sqlite(dir.path()));
    let api = svc.api();
    let (status, body) = api.post(
        &svc.url("/api/tasks"),
        json!({"kind": "copy", "source": dir.path(), "destination": "s3://bucket/x"}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("--allow-path"),
        "{body}"
    );
    let (status, body) = api.post(
        &svc.url("/api/tasks"),
        json!({"kind": "copy", "source": "s3://bucket/a/", "destination": "s3://bucket/b/", "dry_run": true}),
    );
    assert_eq!(status, 201, "{body}");
    // An allowed root that does not exist is a start-up error.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-path",
            "/nonexistent-root",
            "--db",
        ])
        .arg(dir.path().join("x.db"))
        .env("HEADROOM_TOKEN", "a-token-long-enough-to-use")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-path /nonexistent-root"));
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start_with(
        Backend::sqlite(dir.path()),
        &["--max-connections", "20"],
        &[],
    );
    let addr = svc.base.trim_start_matches("http://").to_string();
    // More idle sockets than the service takes at once.
    let idle: Vec<std::net::TcpStream> = (0..40)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let mut first = idle[0].try_clone().unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(90)))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the service closed the idle connection");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // And a real client gets through while idle ones are still open.
    assert_eq!(svc.api().get(&svc.url("/api/tasks")).0, 200);
    drop(idle);
}

#[test]
fn a_killed_service_resumes_its_copy_without_copying_completed_objects_again() {
    const FILES: usize = 48;
    const SIZE: usize = 3 << 20;
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("resume-bucket");
    let src = work.path().join("src");
    let files = write_numbered(&src, FILES, SIZE, 0);
    let mut svc = Service::start_with(Backend::sqlite(work.path()), &[], &s3.env());
    let api = svc.api();
    let task = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": "s3://resume-bucket/data",
               "memory": "8MiB", "concurrency": 1}),
    );
    // Kill once a third has been copied and the checkpoint saved it.
    let before = api.wait_task(&svc, &id(&task), LONG, |t| {
        t["objects_copied"].as_u64().unwrap_or(0) >= FILES as u64 / 3 && t["status"] == "running"
    });
    let copied_before = before["objects_copied"].as_u64().unwrap();
    svc.kill();
    eprintln!("killed after {copied_before} of {FILES} objects");
    svc.restart();
    let done = api.wait_task(&svc, &id(&task), LONG, ended);
    eprintln!("after the restart: {done}");
    assert_eq!(done["status"], "succeeded", "{done}\n{}", svc.log());
    assert_eq!(done["attempts"], 2, "{done}");
    let skipped = done["objects_skipped"].as_u64().unwrap();
    let copied_after = done["attempt_objects_copied"].as_u64().unwrap();
    let listed_after = done["attempt_objects_listed"].as_u64().unwrap();
    // The local walk is in key order, so the restart lists only after the
    // checkpoint, which is at least where the copy was seen.
    assert!(
        listed_after <= FILES as u64 - copied_before,
        "{listed_after} listed after the restart, {copied_before} were done before: {done}"
    );
    assert!(
        copied_after <= FILES as u64 - copied_before,
        "copied {copied_after} after the restart: completed objects were copied again"
    );
    assert_eq!(skipped + copied_after, listed_after, "{done}");
    // The task's totals count each key once over both attempts.
    let n = |k: &str| done[k].as_u64().unwrap();
    assert_eq!(n("objects_listed"), FILES as u64, "{done}");
    assert_eq!(
        n("objects_copied") + n("objects_skipped"),
        FILES as u64,
        "{done}"
    );
    assert_eq!(
        n("bytes_copied") + n("objects_skipped") * SIZE as u64,
        (FILES * SIZE) as u64,
        "{done}"
    );
    assert!(
        done["attempt_bytes_copied"].as_u64().unwrap()
            <= ((FILES as u64 - copied_before) * SIZE as u64),
        "{done}"
    );
    for (name, data) in &files {
        let got = std::fs::read(bucket.join("data").join(name)).unwrap();
        assert!(got == *data, "{name} differs");
    }
}

/// History survives a restart (even a `kill -9`); deleted tasks stay
/// deleted and cancelled ones stay cancelled.
fn restart_suite(backend: Backend) {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    write_numbered(&src, 3, 1000, 0);
    let mut svc = Service::start(backend);
    let api = svc.api();
    let spec =
        |to: &str| json!({"kind": "copy", "source": src, "destination": work.path().join(to)});
    let kept = create(&api, &svc, spec("kept"));
    let deleted = create(&api, &svc, spec("deleted"));
    for t in [&kept, &deleted] {
        assert_eq!(
            api.wait_task(&svc, &id(t), LONG, ended)["status"],
            "succeeded"
        );
    }
    assert_eq!(
        api.call(
            "DELETE",
            &svc.url(&format!("/api/tasks/{}", id(&deleted))),
            None
        )
        .0,
        204
    );
    // A queued task cancelled before it could run (the scheduler is busy
    // with nothing; cancel right away and accept either order).
    let cancelled = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src,
        "destination": work.path().join("dst2"), "dry_run": true}),
    );
    let (status, c) = api.post(
        &svc.url(&format!("/api/tasks/{}/cancel", id(&cancelled))),
        json!({}),
    );
    assert!(status == 200 || status == 409, "{c}");
    // 409: it had already finished.
    let cancelled_status = api.wait_task(&svc, &id(&cancelled), LONG, ended)["status"].clone();
    for restart in 0..2 {
        if restart == 0 {
            svc.kill();
        }
        svc.restart();
        let (_, all) = api.get(&svc.url("/api/tasks"));
        let ids: Vec<String> = all["tasks"].as_array().unwrap().iter().map(id).collect();
        assert!(ids.contains(&id(&kept)), "finished task lost: {all}");
        assert!(
            !ids.contains(&id(&deleted)),
            "deleted task came back: {all}"
        );
        let (_, k) = api.get(&svc.url(&format!("/api/tasks/{}", id(&kept))));
        assert_eq!(k["status"], "succeeded");
        assert_eq!(k["objects_copied"], 3);
        let (_, c) = api.get(&svc.url(&format!("/api/tasks/{}", id(&cancelled))));
        assert_eq!(c["status"], cancelled_status, "{c}");
    }
}

#[test]
fn history_survives_restarts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    restart_suite(Backend::sqlite(dir.path()));
}

#[test]
fn history_survives_restarts_on_postgres() {
    restart_suite(Backend::postgres());
}

#[test]
fn with_no_resume_a_killed_task_waits_as_interrupted_until_resumed() {
    let work = tempfile::tempdir().unwrap();
    // Slow enough that the task is still running when it is killed.
    let s3 = slow_s3(200);
    let bucket = s3.bucket("later-bucket");
    let src = work.path().join("src");
    let files = write_numbered(&src, 24, 3 << 20, 0);
    let mut svc = Service::start_with(Backend::sqlite(work.path()), &["--no-resume"], &s3.env());
    let api = svc.api();
    let task = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": "s3://later-bucket/d",
               "memory": "8MiB", "concurrency": 1}),
    );
    api.wait_task(&svc, &id(&task), LONG, |t| {
        t["status"] == "running" && t["objects_copied"].as_u64().unwrap_or(0) >= 2
    });
    svc.kill();
    svc.restart();
    let url = svc.url(&format!("/api/tasks/{}", id(&task)));
    std::thread::sleep(Duration::from_secs(2));
    let (_, t) = api.get(&url);
    assert_eq!(t["status"], "interrupted", "{t}");
    let (status, body) = api.post(
        &svc.url(&format!("/api/tasks/{}/resume", id(&task))),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    let done = api.wait_task(&svc, &id(&task), LONG, ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    for (name, data) in &files {
        assert!(
            std::fs::read(bucket.join("d").join(name)).unwrap() == *data,
            "{name}"
        );
    }
    // Only an interrupted task can be resumed.
    let (status, _) = api.post(
        &svc.url(&format!("/api/tasks/{}/resume", id(&task))),
        json!({}),
    );
    assert_eq!(status, 409);
}

fn rss_of(pid: u32) -> u64 {
    common::ingest::rss_of(pid)
}

/// Writes `rows` finished tasks straight into a service's SQLite file.
fn add_history(db: &std::path::Path, from: usize, rows: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", db.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for i in from..from + rows {
            sqlx::query(
                "INSERT INTO tasks (id, kind, status, spec, created_at, updated_at) \
                 VALUES ($1, 'copy', 'succeeded', $2, $3, $3)",
            )
            .bind(format!("history{i:07}"))
            .bind(r#"{"kind":"copy","source":"/a","destination":"/b"}"#)
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO shards (task_id, no, status, updated_at, items_done, bytes_done) \
                 VALUES ($1, 0, 'succeeded', $2, 10, 1000)",
            )
            .bind(format!("history{i:07}"))
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    });
}

#[test]
fn the_service_memory_does_not_grow_with_its_history() {
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("tasks.db");
    let svc = Service::start_with(Backend::sqlite(work.path()), &["--memory", "64MiB"], &[]);
    let api = svc.api();
    let read_everything = || {
        for _ in 0..5 {
            for path in [
                "/api/tasks",
                "/api/tasks?limit=500",
                "/api/tasks?status=succeeded&limit=500&offset=15000",
                "/metrics",
                "/",
            ] {
                let (status, body) = api.get(&svc.url(path));
                assert_eq!(status, 200, "{path}: {body}\n{}", svc.log());
            }
        }
    };
    // RSS once the allocator's trimmer (every second) has run: the least
    // of two seconds of samples, so a moment's garbage between two trims
    // (the scheduler and the heartbeat allocate every second) is not
    // taken for the service's size.
    let settled_rss = || {
        std::thread::sleep(Duration::from_millis(1500));
        (0..10)
            .map(|_| {
                std::thread::sleep(Duration::from_millis(200));
                rss_of(svc.pid())
            })
            .min()
            .unwrap()
    };
    read_everything();
    let empty = settled_rss();
    // The database's page caches (512 KiB per connection, 4 connections)
    // fill with the first rows; after that, more history costs nothing.
    add_history(&db, 0, 20_000);
    read_everything();
    let small = settled_rss();
    add_history(&db, 20_000, 100_000);
    read_everything();
    let large = settled_rss();
    let (_, page) = api.get(&svc.url("/api/tasks?limit=500"));
    assert_eq!(page["total"], 120_000);
    assert_eq!(page["tasks"].as_array().unwrap().len(), 500);
    let (_, metrics) = api.get(&svc.url("/metrics"));
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("headroom_objects_copied 1200000"),
        "{metrics}"
    );
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "service rss: {:.1} MiB empty, {:.1} MiB with 20,000 tasks, {:.1} MiB with 120,000",
        mib(empty),
        mib(small),
        mib(large)
    );
    // Less than the page caches could still have taken: per-task state
    // for 100,000 more tasks would be far more.
    assert!(
        large < small + (4 << 20),
        "rss grew from {small} to {large} with six times the history"
    );
    assert!(large < 64 << 20, "rss {large} above the budget");
}

/// A task's checkpoint, read from a (stopped) service's SQLite file.
fn checkpoint_of(db: &std::path::Path, id: &str) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let key: Option<String> =
            sqlx::query_scalar("SELECT checkpoint_key FROM shards WHERE task_id = $1 AND no = 0")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        key.expect("a checkpoint")
    })
}

#[test]
fn a_resumed_copy_from_s3_lists_only_after_its_checkpoint() {
    const FILES: usize = 24;
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("from-bucket");
    // Objects written straight into the server's bucket directory.
    let files = write_numbered(&bucket.join("in"), FILES, 3 << 20, 0);
    let dst = work.path().join("dst");
    let mut svc = Service::start_with(Backend::sqlite(work.path()), &[], &s3.env());
    let api = svc.api();
    let task = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": "s3://from-bucket/in", "destination": dst,
               "memory": "8MiB", "concurrency": 1}),
    );
    api.wait_task(&svc, &id(&task), LONG, |t| {
        t["status"] == "running" && t["objects_copied"].as_u64().unwrap_or(0) >= 8
    });
    svc.kill();
    // Read after the kill: the checkpoint the restart will see.
    let checkpoint = checkpoint_of(&work.path().join("tasks.db"), &id(&task));
    svc.restart();
    let done = api.wait_task(&svc, &id(&task), LONG, ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    let listed = done["attempt_objects_listed"].as_u64().unwrap();
    assert_eq!(done["objects_listed"], FILES, "every key once: {done}");
    let after_checkpoint = files
        .iter()
        .filter(|(n, _)| n.as_str() > checkpoint.as_str())
        .count();
    eprintln!(
        "checkpoint {checkpoint:?}: {listed} listed after the restart, {after_checkpoint} keys after it"
    );
    assert_eq!(
        listed, after_checkpoint as u64,
        "the resumed listing starts after the checkpoint: {done}"
    );
    for (name, data) in &files {
        assert!(std::fs::read(dst.join(name)).unwrap() == *data, "{name}");
    }
}

/// Runs SQL on the test PostgreSQL server's maintenance database.
fn psql(sql: &str) {
    let base = std::env::var("HEADROOM_TEST_POSTGRES").expect("HEADROOM_TEST_POSTGRES");
    let out = std::process::Command::new("psql")
        .arg(&base)
        .args(["-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_read_only_database_is_not_ready_and_an_answered_cancel_survives_a_crash() {
    let work = tempfile::tempdir().unwrap();
    let s3 = slow_s3(300);
    s3.bucket("ro-bucket");
    let src = work.path().join("src");
    write_numbered(&src, 40, 1 << 20, 0);
    let backend = Backend::postgres();
    let Backend::Postgres(url) = &backend else {
        unreachable!()
    };
    let dbname = url.rsplit('/').next().unwrap().to_string();
    let mut svc = Service::start_with(backend.clone(), &[], &s3.env());
    let api = svc.api();
    assert_eq!(api.get(&svc.url("/readyz")).0, 200);
    let task = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": "s3://ro-bucket/d", "concurrency": 1}),
    );
    api.wait_task(&svc, &id(&task), LONG, |t| t["status"] == "running");

    // New sessions are read-only; the service's are cut, so it reconnects.
    let read_only = |on: bool| {
        psql(&format!(
            "ALTER DATABASE {dbname} SET default_transaction_read_only = {}",
            if on { "on" } else { "off" }
        ));
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        ));
    };
    read_only(true);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.get(&svc.url("/readyz")).0 != 503 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz stayed ready on a read-only database"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancel = svc.url(&format!("/api/tasks/{}/cancel", id(&task)));
    let (status, body) = api.post(&cancel, json!({}));
    assert_eq!(
        status, 503,
        "a cancel that cannot be recorded is refused: {body}"
    );

    read_only(false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while api.get(&svc.url("/readyz")).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "readyz did not recover"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = api.post(&cancel, json!({}));
    assert_eq!(status, 200, "{body}");
    // Killed before the task's end could be written: the answered cancel
    // still holds at the next start (a new process, so a new replica id:
    // the task is cancelled when the dead one's lease expires, never run
    // again).
    svc.kill();
    svc.restart();
    let t = api.wait_task(&svc, &id(&task), LONG, ended);
    assert_eq!(t["status"], "cancelled", "{t}");
    assert_eq!(t["attempts"], 1, "not run again: {t}");
}

#[test]
fn a_share_too_small_fails_at_once_and_deleting_a_running_task_releases_its_share() {
    let work = tempfile::tempdir().unwrap();
    let s3 = slow_s3(300);
    s3.bucket("share-bucket");
    let src = work.path().join("src");
    write_numbered(&src, 30, 1 << 20, 0);
    let svc = Service::start_with(
        Backend::sqlite(work.path()),
        &["--memory", "64MiB"],
        &s3.env(),
    );
    let api = svc.api();
    // 1 MiB cannot carry a 5 MiB part to S3: it used to wait forever on
    // its own listing queue.
    let tiny = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": "s3://share-bucket/t", "memory": "1MiB"}),
    );
    let t = api.wait_task(&svc, &id(&tiny), Duration::from_secs(30), ended);
    assert_eq!(t["status"], "failed", "{t}");
    let error = t["error"].as_str().unwrap();
    assert!(
        error.contains("too small") && error.contains("memory share"),
        "{t}"
    );

    let slow = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": "s3://share-bucket/s",
               "memory": "16MiB", "concurrency": 1}),
    );
    api.wait_task(&svc, &id(&slow), LONG, |t| t["status"] == "running");
    let reserved = || gauge(&api, &svc, "headroom_memory_reserved_bytes");
    // "running" is written when the shard is claimed; the share is
    // reserved by the shard a moment later, so it is waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while reserved() < 16 << 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the share is not held while it runs:\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        api.call(
            "DELETE",
            &svc.url(&format!("/api/tasks/{}", id(&slow))),
            None
        )
        .0,
        204
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while reserved() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the share was not released:\n{}",
            svc.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        api.get(&svc.url(&format!("/api/tasks/{}", id(&slow)))).0,
        404
    );
}

#[test]
fn sigterm_stops_running_tasks_cleanly_and_they_resume_at_the_next_start() {
    let work = tempfile::tempdir().unwrap();
    let s3 = slow_s3(300);
    let bucket = s3.bucket("term-bucket");
    let src = work.path().join("src");
    let files = write_numbered(&src, 4, 12 << 20, 0);
    let mut svc = Service::start_with(Backend::sqlite(work.path()), &[], &s3.env());
    let api = svc.api();
    let task = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": src, "destination": "s3://term-bucket/d",
               "memory": "16MiB", "concurrency": 1}),
    );
    let deadline = std::time::Instant::now() + LONG;
    while s3.incomplete_uploads().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no multipart upload started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(svc.terminate(Duration::from_secs(30)), "{}", svc.log());
    assert!(
        s3.incomplete_uploads().is_empty(),
        "left behind: {:?}",
        s3.incomplete_uploads()
    );
    svc.start_again();
    let done = api.wait_task(&svc, &id(&task), LONG, ended);
    assert_eq!(done["status"], "succeeded", "{done}");
    for (name, data) in &files {
        assert!(
            std::fs::read(bucket.join("d").join(name)).unwrap() == *data,
            "{name}"
        );
    }
}

#[test]
fn one_replica_runs_a_tasks_shards_side_by_side_and_a_later_task_does_not_wait_for_them() {
    let work = tempfile::tempdir().unwrap();
    let s3 = slow_s3(40);
    let bucket = s3.bucket("shards-bucket");
    let big = write_numbered(&work.path().join("big"), 600, 4 << 10, 1);
    let small = write_numbered(&work.path().join("small"), 10, 4 << 10, 2);
    let svc = Service::start_with(
        Backend::sqlite(work.path()),
        &["--max-running", "2", "--shard-objects", "20"],
        &s3.env(),
    );
    let api = svc.api();
    let a = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": work.path().join("big"), "destination": "s3://shards-bucket/big",
               "memory": "8MiB", "concurrency": 2}),
    );
    // Both of this replica's slots run shards of the one task.
    api.wait_task(&svc, &id(&a), LONG, |t| t["shards"]["running"] == 2);
    let b = create(
        &api,
        &svc,
        json!({"kind": "copy", "source": work.path().join("small"), "destination": "s3://shards-bucket/small",
               "memory": "8MiB", "concurrency": 2}),
    );
    // The later task takes the next free slot, ahead of the big task's
    // waiting shards.
    let b_done = api.wait_task(&svc, &id(&b), LONG, ended);
    assert_eq!(b_done["status"], "succeeded", "{b_done}");
    let (_, a_now) = api.get(&svc.url(&format!("/api/tasks/{}", id(&a))));
    assert!(
        a_now["shards"]["succeeded"].as_u64().unwrap() < 20,
        "the small task waited for most of the big one's 30 shards: {a_now}"
    );
    let a_done = api.wait_task(&svc, &id(&a), LONG, ended);
    assert_eq!(a_done["status"], "succeeded", "{a_done}");
    assert_eq!(a_done["shards"]["total"], 30, "{a_done}");
    assert_eq!(a_done["shards"]["succeeded"], 30, "{a_done}");
    assert_eq!(a_done["objects_copied"], 600, "{a_done}");
    for (dir, files) in [("big", &big), ("small", &small)] {
        for (name, data) in files {
            assert!(
                std::fs::read(bucket.join(dir).join(name)).unwrap() == *data,
                "{dir}/{name}"
            );
        }
    }
    // The shards API pages through them in key order.
    let (status, page) =
        api.get(&svc.url(&format!("/api/tasks/{}/shards?limit=10&offset=10", id(&a))));
    assert_eq!(status, 200, "{page}");
    let shards = page["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 10, "{page}");
    assert_eq!(shards[0]["no"], 10);
    assert_eq!(shards[0]["objects_listed"], 20, "{page}");
    assert_eq!(shards[0]["after_key"], big[199].0, "{page}");
    let (_, last) = api.get(&svc.url(&format!("/api/tasks/{}/shards?offset=29", id(&a))));
    assert!(
        last["shards"][0]["through_key"].is_null(),
        "the last runs to the end: {last}"
    );
    let (status, _) = api.get(&svc.url("/api/tasks/t0/shards"));
    assert_eq!(status, 404);
}
