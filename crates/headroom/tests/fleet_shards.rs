//! One copy task of 20,000 objects cut into shards that three `headroom
//! serve` replicas on one PostgreSQL database run at once; one replica is
//! killed with `kill -9` and another stopped with SIGTERM mid-run. The
//! task succeeds with every object byte-identical and its totals equal to
//! the source's, its shards cover the key space exactly, and throughout
//! no shard runs on two replicas and no two shards' ranges overlap.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::serve::{Api, Backend, Service, ended};
use common::{S3Server, bytes};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(300);
const FILES: usize = 20_000;
const SHARD: usize = 1_000;

fn replica(backend: &Backend, id: &str, env: &[(&str, String)]) -> Service {
    Service::start_with(
        backend.clone(),
        &[
            "--replica-id",
            id,
            "--lease-ttl",
            "4s",
            "--max-running",
            "2",
            "--shard-objects",
            &SHARD.to_string(),
        ],
        env,
    )
}

/// Runs `sql` on the fleet's database; its rows, fields split by `|`.
fn query(url: &str, sql: &str) -> Vec<Vec<String>> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-AtXqc", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Pairs of shards of one task whose key ranges overlap, compared byte
/// by byte as the service compares keys (`COLLATE "C"`).
const OVERLAPS: &str = r#"SELECT a.no, b.no FROM shards a JOIN shards b
  ON a.task_id = b.task_id AND a.no < b.no
  WHERE (a.through_key IS NULL OR b.after_key IS NULL OR b.after_key COLLATE "C" < a.through_key COLLATE "C")
    AND (b.through_key IS NULL OR a.after_key IS NULL OR a.after_key COLLATE "C" < b.through_key COLLATE "C")"#;

/// Where each shard is seen running, and when each replica first held it.
#[derive(Default)]
struct Watch {
    /// Shard -> (replica, first seen) in the order seen.
    holders: BTreeMap<u64, Vec<(String, Instant)>>,
    /// Shard -> replica, by the last reading.
    now: BTreeMap<u64, String>,
    checks: u64,
}

impl Watch {
    /// Reads every live replica's running shards (none may be on two) and,
    /// every few calls, the database's shards (no two may overlap).
    fn check(&mut self, live: &[(&Service, &Api)], db: &str, task: &str) {
        let mut here: BTreeMap<u64, String> = BTreeMap::new();
        for (svc, api) in live {
            let (status, f) = api.get(&svc.url("/api/fleet"));
            assert_eq!(status, 200, "{f}");
            let me = f["replica"].as_str().unwrap().to_string();
            for s in f["shards_here"].as_array().unwrap() {
                let (t, no) = s.as_str().unwrap().split_once('/').unwrap();
                assert_eq!(t, task);
                let no: u64 = no.parse().unwrap();
                if let Some(other) = here.insert(no, me.clone()) {
                    panic!("shard {no} runs on {other} and on {me} at once");
                }
                let seen = self.holders.entry(no).or_default();
                if seen.last().is_none_or(|(r, _)| *r != me) {
                    seen.push((me.clone(), Instant::now()));
                }
            }
        }
        self.now = here;
        if self.checks.is_multiple_of(5) {
            let overlapping = query(db, OVERLAPS);
            assert!(overlapping.is_empty(), "shards overlap: {overlapping:?}");
        }
        self.checks += 1;
    }

    /// The shards `replica` runs now, by the last reading.
    fn held_by(&self, replica: &str) -> Vec<u64> {
        self.now
            .iter()
            .filter(|(_, r)| *r == replica)
            .map(|(no, _)| *no)
            .collect()
    }
}

