//! The dashboard in headless Chromium (Debian's package), driven by
//! playwright-core (`tests/browser/`, installed by scripts/services.sh):
//! a task created through the form completes, a failed one is cleaned up
//! with the button, and a screenshot is saved under the test output
//! directory (target/tmp/dashboard.png).

mod common;

use std::process::Command;

use common::serve::{Backend, Service};

#[test]
fn the_dashboard_creates_a_task_sees_it_complete_and_cleans_up_failures() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed: run scripts/test.sh (npm ci in {})",
        browser_dir.display()
    );
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let dst = work.path().join("dst");
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..5 {
        std::fs::write(src.join(format!("page{i}.txt")), common::bytes(10_000, i)).unwrap();
    }
    // A shard every two keys: the task has three to show.
    let svc = Service::start_with(Backend::sqlite(work.path()), &["--shard-objects", "2"], &[]);
    let screenshot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(browser_dir.join("dashboard.mjs"))
        .arg(format!("{}/#token={}", svc.base, svc.token))
        .arg(&src)
        .arg(&dst)
        .arg(work.path().join("no-such-dir"))
        .arg(&screenshot)
        .output()
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nservice log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        svc.log()
    );
    assert!(stdout.contains("its 3 shards succeeded"), "{stdout}");
    assert!(stdout.contains("failed tasks cleaned up"), "{stdout}");

    // What the browser did is what the service holds.
    for i in 0..5 {
        let name = format!("page{i}.txt");
        assert_eq!(
            std::fs::read(dst.join(&name)).unwrap(),
            std::fs::read(src.join(&name)).unwrap()
        );
    }
    let api = svc.api();
    let (_, all) = api.get(&svc.url("/api/tasks"));
    let statuses: Vec<&str> = all["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded"], "{all}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    eprintln!("screenshot: {}", screenshot.display());
}
