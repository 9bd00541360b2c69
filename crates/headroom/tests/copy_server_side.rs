//! S3 to S3 copies made by S3 itself: `CopyObject`, and above the copy
//! cutoff a multipart upload of `UploadPartCopy` parts. The test server
//! refuses every upload of data (`uploads_always_fail`) but not copies,
//! so a copy that succeeds moved no byte through headroom; the same copy
//! with `--no-server-side` fails there. The source's mtime goes with each
//! object, so a second run finds everything up to date.

mod common;

use common::*;

#[test]
fn s3_to_s3_copies_are_made_by_s3_whole_and_in_parts() {
    let server = S3Server::start(Faults {
        uploads_always_fail: true,
        ..Faults::default()
    });
    let env = server.env();
    let src = server.bucket("src-bkt");
    std::fs::create_dir_all(server.bucket("dst-bkt")).unwrap();
    let mut want = Vec::new();
    for (key, len) in [
        ("p/a.txt", 11),
        ("p/d/b.bin", 300_000),
        ("p/d/empty", 0),
        ("p/big.bin", (13 << 20) + 5),
    ] {
        let data = bytes(len, len as u64 + 1);
        std::fs::create_dir_all(src.join(key).parent().unwrap()).unwrap();
        std::fs::write(src.join(key), &data).unwrap();
        want.push((key.strip_prefix("p/").unwrap().to_string(), data));
    }
    let copy = |extra: &[&str]| {
        let mut args = vec![
            "--log-format",
            "json",
            "copy",
            "--part-size",
            "5MiB",
            "--copy-cutoff",
            "6MiB",
            "--retries",
            "1",
        ];
        args.extend(extra);
        args.extend(["s3://src-bkt/p", "s3://dst-bkt/q"]);
        headroom(&args, &env)
    };

    let streamed = copy(&["--no-server-side"]);
    assert!(!streamed.status.success(), "uploads fail on this server");

    let out = copy(&[]);
    assert_ok(&out);
    let first: serde_json::Value = serde_json::from_str(summary(&out).trim()).unwrap();
    assert_eq!(first["copied"], 4, "{first}");
    for (key, data) in &want {
        let got = std::fs::read(server.bucket("dst-bkt").join("q").join(key)).unwrap();
        assert!(got == *data, "{key} differs");
    }
    // Each object has the source's content and mtime: check agrees.
    let listed = headroom(
        &[
            "--log-format",
            "json",
            "check",
            "s3://src-bkt/p",
            "s3://dst-bkt/q",
        ],
        &env,
    );
    assert_ok(&listed);

    let again = copy(&[]);
    assert_ok(&again);
    let summary: serde_json::Value = serde_json::from_str(summary(&again).trim()).unwrap();
    assert_eq!(
        summary["skipped"], 4,
        "mtimes went with the copies: {summary}"
    );
    assert_eq!(summary["copied"], 0, "{summary}");
}

/// Each server-side copy is pinned to the ETag listed
/// (`x-amz-copy-source-if-match`, on `CopyObject` and on every
/// `UploadPartCopy`): a source replaced between the listing and the copy
/// fails that object (an upload in parts is aborted), and nothing of the
/// new version lands under the old one's metadata. The next run copies
/// the new version.
#[test]
fn a_source_replaced_before_its_server_side_copy_fails_that_object() {
    let server = S3Server::start(Faults::default());
    let env = server.env();
    let src = server.bucket("src-bkt");
    std::fs::create_dir_all(server.bucket("dst-bkt")).unwrap();
    let next = server.root.path().join(".next-after-head/src-bkt/p");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::create_dir_all(src.join("p")).unwrap();
    for (key, len) in [("a.txt", 1000), ("big.bin", (13 << 20) + 5)] {
        std::fs::write(src.join("p").join(key), bytes(len, 1)).unwrap();
        // The same size, other bytes: only the ETag tells them apart.
        std::fs::write(next.join(key), bytes(len, 2)).unwrap();
    }
    let copy = || {
        headroom(
            &[
                "--log-format",
                "json",
                "copy",
                "--part-size",
                "5MiB",
                "--copy-cutoff",
                "6MiB",
                "--retries",
                "1",
                "s3://src-bkt/p",
                "s3://dst-bkt/q",
            ],
            &env,
        )
    };
    let out = copy();
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("source changed during the copy").count(),
        2,
        "{err}"
    );
    assert!(server.faults_injected() >= 2, "both sources were replaced");
    let dst = server.bucket("dst-bkt").join("q");
    assert!(!dst.join("a.txt").exists() && !dst.join("big.bin").exists());
    assert_eq!(server.incomplete_uploads(), Vec::<String>::new());

    let again = copy();
    assert_ok(&again);
    for (key, len) in [("a.txt", 1000), ("big.bin", (13 << 20) + 5)] {
        let got = std::fs::read(dst.join(key)).unwrap();
        assert!(got == bytes(len, 2), "{key}: the new version");
    }
}
