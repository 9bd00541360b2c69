//! The binary as a user runs it.

use std::process::{Command, Output};

fn headroom(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(args)
        .env_remove("HEADROOM_MEMORY")
        .output()
        .expect("run headroom")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version_and_help_for_every_subcommand() {
    let v = headroom(&["--version"]);
    assert!(v.status.success());
    assert_eq!(
        stdout(&v).trim(),
        format!("headroom {}", env!("CARGO_PKG_VERSION"))
    );

    let help = headroom(&["--help"]);
    assert!(help.status.success());
    let text = stdout(&help);
    assert!(text.contains("--memory <SIZE>"), "{text}");
    let subcommands: Vec<String> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // Command names are indented by two; wrapped descriptions by more.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(
        subcommands.contains(&"memory".to_string()),
        "{subcommands:?}"
    );
    for sub in subcommands {
        let o = headroom(&[&sub, "--help"]);
        assert!(o.status.success(), "{sub} --help: {}", stderr(&o));
        assert!(stdout(&o).contains("Usage: headroom"), "{sub}");
    }
}

#[test]
fn memory_reports_the_explicit_budget_as_json() {
    let o = headroom(&["memory", "--memory", "1.5GiB", "--log-format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON object");
    assert_eq!(v["budget_bytes"], 3u64 << 29);
    assert_eq!(v["budget_mb"], 1536.0);
    assert!(v["rss_mb"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["budget_source"].as_str().unwrap().contains("--memory"));
}

#[test]
fn memory_default_budget_comes_from_the_machine() {
    let o = headroom(&["memory"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("budget "), "{text}");
    assert!(text.contains("container limit"), "{text}");
}

#[test]
fn a_bad_size_is_a_clear_error_with_a_nonzero_exit() {
    for bad in ["12parsecs", "-1G", "lots", "1.2.3M"] {
        let o = headroom(&["memory", "--memory", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        let err = stderr(&o);
        assert!(err.contains("invalid") && err.contains(bad), "{bad}: {err}");
    }
}

#[test]
fn a_bad_headroom_memory_is_an_error_unless_memory_overrides_it() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_headroom"))
            .args(args)
            .env("HEADROOM_MEMORY", "lots")
            .output()
            .expect("run headroom")
    };
    let o = run(&["memory"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("HEADROOM_MEMORY: invalid size \"lots\""),
        "{}",
        stderr(&o)
    );
    let o = run(&["--memory", "64MiB", "memory"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("budget 64.0 MiB"), "{}", stdout(&o));
}
