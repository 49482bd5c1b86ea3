//! Tessera's own agent: enrolls with a token (its key never leaves the machine), checks in
//! over mutual TLS, downloads on the OCS schedule with every fragment verified and resumed
//! from the last byte kept, unpacks safely, runs the action, and keeps each result on disk
//! until the server has it; between scheduled passes, the push channel (`push`: a long poll
//! the server answers when something for this computer changed) or the notify listener
//! starts one within seconds. Imports only `protocol` and `pki`; its command line (`cli`) also
//! `logging` and the durations of `resources::quantity`, all of which build without the
//! `server` feature.
//!
//! State directory:
//!
//! ```text
//! identity/agent.key (0600), agent.crt, ca.crt, agent.json   who this agent is
//! installed.json                                             package ids installed
//! packages/<id>/manifest.json, <n> (verified), <n>.part       downloads in progress
//! results/<id>.json                                          results not yet acknowledged
//! ```
//!
//! About 850 lines, 800 of them code: one pass (check in, download, verify, install,
//! report) reads top to bottom here, with enrollment and the notify listener beside it.
//! The client (`client.rs`), archive extraction (`extract.rs`), the schedule, the push
//! channel and the CLI are already their own files; the next seam is enrollment and certificate renewal
//! (`enroll.rs`).

pub mod cli;
pub mod client;
pub mod extract;
pub mod push;
pub mod schedule;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};
use sha2::{Digest, Sha256};

pub use crate::agent::client::Proxy;
use crate::agent::client::{Client, ClientError};
use crate::protocol::v1;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// `https://host:port` of the server.
    pub server: String,
    pub state_dir: PathBuf,
    /// The CA to trust for the server before enrollment (afterwards the one it returned).
    pub ca: Option<PathBuf>,
    /// An enrollment token, used when the agent has no identity yet.
    pub token: Option<String>,
    /// Tags reported with every check-in.
    pub tags: Vec<String>,
    /// An HTTP proxy to reach the server through (CONNECT), unless its `NO_PROXY` list
    /// names the server.
    pub proxy: Option<Proxy>,
    /// A gateway in tunnel mode to reach the server through, `host:port`, and the CA that
    /// issued its certificate (default: the server's CA). Enrolled agents only: the gateway
    /// admits no one without a certificate.
    pub gateway: Option<(String, Option<PathBuf>)>,
    /// Where this agent listens for the server's "check in now" (`host:port` as the server
    /// reaches it), reported with every check-in; see [`listen`].
    pub notify_address: Option<String>,
    /// What time it is (tests move it forward to see renewals).
    pub clock: fn() -> jiff::Timestamp,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("this agent is not enrolled: pass --token (from `tessera token create`) and --ca")]
    NotEnrolled,
    #[error(
        "a gateway tunnel admits enrolled agents only: enroll once without --gateway (inside, or through a passthrough gateway), then roam"
    )]
    GatewayNeedsIdentity,
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The agent's identity or the server's CA could not be made into TLS settings (the
    /// cause follows in the chain, printed once).
    #[error("failed to set up TLS")]
    Tls(#[from] crate::pki::PkiError),
    #[error("the server's answer was empty")]
    Empty,
}

/// What one pass did, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub assigned: Vec<String>,
    /// (package id, result code) of packages finished in this pass.
    pub finished: Vec<(String, String)>,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AgentError {
    let path = path.to_path_buf();
    move |source| AgentError::Io {
        action,
        path,
        source,
    }
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), AgentError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&temporary).map_err(io("write", &temporary))?;
    file.write_all(bytes).map_err(io("write", &temporary))?;
    file.sync_all().map_err(io("write", &temporary))?;
    std::fs::rename(&temporary, path).map_err(io("write", path))
}

/// Enrolls this agent unless it has an identity already.
pub async fn enroll_if_needed(config: &Config) -> Result<(), AgentError> {
    if config.state_dir.join("identity/agent.crt").is_file() {
        return Ok(());
    }
    enroll(config).await
}

