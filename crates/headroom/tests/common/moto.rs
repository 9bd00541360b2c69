//! moto_server (PyPI), a second S3 server the proxy is tested against, and
//! the Ceph s3-tests (vendored at `vendor/ceph-s3-tests`) that run through
//! the proxy and directly against it. `scripts/services.sh` installs both
//! into a virtualenv and names its `bin` in `HEADROOM_TEST_S3TESTS`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The virtualenv's `bin` with moto_server and pytest.
pub fn s3tests_bin() -> PathBuf {
    std::env::var_os("HEADROOM_TEST_S3TESTS")
        .map(PathBuf::from)
        .expect("HEADROOM_TEST_S3TESTS is not set: run scripts/test.sh, which installs moto_server and the s3-tests' dependencies")
}

/// The vendored Ceph s3-tests.
pub fn s3tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../vendor/ceph-s3-tests")
}

/// A moto_server on a loopback port, in memory, stopped on drop.
pub struct Moto {
    pub endpoint: String,
    child: std::process::Child,
}

impl Moto {
    pub fn start() -> Self {
        // moto_server takes a port, not a listener: take a free one.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(s3tests_bin().join("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let moto = Moto { endpoint, child };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Environment for a child process to reach this server (moto takes
    /// any credential).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "moto-upstream".into()),
            ("AWS_SECRET_ACCESS_KEY", "moto-upstream-secret".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The three users the s3-tests sign as (main, alt, tenant), each a client
/// credential of the proxy's key file; directly, moto takes them as they are.
pub const S3TESTS_USERS: [(&str, &str, &str); 3] = [
    (
        "main",
        "s3testsmainaccesskey",
        "s3testsmainsecretkey0000000000000000000000",
    ),
    (
        "alt",
        "s3testsaltaccesskey0",
        "s3testsaltsecretkey00000000000000000000000",
    ),
    (
        "tenant",
        "s3teststenantaccess0",
        "s3teststenantsecretkey00000000000000000000",
    ),
];

/// An s3-tests configuration for the S3 endpoint `url` (http://host:port).
pub fn s3tests_conf(url: &str) -> String {
    let hostport = url.trim_start_matches("http://");
    let (host, port) = hostport.rsplit_once(':').expect("host:port");
    let mut conf = format!(
        "[DEFAULT]\nhost = {host}\nport = {port}\nis_secure = False\nssl_verify = False\n\n\
         [fixtures]\nbucket prefix = hr-{{random}}-\n\n"
    );
    let (_, main_key, main_secret) = S3TESTS_USERS[0];
    for (name, key, secret) in S3TESTS_USERS {
        conf += &format!(
            "[s3 {name}]\ndisplay_name = {name}\nuser_id = {name}\nemail = {name}@example.com\n\
             api_name = default\ntenant = {name}\naccess_key = {key}\nsecret_key = {secret}\n\n"
        );
    }
    for section in ["iam", "iam root", "iam alt root"] {
        conf += &format!(
            "[{section}]\ndisplay_name = iam\nuser_id = RGW11111111111111111\nemail = iam@example.com\n\
             access_key = {main_key}\nsecret_key = {main_secret}\n\n"
        );
    }
    conf
}

/// What a pytest run of the s3-tests gave: the tests that passed, and the
/// full output for a failure message.
pub struct S3TestsRun {
    pub passed: Vec<String>,
    pub output: String,
}

/// Runs the s3-tests named in `tests` (`file::name`) against `url`.
pub fn run_s3tests(url: &str, tests: &[&str], work: &Path) -> S3TestsRun {
    let conf = work.join(format!(
        "s3tests-{}.conf",
        url.rsplit(':').next().unwrap_or("x")
    ));
    std::fs::write(&conf, s3tests_conf(url)).unwrap();
    let out = Command::new(s3tests_bin().join("python"))
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA"])
        .args(["--timeout", "60"])
        .args(tests.iter().map(|t| format!("s3tests/functional/{t}")))
        .current_dir(s3tests_dir())
        .env("S3TEST_CONF", &conf)
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .expect("run pytest");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let passed = output
        .lines()
        .filter_map(|l| l.strip_prefix("PASSED s3tests/functional/"))
        .map(|t| t.trim().to_string())
        .collect();
    S3TestsRun { passed, output }
}
