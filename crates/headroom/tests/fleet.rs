//! Several `headroom serve` replicas on one PostgreSQL database: tasks
//! are claimed under leases, a replica killed with `kill -9` or stopped
//! with SIGTERM has its tasks resumed by the others, and a replica that
//! lost its lease (frozen with SIGSTOP, or cut off from the database by a
//! relay that stops forwarding) never writes for it again.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::serve::{Api, Backend, Service, ended};
use common::{S3Server, write_numbered};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(240);

/// A replica with its own id and a short lease.
fn replica(backend: &Backend, id: &str, ttl: &str, env: &[(&str, String)]) -> Service {
    Service::start_with(
        backend.clone(),
        &["--replica-id", id, "--lease-ttl", ttl, "--max-running", "2"],
        env,
    )
}

fn fleet(api: &Api, svc: &Service) -> Value {
    let (status, f) = api.get(&svc.url("/api/fleet"));
    assert_eq!(status, 200, "{f}");
    f
}

/// The tasks each live replica says it runs; panics if two run one task.
fn assert_disjoint(live: &[(&Service, &Api)]) -> BTreeMap<String, String> {
    let mut holder: BTreeMap<String, String> = BTreeMap::new();
    for (svc, api) in live {
        let f = fleet(api, svc);
        let me = f["replica"].as_str().unwrap().to_string();
        for id in f["running_here"].as_array().unwrap() {
            let id = id.as_str().unwrap().to_string();
            if let Some(other) = holder.insert(id.clone(), me.clone()) {
                panic!("task {id} runs on {other} and on {me} at once");
            }
        }
    }
    holder
}

fn check_copied(bucket: &std::path::Path, prefix: &str, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let got = std::fs::read(bucket.join(prefix).join(name))
            .unwrap_or_else(|e| panic!("{prefix}/{name}: {e}"));
        assert!(got == *data, "{prefix}/{name} differs");
    }
}

