//! `headroom copy gdrive://...` end to end, against the Drive v3 server
//! of `common/gdrive.rs` on loopback and the S3 test server.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use common::gdrive::*;
use common::serve::{Backend, Service, ended};
use common::*;
use md5::{Digest, Md5};

const MIB: u64 = 1 << 20;

type Tree = BTreeMap<String, (u64, String)>;

fn md5_hex(b: &[u8]) -> String {
    hex(&Md5::digest(b))
}

/// The environment that points headroom at `server` with `credentials`.
fn drive_env(
    server: &DriveServer,
    credentials: Option<&std::path::Path>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![("HEADROOM_GDRIVE_ENDPOINT", server.url.clone())];
    if let Some(c) = credentials {
        env.push(("GOOGLE_APPLICATION_CREDENTIALS", c.display().to_string()));
    }
    env
}

/// Adds a file of `data` to `parent` and its expected key to `want`.
fn file(d: &Drive, want: &mut Tree, parent: &str, name: &str, key: &str, data: Vec<u8>) -> String {
    want.insert(key.into(), (data.len() as u64, md5_hex(&data)));
    d.file(parent, name, data)
}

/// Adds a Google file whose export (`len` bytes) is expected under `key`,
/// in the format its extension names.
fn doc(
    d: &Drive,
    want: &mut Tree,
    parent: &str,
    name: &str,
    kind: &str,
    key: &str,
    len: u64,
) -> String {
    let mime = match key.rsplit('.').next() {
        Some("docx") => DOCX,
        Some("xlsx") => XLSX,
        _ => PDF,
    };
    let id = d.add(parent, name, kind, Content::Exports { len });
    want.insert(key.into(), (len, md5_hex(&export_bytes(&id, mime, len))));
    id
}