/// One pass: enroll if needed, send kept results, check in, download and install what is
/// assigned (sleeping the server's latencies), report. Progress is logged as it goes: the
/// check-in, each package started, each fragment kept, each package's result, and a summary
/// line at the end.
pub async fn run_once(config: &Config) -> Result<Pass, AgentError> {
    let started = std::time::Instant::now();
    enroll_if_needed(config).await?;
    let client = mutual_client(config)?;
    let client = match renew_if_due(config, &client).await? {
        true => mutual_client(config)?,
        false => client,
    };
    send_kept_results(&client, &config.state_dir).await;

    let installed = installed(&config.state_dir);
    let facts = v1::CheckIn {
        hostname: hostname(),
        os_name: os_name(),
        os_version: String::new(),
        tags: config.tags.clone(),
        ip_addresses: Vec::new(),
        installed: installed.iter().cloned().collect(),
        notify_address: config.notify_address.clone(),
    };
    let answer: v1::CheckInResponse = client
        .json(Method::POST, "/v1/checkin", Some(&facts))
        .await?
        .ok_or(AgentError::Empty)?;
    let mut pass = Pass {
        assigned: answer
            .assignments
            .iter()
            .map(|a| a.package_id.clone())
            .collect(),
        ..Pass::default()
    };
    if !answer.pacing.enabled {
        tracing::info!(
            assigned = pass.assigned.len(),
            "checked in; downloads are paused by the server"
        );
        summary(&pass, 0, started);
        return Ok(pass);
    }
    let pacing = &answer.pacing;
    let (mut jobs, manifests) = manifests(&client, config, &answer, &installed).await?;
    tracing::info!(
        assigned = pass.assigned.len(),
        to_install = jobs.len(),
        "checked in"
    );
    let mut failed = 0;
    let sleep = |seconds: u64| tokio::time::sleep(Duration::from_secs(seconds));
    // Periods of cycles until every package is done (each step makes progress or fails
    // the package, so this ends).
    let mut reported_downloading = BTreeSet::new();
    while !jobs.is_empty() {
        for index in 1..=pacing.period_length.max(1) {
            let stepping: Vec<String> = schedule::cycle(&jobs, index)
                .into_iter()
                .map(str::to_owned)
                .collect();
            let urgent = jobs.iter().any(|(_, p)| *p == 0);
            for id in stepping {
                let Some(manifest) = manifests.get(&id) else {
                    continue;
                };
                if reported_downloading.insert(id.clone()) {
                    start(&client, &config.state_dir, manifest).await;
                }
                if let Some(result) = step(&client, config, manifest, pacing).await? {
                    let (code, success) =
                        finish(&client, &config.state_dir, manifest, result).await?;
                    failed += usize::from(!success);
                    pass.finished.push((id.clone(), code));
                    jobs.retain(|(job, _)| *job != id);
                }
                sleep(pacing.frag_latency).await;
            }
            if jobs.is_empty() {
                break;
            }
            if !urgent {
                sleep(pacing.cycle_latency).await;
            }
        }
        sleep(pacing.period_latency).await;
    }
    summary(&pass, failed, started);
    Ok(pass)
}

/// A package's first step in a pass: logged, and reported as downloading.
async fn start(client: &Client, state: &Path, manifest: &v1::Manifest) {
    tracing::info!(
        package = %manifest.package_id,
        fragments = manifest.fragments.len(),
        bytes = manifest.fragments.iter().map(|f| f.size).sum::<u64>(),
        "downloading"
    );
    let progress = progress(&manifest.package_id, v1::ReportedState::Downloading);
    let _ = report(client, state, progress).await;
}

/// A package's result: logged, kept as installed when it succeeded, its download removed,
/// and reported. Its result code, and whether it succeeded.
async fn finish(
    client: &Client,
    state: &Path,
    manifest: &v1::Manifest,
    result: v1::Report,
) -> Result<(String, bool), AgentError> {
    let id = &manifest.package_id;
    let code = result_code(&result);
    let success = succeeded(&result, manifest);
    if success {
        tracing::info!(package = %id, %code, "installed");
        mark_installed(state, id)?;
    } else {
        tracing::warn!(package = %id, %code, "failed");
    }
    let _ = std::fs::remove_dir_all(package_dir(state, id));
    report(client, state, result).await?;
    Ok((code, success))
}

/// The line that ends a pass: what was assigned, installed and failed, and how long it took.
fn summary(pass: &Pass, failed: usize, started: std::time::Instant) {
    tracing::info!(
        assigned = pass.assigned.len(),
        installed = pass.finished.len() - failed,
        failed,
        seconds = started.elapsed().as_secs(),
        "pass done"
    );
}

