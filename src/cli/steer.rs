//! `tessera suspend`, `resume`, `reconcile` and `renew`: steer a running server through its
//! admin API (`server::admin::actions`). They need the server itself (its leader): a state
//! directory alone cannot run a pass.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;
use serde_json::Value;

use super::api::{Format, FormatArgs, ServerArgs, write_data};
use super::running::runtime;

/// `tessera suspend` and `tessera resume`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera suspend activation/firefox           stop offering firefox now; notified computers may finish
  tessera suspend affectation/lab-firefox -n lab
  tessera resume activation/firefox            offer it again
  tessera get activation/firefox               SUSPENDED says who holds it: operator or spec")]
pub(super) struct SuspendArgs {
    /// The object, as `activation/NAME` or `affectation/NAME`.
    #[arg(value_name = "KIND/NAME")]
    object: String,
    /// Its namespace [default: the only object of that name].
    #[arg(short = 'n', long, help_heading = "Selection")]
    namespace: Option<String>,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
}

/// `tessera reconcile`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera reconcile                            a pass now, and what it did
  tessera reconcile --source                   fetch the git branch first
  tessera reconcile --admin http://tessera.internal:9090 -o json")]
pub(super) struct ReconcileArgs {
    /// Fetch the git branch first (the webhook's path); a new commit then starts a pass of
    /// its own.
    #[arg(long, help_heading = "Selection")]
    source: bool,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
}

/// `tessera renew`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera renew tessera-server                 a new certificate now, served without a restart
  tessera renew gateway-tls -n dmz -o json
  tessera events --for Certificate/tessera-server   the request and the renewal")]
pub(super) struct RenewArgs {
    /// The Certificate's name.
    #[arg(value_name = "CERTIFICATE")]
    certificate: String,
    /// Its namespace [default: the only Certificate of that name].
    #[arg(short = 'n', long, help_heading = "Selection")]
    namespace: Option<String>,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
}

/// Suspends (`suspend` true) or resumes the object of `args`.
pub(super) fn suspend(args: &SuspendArgs, suspend: bool) -> Result<ExitCode> {
    let (kind, name) = object(&args.object)?;
    let verb = if suspend { "suspend" } else { "resume" };
    let path = format!(
        "/api/v1/objects/{kind}/{name}/{verb}{}",
        namespace_query(args.namespace.as_deref())?
    );
    act(
        &args.server,
        args.format.output,
        &path,
        &serde_json::json!({}),
    )
}

/// Asks for a reconcile pass now.
pub(super) fn reconcile(args: &ReconcileArgs) -> Result<ExitCode> {
    #[derive(Serialize)]
    struct Body {
        source: bool,
    }
    let body = Body {
        source: args.source,
    };
    act(&args.server, args.format.output, "/api/v1/reconcile", &body)
}

/// Asks for a new certificate now.
pub(super) fn renew(args: &RenewArgs) -> Result<ExitCode> {
    let name = checked_name(&args.certificate)?;
    let path = format!(
        "/api/v1/certificates/{name}/renew{}",
        namespace_query(args.namespace.as_deref())?
    );
    act(
        &args.server,
        args.format.output,
        &path,
        &serde_json::json!({}),
    )
}

/// Posts `body` to `path` of the running server and prints its answer.
fn act<B: Serialize>(
    server: &ServerArgs,
    format: Format,
    path: &str,
    body: &B,
) -> Result<ExitCode> {
    let answer: Value = runtime()?.block_on(async {
        let api = server.api().await.context(
            "this command steers a running server: start `tessera serve`, or pass --admin URL",
        )?;
        api.post(path, body).await
    })?;
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => write_action(&mut out, &answer)?,
        Format::Json | Format::Yaml => write_data(&mut out, format, &answer)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `kind/name` split, the kind as the API names it.
fn object(text: &str) -> Result<(&'static str, &str)> {
    let Some((kind, name)) = text.split_once('/') else {
        bail!("{text}: write the object as KIND/NAME, e.g. activation/firefox");
    };
    let kind = match kind.to_ascii_lowercase().as_str() {
        "activation" | "activations" | "act" => "Activation",
        "affectation" | "affectations" => "Affectation",
        _ => bail!("{kind}: only Activations and Affectations are suspended and resumed"),
    };
    Ok((kind, checked_name(name)?))
}

/// A Kubernetes object name (lowercase letters, digits, `-` and `.`): nothing a URL path
/// would need to escape.
fn checked_name(name: &str) -> Result<&str> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        bail!("{name:?}: not an object name (lowercase letters, digits, '-' and '.')");
    }
    Ok(name)
}