#[test]
fn a_drive_folder_copies_to_s3_and_to_a_directory_byte_identical_then_skips() {
    let server = DriveServer::start();
    let d = &server.drive;
    let dir = tempfile::tempdir().unwrap();
    let key = server.service_account_key(dir.path());
    let mut want = Tree::new();
    let root = d.root(ALICE);
    let team = d.folder(&root, "Team");
    let a = file(d, &mut want, &team, "a.txt", "a.txt", bytes(1000, 1));
    file(d, &mut want, &team, "empty", "empty", vec![]);
    let big_len = 12 * MIB + 5;
    d.add(
        &team,
        "big.bin",
        "application/octet-stream",
        Content::Generated {
            len: big_len,
            seed: 7,
        },
    );
    want.insert("big.bin".into(), (big_len, generated_md5(7, big_len)));
    // Drive allows two files of one name in a folder: the older keeps it.
    file(
        d,
        &mut want,
        &team,
        "report.pdf",
        "report.pdf",
        bytes(10, 2),
    );
    let second = d.file(&team, "report.pdf", bytes(20, 3));
    want.insert(
        format!("report ({second}).pdf"),
        (20, md5_hex(&bytes(20, 3))),
    );
    file(d, &mut want, &team, "a/b", "a／b", bytes(5, 4));
    file(d, &mut want, &team, "..", "．．", bytes(6, 5));
    let sub = d.folder(&team, "Sub");
    file(d, &mut want, &sub, "n.txt", "Sub/n.txt", bytes(300, 6));
    doc(d, &mut want, &team, "Plan", DOC, "Plan.docx", 3000);
    // Over files.export's 10 MB limit: only its exportLinks serve it.
    doc(
        d,
        &mut want,
        &team,
        "Big plan",
        DOC,
        "Big plan.docx",
        12_000_000,
    );
    doc(d, &mut want, &team, "Budget", SHEET, "Budget.xlsx", 2000);
    doc(d, &mut want, &team, "Diagram", DRAWING, "Diagram.pdf", 1500);
    d.add(&team, "Survey", FORM, Content::None);
    let old = d.file(&team, "old.txt", bytes(7, 8));
    d.trash(&old);
    // More than a page of 1,000.
    let many = d.folder(&team, "many");
    // Listed in one query with Sub: the same name in two folders is no duplicate.
    file(d, &mut want, &many, "n.txt", "many/n.txt", bytes(301, 11));
    for i in 0..1005u64 {
        let name = format!("f{i:04}");
        file(
            d,
            &mut want,
            &many,
            &name,
            &format!("many/{name}"),
            bytes(1 + i as usize % 50, i),
        );
    }
    d.shortcut(&team, "link to a", &a);
    want.insert("link to a".into(), want["a.txt"].clone());
    let elsewhere = d.folder(&root, "Elsewhere");
    file(
        d,
        &mut want,
        &elsewhere,
        "x.txt",
        "Elsewhere link/x.txt",
        bytes(9, 9),
    );
    d.shortcut(&team, "Elsewhere link", &elsewhere);
    d.shortcut(&sub, "up", &team);

    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("dst");
    let mut env = s3.env();
    env.extend(drive_env(&server, Some(&key)));
    let copy = |dst: &str| {
        headroom(
            &[
                "copy",
                "--memory",
                "64MiB",
                "--part-size",
                "5MiB",
                "--gdrive-impersonate",
                ALICE,
                "gdrive://root/Team",
                dst,
            ],
            &env,
        )
    };
    let o = copy("s3://dst/team/");
    assert_ok(&o);
    let n = want.len();
    assert!(
        summary(&o).contains(&format!("copied {n} objects")),
        "{}",
        summary(&o)
    );
    assert!(
        summary(&o).contains("passed over 2 entries"),
        "the form and the loop: {}",
        summary(&o)
    );
    assert_eq!(tree(&bucket.join("team")), want);
    assert!(s3.incomplete_uploads().is_empty());

    let again = copy("s3://dst/team/");
    assert_ok(&again);
    assert!(
        summary(&again).contains("copied 0 objects"),
        "{}",
        summary(&again)
    );
    assert!(
        summary(&again).contains(&format!("skipped {n} up to date")),
        "{}",
        summary(&again)
    );
    let downloads = server.downloads();

    // A change shows in the file and in the shortcut to it, and nowhere else.
    d.edit(&a, bytes(1500, 10));
    want.insert("a.txt".into(), (1500, md5_hex(&bytes(1500, 10))));
    want.insert("link to a".into(), want["a.txt"].clone());
    let changed = copy("s3://dst/team/");
    assert_ok(&changed);
    assert!(
        summary(&changed).contains("copied 2 objects"),
        "{}",
        summary(&changed)
    );
    assert_eq!(server.downloads(), downloads + 2);
    assert_eq!(tree(&bucket.join("team")), want);

    let local = dir.path().join("local");
    assert_ok(&copy(local.to_str().unwrap()));
    assert_eq!(tree(&local), want);
    let no_links = dir.path().join("no-links");
    let o = headroom(
        &[
            "copy",
            "--gdrive-skip-shortcuts",
            "--gdrive-impersonate",
            ALICE,
            "gdrive://root/Team",
            no_links.to_str().unwrap(),
        ],
        &env,
    );
    assert_ok(&o);
    let mut without = want.clone();
    without.retain(|k, _| !k.starts_with("link to a") && !k.starts_with("Elsewhere link/"));
    assert_eq!(tree(&no_links), without);
    // The modification time is Drive's.
    let mtime = std::fs::metadata(local.join("Sub/n.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let sub_file = d.get(&d.get(&sub).id);
    assert!(mtime > std::time::UNIX_EPOCH + std::time::Duration::from_secs(sub_file.modified));
}

#[test]
fn shared_drives_ids_and_files_shared_with_me_are_sources() {
    let server = DriveServer::start();
    let d = &server.drive;
    let token = server.access_token(ALICE);
    let mut env = drive_env(&server, None);
    env.push(("GOOGLE_OAUTH_ACCESS_TOKEN", token));
    let dir = tempfile::tempdir().unwrap();
    let copy = |src: &str, dst: &std::path::Path| {
        headroom(
            &["copy", "--memory", "64MiB", src, dst.to_str().unwrap()],
            &env,
        )
    };

    let eng = d.shared_drive("Engineering", &[ALICE]);
    let mut in_drive = Tree::new();
    let specs = d.folder(&eng, "specs");
    file(
        d,
        &mut in_drive,
        &specs,
        "one.md",
        "specs/one.md",
        bytes(100, 1),
    );
    file(
        d,
        &mut in_drive,
        &eng,
        "top.bin",
        "top.bin",
        bytes(2 * MIB as usize, 2),
    );
    doc(
        d,
        &mut in_drive,
        &specs,
        "Design",
        DOC,
        "specs/Design.docx",
        4000,
    );
    for (src, name) in [
        ("gdrive://shared/Engineering", "by-name"),
        (&*format!("gdrive://shared/{eng}"), "by-id"),
    ] {
        let out = dir.path().join(name);
        assert_ok(&copy(src, &out));
        assert_eq!(tree(&out), in_drive, "{src}");
    }
    let out = dir.path().join("sub");
    assert_ok(&copy("gdrive://shared/Engineering/specs", &out));
    assert_eq!(tree(&out).len(), 2);

    // A folder and a file by id.
    let out = dir.path().join("folder-id");
    assert_ok(&copy(&format!("gdrive://id/{specs}"), &out));
    assert_eq!(tree(&out).len(), 2);
    let root = d.root(ALICE);
    let solo = d.file(&root, "solo.txt", bytes(77, 3));
    let out = dir.path().join("file-id");
    assert_ok(&copy(&format!("gdrive://id/{solo}"), &out));
    assert_eq!(
        tree(&out),
        Tree::from([("solo.txt".into(), (77, md5_hex(&bytes(77, 3))))])
    );

    // An rclone token with its OAuth client.
    let user = server.authorized_user(dir.path());
    let user: serde_json::Value = serde_json::from_slice(&std::fs::read(user).unwrap()).unwrap();
    let rclone = dir.path().join("rclone-token.json");
    let token = serde_json::json!({"access_token": "ya29.expired", "token_type": "Bearer",
        "refresh_token": user["refresh_token"], "expiry": "2020-01-01T00:00:00Z",
        "token_uri": server.token_uri()});
    std::fs::write(&rclone, token.to_string()).unwrap();
    let out = dir.path().join("rclone-token");
    let o = headroom(
        &[
            "copy",
            "--gdrive-credentials",
            rclone.to_str().unwrap(),
            "--gdrive-client-id",
            user["client_id"].as_str().unwrap(),
            "--gdrive-client-secret",
            user["client_secret"].as_str().unwrap(),
            &format!("gdrive://id/{solo}"),
            out.to_str().unwrap(),
        ],
        &drive_env(&server, None),
    );
    assert_ok(&o);
    assert_eq!(tree(&out).len(), 1);

    // Bob shares a folder with Alice.
    d.user("bob@example.com");
    let bob = d.root("bob@example.com");
    let shared = d.folder(&bob, "Bob's notes");
    d.share(&shared, ALICE);
    let mut from_bob = Tree::new();
    file(
        d,
        &mut from_bob,
        &shared,
        "n1.txt",
        "Bob's notes/n1.txt",
        bytes(10, 4),
    );
    d.folder(&bob, "Bob's private");
    let out = dir.path().join("shared-with-me");
    assert_ok(&copy("gdrive://shared-with-me", &out));
    assert_eq!(tree(&out), from_bob, "only what was shared");
    let out = dir.path().join("shared-with-me-path");
    assert_ok(&copy("gdrive://shared-with-me/Bob's notes", &out));
    assert_eq!(tree(&out).len(), 1);
}

/// A tree of `folders` folders of `per_folder` small files each.
fn small_tree(d: &Drive, parent: &str, folders: usize, per_folder: usize) -> Tree {
    let mut want = Tree::new();
    for f in 0..folders {
        let folder = d.folder(parent, &format!("d{f:03}"));
        for i in 0..per_folder {
            let seed = (f * per_folder + i) as u64;
            let len = 1 + (seed as usize * 37) % 3000;
            file(
                d,
                &mut want,
                &folder,
                &format!("f{i:03}.txt"),
                &format!("d{f:03}/f{i:03}.txt"),
                bytes(len, seed),
            );
        }
    }
    want
}

#[test]
fn a_third_of_requests_refused_for_rate_slows_the_copy_and_loses_nothing() {
    let server = DriveServer::start();
    let d = &server.drive;
    let dir = tempfile::tempdir().unwrap();
    let creds = server.authorized_user(dir.path());
    let top = d.folder(&d.root(ALICE), "Data");
    let mut want = small_tree(d, &top, 20, 15);
    doc(d, &mut want, &top, "Notes", DOC, "Notes.docx", 100_000);
    server
        .drive
        .faults
        .rate_limit_percent
        .store(30, Ordering::Relaxed);
    let out = dir.path().join("out");
    let o = headroom(
        &[
            "copy",
            "--memory",
            "64MiB",
            "gdrive://root/Data",
            out.to_str().unwrap(),
        ],
        &[
            ("HEADROOM_GDRIVE_ENDPOINT", server.url.clone()),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                creds.display().to_string(),
            ),
            ("RUST_LOG", "info".into()),
        ],
    );
    assert_ok(&o);
    assert_eq!(tree(&out), want);
    let refused = d.counts.rate_limited.load(Ordering::Relaxed);
    let requests = d.counts.requests.load(Ordering::Relaxed);
    assert!(
        refused * 100 >= requests * 20,
        "{refused} of {requests} refused"
    );
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("Google Drive is rate limiting: slowing down"),
        "{stderr}"
    );
    // What the closing note reports: answered and refused per second.
    eprintln!("requests: {requests}, refused for rate: {refused}");
    for (second, (answered, refused)) in server.timeline().iter().enumerate() {
        eprintln!("second {second}: {answered} answered, {refused} refused");
    }
    let slowest = stderr
        .lines()
        .rfind(|l| l.contains("slowing down to one request every"))
        .unwrap_or_default()
        .to_string();
    eprintln!("slowest pacing: {slowest}");
    let remark = stderr
        .lines()
        .find(|l| l.contains("Google Drive: "))
        .unwrap_or_else(|| panic!("the copy says how it was paced: {stderr}"));
    eprintln!("{remark}");
    assert!(
        remark.contains(&format!("{refused} refused for rate")),
        "{remark}"
    );
}

