//! `tessera get [KIND[/NAME]]`: one table per kind, as `kubectl get` and `flux get` show
//! them: readiness, reason, generations, the kind's own facts and the message; `-w` prints
//! each row again when it changes.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use super::api::{Format, FormatArgs, ServerArgs, Target, write_data};
use super::running::runtime;
use crate::server::admin::{ConditionReport, ConditionType, ObjectKind, ObjectReport, Relation};

/// `tessera get`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera get                          every object, one table per kind
  tessera get packages                 the Packages (package, packages, pkg)
  tessera get certificate/server-tls -o json
  tessera get aff -n lab -w            the Affectations of namespace lab, then each change")]
pub(super) struct GetArgs {
    /// A kind (`package`, `packages`, `pkg`...), or `KIND/NAME` for one object [default:
    /// every kind].
    #[arg(value_name = "KIND[/NAME]")]
    what: Option<String>,
    /// Only the objects of this namespace.
    #[arg(short = 'n', long, help_heading = "Selection")]
    namespace: Option<String>,
    /// After the tables, print each row again when it changes (until interrupted).
    #[arg(short = 'w', long, help_heading = "Output")]
    watch: bool,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
}

/// Prints the objects asked for.
pub(super) fn run(args: &GetArgs) -> Result<ExitCode> {
    quiet_on_closed_pipe(runtime()?.block_on(get(args)))
}

/// A reader that stopped reading (`tessera get | head`) ends the command quietly and
/// successfully, as `ls | head` does.
pub(super) fn quiet_on_closed_pipe(result: Result<ExitCode>) -> Result<ExitCode> {
    match result {
        Err(error)
            if error.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

async fn get(args: &GetArgs) -> Result<ExitCode> {
    let wanted = args.what.as_deref().map(Wanted::parse).transpose()?;
    let target = args.server.target().await?;
    // Every object of the namespace, for what a row adds up from others (an Activation's
    // counts are its Affectations'); the report is small, one per object.
    let all = fetch(&target, &args.server, args.namespace.as_deref()).await?;
    let objects = select(&all, wanted.as_ref());
    let mut out = std::io::stdout().lock();
    if let Some(Wanted {
        kind,
        name: Some(name),
    }) = &wanted
        && objects.is_empty()
    {
        bail!(
            "no {kind}/{name}{}",
            in_namespace(args.namespace.as_deref())
        );
    }
    let width = message_width();
    let now = jiff::Timestamp::now();
    match args.format.output {
        Format::Table if objects.is_empty() => writeln!(out, "No objects found.")?,
        Format::Table => write_tables(&mut out, &objects, &all, wanted.is_none(), width, now)?,
        format => match &wanted {
            Some(Wanted { name: Some(_), .. }) => write_data(&mut out, format, &objects[0])?,
            _ => write_data(&mut out, format, &objects)?,
        },
    }
    out.flush()?;
    if !args.watch {
        return Ok(ExitCode::SUCCESS);
    }
    drop(out);
    watch(args, &target, wanted.as_ref(), &all, width).await
}

/// The admin API has no stream of changes (its report is replaced whole after each pass),
/// and the status files are rewritten in place: asking again every second shows a change
/// within a second, for one in-memory read of the server per second.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Prints, without a header, each row that changes (its age aside) and each object gone.
async fn watch(
    args: &GetArgs,
    target: &Target,
    wanted: Option<&Wanted>,
    first: &[ObjectReport],
    width: usize,
) -> Result<ExitCode> {
    let key = |o: &ObjectReport| (o.kind, o.namespace.clone(), o.name.clone());
    // A row without its SINCE cell, which changes by itself as time passes.
    let cells = |o: &ObjectReport, all: &[ObjectReport], now| {
        let mut cells = row(o, all, width, now, true);
        cells.remove(cells.len() - 2);
        cells
    };
    let now = jiff::Timestamp::now();
    let mut shown: HashMap<_, Vec<String>> = select(first, wanted)
        .iter()
        .map(|o| (key(o), cells(o, first, now)))
        .collect();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let now = jiff::Timestamp::now();
        let Ok(all) = fetch(target, &args.server, args.namespace.as_deref()).await else {
            continue; // A server restarting: the next poll tells.
        };
        let mut out = std::io::stdout().lock();
        let mut seen = std::collections::HashSet::new();
        for object in select(&all, wanted) {
            let k = key(&object);
            seen.insert(k.clone());
            let now_cells = cells(&object, &all, now);
            if shown.get(&k) == Some(&now_cells) {
                continue;
            }
            match args.format.output {
                Format::Table => {
                    let mut table = Vec::new();
                    write_tables(
                        &mut table,
                        std::slice::from_ref(&object),
                        &all,
                        true,
                        width,
                        now,
                    )?;
                    let table = String::from_utf8_lossy(&table);
                    for line in table.lines().skip(1) {
                        writeln!(out, "{line}")?;
                    }
                }
                _ => writeln!(out, "{}", serde_json::to_string(&object)?)?,
            }
            shown.insert(k, now_cells);
        }
        let gone: Vec<_> = shown
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            writeln!(out, "{}/{} deleted", k.0.as_str().to_lowercase(), k.2)?;
            shown.remove(&k);
        }
        out.flush()?;
    }
}

