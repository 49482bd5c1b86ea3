//! `tessera serve --git` on a local bare repository: a push reaches an agent once a signed
//! webhook says so (unsigned and wrongly signed calls fetch nothing), a commit with a broken
//! document keeps the last good objects, and every status names the commit in use.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tessera::agent::{self, Config};
use tessera::cli::{self, GitArgs, Running, ServeArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{eventually, get, get_json, quickstart_copy};

pub(crate) const SECRET: &str = "a shared webhook secret";

/// Runs git in `dir` with a fixed identity and no user configuration; returns its output.
pub(crate) fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Tessera tests")
        .env("GIT_AUTHOR_EMAIL", "tests@example.invalid")
        .env("GIT_COMMITTER_NAME", "Tessera tests")
        .env("GIT_COMMITTER_EMAIL", "tests@example.invalid")
        .output()
        .expect("git is installed by scripts/setup.sh");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The quickstart as a working copy in `clone/` (its configuration below `fleet/`), pushed
/// to the bare repository `remote.git`: returns the directory holding both.
pub(crate) fn quickstart_repository() -> tempfile::TempDir {
    let config = quickstart_copy();
    let work = tempfile::tempdir().unwrap();
    let clone = work.path().join("clone");
    crate::support::copy_dir(config.path(), &clone.join("fleet"));
    std::fs::write(clone.join("README.md"), "not configuration\n").unwrap();
    git(work.path(), &["init", "--quiet", "--bare", "remote.git"]);
    git(&clone, &["init", "--quiet", "--initial-branch", "main"]);
    commit_and_push(&clone, "the quickstart");
    work
}

/// Commits everything in `clone` and pushes it; returns the commit.
pub(crate) fn commit_and_push(clone: &Path, message: &str) -> String {
    git(clone, &["add", "--all"]);
    git(clone, &["commit", "--quiet", "-m", message]);
    git(clone, &["push", "--quiet", "../remote.git", "main"]);
    git(clone, &["rev-parse", "HEAD"])
}

async fn serve_git(work: &Path, state: &Path, interval: &str) -> Running {
    let secret = work.join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    cli::start(ServeArgs {
        git: GitArgs {
            git: Some(format!("file://{}", work.join("remote.git").display())),
            branch: "main".into(),
            path: "fleet".into(),
            interval: Some(interval.parse().unwrap()),
            webhook_secret_file: Some(secret),
            ..Default::default()
        },
        ..ServeArgs::for_state(state.to_path_buf())
    })
    .await
    .expect("serve --git starts")
}

/// POSTs `body` to the webhook with `headers`; returns the status code.
pub(crate) async fn hook(address: SocketAddr, headers: &[(&str, String)], body: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "POST /hooks/git HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status")
}

pub(crate) fn github_signature(body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    format!(
        "sha256={}",
        hex::encode(ring::hmac::sign(&key, body.as_bytes()))
    )
}

async fn revision(running: &Running) -> String {
    get_json(running.admin_address, "/api/v1/objects").await["revision"]
        .as_str()
        .unwrap()
        .to_owned()
}

const NEW_PACKAGE: &str = "\
apiVersion: tessera.dev/v1alpha1
kind: Package
metadata:
  name: pushed
spec:
  os: linux
  priority: 5
  action:
    execute:
      command: echo pushed
---
apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: pushed
spec:
  packageRef:
    name: pushed
