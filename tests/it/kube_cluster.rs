//! The whole `examples/kubernetes` flow against a real cluster: ignored here (no cluster
//! runs on the build machine), for anyone with a disposable one (kind, k3d).
//!
//! ```text
//! kind create cluster --name tessera            # or: k3d cluster create tessera
//! cargo run -- crds | kubectl apply -f -
//! cargo test --test it kube_cluster -- --ignored --nocapture
//! kind delete cluster --name tessera            # or: k3d cluster delete tessera
//! ```
//!
//! It uses the current kubeconfig context (check `kubectl config current-context` first: it
//! applies objects to that cluster), `kubectl`, `curl` and `openssl` from PATH, and ports
//! 8443 and 8080 on this machine (the example's Server listens there). It:
//!
//! 1. applies `kubectl apply -k examples/kubernetes` (no error allowed) and waits for the
//!    content server's rollout;
//! 2. re-applies the example's Packages with their `url`s pointed at a `kubectl
//!    port-forward` of that content server, since `tessera serve --kube` runs here, outside
//!    the cluster, where `*.svc.cluster.local` does not resolve (same archives, same
//!    digests);
//! 3. runs `tessera serve --kube` and waits until every Tessera object of the example is
//!    `Ready=True` at its generation, in the cluster and in the admin API;
//! 4. restarts it ten times with SIGTERM, keeping its state directory, and checks after each
//!    start that the server certificate's serial (the Secret `tessera-server`) never
//!    changes and that no package of the store was removed or rebuilt;
//! 5. creates an Issuer of type `ca` whose Secret does not exist yet, then the Secret
//!    (`kubectl create secret tls`), and waits for the Issuer to turn Ready by itself.
//!
//! The example stays applied afterwards, to look at; the late Issuer and its Secret are
//! deleted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Reaped, free_port, wait_for_port};

/// The example's namespaces: the server side, and the packages.
const SERVER_NAMESPACE: &str = "tessera-quickstart";
const LAB_NAMESPACE: &str = "tessera-lab";
/// Where the example's Packages download from, inside the cluster.
const IN_CLUSTER_CONTENT: &str = "http://quickstart-content.tessera-quickstart.svc.cluster.local/";
/// The Tessera kinds, by their full names: the short ones may collide with cert-manager's.
const KINDS: &str = "issuers.tessera.dev,certificates.tessera.dev,servers.tessera.dev,packages.tessera.dev,activations.tessera.dev,affectations.tessera.dev";
/// Objects the example declares: an Issuer, a Certificate, a Server, and four each of
/// Packages, Activations and Affectations.
const OBJECTS: usize = 15;
/// A first start pulls images, downloads content and issues certificates: minutes on a
/// slow cluster, far below on a laptop. A hang, not a slow pass, when exceeded.
const FIRST_START: Duration = Duration::from_secs(300);
/// A restart with its state kept rebuilds nothing and issues nothing.
const RESTART: Duration = Duration::from_secs(120);
/// The Issuer must notice its Secret by itself: the defect was an Issuer still failing
/// two minutes after its Secret appeared, until edited.
const SECRET_NOTICED: Duration = Duration::from_secs(60);
/// How many times `serve --kube` is restarted (the race showed 6 times in 10).
const RESTARTS: usize = 10;