#[test]
fn server_errors_and_downloads_cut_off_mid_body_are_retried_to_identical_bytes() {
    let server = DriveServer::start();
    let d = &server.drive;
    let dir = tempfile::tempdir().unwrap();
    let key = server.service_account_key(dir.path());
    let top = d.folder(&d.root(ALICE), "Media");
    let mut want = small_tree(d, &top, 3, 10);
    let mut big = Vec::new();
    for i in 0..3u64 {
        let len = 11 * MIB + i;
        let id = d.add(
            &top,
            &format!("video{i}.mp4"),
            "video/mp4",
            Content::Generated { len, seed: 100 + i },
        );
        want.insert(format!("video{i}.mp4"), (len, generated_md5(100 + i, len)));
        big.push(id);
    }
    let export = doc(
        d,
        &mut want,
        &top,
        "Long doc",
        DOC,
        "Long doc.docx",
        6 * MIB,
    );
    d.faults.server_error_percent.store(10, Ordering::Relaxed);
    d.faults.drop_percent.store(25, Ordering::Relaxed);
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("media");
    let mut env = s3.env();
    env.extend(drive_env(&server, Some(&key)));
    let o = headroom(
        &[
            "copy",
            "--memory",
            "48MiB",
            "--part-size",
            "5MiB",
            "--retries",
            "10",
            "--gdrive-impersonate",
            ALICE,
            "gdrive://root/Media",
            "s3://media",
        ],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&bucket), want);
    assert!(
        s3.incomplete_uploads().is_empty(),
        "{:?}",
        s3.incomplete_uploads()
    );
    let dropped = d.counts.dropped.load(Ordering::Relaxed);
    let errors = d.counts.server_errors.load(Ordering::Relaxed);
    assert!(
        dropped > 0 && errors > 0,
        "faults injected: {dropped} drops, {errors} errors"
    );
    // Each big file is read in 3 ranged parts; a cut-off part is re-read alone.
    let reads: u64 = big.iter().map(|id| server.downloads_of(id)).sum();
    assert!(reads >= 9, "{reads}");
    assert!(server.downloads_of(&export) >= 1);
}