/// The manifests of the packages to run this pass (assigned, and not installed unless
/// forced), each kept on disk, and the jobs to schedule with their priority. A manifest
/// that cannot be read is skipped: it is asked again next pass.
async fn manifests(
    client: &Client,
    config: &Config,
    answer: &v1::CheckInResponse,
    installed: &BTreeSet<String>,
) -> Result<(Jobs, std::collections::HashMap<String, v1::Manifest>), AgentError> {
    let mut jobs: Vec<(String, u8)> = Vec::new();
    let mut manifests = std::collections::HashMap::new();
    for assignment in &answer.assignments {
        if installed.contains(&assignment.package_id) && !assignment.force {
            continue;
        }
        let path = format!("/v1/packages/{}/manifest", assignment.package_id);
        let manifest: v1::Manifest = match client.json(Method::GET, &path, None::<&()>).await {
            Ok(Some(manifest)) => manifest,
            Ok(None) | Err(_) => continue,
        };
        let dir = package_dir(&config.state_dir, &manifest.package_id);
        write_file(
            &dir.join("manifest.json"),
            &serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
            false,
        )?;
        jobs.push((manifest.package_id.clone(), manifest.priority));
        manifests.insert(manifest.package_id.clone(), manifest);
    }
    Ok((jobs, manifests))
}

/// Packages to run with their priority, as `schedule::cycle` takes them.
type Jobs = Vec<(String, u8)>;

fn progress(id: &str, state: v1::ReportedState) -> v1::Report {
    v1::Report {
        package_id: id.to_owned(),
        state,
        exit_code: None,
        error: None,
        output: String::new(),
    }
}

fn result_code(report: &v1::Report) -> String {
    match (&report.error, report.exit_code) {
        (Some(error), _) => error.clone(),
        (None, Some(n)) => format!("EXIT_CODE_{n}"),
        (None, None) => "SUCCESS".into(),
    }
}

fn succeeded(report: &v1::Report, manifest: &v1::Manifest) -> bool {
    report.error.is_none()
        && report
            .exit_code
            .is_none_or(|n| manifest.success_exit_codes.contains(&n))
}

fn package_dir(state: &Path, id: &str) -> PathBuf {
    state.join("packages").join(id)
}

/// One step of a package: the next fragment, or, when all are there, its installation
/// (which gives the result).
async fn step(
    client: &Client,
    config: &Config,
    manifest: &v1::Manifest,
    pacing: &v1::Pacing,
) -> Result<Option<v1::Report>, AgentError> {
    let dir = package_dir(&config.state_dir, &manifest.package_id);
    for (index, fragment) in manifest.fragments.iter().enumerate() {
        let n = index + 1;
        let done = dir.join(n.to_string());
        if done.is_file() {
            continue;
        }
        fetch_fragment(client, manifest, n, fragment, &dir).await?;
        return Ok(None);
    }
    tracing::info!(package = %manifest.package_id, "installing");
    Ok(Some(install(config, manifest, pacing).await))
}

/// Downloads fragment `n`, resuming a partial one with a Range request, and keeps it only
/// once its SHA-256 matches the manifest.
async fn fetch_fragment(
    client: &Client,
    manifest: &v1::Manifest,
    n: usize,
    fragment: &v1::Fragment,
    dir: &Path,
) -> Result<(), AgentError> {
    let partial = dir.join(format!("{n}.part"));
    let have = std::fs::metadata(&partial).map_or(0, |m| m.len());
    let path = format!("/v1/packages/{}/fragments/{n}", manifest.package_id);
    let range = (have > 0 && have < fragment.size).then(|| ("range", format!("bytes={have}-")));
    let answer = client
        .send(Method::GET, &path, None, range.as_slice())
        .await?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .map_err(io("write", &partial))?;
    match answer.status {
        StatusCode::PARTIAL_CONTENT => {}
        StatusCode::OK => file.set_len(0).map_err(io("write", &partial))?,
        status => {
            // Retried at the next step.
            tracing::warn!(package = %manifest.package_id, fragment = n, %status, "fragment not served; retrying");
            return Ok(());
        }
    }
    file.write_all(&answer.body)
        .map_err(io("write", &partial))?;
    file.sync_all().map_err(io("write", &partial))?;
    let bytes = std::fs::read(&partial).map_err(io("read", &partial))?;
    if bytes.len() as u64 >= fragment.size {
        if hex::encode(Sha256::digest(&bytes)) == fragment.sha256 {
            std::fs::rename(&partial, dir.join(n.to_string())).map_err(io("write", &partial))?;
            tracing::info!(
                package = %manifest.package_id,
                fragment = %format_args!("{n}/{}", manifest.fragments.len()),
                bytes = bytes.len(),
                "fragment verified"
            );
        } else {
            // Corrupt (a proxy, a disk): fetched again from the start.
            tracing::warn!(package = %manifest.package_id, fragment = n, "fragment digest mismatch; fetching it again");
            std::fs::remove_file(&partial).map_err(io("remove", &partial))?;
        }
    }
    Ok(())
}