#[test]
fn one_task_of_20000_objects_runs_in_shards_on_three_replicas_through_a_kill_and_a_sigterm() {
    let work = tempfile::tempdir().unwrap();
    // Keys over 40 directories, 256 B to 4 KiB each.
    let src = work.path().join("src");
    let mut files = Vec::with_capacity(FILES);
    for i in 0..FILES {
        let key = format!("d{:02}/f{i:05}.bin", i % 40);
        let data = bytes(256 + (i * 37) % 3840, i as u64 + 1);
        let path = src.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        files.push((key, data));
    }
    let total_bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    // Every third request waits 30 ms: the copy takes long enough to be
    // caught mid-run, and is not CPU-bound.
    let s3 = S3Server::stalling(3, Duration::from_millis(30));
    let bucket = s3.bucket("sharded");
    let backend = Backend::postgres();
    let Backend::Postgres(db) = &backend else {
        unreachable!()
    };
    let env = s3.env();
    let mut r1 = replica(&backend, "r1", &env);
    let mut r2 = replica(&backend, "r2", &env);
    let r3 = replica(&backend, "r3", &env);
    let (a1, a2, a3) = (r1.api(), r2.api(), r3.api());
    let (status, task) = a1.post(
        &r1.url("/api/tasks"),
        json!({"kind": "copy", "source": src, "destination": "s3://sharded/all",
               "memory": "16MiB", "concurrency": 4}),
    );
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let progress = |t: &Value| t["objects_copied"].as_u64().unwrap_or(0) as usize;
    let mut watch = Watch::default();

    // All three run shards of the one task; r1 is killed once a fifth is
    // copied.
    let all = [(&r1, &a1), (&r2, &a2), (&r3, &a3)];
    loop {
        watch.check(&all, db, &id);
        let (_, t) = a3.get(&r3.url(&format!("/api/tasks/{id}")));
        let spread = ["r1", "r2", "r3"]
            .iter()
            .all(|r| !watch.held_by(r).is_empty());
        if spread && progress(&t) >= FILES / 5 {
            break;
        }
        assert!(!ended(&t), "ended before the kill: {t}");
        assert!(started.elapsed() < LONG, "the shards did not spread: {t}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // /metrics shows each replica's shards.
    let (_, metrics) = a3.get(&r3.url("/metrics"));
    let metrics = metrics.as_str().unwrap().to_string();
    let mut held_in_all = 0.0;
    for r in ["r1", "r2", "r3"] {
        let held = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("headroom_replica_shards_held{{replica=\"{r}\"}} "))
            })
            .unwrap_or_else(|| panic!("no shards_held for {r}: {metrics}"));
        held_in_all += held.parse::<f64>().unwrap();
    }
    assert!(
        held_in_all >= 1.0,
        "shards are running, the metrics count none: {metrics}"
    );
    r1.kill();
    let killed = Instant::now();
    // What r1 held when it died, read after the kill: the last reading may
    // show a shard r1 finished before the signal. Its leases outlive it
    // (4 s), so its running shards are still its own.
    let r1_held: Vec<u64> = query(
        db,
        &format!(
            "SELECT no FROM shards WHERE task_id = '{id}' AND status = 'running' AND lease_owner = 'r1' ORDER BY no"
        ),
    )
    .iter()
    .map(|row| row[0].parse().unwrap())
    .collect();
    assert!(
        !r1_held.is_empty(),
        "r1 had finished its shards when it was killed: the kill proves nothing"
    );
    eprintln!(
        "kill -9 r1 at {:.1} s holding shards {r1_held:?}",
        started.elapsed().as_secs_f64()
    );

    // r2 gets SIGTERM once two fifths are copied: it hands its shards back.
    let live = [(&r2, &a2), (&r3, &a3)];
    loop {
        watch.check(&live, db, &id);
        let (_, t) = a3.get(&r3.url(&format!("/api/tasks/{id}")));
        if progress(&t) >= FILES * 2 / 5 && !watch.held_by("r2").is_empty() {
            break;
        }
        assert!(!ended(&t), "ended before the SIGTERM: {t}");
        assert!(started.elapsed() < LONG, "{t}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let terminated = Instant::now();
    assert!(r2.terminate(Duration::from_secs(60)), "{}", r2.log());
    // What r2 held at the signal: by the last reading, less what it
    // finished between that reading and the signal.
    let r2_log = r2.log();
    let r2_held: Vec<u64> = watch
        .held_by("r2")
        .into_iter()
        .filter(|no| !r2_log.contains(&format!("task {id} shard {no}: succeeded")))
        .collect();
    eprintln!(
        "SIGTERM r2 at {:.1} s holding shards {r2_held:?}; it stopped in {:.1} s",
        started.elapsed().as_secs_f64(),
        terminated.elapsed().as_secs_f64()
    );
    for no in &r2_held {
        assert!(
            r2_log.contains(&format!(
                "task {id} shard {no}: stopped for shutdown and handed back"
            )),
            "{r2_log}"
        );
    }

    // r3 finishes the task alone.
    let done = loop {
        watch.check(&[(&r3, &a3)], db, &id);
        let (_, t) = a3.get(&r3.url(&format!("/api/tasks/{id}")));
        if ended(&t) {
            break t;
        }
        assert!(started.elapsed() < LONG, "{t}\n{}", r3.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    assert_eq!(done["status"], "succeeded", "{done}\n{}", r3.log());

    // Every object arrived, byte for byte.
    for (key, data) in &files {
        let got =
            std::fs::read(bucket.join("all").join(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(got == *data, "{key} differs");
    }
    // The task's totals are the source's: each key counted once.
    let n = |k: &str| done[k].as_u64().unwrap();
    assert_eq!(n("objects_listed"), FILES as u64, "{done}");
    assert_eq!(
        n("objects_copied") + n("objects_skipped"),
        FILES as u64,
        "{done}"
    );
    assert_eq!(n("objects_failed"), 0, "{done}");
    assert!(n("bytes_copied") <= total_bytes, "{done}");
    assert!(
        n("bytes_copied") + n("objects_skipped") * 4096 >= total_bytes,
        "{done}"
    );

    // The shards cover the keys exactly: each starts where the one before
    // ends, the first at the start and the last at the end; none lost.
    let (status, page) = a3.get(&r3.url(&format!("/api/tasks/{id}/shards?limit=500")));
    assert_eq!(status, 200, "{page}");
    let shards = page["shards"].as_array().unwrap();
    assert_eq!(page["total"].as_u64().unwrap() as usize, shards.len());
    assert!(
        shards.len() >= FILES / SHARD,
        "{} shards for {FILES} keys of {SHARD} a shard",
        shards.len()
    );
    assert!(shards[0]["after_key"].is_null(), "{}", shards[0]);
    assert!(shards.last().unwrap()["through_key"].is_null());
    for pair in shards.windows(2) {
        assert_eq!(pair[0]["through_key"], pair[1]["after_key"], "{pair:?}");
    }
    let mut listed = 0;
    for s in shards {
        assert_eq!(s["status"], "succeeded", "{s}");
        let range = |k: &str| s[k].as_str().map(str::to_string);
        let (after, through) = (range("after_key"), range("through_key"));
        let keys = files
            .iter()
            .filter(|(k, _)| {
                after.as_deref().is_none_or(|a| k.as_str() > a)
                    && through.as_deref().is_none_or(|t| k.as_str() <= t)
            })
            .count();
        assert_eq!(
            s["objects_listed"].as_u64().unwrap() as usize,
            keys,
            "a shard lists exactly its range: {s}"
        );
        listed += keys;
    }
    assert_eq!(listed, FILES);

    // How the shards moved. The killed replica's shards waited for their
    // leases (4 s) to expire; the stopped one's were handed back at once.
    let mut report = Vec::new();
    for s in shards {
        let no = s["no"].as_u64().unwrap();
        let seen = watch.holders.get(&no).cloned().unwrap_or_default();
        let path: Vec<String> = seen
            .iter()
            .map(|(r, at)| format!("{r}@{:.1}s", at.duration_since(started).as_secs_f64()))
            .collect();
        report.push(format!(
            "shard {no} ({} attempts): {}",
            s["attempts"],
            path.join(" -> ")
        ));
        if r1_held.contains(&no) || r2_held.contains(&no) {
            assert!(s["attempts"].as_u64().unwrap() >= 2, "{s}");
            assert_ne!(s["replica"], "r1", "{s}");
        }
    }
    eprintln!("{}", report.join("\n"));
    for no in &r1_held {
        let seen = &watch.holders[no];
        if let Some((by, at)) = seen.iter().find(|(r, at)| r != "r1" && *at > killed) {
            eprintln!(
                "shard {no} of r1 (kill -9): resumed by {by} {:.1} s after the kill",
                at.duration_since(killed).as_secs_f64()
            );
        }
    }
    let logs = format!("{}{}", r2_log, r3.log());
    for no in &r1_held {
        assert!(
            logs.contains(&format!(
                "task {id} shard {no}: the lease of replica r1 expired"
            )),
            "{logs}"
        );
    }
    eprintln!(
        "{FILES} objects ({total_bytes} bytes) in {} shards, {:.1} s, {} fleet checks",
        shards.len(),
        wall.as_secs_f64(),
        watch.checks
    );
}