---
apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: lab-pushed
spec:
  activationRef:
    name: pushed
  targets:
    tags: [lab]
    os: [linux]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_reaches_an_agent_once_a_signed_webhook_calls_and_unsigned_calls_fetch_nothing() {
    let work = quickstart_repository();
    let clone = work.path().join("clone");
    let first = git(&clone, &["rev-parse", "HEAD"]);
    let state = tempfile::tempdir().unwrap();
    // An hour between fetches: within this test only the webhook can explain a fetch.
    let running = serve_git(work.path(), state.path(), "1h").await;
    let (https, _) = crate::support::addresses(&running).await;
    assert_eq!(revision(&running).await, first);
    let hello = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
    assert_eq!(hello["sourceRevision"], first.as_str(), "{hello}");
    let status_file = state.path().join("status/default/package/hello.yaml");
    let status = std::fs::read_to_string(&status_file).unwrap();
    assert!(
        status.contains(&format!("sourceRevision: {first}")),
        "{status}"
    );

    // An agent enrolls and installs the quickstart's four packages for `lab`.
    let token = crate::support::token(state.path(), 1, 600);
    let agent_state = tempfile::tempdir().unwrap();
    let config = Config {
        server: format!("https://{https}"),
        state_dir: agent_state.path().to_path_buf(),
        ca: Some(
            state
                .path()
                .join("certificates/default/tessera-server/ca.crt"),
        ),
        token: Some(token.reveal()),
        tags: vec!["lab".into()],
        proxy: None,
        gateway: None,
        notify_address: None,
        clock: jiff::Timestamp::now,
    };
    let pass = agent::run_once(&config).await.expect("the first pass");
    assert_eq!(pass.finished.len(), 4, "{pass:?}");

    // A new package is pushed. Unsigned and wrongly signed calls are refused and fetch
    // nothing; a correctly signed one fetches at once.
    std::fs::write(clone.join("fleet/packages/pushed.yaml"), NEW_PACKAGE).unwrap();
    let second = commit_and_push(&clone, "a new package");
    let body = r#"{"ref":"refs/heads/main","after":"x"}"#;
    assert_eq!(hook(running.admin_address, &[], body).await, 401);
    let forged = github_signature(r#"{"ref":"refs/heads/other"}"#);
    assert_eq!(
        hook(
            running.admin_address,
            &[("X-Hub-Signature-256", forged)],
            body
        )
        .await,
        403
    );
    assert_eq!(
        hook(
            running.admin_address,
            &[("X-Gitlab-Token", "not the secret".into())],
            body
        )
        .await,
        403
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        revision(&running).await,
        first,
        "refused calls fetch nothing"
    );
    assert!(
        !state
            .path()
            .join("git")
            .read_dir()
            .unwrap()
            .any(|e| { e.unwrap().path().join("trees").join(&second).exists() }),
        "the pushed commit was not fetched"
    );

    let signature = github_signature(body);
    assert_eq!(
        hook(
            running.admin_address,
            &[("X-Hub-Signature-256", signature)],
            body
        )
        .await,
        202
    );
    let (id, _) = eventually("the pushed package built from the new commit", || async {
        let (status, text) = get(running.admin_address, "/api/v1/objects/Package/pushed").await;
        let package: Value = (status == 200).then(|| serde_json::from_str(&text).unwrap())?;
        (package["sourceRevision"] == second.as_str())
            .then(|| package["details"]["packageId"].as_str().map(str::to_owned))?
    })
    .await;
    let affectation = get_json(
        running.admin_address,
        "/api/v1/objects/Affectation/lab-pushed",
    )
    .await;
    assert_eq!(affectation["sourceRevision"], second.as_str());

    let pass = agent::run_once(&config).await.expect("the second pass");
    let finished: Vec<&str> = pass.finished.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(finished, [id.as_str()], "only the pushed package: {pass:?}");

    // GitLab's style: the token is the secret itself.
    assert_eq!(
        hook(
            running.admin_address,
            &[("X-Gitlab-Token", SECRET.into())],
            "{}"
        )
        .await,
        202
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_a_broken_document_keeps_the_last_good_objects() {
    let work = quickstart_repository();
    let clone = work.path().join("clone");
    let state = tempfile::tempdir().unwrap();
    // Fetching every second: no webhook in this test.
    let running = serve_git(work.path(), state.path(), "1s").await;
    let (hello_id, _) = eventually("hello built", || async {
        let (status, text) = get(running.admin_address, "/api/v1/objects/Package/hello").await;
        let hello: Value = (status == 200).then(|| serde_json::from_str(&text).unwrap())?;
        hello["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;

    let path = clone.join("fleet/packages/hello.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("priority: 5"), "{text}");
    std::fs::write(&path, text.replace("priority: 5", "priority: 50")).unwrap();
    let broken = commit_and_push(&clone, "a priority out of range");

    let (hello, _) = eventually("the broken commit read", || async {
        let hello = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
        (hello["sourceRevision"] == broken.as_str()).then_some(hello)
    })
    .await;
    assert_eq!(
        hello["details"]["packageId"], hello_id,
        "the last good version stays built: {hello}"
    );
    let ready = hello["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("stays in effect"),
        "{ready}"
    );
    let problems = hello["problems"].as_array().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p["field"] == "spec.priority" && p["file"] == "packages/hello.yaml"),
        "{problems:?}"
    );
    assert!(
        state
            .path()
            .join("download")
            .join(&hello_id)
            .join("info")
            .is_file(),
        "still served"
    );
    running.stop().await.unwrap();
}

/// A commit that changes only a package's content (its script, not its YAML) is rebuilt
/// like any other commit, as soon as the webhook calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_only_commit_is_rebuilt_once_the_webhook_calls() {
    let work = quickstart_repository();
    let clone = work.path().join("clone");
    let state = tempfile::tempdir().unwrap();
    // An hour between fetches: only the webhook can explain a fetch.
    let running = serve_git(work.path(), state.path(), "1h").await;
    let hello = || async {
        let (status, text) = get(running.admin_address, "/api/v1/objects/Package/hello").await;
        let hello: Value = (status == 200).then(|| serde_json::from_str(&text).unwrap())?;
        hello["details"]["packageId"].as_str().map(str::to_owned)
    };
    let (first, _) = eventually("hello built", hello).await;

    let script = clone.join("fleet/packages/hello/hello.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("\n# edited, and nothing else\n");
    std::fs::write(&script, text).unwrap();
    let commit = commit_and_push(&clone, "hello's script only");
    let body = r#"{"ref":"refs/heads/main"}"#;
    let signature = github_signature(body);
    assert_eq!(
        hook(
            running.admin_address,
            &[("X-Hub-Signature-256", signature)],
            body
        )
        .await,
        202
    );
    eventually("hello rebuilt from the new commit", || async {
        let id = hello().await?;
        (id != first && revision(&running).await == commit).then_some(())
    })
    .await;
    running.stop().await.unwrap();
}
