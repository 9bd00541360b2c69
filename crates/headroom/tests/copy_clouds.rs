//! Copies to and from Azure Blob Storage and Google Cloud Storage, through
//! the same streaming, admission and per-part retries as S3.
//!
//! Azure runs against Azurite, Microsoft's emulator (npm). GCS runs against
//! the test server speaking GCS's XML API (S3's, with `x-goog-` headers,
//! unsigned): the GCS emulator on PyPI (gcp-storage-emulator) serves only
//! the JSON API for listing and lacks the XML API's multipart uploads and
//! `x-goog-meta-*` metadata, all of which object_store's GCS client uses.
//!
//! For each: a tree with an object in parts, an empty file, a file with
//! restricted mode, a Unicode key and an old mtime goes up and comes back
//! byte-identical with its mtime and mode; a second run finds everything up
//! to date; `check` agrees, then finds a change; `sync` deletes exactly the
//! extra object; and a 96 MiB file goes up and down within a 32 MiB budget
//! above the RSS of a run that copies nothing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::azurite::Azurite;
use common::*;

const MIB: u64 = 1 << 20;

#[test]
fn azure_blob_trees_round_trip_with_metadata_sync_and_check() {
    let azurite = Azurite::start();
    azurite.create_container("tree");
    azurite.create_container("mem");
    round_trip("az://tree/up", "az://mem", &azurite.env());
}

#[test]
fn gcs_trees_round_trip_with_metadata_sync_and_check() {
    let gcs = S3Server::start(Faults {
        gcs: true,
        ..Faults::default()
    });
    gcs.bucket("tree");
    gcs.bucket("mem");
    round_trip("gs://tree/up", "gs://mem", &gcs.gcs_env());
}

fn run_json(args: &[&str], env: &[(&str, String)]) -> serde_json::Value {
    let mut all = vec!["--log-format", "json"];
    all.extend(args);
    let out = headroom(&all, env);
    assert_ok(&out);
    serde_json::from_str(summary(&out).trim()).expect("a JSON summary")
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p).unwrap().modified().unwrap()
}

fn round_trip(remote: &str, mem: &str, env: &[(&str, String)]) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_tree(
        &src,
        &[
            ("a.txt", 11),
            ("d/b.bin", 300_000),
            ("d/empty", 0),
            ("ünï cøde/x y.txt", 5),
            ("big.bin", (13 << 20) + 5),
        ],
    );
    let old = SystemTime::UNIX_EPOCH + Duration::new(1_500_000_000, 123_456_789);
    filetime::set_file_mtime(src.join("a.txt"), filetime::FileTime::from_system_time(old)).unwrap();
    std::fs::set_permissions(src.join("d/b.bin"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let s = src.to_str().unwrap();

    // Up, with the big file in three parts.
    let up = run_json(&["copy", "--part-size", "5MiB", s, remote], env);
    assert_eq!(up["copied"], 5, "{up}");
    let again = run_json(&["copy", "--part-size", "5MiB", s, remote], env);
    assert_eq!(
        (again["copied"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(5)),
        "the second run finds every object up to date (mtimes recorded, also for the object in parts): {again}"
    );
    assert_ok(&headroom(&["check", s, remote], env));

    // Down again: the same bytes, mtimes and modes.
    let back = dir.path().join("back");
    let down = run_json(&["copy", remote, back.to_str().unwrap()], env);
    assert_eq!(down["copied"], 5, "{down}");
    assert_eq!(tree(&back), tree(&src), "byte-identical");
    assert_eq!(mtime(&back.join("a.txt")), old, "mtime to the nanosecond");
    assert_eq!(mtime(&back.join("big.bin")), mtime(&src.join("big.bin")));
    let mode = std::fs::metadata(back.join("d/b.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "mode kept");

    // A change at the source: check sees it, sync makes the copy exact.
    std::fs::remove_file(src.join("d/b.bin")).unwrap();
    std::fs::write(src.join("new.txt"), b"fresh").unwrap();
    let diff = headroom(&["check", s, remote], env);
    assert_eq!(diff.status.code(), Some(1), "{}", text(&diff.stderr));
    let marks = text(&diff.stdout);
    assert!(marks.contains("+ d/b.bin"), "{marks}");
    assert!(marks.contains("- new.txt"), "{marks}");
    let sync = headroom(&["--log-format", "json", "sync", s, remote], env);
    assert_ok(&sync);
    let lines: Vec<serde_json::Value> = summary(&sync)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["copied"], 1, "{lines:?}");
    assert_eq!(lines[1]["type"], "deletions", "{lines:?}");
    assert_eq!(lines[1]["deleted"], 1, "{lines:?}");
    assert_ok(&headroom(&["check", s, remote], env));
    let back2 = dir.path().join("back2");
    run_json(&["copy", remote, back2.to_str().unwrap()], env);
    assert_eq!(tree(&back2), tree(&src), "the copy is the source again");

    // Memory: a 96 MiB file up and down within 32 MiB above the base.
    let big = dir.path().join("big");
    std::fs::create_dir(&big).unwrap();
    let f = std::fs::File::create(big.join("sparse.bin")).unwrap();
    f.set_len(96 * MIB).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let budget = 32 * MIB;
    let measured = |from: &str, to: &str| {
        let run = headroom_measured(&["--memory", "32MiB", "copy", from, to], env);
        assert!(run.success, "{from} -> {to}: {}", run.stderr);
        run.peak_rss
    };
    let base = measured(empty.to_str().unwrap(), &format!("{mem}/base"));
    let upload = measured(big.to_str().unwrap(), &format!("{mem}/big"));
    let down = dir.path().join("down");
    let download = measured(&format!("{mem}/big"), down.to_str().unwrap());
    eprintln!(
        "{mem}: base {:.1} MiB, upload {:.1} MiB, download {:.1} MiB",
        base as f64 / MIB as f64,
        upload as f64 / MIB as f64,
        download as f64 / MIB as f64
    );
    assert_eq!(
        std::fs::metadata(down.join("sparse.bin")).unwrap().len(),
        96 * MIB
    );
    assert!(
        upload <= base + budget,
        "upload peak {upload} B > base {base} B + {budget} B"
    );
    assert!(
        download <= base + budget,
        "download peak {download} B > base {base} B + {budget} B"
    );
}