#[test]
fn tokens_are_refreshed_before_they_expire_mid_copy() {
    let server = DriveServer::start();
    let d = &server.drive;
    let dir = tempfile::tempdir().unwrap();
    let key = server.service_account_key(dir.path());
    let top = d.folder(&d.root(ALICE), "Many");
    let want = small_tree(d, &top, 8, 100);
    d.token_lifetime.store(1, Ordering::Relaxed);
    let out = dir.path().join("out");
    let mut env = drive_env(&server, Some(&key));
    env.push(("RUST_LOG", "warn".into()));
    let o = headroom(
        &[
            "copy",
            "--memory",
            "64MiB",
            "--concurrency",
            "2",
            "--gdrive-impersonate",
            ALICE,
            "gdrive://root/Many",
            out.to_str().unwrap(),
        ],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&out), want);
    let issued = d.counts.tokens_issued.load(Ordering::Relaxed);
    assert!(
        issued >= 3,
        "one-second tokens over a longer copy: {issued} issued"
    );
    assert_eq!(
        d.counts.unauthorized.load(Ordering::Relaxed),
        0,
        "no request carried an expired token"
    );
}

#[test]
fn bad_credentials_missing_folders_and_no_permission_are_clear_errors() {
    let server = DriveServer::start();
    let d = &server.drive;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let run = |src: &str, env: &[(&str, String)], extra: &[&str]| {
        let mut args = vec!["copy", "--memory", "64MiB"];
        args.extend_from_slice(extra);
        args.extend([src, out.to_str().unwrap()]);
        let o = headroom(&args, env);
        let err = text(&o.stderr);
        assert!(!o.status.success(), "{src} {extra:?} succeeded");
        assert!(!err.contains("panicked"), "{err}");
        err
    };
    let base = vec![("HEADROOM_GDRIVE_ENDPOINT", server.url.clone())];
    let with = |k: &'static str, v: String| {
        let mut e = base.clone();
        e.push((k, v));
        e
    };

    let err = run("gdrive://root", &base, &[]);
    assert!(err.contains("no credentials"), "{err}");

    let not_json = dir.path().join("not-json.json");
    std::fs::write(&not_json, "hello").unwrap();
    let err = run(
        "gdrive://root",
        &with(
            "GOOGLE_APPLICATION_CREDENTIALS",
            not_json.display().to_string(),
        ),
        &[],
    );
    assert!(
        err.contains("not-json.json") && err.contains("not JSON"),
        "{err}"
    );

    let bad_key = dir.path().join("bad-key.json");
    std::fs::write(
        &bad_key,
        r#"{"type":"service_account","client_email":"x@y","private_key":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n","token_uri":"http://127.0.0.1:1/token"}"#,
    )
    .unwrap();
    let err = run(
        "gdrive://root",
        &base,
        &["--gdrive-credentials", bad_key.to_str().unwrap()],
    );
    assert!(
        err.contains("bad-key.json") && err.contains("not a PKCS#8 RSA key"),
        "{err}"
    );

    let missing = dir.path().join("missing.json");
    let err = run(
        "gdrive://root",
        &base,
        &["--gdrive-credentials", missing.to_str().unwrap()],
    );
    assert!(
        err.contains("missing.json") && err.contains("No such file"),
        "{err}"
    );

    // A refresh token revoked: Google answers invalid_grant.
    let user = server.authorized_user(dir.path());
    server.revoke_refresh_tokens();
    let err = run(
        "gdrive://root",
        &with("GOOGLE_APPLICATION_CREDENTIALS", user.display().to_string()),
        &[],
    );
    assert!(
        err.contains("invalid_grant") && err.contains("expired or revoked"),
        "{err}"
    );

    // An rclone token refreshes only with the client it was issued to.
    let rclone = dir.path().join("rclone-token.json");
    std::fs::write(
        &rclone,
        r#"{"access_token":"ya29.old","token_type":"Bearer","refresh_token":"1//refresh-alice","expiry":"2020-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let err = run(
        "gdrive://root",
        &base,
        &["--gdrive-credentials", rclone.to_str().unwrap()],
    );
    assert!(err.contains("--gdrive-client-id"), "{err}");

    // Impersonating someone the domain does not know.
    let key = server.service_account_key(dir.path());
    let sa = with("GOOGLE_APPLICATION_CREDENTIALS", key.display().to_string());
    let err = run(
        "gdrive://root",
        &sa,
        &["--gdrive-impersonate", "mallory@example.com"],
    );
    assert!(
        err.contains("unauthorized_client") && err.contains("domain-wide delegation"),
        "{err}"
    );

    // An expired ready token.
    d.token_lifetime
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let stale = server.access_token(ALICE);
    d.token_lifetime
        .store(3600, std::sync::atomic::Ordering::Relaxed);
    let err = run(
        "gdrive://root",
        &with("GOOGLE_OAUTH_ACCESS_TOKEN", stale),
        &[],
    );
    assert!(
        err.contains("401") && err.contains("GOOGLE_OAUTH_ACCESS_TOKEN"),
        "{err}"
    );

    let token = with("GOOGLE_OAUTH_ACCESS_TOKEN", server.access_token(ALICE));
    let err = run("gdrive://id/1doesNotExist", &token, &[]);
    assert!(
        err.contains("gdrive://id/1doesNotExist") && err.contains("not found"),
        "{err}"
    );
    let err = run("gdrive://root/No such folder", &token, &[]);
    assert!(
        err.contains("No such folder") && err.contains("no such file or folder"),
        "{err}"
    );
    let err = run("gdrive://shared/Nope", &token, &[]);
    assert!(err.contains("no shared drive"), "{err}");

    // Bob's folder, not shared with Alice: Drive says 404.
    d.user("bob@example.com");
    let private = d.folder(&d.root("bob@example.com"), "private");
    let err = run(&format!("gdrive://id/{private}"), &token, &[]);
    assert!(err.contains("not shared with these credentials"), "{err}");

    let err = run("gdrive://root", &token, &["--gdrive-export", "doc"]);
    assert!(err.contains("unknown export format \"doc\""), "{err}");

    let local = dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let o = headroom(
        &["copy", local.to_str().unwrap(), "gdrive://root/x"],
        &token,
    );
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("Google Drive is a source only"),
        "{}",
        text(&o.stderr)
    );
    assert!(!out.exists(), "nothing was written");
}