/// Assembles, verifies, unpacks and runs a package; the result is also kept on disk.
async fn install(config: &Config, manifest: &v1::Manifest, pacing: &v1::Pacing) -> v1::Report {
    let failed = |code: &str, output: String| v1::Report {
        package_id: manifest.package_id.clone(),
        state: v1::ReportedState::Done,
        exit_code: None,
        error: Some(code.to_owned()),
        output,
    };
    let dir = package_dir(&config.state_dir, &manifest.package_id);
    let work = dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    if let Err(error) = std::fs::create_dir_all(&work) {
        return failed("ERR_EXTRACT_IO", error.to_string());
    }
    if let Some(format) = &manifest.format {
        let archive = dir.join("archive");
        let mut digest = Sha256::new();
        let mut whole = Vec::new();
        for n in 1..=manifest.fragments.len() {
            match std::fs::read(dir.join(n.to_string())) {
                Ok(bytes) => {
                    digest.update(&bytes);
                    whole.extend_from_slice(&bytes);
                }
                Err(error) => return failed("ERR_BUILD", error.to_string()),
            }
        }
        if hex::encode(digest.finalize()) != manifest.sha256 {
            return failed("ERR_BAD_DIGEST", String::new());
        }
        if let Err(error) = std::fs::write(&archive, &whole) {
            return failed("ERR_EXTRACT_IO", error.to_string());
        }
        let Some(format) = extract::Format::from_name(format) else {
            return failed("ERR_BAD_PARAM", format!("unknown archive format {format}"));
        };
        if let Err(error) = extract::extract(&archive, format, &work, &extract::Limits::default()) {
            return failed(error.code(), error.to_string());
        }
    }
    let timeout = Duration::from_secs(pacing.execution_timeout_seconds.max(1));
    let outcome = match &manifest.action {
        v1::Action::Store { path } => store(&work, &expand(path, &config.state_dir)),
        v1::Action::Launch { command } => {
            let program = command.split_whitespace().next().unwrap_or_default();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(
                    work.join(program),
                    std::fs::Permissions::from_mode(0o755),
                );
            }
            run(&format!("./{command}"), &work, timeout).await
        }
        v1::Action::Execute { command } => run(command, &work, timeout).await,
    };
    let result = match outcome {
        Ok((exit_code, output)) => v1::Report {
            package_id: manifest.package_id.clone(),
            state: v1::ReportedState::Done,
            exit_code,
            error: None,
            output,
        },
        Err((code, output)) => failed(code, output),
    };
    let kept = config
        .state_dir
        .join("results")
        .join(format!("{}.json", manifest.package_id));
    let _ = write_file(
        &kept,
        &serde_json::to_vec(&result).unwrap_or_default(),
        false,
    );
    result
}

/// `$VAR`, `${VAR}` and `INSTALL_PATH` (the agent's state directory) expanded.
fn expand(path: &str, state: &Path) -> PathBuf {
    let mut out = path.replace("INSTALL_PATH", &state.display().to_string());
    for (name, value) in std::env::vars() {
        out = out
            .replace(&format!("${{{name}}}"), &value)
            .replace(&format!("${name}"), &value);
    }
    PathBuf::from(out)
}

type Outcome = Result<(Option<i32>, String), (&'static str, String)>;

fn store(from: &Path, to: &Path) -> Outcome {
    fn copy(from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            let target = to.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                copy(&entry.path(), &target)?;
            } else {
                std::fs::copy(entry.path(), &target)?;
            }
        }
        Ok(())
    }
    copy(from, to)
        .map(|()| (None, String::new()))
        .map_err(|e| ("ERR_STORE", format!("{}: {e}", to.display())))
}