#[test]
fn three_replicas_share_the_tasks_and_finish_them_through_a_kill_and_a_sigterm() {
    const TASKS: usize = 6;
    const FILES: usize = 100;
    let work = tempfile::tempdir().unwrap();
    // Every other request stalls: tasks run long enough to be caught.
    let s3 = S3Server::stalling(2, Duration::from_millis(60));
    let bucket = s3.bucket("fleet");
    let backend = Backend::postgres();
    let env = s3.env();
    let mut r1 = replica(&backend, "r1", "4s", &env);
    let mut r2 = replica(&backend, "r2", "4s", &env);
    let r3 = replica(&backend, "r3", "4s", &env);
    let (a1, a2, a3) = (r1.api(), r2.api(), r3.api());
    let mut sources = Vec::new();
    for t in 0..TASKS {
        let src = work.path().join(format!("src{t}"));
        let files = write_numbered(&src, FILES, 64 << 10, t as u64);
        let (status, task) = a1.post(
            &r1.url("/api/tasks"),
            json!({"kind": "copy", "source": src, "destination": format!("s3://fleet/t{t}"),
                   "memory": "16MiB", "concurrency": 2}),
        );
        assert_eq!(status, 201, "{task}");
        sources.push((task["id"].as_str().unwrap().to_string(), files));
    }
    // All three replicas run tasks, and never one task twice.
    let deadline = Instant::now() + LONG;
    let by_replica = loop {
        let held = assert_disjoint(&[(&r1, &a1), (&r2, &a2), (&r3, &a3)]);
        let replicas: BTreeSet<&String> = held.values().collect();
        if replicas.len() == 3 {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the tasks did not spread: {held:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("running: {by_replica:?}");
    let on = |r: &str| -> Vec<String> {
        by_replica
            .iter()
            .filter(|(_, h)| *h == r)
            .map(|(t, _)| t.clone())
            .collect()
    };
    let (on_r1, on_r2) = (on("r1"), on("r2"));

    let killed = Instant::now();
    r1.kill();
    assert!(r2.terminate(Duration::from_secs(60)), "{}", r2.log());
    // r2 handed its tasks back at once; r1's wait for their leases.
    let fleet_now = fleet(&a3, &r3);
    eprintln!("after the kill and the SIGTERM: {fleet_now}");
    let r2_row = fleet_now["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "r2")
        .cloned()
        .unwrap();
    assert_eq!(
        r2_row["alive"], false,
        "a stopped replica says so: {r2_row}"
    );
    let mut taken_over = BTreeMap::new();
    while taken_over.len() < on_r1.len() + on_r2.len() {
        assert_disjoint(&[(&r3, &a3)]);
        for id in on_r1.iter().chain(&on_r2) {
            let (_, t) = a3.get(&r3.url(&format!("/api/tasks/{id}")));
            if !taken_over.contains_key(id) && (t["replica"] == "r3" || ended(&t)) {
                taken_over.insert(id.clone(), killed.elapsed());
            }
        }
        assert!(
            killed.elapsed() < LONG,
            "not taken over: {taken_over:?}\n{}",
            r3.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (id, after) in &taken_over {
        let from = if on_r1.contains(id) {
            "r1 (kill -9)"
        } else {
            "r2 (SIGTERM)"
        };
        eprintln!(
            "task {id} from {from}: resumed by r3 after {:.1} s",
            after.as_secs_f64()
        );
    }
    for (id, files) in &sources {
        let t = a3.wait_task(&r3, id, LONG, ended);
        assert_eq!(t["status"], "succeeded", "{t}\n{}", r3.log());
        let prefix = t["spec"]["destination"]
            .as_str()
            .unwrap()
            .trim_start_matches("s3://fleet/")
            .to_string();
        check_copied(&bucket, &prefix, files);
        // The task's totals count every object exactly once: copied, or
        // found at the destination (copied by an attempt that died after
        // its checkpoint).
        let n = |k: &str| t[k].as_u64().unwrap();
        assert_eq!(n("objects_listed"), FILES as u64, "{t}");
        assert_eq!(
            n("objects_copied") + n("objects_skipped"),
            FILES as u64,
            "{t}"
        );
        assert_eq!(n("objects_failed"), 0, "{t}");
        if on_r1.contains(id) || on_r2.contains(id) {
            assert!(t["attempts"].as_u64().unwrap() >= 2, "{t}");
        }
    }
    // A SIGTERM hands back at once; a kill waits for the lease (4 s).
    let log = r3.log();
    for id in &on_r1 {
        assert!(
            log.contains(&format!(
                "task {id} shard 0: the lease of replica r1 expired"
            )),
            "{log}"
        );
    }
}

/// Sends SIGSTOP or SIGCONT.
fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

/// Waits until task `id`, read through `api`, is held by `by`.
fn wait_held_by(api: &Api, svc: &Service, id: &str, by: &str) -> Value {
    api.wait_task(svc, id, LONG, |t| {
        t["replica"] == by && t["status"] == "running"
    })
}

/// Watches task `id` for `period`: it stays with `holder` in `attempt`,
/// and its totals never go back.
fn assert_not_overwritten(
    api: &Api,
    svc: &Service,
    id: &str,
    holder: &str,
    attempt: u64,
    period: Duration,
) {
    let until = Instant::now() + period;
    let mut copied = 0;
    while Instant::now() < until {
        let (_, t) = api.get(&svc.url(&format!("/api/tasks/{id}")));
        if ended(&t) {
            return;
        }
        assert_eq!(t["replica"], holder, "{t}");
        assert_eq!(t["attempts"].as_u64().unwrap(), attempt, "{t}");
        let now = t["objects_copied"].as_u64().unwrap();
        assert!(
            now >= copied,
            "the totals went back from {copied} to {now}: {t}"
        );
        copied = now;
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn slow_task(
    api: &Api,
    svc: &Service,
    work: &std::path::Path,
    files: usize,
) -> (String, Vec<(String, Vec<u8>)>) {
    let src = work.join("src");
    let data = write_numbered(&src, files, 32 << 10, 7);
    let (status, task) = api.post(
        &svc.url("/api/tasks"),
        json!({"kind": "copy", "source": src, "destination": "s3://fenced/d",
               "memory": "16MiB", "concurrency": 1}),
    );
    assert_eq!(status, 201, "{task}");
    (task["id"].as_str().unwrap().to_string(), data)
}

#[test]
fn a_frozen_replica_that_lost_its_lease_never_writes_for_the_task_again() {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::stalling(1, Duration::from_millis(40));
    let bucket = s3.bucket("fenced");
    let backend = Backend::postgres();
    let env = s3.env();
    let a = replica(&backend, "frozen", "3s", &env);
    let aa = a.api();
    let (id, files) = slow_task(&aa, &a, work.path(), 400);
    wait_held_by(&aa, &a, &id, "frozen");
    let b = replica(&backend, "standby", "3s", &env);
    let ab = b.api();
    signal(a.pid(), libc::SIGSTOP);
    let stopped = Instant::now();
    let t = wait_held_by(&ab, &b, &id, "standby");
    eprintln!(
        "taken over {:.1} s after SIGSTOP: {t}",
        stopped.elapsed().as_secs_f64()
    );
    let attempt = t["attempts"].as_u64().unwrap();
    assert_eq!(attempt, 2, "{t}");
    signal(a.pid(), libc::SIGCONT);
    assert_not_overwritten(&ab, &b, &id, "standby", attempt, Duration::from_secs(5));
    let log = a.log();
    assert!(
        log.contains(&format!(
            "task {id} shard 0: this replica no longer holds its attempt 1"
        )) || log.contains(&format!("task {id} shard 0: its lease was not renewed")),
        "the frozen replica saw it lost the task:\n{log}"
    );
    assert_eq!(
        fleet(&aa, &a)["running_here"],
        json!([]),
        "and stopped running it"
    );
    let t = ab.wait_task(&b, &id, LONG, ended);
    assert_eq!(t["status"], "succeeded", "{t}");
    check_copied(&bucket, "d", &files);
}

/// A TCP relay to `target` that can stop forwarding (without closing
/// anything), as a network partition looks to both ends.
struct Relay {
    addr: std::net::SocketAddr,
    stalled: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stalled = Arc::new(AtomicBool::new(false));
        let target = target.to_string();
        let s = stalled.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let Ok(server) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let s = s.clone();
                    std::thread::spawn(move || pump(from, to, &s));
                }
            }
        });
        Relay { addr, stalled }
    }
}

fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, stalled: &AtomicBool) {
    use std::io::{Read, Write};
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if stalled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_replica_cut_off_from_the_database_without_an_error_stops_and_never_overwrites() {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::stalling(1, Duration::from_millis(40));
    let bucket = s3.bucket("fenced");
    let backend = Backend::postgres();
    let Backend::Postgres(url) = &backend else {
        unreachable!()
    };
    let parsed = url::Url::parse(url).unwrap();
    let target = format!(
        "{}:{}",
        parsed.host_str().unwrap(),
        parsed.port().unwrap_or(5432)
    );
    let relay = Relay::start(&target);
    let mut through = parsed.clone();
    through.set_port(Some(relay.addr.port())).unwrap();
    let env = s3.env();
    let a = replica(
        &Backend::Postgres(through.to_string()),
        "partitioned",
        "3s",
        &env,
    );
    let aa = a.api();
    let (id, files) = slow_task(&aa, &a, work.path(), 400);
    wait_held_by(&aa, &a, &id, "partitioned");
    let b = replica(&backend, "standby", "3s", &env);
    let ab = b.api();
    relay.stalled.store(true, Ordering::Relaxed);
    let cut = Instant::now();
    let t = wait_held_by(&ab, &b, &id, "standby");
    eprintln!(
        "taken over {:.1} s after the cut: {t}",
        cut.elapsed().as_secs_f64()
    );
    let attempt = t["attempts"].as_u64().unwrap();
    assert_eq!(attempt, 2, "{t}");
    // The cut-off replica stopped on its own, before the lease expired.
    let log = a.log();
    assert!(
        log.contains(&format!("task {id} shard 0: its lease was not renewed")),
        "{log}"
    );
    // Its writes still in flight reach the database now: none lands.
    relay.stalled.store(false, Ordering::Relaxed);
    assert_not_overwritten(&ab, &b, &id, "standby", attempt, Duration::from_secs(5));
    assert_eq!(
        fleet(&aa, &a)["running_here"],
        json!([]),
        "it no longer runs the task"
    );
    let t = ab.wait_task(&b, &id, LONG, ended);
    assert_eq!(t["status"], "succeeded", "{t}");
    check_copied(&bucket, "d", &files);
}

#[test]
fn each_replica_claims_only_what_its_own_memory_holds() {
    const TASKS: usize = 8;
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::stalling(1, Duration::from_millis(30));
    let bucket = s3.bucket("shares");
    let backend = Backend::postgres();
    let env = s3.env();
    let start = |id: &str, memory: &str| {
        Service::start_with(
            backend.clone(),
            &[
                "--replica-id",
                id,
                "--lease-ttl",
                "5s",
                "--max-running",
                "4",
                "--memory",
                memory,
            ],
            &env,
        )
    };
    // 40 MiB keeps 35 MiB reservable: two 16 MiB tasks. 256 MiB: four.
    let small = start("small", "40MiB");
    let large = start("large", "256MiB");
    let (sa, la) = (small.api(), large.api());
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let src = work.path().join(format!("src{t}"));
        let files = write_numbered(&src, 40, 16 << 10, 100 + t as u64);
        let (status, task) = sa.post(
            &small.url("/api/tasks"),
            json!({"kind": "copy", "source": src, "destination": format!("s3://shares/t{t}"),
                   "memory": "16MiB", "concurrency": 1}),
        );
        assert_eq!(status, 201, "{task}");
        tasks.push((
            task["id"].as_str().unwrap().to_string(),
            format!("t{t}"),
            files,
        ));
    }
    let mut most = (0, 0);
    let deadline = Instant::now() + LONG;
    loop {
        let (fs, fl) = (fleet(&sa, &small), fleet(&la, &large));
        let (ns, nl) = (
            fs["running_here"].as_array().unwrap().len(),
            fl["running_here"].as_array().unwrap().len(),
        );
        assert!(
            ns <= 2,
            "the 40 MiB replica runs {ns} tasks of 16 MiB: {fs}"
        );
        most = (most.0.max(ns), most.1.max(nl));
        let done = tasks
            .iter()
            .all(|(id, _, _)| ended(&sa.get(&small.url(&format!("/api/tasks/{id}"))).1));
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "{fs}\n{fl}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "most tasks at once: 40 MiB replica {}, 256 MiB replica {}",
        most.0, most.1
    );
    assert_eq!(most, (2, 4), "each replica filled its own memory, no more");
    for (id, prefix, files) in &tasks {
        let t = sa.wait_task(&small, id, LONG, ended);
        assert_eq!(t["status"], "succeeded", "{t}");
        check_copied(&bucket, prefix, files);
    }
}

#[test]
fn a_cancel_or_a_delete_sent_to_any_replica_stops_the_one_running_the_task() {
    let work = tempfile::tempdir().unwrap();
    let s3 = S3Server::stalling(1, Duration::from_millis(40));
    s3.bucket("fenced");
    let backend = Backend::postgres();
    let env = s3.env();
    let a = replica(&backend, "runner", "5s", &env);
    let aa = a.api();
    let (cancelled, _) = slow_task(&aa, &a, work.path(), 300);
    wait_held_by(&aa, &a, &cancelled, "runner");
    let b = replica(&backend, "other", "5s", &env);
    let ab = b.api();
    let (status, t) = ab.post(&b.url(&format!("/api/tasks/{cancelled}/cancel")), json!({}));
    assert_eq!(status, 200, "{t}");
    let sent = Instant::now();
    let t = ab.wait_task(&b, &cancelled, LONG, ended);
    assert_eq!(t["status"], "cancelled", "{t}");
    eprintln!(
        "cancelled through another replica in {:.1} s",
        sent.elapsed().as_secs_f64()
    );
    assert!(
        fleet(&aa, &a)["running_here"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    let (deleted, _) = slow_task(&aa, &a, &work.path().join("second"), 300);
    wait_held_by(&aa, &a, &deleted, "runner");
    let (status, _) = ab.call("DELETE", &b.url(&format!("/api/tasks/{deleted}")), None);
    assert_eq!(status, 204);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fleet(&aa, &a)["running_here"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the runner still runs a deleted task:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        ab.get(&b.url(&format!("/api/tasks/{deleted}"))).0,
        404,
        "and it is gone for good"
    );
}