#[test]
fn a_killed_service_resumes_a_drive_copy_without_downloading_finished_files_again() {
    const FILES: u64 = 30;
    let server = DriveServer::start();
    let d = &server.drive;
    let work = tempfile::tempdir().unwrap();
    let key = server.service_account_key(work.path());
    let top = d.folder(&d.root(ALICE), "Archive");
    let mut files = Vec::new();
    for i in 0..FILES {
        let folder = if i % 2 == 0 {
            top.clone()
        } else {
            d.folder(&top, &format!("sub{i}"))
        };
        let len = MIB + i;
        let id = d.add(
            &folder,
            &format!("scan{i:02}.tif"),
            "image/tiff",
            Content::Generated { len, seed: 500 + i },
        );
        let key = if i % 2 == 0 {
            format!("scan{i:02}.tif")
        } else {
            format!("sub{i}/scan{i:02}.tif")
        };
        files.push((id, key, len, generated_md5(500 + i, len)));
    }
    d.faults.download_delay_ms.store(150, Ordering::Relaxed);
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("archive");
    let mut env = s3.env();
    env.push(("HEADROOM_GDRIVE_ENDPOINT", server.url.clone()));
    let named = format!("migrator={}", key.display());
    let mut svc = Service::start_with(
        Backend::sqlite(work.path()),
        &["--gdrive-credentials", &named],
        &env,
    );
    let api = svc.api();
    // A task names credentials the service holds; it never carries them.
    let (status, refused) = api.post(
        &svc.url("/api/tasks"),
        serde_json::json!({"kind": "copy", "source": "gdrive://root/Archive",
                           "destination": "s3://archive/x", "gdrive_credentials": "someone-else"}),
    );
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused.to_string().contains("no credentials named"),
        "{refused}"
    );
    let (status, task) = api.post(
        &svc.url("/api/tasks"),
        serde_json::json!({"kind": "copy", "source": "gdrive://root/Archive",
                           "destination": "s3://archive/x", "memory": "16MiB", "concurrency": 1,
                           "gdrive_credentials": "migrator", "gdrive_impersonate": ALICE}),
    );
    assert_eq!(status, 201, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let long = std::time::Duration::from_secs(180);
    api.wait_task(&svc, &id, long, |t| {
        t["objects_copied"].as_u64().unwrap_or(0) >= FILES / 3 && t["status"] == "running"
    });
    svc.kill();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let finished: Vec<String> = visible_files(&bucket.join("x"))
        .map(|(rel, _)| rel)
        .collect();
    eprintln!(
        "killed with {} of {FILES} files at the destination",
        finished.len()
    );
    assert!(
        finished.len() < FILES as usize,
        "the kill came too late to test a resume"
    );
    svc.restart();
    let done = api.wait_task(&svc, &id, long, ended);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", svc.log());
    let got = tree(&bucket.join("x"));
    for (file_id, key, len, md5) in &files {
        assert_eq!(got.get(key), Some(&(*len, md5.clone())), "{key}");
        if finished.contains(key) {
            assert_eq!(
                server.downloads_of(file_id),
                1,
                "{key} was finished before the kill and downloaded again"
            );
        }
    }
    // At most the one file in flight at the kill was downloaded twice.
    assert!(
        server.downloads() <= FILES + 1,
        "{} downloads of {FILES} files",
        server.downloads()
    );
}

