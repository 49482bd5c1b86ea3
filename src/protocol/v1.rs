//! The native protocol of Tessera's own agent: JSON over HTTPS under `/v1`.
//!
//! Enrollment is the only call made without a client certificate; everything after it is
//! made with the certificate it returns, and the agent's identity comes from that
//! certificate, never from a request body.

use serde::{Deserialize, Serialize};

/// `POST /v1/enroll`: a token and a certificate request for a key the agent made itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    /// The enrollment token (`tsr_…`), from `tessera token create`.
    pub token: String,
    /// A PKCS#10 certificate signing request, PEM. Only its public key is used.
    pub csr: String,
    /// The computer's name, for display until its first check-in.
    #[serde(default)]
    pub hostname: String,
}

/// `POST /v1/renew`, over mutual TLS with the current certificate: a request for a new
/// key. The answer is an [`EnrollResponse`] for the same agent id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenewRequest {
    pub csr: String,
}

/// The answer to an enrollment or a renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollResponse {
    /// The agent's identity, also in its certificate (`urn:tessera:agent:<id>`).
    pub agent_id: String,
    /// The client certificate and its intermediates, PEM.
    pub certificate: String,
    /// The CA certificates the agent trusts for the server, PEM.
    pub ca: String,
    /// When the certificate expires (RFC 3339).
    pub not_after: String,
    /// When the agent should renew it (RFC 3339): 2/3 of its lifetime.
    pub renew_after: String,
    /// The CA certificate that signed the agent's certificate, PEM: the agent trusts it
    /// for the server's "check in now" calls.
    #[serde(default)]
    pub issuer_ca: String,
}

/// A refusal, with what went wrong in words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A stable code, e.g. `token_expired`.
    pub error: String,
    /// A sentence for people.
    pub message: String,
}

/// `POST /v1/checkin`: the computer's facts and what it has installed. The agent is
/// known by its certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CheckIn {
    pub hostname: String,
    pub os_name: String,
    #[serde(default)]
    pub os_version: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// Package ids installed by this agent.
    #[serde(default)]
    pub installed: Vec<String>,
    /// Where the agent listens for the server's "check in now" (`host:port`), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_address: Option<String>,
}

/// The answer to a check-in: what to install, and how fast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckInResponse {
    pub assignments: Vec<Assignment>,
    pub pacing: Pacing,
    /// Seconds until the next check-in.
    pub check_in_seconds: u64,
}

/// A package to install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub package_id: String,
    pub priority: u8,
    /// Install even if listed as installed (a redeploy).
    pub force: bool,
}

/// The OCS download schedule's parameters, in seconds and counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pacing {
    pub enabled: bool,
    pub frag_latency: u64,
    pub cycle_latency: u64,
    pub period_latency: u64,
    pub period_length: u64,
    /// Days a package may take before the agent gives up.
    pub timeout_days: u64,
    pub execution_timeout_seconds: u64,
}

/// `GET /v1/packages/{id}/manifest`: everything to fetch, verify and run a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub package_id: String,
    pub priority: u8,
    pub action: Action,
    /// `tar.gz` or `zip`; absent for a command-only package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Size of the archive in bytes.
    pub size: u64,
    /// SHA-256 of the whole archive, hex.
    pub sha256: String,
    /// Fragments in order, each with its size and SHA-256, fetched from
    /// `/v1/packages/{id}/fragments/{n}` (1-based, HTTP Range supported).
    pub fragments: Vec<Fragment>,
    /// Exit codes that count as success.
    pub success_exit_codes: Vec<i32>,
}

/// One fragment of a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fragment {
    pub size: u64,
    pub sha256: String,
}

/// What an agent does with a package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Action {
    /// Run a file of the archive, keeping its exit code.
    Launch { command: String },
    /// Run a command in the unpacked archive.
    Execute { command: String },
    /// Copy the archive's files into `path`.
    Store { path: String },
}

/// `POST /v1/results`: where a package stands on the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    pub package_id: String,
    pub state: ReportedState,
    /// The command's exit code, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, as a stable code (`ERR_BAD_DIGEST`, `ERR_UNSAFE_PATH`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last 4 KiB of the command's output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

/// The states an agent reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedState {
    Downloading,
    Installing,
    /// Finished: success or error is decided from the exit code and the error.
    Done,
}