/// Runs `command` with a shell in `dir`, stopping it after `timeout`; the exit code and
/// the last 4 KiB of its output.
async fn run(command: &str, dir: &Path, timeout: Duration) -> Outcome {
    #[cfg(unix)]
    let mut process = tokio::process::Command::new("sh");
    #[cfg(unix)]
    process.arg("-c").arg(command);
    #[cfg(windows)]
    let mut process = tokio::process::Command::new("cmd");
    #[cfg(windows)]
    process.arg("/C").arg(command);
    process
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = process
        .spawn()
        .map_err(|e| ("ERR_EXECUTE", format!("{command}: {e}")))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => Err((
            "ERR_EXECUTE_TIMEOUT",
            format!("{command}: still running after {timeout:?}, stopped"),
        )),
        Ok(Err(error)) => Err(("ERR_EXECUTE", format!("{command}: {error}"))),
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            if text.len() > v1::MAX_OUTPUT {
                let mut cut = text.len() - v1::MAX_OUTPUT;
                while !text.is_char_boundary(cut) {
                    cut += 1;
                }
                text = text[cut..].to_owned();
            }
            Ok((output.status.code().or(Some(-1)), text))
        }
    }
}

/// Sends a result; a final one is kept on disk until the server acknowledges it.
async fn report(client: &Client, state: &Path, result: v1::Report) -> Result<(), AgentError> {
    let kept = state
        .join("results")
        .join(format!("{}.json", result.package_id));
    let sent = client
        .json::<serde_json::Value>(Method::POST, "/v1/results", Some(&result))
        .await;
    match sent {
        Ok(_) if result.state == v1::ReportedState::Done => {
            let _ = std::fs::remove_file(&kept);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::warn!(package = %result.package_id, error = %crate::error_chain(&error), "result kept to send later");
            Ok(())
        }
    }
}

async fn send_kept_results(client: &Client, state: &Path) {
    let Ok(entries) = std::fs::read_dir(state.join("results")) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(bytes) = std::fs::read(entry.path()) else {
            continue;
        };
        if let Ok(result) = serde_json::from_slice::<v1::Report>(&bytes) {
            let _ = report(client, state, result).await;
        }
    }
}

