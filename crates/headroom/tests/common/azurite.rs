//! Azurite, Microsoft's Azure Storage emulator (npm, pinned in
//! `tests/azurite/package-lock.json`, installed by `scripts/services.sh`),
//! its Blob service on a free loopback port, in its own process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;

/// The emulator's well-known account and key (object_store uses the same
/// with `AZURE_STORAGE_USE_EMULATOR`).
const ACCOUNT: &str = "devstoreaccount1";
const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// A running Azurite Blob service; stops when dropped.
pub struct Azurite {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _data: tempfile::TempDir,
    child: std::process::Child,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/azurite");
        let bin = dir.join("node_modules/.bin/azurite-blob");
        assert!(
            bin.exists(),
            "{} is missing: scripts/services.sh installs Azurite (npm ci)",
            bin.display()
        );
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(bin)
            .args(["--blobHost", "127.0.0.1", "--blobPort", "0", "--location"])
            .arg(data.path())
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start azurite-blob");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut endpoint = None;
        let mut line = String::new();
        while endpoint.is_none() {
            line.clear();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!("azurite-blob exited before listening");
            }
            endpoint = line.trim().split("listens on ").nth(1).map(str::to_string);
        }
        // Keep reading its output, so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Azurite {
            endpoint: endpoint.unwrap(),
            _data: data,
            child,
        }
    }

    /// Environment for a child process to reach this emulator (object_store
    /// reads these).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.endpoint.clone()),
        ]
    }

    /// Creates a container, signed with the account key (Shared Key).
    pub fn create_container(&self, name: &str) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key);
        let signature = base64::engine::general_purpose::STANDARD
            .encode(aws_lc_rs::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let url = format!("{}/{ACCOUNT}/{name}?restype=container", self.endpoint);
        let status = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                reqwest::Client::new()
                    .put(url)
                    .header("x-ms-date", &date)
                    .header("x-ms-version", version)
                    .header("authorization", format!("SharedKey {ACCOUNT}:{signature}"))
                    .header("content-length", "0")
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map(|r| r.status())
            })
            .expect("create container");
        assert!(status.is_success(), "create container {name}: {status}");
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
