//! `deploy/kubernetes`, validated offline: kustomize renders it,
//! `kubernetes-validate --strict` checks every object against the
//! Kubernetes schemas, the objects fit together (selectors, secrets,
//! probes, the grace period), and the container's arguments start a real
//! `headroom serve`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

fn tools() -> PathBuf {
    PathBuf::from(std::env::var("HEADROOM_TEST_K8S").expect(
        "HEADROOM_TEST_K8S is not set: run scripts/test.sh, which installs kubectl and kubernetes-validate",
    ))
}

fn rendered() -> (String, Vec<Value>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let mut py = Command::new(tools().join("python"))
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success());
    (yaml, serde_json::from_slice(&out.stdout).unwrap())
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn the_kubernetes_deployment_validates_and_its_pieces_fit() {
    let (yaml, objects) = rendered();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("headroom.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = Command::new(tools().join("kubernetes-validate"))
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for kind in ["deployment", "service", "poddisruptionbudget"] {
        assert!(
            said.contains(&format!("passed for resource {kind}/headroom")),
            "{said}"
        );
    }

    let deployment = find(&objects, "Deployment");
    let pod = &deployment["spec"]["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert!(
        pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap()
            >= 30,
        "time to hand tasks back"
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "the cgroup limit is the budget"
    );
    let env = |name: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(
        env("HEADROOM_DB")["valueFrom"]["secretKeyRef"]["name"],
        "headroom-db"
    );
    assert_eq!(
        env("HEADROOM_REPLICA_ID")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let token_file = args
        .iter()
        .find_map(|a| a.strip_prefix("--token-file="))
        .expect("a token file");
    let token_volume = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| token_file.starts_with(m["mountPath"].as_str().unwrap()))
        .expect("the token file is on a mounted volume");
    let volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == token_volume["name"])
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "headroom-token");

    let service = find(&objects, "Service");
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the Service selects the pods");
    }
    let pdb = find(&objects, "PodDisruptionBudget");
    for (k, v) in pdb["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&labels[k], v, "the budget covers the pods");
    }
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);

    // The container's arguments are ones headroom serve takes: it starts
    // with them (on loopback, a SQLite file and a token of the test's).
    let token = dir.path().join("token");
    std::fs::write(&token, "deploy-test-token").unwrap();
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("--listen=") {
                "--listen=127.0.0.1:0".to_string()
            } else if a.starts_with("--token-file=") {
                format!("--token-file={}", token.display())
            } else {
                a.to_string()
            }
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(&args)
        .env("HEADROOM_DB", dir.path().join("tasks.db"))
        .env("HEADROOM_REPLICA_ID", "headroom-7d9f-abcde")
        .env_remove("HEADROOM_MEMORY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.starts_with("listening on "),
        "headroom {args:?} did not start: {line:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