#[test]
fn content_that_does_not_match_drives_md5_is_never_stored() {
    let server = DriveServer::start();
    let d = &server.drive;
    let top = d.folder(&d.root(ALICE), "Suspect");
    let good = bytes(1000, 1);
    d.file(&top, "good.txt", good.clone());
    let small = d.file(&top, "small.bin", bytes(2000, 2));
    let big = d.add(
        &top,
        "big.bin",
        "application/octet-stream",
        Content::Generated {
            len: 11 * MIB,
            seed: 3,
        },
    );
    for id in [&small, &big] {
        d.set_md5(id, "0123456789abcdef0123456789abcdef");
    }
    let s3 = S3Server::start(Faults::default());
    let bucket = s3.bucket("suspect");
    let mut env = s3.env();
    env.extend(drive_env(&server, None));
    env.push(("GOOGLE_OAUTH_ACCESS_TOKEN", server.access_token(ALICE)));
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local");
    for dst in ["s3://suspect", local.to_str().unwrap()] {
        let o = headroom(
            &[
                "copy",
                "--memory",
                "64MiB",
                "--part-size",
                "5MiB",
                "--retries",
                "1",
                "gdrive://root/Suspect",
                dst,
            ],
            &env,
        );
        assert_eq!(o.status.code(), Some(1), "{dst}: {}", text(&o.stderr));
        let out = summary(&o);
        assert!(
            out.contains("copied 1 objects") && out.contains("failed 2"),
            "{dst}: {out}"
        );
        assert!(out.contains("integrity check failed"), "{dst}: {out}");
        assert!(
            out.contains("copied 1 objects (1000 B)"),
            "only what arrived is counted: {dst}: {out}"
        );
    }
    let only_good = Tree::from([("good.txt".into(), (1000, md5_hex(&good)))]);
    assert_eq!(tree(&bucket), only_good, "nothing unverified was stored");
    assert!(
        s3.incomplete_uploads().is_empty(),
        "the multipart upload was aborted"
    );
    assert_eq!(tree(&local), only_good);
    assert!(visible_files(&local).all(|(rel, _)| !rel.contains("partial")));
}