/// What `tessera get` was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Wanted {
    pub(super) kind: ObjectKind,
    pub(super) name: Option<String>,
}

impl Wanted {
    /// `KIND` or `KIND/NAME`, the kind in any case, singular, plural or short.
    pub(super) fn parse(text: &str) -> Result<Self> {
        let (kind, name) = match text.split_once('/') {
            Some((kind, name)) if !name.is_empty() => (kind, Some(name.to_owned())),
            Some(_) => bail!("{text:?}: write KIND/NAME"),
            None => (text, None),
        };
        Ok(Self {
            kind: parse_kind(kind)?,
            name,
        })
    }
}

/// The kinds with every name they answer to: singular, plural, the CRDs' short names
/// (src/resources), and `cert`/`certs` as cert-manager users type them.
const KIND_NAMES: [(ObjectKind, &[&str]); 7] = [
    (ObjectKind::Server, &["server", "servers"]),
    (ObjectKind::Issuer, &["issuer", "issuers"]),
    (
        ObjectKind::Certificate,
        &["certificate", "certificates", "tcert", "cert", "certs"],
    ),
    (ObjectKind::Package, &["package", "packages", "pkg"]),
    (
        ObjectKind::Activation,
        &["activation", "activations", "act"],
    ),
    (
        ObjectKind::Affectation,
        &["affectation", "affectations", "aff"],
    ),
    (ObjectKind::Gateway, &["gateway", "gateways", "tgw"]),
];

