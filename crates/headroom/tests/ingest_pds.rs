//! `headroom ingest --format atproto` against a firehose nobody on this
//! project wrote: the reference PDS (`@atproto/pds` from the npm registry,
//! with the PLC directory `@did-plc/server`; `tests/pds/run.mjs`, installed
//! by `scripts/services.sh`). Accounts and records are created through its
//! XRPC API while headroom ingests, headroom is killed with `kill -9` and
//! restarted in the middle, and afterwards every event the PDS sequenced
//! (read back from it with `cursor=0`) is in Redis once, in order, byte for
//! byte, posts routed to a stream of their own.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ingest::{RedisServer, entries};
use common::text;
use futures::StreamExt;
use ipld_core::ipld::Ipld;
use serde_json::json;

/// The PDS and its PLC directory, stopped when dropped.
struct Pds {
    child: Child,
    url: String,
}

impl Pds {
    fn start() -> Pds {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pds");
        assert!(
            dir.join("node_modules/@atproto/pds").is_dir(),
            "the reference PDS is not installed: run scripts/services.sh (npm ci --prefix crates/headroom/tests/pds)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("run.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node (Node.js) runs the PDS");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("http://"),
            "the PDS did not start: {line:?}"
        );
        Pds {
            child,
            url: line.trim().to_string(),
        }
    }

    fn firehose(&self) -> String {
        format!(
            "{}/xrpc/com.atproto.sync.subscribeRepos",
            self.url.replacen("http", "ws", 1)
        )
    }
}