#[test]
fn a_per_second_quota_is_found_and_kept() {
    let server = DriveServer::start();
    let d = &server.drive;
    let top = d.folder(&d.root(ALICE), "Quota");
    let want = small_tree(d, &top, 10, 40);
    d.faults.quota_per_second.store(60, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut env = drive_env(&server, None);
    env.push(("GOOGLE_OAUTH_ACCESS_TOKEN", server.access_token(ALICE)));
    env.push(("RUST_LOG", "info".into()));
    let o = headroom(
        &[
            "copy",
            "--memory",
            "64MiB",
            "gdrive://root/Quota",
            out.to_str().unwrap(),
        ],
        &env,
    );
    assert_ok(&o);
    assert_eq!(tree(&out), want);
    let requests = d.counts.requests.load(Ordering::Relaxed);
    let refused = d.counts.rate_limited.load(Ordering::Relaxed);
    eprintln!("quota 60/s: {requests} requests, {refused} refused");
    for (second, (answered, refused)) in server.timeline().iter().enumerate() {
        eprintln!("second {second}: {answered} answered, {refused} refused");
    }
    let stderr = text(&o.stderr);
    if let Some(remark) = stderr.lines().find(|l| l.contains("Google Drive: ")) {
        eprintln!("{remark}");
    }
}