#[test]
#[ignore = "needs a disposable Kubernetes cluster with the CRDs installed (see the module comment)"]
fn the_kubernetes_example_on_a_real_cluster() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = repo.join("examples/kubernetes");
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");

    // 1. The example, as a user applies it.
    kubectl(&["apply", "-k", example.to_str().unwrap()]);
    kubectl(&[
        "-n",
        SERVER_NAMESPACE,
        "rollout",
        "status",
        "deployment/quickstart-content",
        "--timeout=300s",
    ]);

    // 2. The content, reachable from here.
    let content_port = free_port();
    let _forward = Reaped(
        Command::new("kubectl")
            .args([
                "-n",
                SERVER_NAMESPACE,
                "port-forward",
                "svc/quickstart-content",
            ])
            .arg(format!("{content_port}:80"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl is on PATH"),
    );
    wait_for_port(content_port, "kubectl port-forward");
    let packages = std::fs::read_to_string(example.join("tessera/packages.yaml"))
        .unwrap()
        .replace(
            IN_CLUSTER_CONTENT,
            &format!("http://127.0.0.1:{content_port}/"),
        );
    kubectl_with_input(&["apply", "-f", "-"], &packages);

    // 3. Tessera, until everything is Ready.
    let admin = free_port();
    let mut server = serve(&state, admin, work.path(), 0);
    until("every object Ready", FIRST_START, &mut server, || {
        all_ready(admin)
    });
    let serial = server_serial();
    let store = packages_stored(&state);
    assert_eq!(store.len(), 3, "three packages with content: {store:?}");
    eprintln!("ready; server certificate serial {serial}, packages {store:?}");

    // 4. Restarts keep the certificate and the packages.
    for round in 1..=RESTARTS {
        terminate(&mut server);
        server = serve(&state, admin, work.path(), round);
        until(
            &format!("every object Ready after restart {round}"),
            RESTART,
            &mut server,
            || all_ready(admin),
        );
        assert_eq!(
            server_serial(),
            serial,
            "restart {round} issued a new server certificate (logs in {})",
            work.path().display()
        );
        assert_eq!(
            packages_stored(&state),
            store,
            "restart {round} removed or rebuilt a package (logs in {})",
            work.path().display()
        );
    }

    // 5. An Issuer whose Secret comes later.
    late_issuer(work.path(), &mut server);
    terminate(&mut server);
}

/// Step 5: the Issuer fails while its Secret is missing, and is Ready once it exists.
fn late_issuer(work: &Path, server: &mut Reaped) {
    let ns = ["-n", SERVER_NAMESPACE];
    kubectl(&[
        ns[0],
        ns[1],
        "delete",
        "issuers.tessera.dev",
        "late-ca",
        "--ignore-not-found",
    ]);
    kubectl(&[
        ns[0],
        ns[1],
        "delete",
        "secret",
        "late-ca-tls",
        "--ignore-not-found",
    ]);
    kubectl_with_input(
        &["apply", "-f", "-"],
        &format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: late-ca\n  namespace: {SERVER_NAMESPACE}\nspec:\n  ca:\n    secretName: late-ca-tls\n"
        ),
    );
    until(
        "late-ca refused for its missing Secret",
        RESTART,
        server,
        || {
            let (status, reason) =
                ready_condition(SERVER_NAMESPACE, "issuers.tessera.dev", "late-ca")?;
            (status == "False" && reason == "ErrorLoadingCA").then_some(())
        },
    );
    let (cert, key) = (work.join("late-ca.crt"), work.join("late-ca.key"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=Late CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    kubectl(&[
        ns[0],
        ns[1],
        "create",
        "secret",
        "tls",
        "late-ca-tls",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    until(
        "late-ca Ready once its Secret exists",
        SECRET_NOTICED,
        server,
        || {
            let (status, _) = ready_condition(SERVER_NAMESPACE, "issuers.tessera.dev", "late-ca")?;
            (status == "True").then_some(())
        },
    );
    kubectl(&[ns[0], ns[1], "delete", "issuers.tessera.dev", "late-ca"]);
    kubectl(&[ns[0], ns[1], "delete", "secret", "late-ca-tls"]);
}

/// `tessera serve --kube` with `state`, its admin API on `admin`, logging to
/// `serve-<round>.log` in `logs`.
fn serve(state: &Path, admin: u16, logs: &Path, round: usize) -> Reaped {
    let log = std::fs::File::create(logs.join(format!("serve-{round}.log"))).unwrap();
    Reaped(
        Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["serve", "--kube", "--state"])
            .arg(state)
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .args([
                "--lease",
                "tessera-it",
                "--lease-namespace",
                SERVER_NAMESPACE,
            ])
            .args(["--pod-name", "tessera-it-0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tessera serve --kube starts"),
    )
}

/// SIGTERM, as Kubernetes stops a pod, and the exit it leads to.
fn terminate(server: &mut Reaped) {
    run(Command::new("kill").args(["-TERM", &server.0.id().to_string()]));
    let start = Instant::now();
    while server.0.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < RESTART,
            "serve --kube did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `Some` when the admin API lists the example's objects all Ready, and the cluster shows
/// every one Ready at its current generation.
fn all_ready(admin: u16) -> Option<()> {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/api/v1/objects")])
        .output()
        .ok()?;
    let report: Value = serde_json::from_slice(&output.stdout).ok()?;
    let listed: Vec<&Value> = report["objects"]
        .as_array()?
        .iter()
        .filter(|o| {
            [SERVER_NAMESPACE, LAB_NAMESPACE].contains(&o["namespace"].as_str().unwrap_or_default())
        })
        .collect();
    let ready = |conditions: &Value| {
        conditions.as_array().is_some_and(|list| {
            list.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    if listed.len() < OBJECTS || !listed.iter().all(|o| ready(&o["conditions"])) {
        return None;
    }
    for namespace in [SERVER_NAMESPACE, LAB_NAMESPACE] {
        let text = kubectl(&["-n", namespace, "get", KINDS, "-o", "json"]);
        let list: Value = serde_json::from_str(&text).unwrap();
        for item in list["items"].as_array()? {
            let current = item["metadata"]["generation"] == item["status"]["observedGeneration"];
            if !(current && ready(&item["status"]["conditions"])) {
                return None;
            }
        }
    }
    Some(())
}

/// (status, reason) of the `Ready` condition of `resource`/`name`, once it has one.
fn ready_condition(namespace: &str, resource: &str, name: &str) -> Option<(String, String)> {
    let text = kubectl(&["-n", namespace, "get", resource, name, "-o", "json"]);
    let object: Value = serde_json::from_str(&text).unwrap();
    let condition = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["reason"].as_str()?.to_owned(),
    ))
}

/// The serial of the certificate in the Secret `tessera-server`, in hex.
fn server_serial() -> String {
    let encoded = kubectl(&[
        "-n",
        SERVER_NAMESPACE,
        "get",
        "secret",
        "tessera-server",
        "-o",
        "jsonpath={.data.tls\\.crt}",
    ]);
    use base64::Engine;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .expect("tls.crt is base64");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("tls.crt is PEM");
    let certificate = pem.parse_x509().expect("tls.crt is a certificate");
    certificate.raw_serial_as_string()
}

/// Every package of the store, with the inode of its directory: a package removed and
/// built again has the same id and a new directory.
fn packages_stored(state: &Path) -> BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    let download: PathBuf = state.join("download");
    std::fs::read_dir(&download)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().join("info").is_file())
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.metadata().unwrap().ino(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` while `server` runs, for at most `limit`.
fn until(what: &str, limit: Duration, server: &mut Reaped, mut check: impl FnMut() -> Option<()>) {
    let start = Instant::now();
    while check().is_none() {
        server.assert_running(what);
        assert!(
            start.elapsed() < limit,
            "still waiting for {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `kubectl args`: its standard output; panics with its error.
fn kubectl(args: &[&str]) -> String {
    run(Command::new("kubectl").args(args))
}

/// `kubectl args` with `input` on its standard input.
fn kubectl_with_input(args: &[&str], input: &str) -> String {
    let mut child = Command::new("kubectl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