/// A kind by any of its names, in any case.
pub(super) fn parse_kind(text: &str) -> Result<ObjectKind> {
    let lower = text.to_ascii_lowercase();
    KIND_NAMES
        .iter()
        .find(|(_, names)| names.contains(&lower.as_str()))
        .map(|(kind, _)| *kind)
        .with_context(|| {
            format!(
                "unknown kind {text:?}: one of {}",
                KIND_NAMES
                    .iter()
                    .map(|(_, names)| names.join("/"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// The body of `/api/v1/objects`.
#[derive(Deserialize)]
struct ObjectList {
    objects: Vec<ObjectReport>,
}

/// Every object of `namespace` (of every one when `None`), from the server or, when none
/// runs, the status files of its state directory.
pub(super) async fn fetch(
    target: &Target,
    server: &ServerArgs,
    namespace: Option<&str>,
) -> Result<Vec<ObjectReport>> {
    Ok(match target {
        Target::Api(api) => {
            let path = match namespace {
                Some(namespace) => format!("/api/v1/objects?namespace={}", encode(namespace)),
                None => "/api/v1/objects".to_owned(),
            };
            api.get::<ObjectList>(&path).await?.objects
        }
        Target::State(_) => {
            let dir = server
                .state
                .state
                .clone()
                .unwrap_or_else(|| server.state.config.join(".tessera"));
            let mut objects = crate::reconcile::status::read(&dir)?;
            objects.retain(|o| namespace.is_none_or(|n| n == o.namespace));
            objects
        }
    })
}

/// The objects of `all` that `wanted` names (all of them when `None`).
pub(super) fn select(all: &[ObjectReport], wanted: Option<&Wanted>) -> Vec<ObjectReport> {
    all.iter()
        .filter(|o| {
            wanted.is_none_or(|w| {
                w.kind == o.kind && w.name.as_deref().is_none_or(|name| name == o.name)
            })
        })
        .cloned()
        .collect()
}

/// `text` percent-encoded for a query string (names are DNS labels; this is for the rest).
pub(super) fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// " in namespace N", or nothing.
fn in_namespace(namespace: Option<&str>) -> String {
    namespace.map_or_else(String::new, |n| format!(" in namespace {n}"))
}

/// Characters the MESSAGE column may take: what the terminal leaves (`COLUMNS`, which shells
/// export) after the other columns, else 60, a line's worth beside the other columns.
fn message_width() -> usize {
    /// The message's share when the terminal's width is unknown.
    const DEFAULT: usize = 60;
    /// Room the other columns of a typical table take.
    const OTHER_COLUMNS: usize = 70;
    /// Below this a message says nothing; wrap rather than cut it shorter.
    const NARROWEST: usize = 30;
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .map_or(DEFAULT, |columns| {
            columns.saturating_sub(OTHER_COLUMNS).max(NARROWEST)
        })
}

/// Writes one table per kind in `objects` (in the order they come, which is the report's:
/// kind, then name), with what rows add up from the others in `context`; names are written
/// `kind/name` when `all_kinds` is asked for.
pub(super) fn write_tables(
    out: &mut impl Write,
    objects: &[ObjectReport],
    context: &[ObjectReport],
    all_kinds: bool,
    width: usize,
    now: jiff::Timestamp,
) -> Result<()> {
    let mut first = true;
    let mut start = 0;
    while start < objects.len() {
        let kind = objects[start].kind;
        let end = objects[start..]
            .iter()
            .position(|o| o.kind != kind)
            .map_or(objects.len(), |n| start + n);
        let group = &objects[start..end];
        if !first {
            writeln!(out)?;
        }
        first = false;
        let namespaced = group.iter().any(|o| o.namespace != group[0].namespace)
            || group.iter().any(|o| o.namespace != "default");
        let suspended = group.iter().any(|o| o.details.contains_key("suspended"));
        let mut headers = vec!["NAME"];
        if namespaced {
            headers.insert(0, "NAMESPACE");
        }
        headers.extend(["READY", "REASON"]);
        headers.extend(kind_columns(kind));
        if suspended {
            headers.push("SUSPENDED");
        }
        headers.extend(["GEN", "SINCE", "MESSAGE"]);
        let rows: Vec<Vec<String>> = group
            .iter()
            .map(|o| {
                let mut cells = row(o, context, width, now, all_kinds);
                if !namespaced {
                    cells.remove(0);
                }
                if suspended {
                    let at = cells.len() - 3;
                    cells.insert(at, text(o.details.get("suspended")));
                }
                cells
            })
            .collect();
        write_table(out, &headers, &rows)?;
        start = end;
    }
    Ok(())
}

/// One object's cells: NAMESPACE, NAME, READY, REASON, the kind's, GEN, SINCE, MESSAGE.
fn row(
    o: &ObjectReport,
    all: &[ObjectReport],
    width: usize,
    now: jiff::Timestamp,
    kind_prefix: bool,
) -> Vec<String> {
    let ready = o
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready);
    let name = if kind_prefix {
        format!("{}/{}", o.kind.as_str().to_lowercase(), o.name)
    } else {
        o.name.clone()
    };
    let mut cells = vec![
        o.namespace.clone(),
        name,
        ready.map_or("Unknown".to_owned(), |c| c.status.as_str().to_owned()),
        ready.map_or("-".to_owned(), |c| c.reason.clone()),
    ];
    cells.extend(kind_cells(o, all, now));
    cells.push(format!(
        "{}/{}",
        o.generation,
        o.observed_generation
            .map_or("-".to_owned(), |g| g.to_string())
    ));
    cells.push(ready.map_or("-".to_owned(), |c| since(c, now)));
    cells.push(trimmed(&message(o, ready), width));
    cells
}

/// The message worth showing: Ready's, else the first problem's.
fn message(o: &ObjectReport, ready: Option<&ConditionReport>) -> String {
    match (ready, o.problems.first()) {
        (Some(c), _) if !c.message.is_empty() => c.message.clone(),
        (_, Some(problem)) => problem.message.clone(),
        _ => String::new(),
    }
}

/// The columns of a kind's own facts.
fn kind_columns(kind: ObjectKind) -> Vec<&'static str> {
    match kind {
        ObjectKind::Package => vec!["PACKAGE ID", "FRAGMENTS"],
        ObjectKind::Certificate => vec!["NOT AFTER", "RENEWAL"],
        ObjectKind::Issuer => vec!["NOT AFTER"],
        ObjectKind::Activation => vec![
            "PACKAGE ID",
            "TARGETS",
            "WAITING",
            "NOTIFIED",
            "SUCCESS",
            "ERROR",
        ],
        ObjectKind::Affectation => vec!["TARGETS", "WAITING", "NOTIFIED", "SUCCESS", "ERROR"],
        ObjectKind::Server | ObjectKind::Gateway => vec![],
    }
}

/// The cells of [`kind_columns`] for `o`; an Activation's counts add up those of the
/// Affectations that name it (found among `all`).
fn kind_cells(o: &ObjectReport, all: &[ObjectReport], now: jiff::Timestamp) -> Vec<String> {
    let d = &o.details;
    match o.kind {
        ObjectKind::Package => vec![text(d.get("packageId")), text(d.get("fragments"))],
        ObjectKind::Certificate => vec![
            time(d.get("notAfter"), now),
            time(d.get("renewalTime"), now),
        ],
        ObjectKind::Issuer => vec![time(d.get("notAfter"), now)],
        ObjectKind::Affectation => counts(&[o]),
        ObjectKind::Activation => {
            let affectations: Vec<&ObjectReport> = o
                .related
                .iter()
                .filter(|r| r.relation == Relation::ReferredBy && r.kind == ObjectKind::Affectation)
                .filter_map(|r| {
                    all.iter().find(|a| {
                        a.kind == ObjectKind::Affectation
                            && a.namespace == r.namespace
                            && a.name == r.name
                    })
                })
                .collect();
            let mut cells = vec![text(d.get("packageId"))];
            if affectations.is_empty() {
                cells.extend(std::iter::repeat_n("-".to_owned(), 5));
            } else {
                cells.extend(counts(&affectations));
            }
            cells
        }
        ObjectKind::Server | ObjectKind::Gateway => vec![],
    }
}

/// TARGETS, WAITING, NOTIFIED (with downloading, installing and stale), SUCCESS, ERROR,
/// added up over `affectations`.
fn counts(affectations: &[&ObjectReport]) -> Vec<String> {
    let mut sums = [0_i64; 5];
    let mut known = false;
    for a in affectations {
        let number = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
        if let Some(targets) = a.details.get("targets") {
            known = true;
            sums[0] += number(Some(targets));
        }
        if let Some(c) = a.details.get("counts") {
            known = true;
            sums[1] += number(c.get("waiting"));
            sums[2] += ["notified", "stale", "downloading", "installing"]
                .iter()
                .map(|k| number(c.get(*k)))
                .sum::<i64>();
            sums[3] += number(c.get("success"));
            sums[4] += number(c.get("error"));
        }
    }
    if !known {
        return vec!["-".to_owned(); 5];
    }
    sums.iter().map(i64::to_string).collect()
}

/// A detail as text (`-` when absent).
fn text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// A timestamp detail with how far it is from `now` (`2026-03-01T00:00:00Z (in 30d)`).
fn time(value: Option<&Value>, now: jiff::Timestamp) -> String {
    let Some(written) = value.and_then(Value::as_str) else {
        return "-".to_owned();
    };
    match written.parse::<jiff::Timestamp>() {
        Ok(at) => {
            let seconds = at.as_second() - now.as_second();
            if seconds >= 0 {
                format!("{written} (in {})", span(seconds))
            } else {
                format!("{written} ({} ago)", span(-seconds))
            }
        }
        Err(_) => written.to_owned(),
    }
}

/// How long the condition has had its status (`5m`), from its transition time.
fn since(c: &ConditionReport, now: jiff::Timestamp) -> String {
    c.last_transition_time
        .parse::<jiff::Timestamp>()
        .map_or("-".to_owned(), |at| {
            span((now.as_second() - at.as_second()).max(0))
        })
}

/// A duration as kubectl writes an age: its largest unit (`42s`, `5m`, `3h`, `12d`).
pub(super) fn span(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The first line of `message`, cut to `width` characters with `…` when longer.
pub(super) fn trimmed(message: &str, width: usize) -> String {
    let line = message.lines().next().unwrap_or("");
    if line.chars().count() <= width && !message.contains('\n') {
        return line.to_owned();
    }
    let kept: String = line.chars().take(width.saturating_sub(1)).collect();
    format!("{}…", kept.trim_end())
}

/// Writes `rows` under `headers`, each column as wide as its widest cell, two spaces apart;
/// the last column is not padded.
pub(super) fn write_table(
    out: &mut impl Write,
    headers: &[&str],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(width - cell.chars().count() + 2));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &mut headers.iter().copied())?;
    for row in rows {
        line(out, &mut row.iter().map(String::as_str))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admin::{ConditionStatus, RelatedReport};

    fn object(kind: ObjectKind, name: &str, details: &Value) -> ObjectReport {
        ObjectReport {
            api_version: "tessera.dev/v1alpha1".into(),
            kind,
            namespace: "default".into(),
            name: name.into(),
            source: None,
            generation: 2,
            observed_generation: Some(2),
            source_revision: "abc".into(),
            details: details.as_object().cloned().unwrap_or_default(),
            conditions: vec![ConditionReport {
                type_: ConditionType::Ready,
                status: ConditionStatus::True,
                reason: "Built".into(),
                message: "package 1700000001, 2 fragments of 512 KiB, a very long message indeed that goes on".into(),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
            }],
            problems: vec![],
            spec: None,
            related: vec![],
        }
    }

    fn rendered(objects: &[ObjectReport], all_kinds: bool) -> String {
        let mut out = Vec::new();
        let now = "2026-01-01T00:05:00Z".parse().unwrap();
        write_tables(&mut out, objects, objects, all_kinds, 40, now).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn kinds_are_read_in_any_case_singular_plural_or_short() {
        for (text, kind) in [
            ("Package", ObjectKind::Package),
            ("packages", ObjectKind::Package),
            ("PKG", ObjectKind::Package),
            ("cert", ObjectKind::Certificate),
            ("tcert", ObjectKind::Certificate),
            ("aff", ObjectKind::Affectation),
            ("act", ObjectKind::Activation),
            ("tgw", ObjectKind::Gateway),
            ("issuers", ObjectKind::Issuer),
            ("server", ObjectKind::Server),
        ] {
            assert_eq!(parse_kind(text).unwrap(), kind, "{text}");
        }
        assert_eq!(
            Wanted::parse("Certificate/server-tls").unwrap(),
            Wanted {
                kind: ObjectKind::Certificate,
                name: Some("server-tls".into())
            }
        );
        let error = parse_kind("pods").unwrap_err().to_string();
        assert!(error.contains("package/packages/pkg"), "{error}");
        assert!(Wanted::parse("package/").is_err());
    }

    #[test]
    fn a_package_table_has_its_id_fragments_and_a_trimmed_message() {
        let text = rendered(
            &[object(
                ObjectKind::Package,
                "hello",
                &serde_json::json!({"packageId": "1700000001", "fragments": 2}),
            )],
            false,
        );
        assert_eq!(
            text,
            concat!(
                "NAME   READY  REASON  PACKAGE ID  FRAGMENTS  GEN  SINCE  MESSAGE\n",
                "hello  True   Built   1700000001  2          2/2  5m     package 1700000001, 2 fragments of 512…\n",
            )
        );
    }

    #[test]
    fn every_kind_gets_its_table_and_an_activation_adds_up_its_affectations() {
        let mut activation = object(
            ObjectKind::Activation,
            "hello",
            &serde_json::json!({"packageId": "1700000001"}),
        );
        activation.related = vec![RelatedReport {
            relation: Relation::ReferredBy,
            kind: ObjectKind::Affectation,
            namespace: "default".into(),
            name: "lab".into(),
            field: "spec.activationRef".into(),
        }];
        let mut affectation = object(
            ObjectKind::Affectation,
            "lab",
            &serde_json::json!({"targets": 4, "counts": {"waiting": 1, "notified": 1, "stale": 0,
                "downloading": 0, "installing": 0, "success": 1, "error": 1},
                "suspended": "operator"}),
        );
        affectation.namespace = "lab".into();
        activation.related[0].namespace = "lab".into();
        let mut certificate = object(
            ObjectKind::Certificate,
            "server-tls",
            &serde_json::json!({"notAfter": "2026-01-31T00:00:00Z", "renewalTime": "2026-01-21T00:00:00Z"}),
        );
        certificate.conditions[0].reason = "Issued".into();
        certificate.conditions[0].message = "serial 01".into();
        let text = rendered(&[certificate, activation, affectation], true);
        assert_eq!(
            text,
            concat!(
                "NAME                    READY  REASON  NOT AFTER                      RENEWAL                        GEN  SINCE  MESSAGE\n",
                "certificate/server-tls  True   Issued  2026-01-31T00:00:00Z (in 29d)  2026-01-21T00:00:00Z (in 19d)  2/2  5m     serial 01\n",
                "\n",
                "NAME              READY  REASON  PACKAGE ID  TARGETS  WAITING  NOTIFIED  SUCCESS  ERROR  GEN  SINCE  MESSAGE\n",
                "activation/hello  True   Built   1700000001  4        1        1         1        1      2/2  5m     package 1700000001, 2 fragments of 512…\n",
                "\n",
                "NAMESPACE  NAME             READY  REASON  TARGETS  WAITING  NOTIFIED  SUCCESS  ERROR  SUSPENDED  GEN  SINCE  MESSAGE\n",
                "lab        affectation/lab  True   Built   4        1        1         1        1      operator   2/2  5m     package 1700000001, 2 fragments of 512…\n",
            )
        );
    }
}