fn installed(state: &Path) -> BTreeSet<String> {
    std::fs::read(state.join("installed.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn mark_installed(state: &Path, id: &str) -> Result<(), AgentError> {
    let mut all = installed(state);
    all.insert(id.to_owned());
    write_file(
        &state.join("installed.json"),
        &serde_json::to_vec(&all).unwrap_or_default(),
        false,
    )
}

/// Makes a key, sends a certificate request with the token, keeps what comes back.
async fn enroll(config: &Config) -> Result<(), AgentError> {
    let token = config.token.as_ref().ok_or(AgentError::NotEnrolled)?;
    if config.gateway.is_some() {
        return Err(AgentError::GatewayNeedsIdentity);
    }
    let ca_path = config.ca.as_ref().ok_or(AgentError::NotEnrolled)?;
    let ca = std::fs::read_to_string(ca_path).map_err(io("read", ca_path))?;
    let key = crate::pki::authority::generate_key(crate::pki::KeyType::EcdsaP256)?;
    let csr = certificate_request(&key)?;
    let client = Client::new(
        &config.server,
        &*crate::pki::tls::client_config(&ca, None)?,
        config.proxy.as_ref(),
    )?;
    let request = v1::EnrollRequest {
        token: token.clone(),
        csr,
        hostname: hostname(),
    };
    let answer: v1::EnrollResponse = client
        .json(Method::POST, "/v1/enroll", Some(&request))
        .await?
        .ok_or(AgentError::Empty)?;
    keep_identity(&config.state_dir.join("identity"), &key, &answer)?;
    tracing::info!(agent = %answer.agent_id, "enrolled");
    Ok(())
}

/// Renews the certificate over mutual TLS once its renewal time has come (2/3 of its
/// lifetime), with a new key; also takes the CA bundle the server sends, so a CA rollover
/// reaches the agent before the old CA goes away.
async fn renew_if_due(config: &Config, client: &Client) -> Result<bool, AgentError> {
    let dir = config.state_dir.join("identity");
    let path = dir.join("agent.json");
    let kept: serde_json::Value = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let due = kept["renewAfter"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .is_none_or(|at| (config.clock)() >= at);
    if !due {
        return Ok(false);
    }
    let key = crate::pki::authority::generate_key(crate::pki::KeyType::EcdsaP256)?;
    let csr = certificate_request(&key)?;
    let answer: v1::EnrollResponse = client
        .json(Method::POST, "/v1/renew", Some(&v1::RenewRequest { csr }))
        .await?
        .ok_or(AgentError::Empty)?;
    keep_identity(&dir, &key, &answer)?;
    tracing::info!(agent = %answer.agent_id, not_after = %answer.not_after, "renewed the agent certificate");
    Ok(true)
}

fn certificate_request(key: &rcgen::KeyPair) -> Result<String, AgentError> {
    Ok(rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(key))
        .and_then(|csr| csr.pem())
        .map_err(|e| crate::pki::PkiError::Certificate(e.to_string()))?)
}

/// Writes the key (0600), the certificate, the CA bundle and the renewal time.
fn keep_identity(
    dir: &Path,
    key: &rcgen::KeyPair,
    answer: &v1::EnrollResponse,
) -> Result<(), AgentError> {
    write_file(&dir.join("agent.key"), key.serialize_pem().as_bytes(), true)?;
    write_file(&dir.join("agent.crt"), answer.certificate.as_bytes(), false)?;
    write_file(&dir.join("ca.crt"), answer.ca.as_bytes(), false)?;
    write_file(&dir.join("issuer.crt"), answer.issuer_ca.as_bytes(), false)?;
    write_file(
        &dir.join("agent.json"),
        &serde_json::to_vec_pretty(&serde_json::json!({
            "agentId": answer.agent_id,
            "notAfter": answer.not_after,
            "renewAfter": answer.renew_after,
        }))
        .unwrap_or_default(),
        false,
    )
}

fn mutual_client(config: &Config) -> Result<Client, AgentError> {
    let dir = config.state_dir.join("identity");
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(io("read", &path))
    };
    let (ca, chain, key) = (read("ca.crt")?, read("agent.crt")?, read("agent.key")?);
    let tls = crate::pki::tls::client_config(&ca, Some((&chain, &key)))?;
    if let Some((address, gateway_ca)) = &config.gateway {
        let gateway_ca = match gateway_ca {
            Some(path) => std::fs::read_to_string(path).map_err(io("read", path))?,
            None => ca,
        };
        let outer = crate::pki::tls::client_config(&gateway_ca, Some((&chain, &key)))?;
        let connector = crate::agent::client::GatewayConnector::new(address, outer)?;
        return Ok(Client::through_gateway(&config.server, &tls, connector)?);
    }
    Ok(Client::new(&config.server, &tls, config.proxy.as_ref())?)
}

/// Listens on `listener` for the server's "check in now" and wakes `wake` for each valid
/// call, until `shutdown`. Both sides check the other: the caller must present a
/// certificate from this agent's own Issuer naming the server (`urn:tessera:server`), and
/// the agent presents its certificate, which the caller checks names this agent.
pub async fn listen(
    config: &Config,
    listener: tokio::net::TcpListener,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<(), AgentError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = config.state_dir.join("identity");
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(io("read", &path))
    };
    let tls = crate::pki::tls::agent_listener_config(
        &read("issuer.crt")?,
        &read("agent.crt")?,
        &read("agent.key")?,
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let acceptor = acceptor.clone();
        let wake = wake.clone();
        tokio::spawn(async move {
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
            else {
                return;
            };
            let from_server = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| crate::pki::facts::read(der).ok())
                .is_some_and(|f| f.names.uris.iter().any(|u| u == v1::SERVER_URI));
            if !from_server {
                tracing::warn!(
                    "a \"check in now\" call from a certificate that is not the server's"
                );
                return;
            }
            let mut request = vec![0u8; 8192];
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut request)).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            let _ = stream.shutdown().await;
            tracing::info!("the server asked for a check-in now");
            wake.notify_one();
        });
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// The OS as an inventory names it: `PRETTY_NAME` of os-release on Linux.
fn os_name() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_else(|| match std::env::consts::OS {
            "macos" => "macOS".into(),
            "windows" => "Microsoft Windows".into(),
            other => other.into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_command_past_its_timeout_is_stopped_and_reported_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let started = std::time::Instant::now();
        let outcome = run(
            "echo started; sleep 30",
            dir.path(),
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(outcome.unwrap_err().0, "ERR_EXECUTE_TIMEOUT");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_command_keeps_its_exit_code_and_the_end_of_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let (code, output) = run(
            "head -c 10000 /dev/zero | tr '\\0' x; echo; echo last line; exit 3",
            dir.path(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(code, Some(3));
        assert!(output.len() <= v1::MAX_OUTPUT && output.ends_with("last line\n"));
    }

    #[test]
    fn store_paths_expand_install_path_and_environment_variables() {
        let state = Path::new("/var/lib/tessera-agent");
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            expand("INSTALL_PATH/tools", state),
            PathBuf::from("/var/lib/tessera-agent/tools")
        );
        assert_eq!(
            expand("${HOME}/x", state),
            PathBuf::from(format!("{home}/x"))
        );
    }
}