/// Most output kept with a result: the last 4 KiB (earlier bytes are dropped, so the end,
/// where errors are, is what is kept).
pub const MAX_OUTPUT: usize = 4096;
/// Longest error code accepted in a report (refused beyond, and printable ASCII without
/// spaces only), as for OCS result codes: the agent's codes are under 32 bytes.
pub const MAX_ERROR_CODE: usize = 64;
/// Longest package id accepted in a report (digits only): ids are 10 digits; 20 is the
/// longest `u64`.
pub const MAX_PACKAGE_ID: usize = 20;

/// Why a report was refused (a 400 with the `bad_request` code). The messages never repeat
/// the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("packageId is not a package id (1 to {MAX_PACKAGE_ID} digits)")]
    PackageId,
    #[error("error is longer than {MAX_ERROR_CODE} bytes")]
    ErrorTooLong,
    #[error("error is not a code (printable ASCII, no spaces)")]
    ErrorNotACode,
}

impl Report {
    /// Refuses a report whose package id or error code is out of bounds. The output is not
    /// refused: [`Report::output_tail`] keeps its end.
    pub fn check(&self) -> Result<(), ReportError> {
        let id = &self.package_id;
        if !(1..=MAX_PACKAGE_ID).contains(&id.len()) || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ReportError::PackageId);
        }
        if let Some(error) = &self.error {
            if error.len() > MAX_ERROR_CODE {
                return Err(ReportError::ErrorTooLong);
            }
            if !error.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ReportError::ErrorNotACode);
            }
        }
        Ok(())
    }

    /// The last `MAX_OUTPUT` bytes of the output at most, starting on a character.
    pub fn output_tail(&self) -> &str {
        let output = self.output.as_str();
        let mut cut = output.len().saturating_sub(MAX_OUTPUT);
        while !output.is_char_boundary(cut) {
            cut += 1;
        }
        &output[cut..]
    }
}

/// The header a gateway in terminate mode carries the agent's verified client certificate
/// in (base64 DER) to the server, which believes it only from gateways it lists.
pub const FORWARDED_CERTIFICATE: &str = "x-tessera-client-certificate";

/// The URI SAN of the certificate the server presents when it calls an agent.
pub const SERVER_URI: &str = "urn:tessera:server";

/// The push channel: an agent holds `GET /v1/wait?seen=<generation>` open, and the server
/// answers when this computer's wake generation differs from `seen` (at once if it already
/// does), or after [`MAX_HOLD_SECONDS`] with the same generation (nothing happened: ask
/// again). See `server::push` and `agent::push`.
pub const WAIT_PATH: &str = "/v1/wait";

/// The longest the server holds a wait; the agent gives up on one after this and a margin.
pub const MAX_HOLD_SECONDS: u64 = 55;

/// The answer to a wait.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wait {
    /// This computer's wake generation: when it differs from what the agent saw, something
    /// for the computer changed since, and it should check in now.
    pub generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(package_id: &str, error: Option<&str>, output: &str) -> Report {
        Report {
            package_id: package_id.into(),
            state: ReportedState::Done,
            exit_code: None,
            error: error.map(Into::into),
            output: output.into(),
        }
    }

    #[test]
    fn reports_out_of_bounds_are_refused_and_output_keeps_its_tail() {
        assert_eq!(
            report("1736849000", Some("ERR_BAD_DIGEST"), "").check(),
            Ok(())
        );
        let long = "E".repeat(8 << 20);
        assert_eq!(
            report("1736849000", Some(&long), "").check(),
            Err(ReportError::ErrorTooLong)
        );
        assert_eq!(
            report("1736849000", Some("ERR\nINFO forged"), "").check(),
            Err(ReportError::ErrorNotACode)
        );
        assert_eq!(
            report("../1", None, "").check(),
            Err(ReportError::PackageId)
        );
        assert_eq!(report("", None, "").check(), Err(ReportError::PackageId));
        let output = format!("{}\u{e9}end", "x".repeat(2 * MAX_OUTPUT));
        let tail = report("1", None, &output).output_tail().to_owned();
        assert!(tail.len() <= MAX_OUTPUT && tail.ends_with("\u{e9}end"));
        assert_eq!(report("1", None, "short").output_tail(), "short");
    }
}