fn namespace_query(namespace: Option<&str>) -> Result<String> {
    Ok(match namespace {
        Some(namespace) => format!("?namespace={}", checked_name(namespace)?),
        None => String::new(),
    })
}

/// The answer for people: what happened, the pass, and the object's conditions after it.
fn write_action(out: &mut impl std::io::Write, answer: &Value) -> Result<()> {
    writeln!(out, "{}", answer["message"].as_str().unwrap_or_default())?;
    let pass = &answer["pass"];
    // A reconcile's message is already the pass's summary.
    if pass.is_object() && answer["action"] != "reconcile" {
        writeln!(
            out,
            "pass: revision {}, {} objects, {} ready, {} problems",
            pass["revision"].as_str().unwrap_or("?"),
            pass["objects"],
            pass["ready"],
            pass["problems"]
        )?;
    } else if answer["queued"] == true {
        writeln!(out, "pass: queued (it runs when the current one ends)")?;
    }
    let after = &answer["after"];
    if let Some(conditions) = after["conditions"].as_array() {
        for condition in conditions {
            if condition["type"] != "Ready" {
                continue;
            }
            writeln!(
                out,
                "{}: Ready={} {}: {}",
                answer["object"].as_str().unwrap_or_default(),
                condition["status"].as_str().unwrap_or("?"),
                condition["reason"].as_str().unwrap_or("?"),
                condition["message"].as_str().unwrap_or_default()
            )?;
        }
    }
    if let Some(by) = after["details"]["suspended"].as_str() {
        writeln!(out, "suspended by: {by}")?;
    }
    if let Some(revision) = after["details"]["revision"].as_i64() {
        writeln!(
            out,
            "revision {revision}, not after {}, renewal {}",
            after["details"]["notAfter"].as_str().unwrap_or("?"),
            after["details"]["renewalTime"].as_str().unwrap_or("?")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_kind_slash_name_of_the_two_kinds_that_suspend() {
        assert_eq!(
            object("activation/firefox").unwrap(),
            ("Activation", "firefox")
        );
        assert_eq!(
            object("Affectation/lab.1").unwrap(),
            ("Affectation", "lab.1")
        );
        assert!(object("firefox").is_err());
        assert!(object("package/firefox").is_err());
        assert!(object("activation/a b").is_err());
        assert_eq!(namespace_query(Some("it")).unwrap(), "?namespace=it");
        assert!(namespace_query(Some("a&b=c")).is_err());
    }

    #[test]
    fn an_answer_is_written_with_its_pass_and_the_object_after_it() {
        let answer = serde_json::json!({
            "action": "suspend",
            "object": "Activation/default/firefox",
            "message": "Activation/default/firefox suspended: nothing new is offered until it is resumed",
            "pass": {"revision": "3f2a9c1", "objects": 9, "ready": 8, "problems": 0},
            "queued": false,
            "after": {
                "details": {"packageId": "20261207221500", "suspended": "operator"},
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Suspended", "message": "suspended by an operator"},
                    {"type": "Stalled", "status": "True", "reason": "Suspended", "message": "suspended by an operator"}
                ]
            }
        });
        let mut out = Vec::new();
        write_action(&mut out, &answer).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Activation/default/firefox suspended: nothing new is offered until it is resumed\n\
             pass: revision 3f2a9c1, 9 objects, 8 ready, 0 problems\n\
             Activation/default/firefox: Ready=False Suspended: suspended by an operator\n\
             suspended by: operator\n"
        );
        // A reconcile's message is the pass's summary: said once.
        let reconciled = serde_json::json!({
            "action": "reconcile",
            "message": "reconciled revision 3f2a9c1: 9 objects, 9 ready",
            "pass": {"revision": "3f2a9c1", "objects": 9, "ready": 9, "problems": 0}
        });
        let mut out = Vec::new();
        write_action(&mut out, &reconciled).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "reconciled revision 3f2a9c1: 9 objects, 9 ready\n"
        );
        let queued = serde_json::json!({"message": "a pass is queued", "queued": true});
        let mut out = Vec::new();
        write_action(&mut out, &queued).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("pass: queued (it runs when the current one ends)\n")
        );
    }
}