impl Drop for Pds {
    fn drop(&mut self) {
        // Closing its standard input stops it and removes its data.
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An account made through `com.atproto.server.createAccount`.
struct Account {
    did: String,
    jwt: String,
}

/// Calls the XRPC procedure `nsid` and returns its JSON answer.
async fn xrpc(
    http: &reqwest::Client,
    pds: &str,
    nsid: &str,
    jwt: Option<&str>,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut req = http.post(format!("{pds}/xrpc/{nsid}")).json(&body);
    if let Some(jwt) = jwt {
        req = req.bearer_auth(jwt);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(status.is_success(), "{nsid}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
}

async fn create_account(http: &reqwest::Client, pds: &str, name: &str) -> Account {
    let out = xrpc(
        http,
        pds,
        "com.atproto.server.createAccount",
        None,
        json!({"handle": format!("{name}.test"), "email": format!("{name}@example.com"), "password": "headroom-pw"}),
    )
    .await;
    Account {
        did: out["did"].as_str().unwrap().to_string(),
        jwt: out["accessJwt"].as_str().unwrap().to_string(),
    }
}

async fn create_record(
    http: &reqwest::Client,
    pds: &str,
    who: &Account,
    record: serde_json::Value,
) -> serde_json::Value {
    let collection = record["$type"].as_str().unwrap().to_string();
    xrpc(
        http,
        pds,
        "com.atproto.repo.createRecord",
        Some(&who.jwt),
        json!({"repo": who.did, "collection": collection, "record": record}),
    )
    .await
}

fn now() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (secs, ms) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Posts, likes of each other's posts and follows by every account.
async fn activity(http: &reqwest::Client, pds: &str, accounts: &[Account], round: u32) {
    let mut posts = Vec::new();
    for (i, who) in accounts.iter().enumerate() {
        for n in 0..8 {
            let post = create_record(
                http,
                pds,
                who,
                json!({"$type": "app.bsky.feed.post", "text": format!("round {round}, post {n} by {i}"), "createdAt": now()}),
            )
            .await;
            posts.push(post);
        }
    }
    for (i, who) in accounts.iter().enumerate() {
        for post in posts.iter().skip(i).step_by(3).take(5) {
            create_record(
                http,
                pds,
                who,
                json!({"$type": "app.bsky.feed.like", "subject": {"uri": post["uri"], "cid": post["cid"]}, "createdAt": now()}),
            )
            .await;
        }
        let other = &accounts[(i + 1) % accounts.len()];
        create_record(
            http,
            pds,
            who,
            json!({"$type": "app.bsky.graph.follow", "subject": other.did, "createdAt": now()}),
        )
        .await;
    }
}

/// An event as the PDS sequenced it.
struct Sequenced {
    seq: u64,
    t: String,
    /// Whether a commit creates, updates or deletes a post.
    post: bool,
    frame: Vec<u8>,
}

/// Decodes a frame: header `{op, t}`, then the body with `seq` (and a
/// commit's `ops`).
fn sequenced(frame: Vec<u8>) -> Option<Sequenced> {
    let mut de = serde_ipld_dagcbor::de::Deserializer::from_slice(&frame);
    let header: Ipld = serde::Deserialize::deserialize(&mut de).unwrap();
    let body: Ipld = serde::Deserialize::deserialize(&mut de).unwrap();
    let (Ipld::Map(header), Ipld::Map(body)) = (header, body) else {
        panic!("a frame that is not two maps");
    };
    let t = match header.get("t") {
        Some(Ipld::String(t)) => t.clone(),
        _ => return None,
    };
    let Some(Ipld::Integer(seq)) = body.get("seq") else {
        return None;
    };
    let post = match body.get("ops") {
        Some(Ipld::List(ops)) => ops.iter().any(|op| {
            matches!(op, Ipld::Map(m) if matches!(m.get("path"),
                Some(Ipld::String(p)) if p.starts_with("app.bsky.feed.post/")))
        }),
        _ => false,
    };
    Some(Sequenced {
        seq: *seq as u64,
        t,
        post,
        frame,
    })
}

/// Everything the PDS sequenced, read back with `cursor=0` until it has
/// been quiet for two seconds.
async fn pds_log(firehose: &str) -> BTreeMap<u64, Sequenced> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{firehose}?cursor=0"))
        .await
        .unwrap();
    let mut log = BTreeMap::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = message.unwrap()
            && let Some(event) = sequenced(b.to_vec())
        {
            log.insert(event.seq, event);
        }
    }
    log
}

fn field<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &fields.iter().find(|(k, _)| k == name).unwrap().1
}

fn ingest(pds: &Pds, redis: &RedisServer) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_headroom"));
    cmd.args(["--log-format", "json", "ingest", "--format", "atproto"])
        .arg("--from")
        .arg(pds.firehose())
        .arg("--to")
        .arg(redis.url("pds"))
        .args([
            "--start-cursor",
            "0",
            "--route",
            "#commit:app.bsky.feed.post=posts",
            "--batch-size",
            "8",
            "--flush-interval",
            "5ms",
        ])
        .env_remove("HEADROOM_MEMORY")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn every_event_the_reference_pds_sequences_lands_once_in_order() {
    let pds = Pds::start();
    let redis = RedisServer::start();
    let mut c = redis.connection();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    let held = |c: &mut redis::Connection| -> usize {
        entries(c, "pds").len() + entries(c, "posts").len()
    };

    let mut first = ingest(&pds, &redis).spawn().unwrap();
    let accounts = rt.block_on(async {
        let mut accounts = Vec::new();
        for name in ["alice", "bob", "carol"] {
            accounts.push(create_account(&http, &pds.url, name).await);
        }
        activity(&http, &pds.url, &accounts, 1).await;
        accounts
    });
    // Mid-stream: kill -9, more activity while headroom is down, restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    while held(&mut c) < 20 {
        assert!(Instant::now() < deadline, "nothing ingested from the PDS");
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    let first = first.wait_with_output().unwrap();
    let before = held(&mut c);
    rt.block_on(async {
        activity(&http, &pds.url, &accounts, 2).await;
        // A handle change is an #identity event.
        xrpc(
            &http,
            &pds.url,
            "com.atproto.identity.updateHandle",
            Some(&accounts[0].jwt),
            json!({"handle": "alice2.test"}),
        )
        .await;
    });
    let second = ingest(&pds, &redis).spawn().unwrap();
    rt.block_on(activity(&http, &pds.url, &accounts, 3));

    let log = rt.block_on(pds_log(&pds.firehose()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while held(&mut c) < log.len() {
        assert!(
            Instant::now() < deadline,
            "Redis holds {} of the PDS's {} events",
            held(&mut c),
            log.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    let out = second.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\nfirst run: {}",
        text(&out.stderr),
        text(&first.stderr)
    );
    let kinds: BTreeMap<&str, usize> = log.values().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.t.as_str()).or_default() += 1;
        m
    });
    eprintln!(
        "the PDS sequenced {} events ({kinds:?}), seq {}..={}; headroom was killed with {before} in Redis",
        log.len(),
        log.keys().next().unwrap(),
        log.keys().last().unwrap()
    );
    assert!(log.len() > 120, "a real amount of activity: {}", log.len());
    assert!(kinds.contains_key("#identity") && kinds.contains_key("#account"));

    // Every event once, in order, in the stream its route names, byte for
    // byte as the PDS sends it.
    for (stream, posts) in [("pds", false), ("posts", true)] {
        let want: Vec<&Sequenced> = log
            .values()
            .filter(|e| (e.t == "#commit" && e.post) == posts)
            .collect();
        let got = entries(&mut c, stream);
        assert_eq!(got.len(), want.len(), "entries in {stream}");
        for ((id, fields), event) in got.iter().zip(want) {
            assert_eq!(id, &format!("0-{}", event.seq), "{stream}");
            assert_eq!(field(fields, "t"), event.t.as_bytes());
            assert_eq!(field(fields, "seq"), event.seq.to_string().as_bytes());
            assert!(
                field(fields, "data") == event.frame,
                "event {} differs from the PDS's",
                event.seq
            );
        }
    }
}
