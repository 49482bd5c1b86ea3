//! `tessera describe KIND/NAME`: one object in full, as `kubectl describe` and `cmctl
//! status` show it: its spec, every condition, its problems with file and line, the objects
//! it names and those that name it, and what recently happened to it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{Format, FormatArgs, ServerArgs, Target, write_data};
use super::get::{Wanted, encode, fetch, quiet_on_closed_pipe, select, span, write_table};
use super::running::runtime;
use crate::server::admin::{ObjectReport, Relation};

/// Events shown: the last few tell what just happened; `tessera events` has the rest.
const EVENTS_SHOWN: usize = 10;

/// `tessera describe`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera describe activation/hello
  tessera describe cert/server-tls -n pki
  tessera describe package/hello -o yaml")]
pub(super) struct DescribeArgs {
    /// The object: `KIND/NAME` (`package/hello`, `cert/server-tls`).
    #[arg(value_name = "KIND/NAME")]
    what: String,
    /// The object's namespace [default: any; an error when the name is in several].
    #[arg(short = 'n', long, help_heading = "Selection")]
    namespace: Option<String>,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
}

/// What `/api/v1/events` answers.
#[derive(Debug, Default, Deserialize)]
struct EventList {
    events: Vec<EventLine>,
}

/// One event, as `/api/v1/events` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct EventLine {
    #[serde(default)]
    id: Value,
    /// RFC 3339, or seconds since the epoch.
    #[serde(default)]
    at: Value,
    #[serde(default, rename = "type")]
    type_: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    computer: Option<String>,
}

/// The object and its events, as `-o json|yaml` write it.
#[derive(Serialize)]
struct Described<'a> {
    #[serde(flatten)]
    object: &'a ObjectReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<&'a [EventLine]>,
}

/// Prints one object.
pub(super) fn run(args: &DescribeArgs) -> Result<ExitCode> {
    quiet_on_closed_pipe(runtime()?.block_on(describe(args)))
}

async fn describe(args: &DescribeArgs) -> Result<ExitCode> {
    let wanted = Wanted::parse(&args.what)?;
    let Some(name) = wanted.name.clone() else {
        bail!(
            "{}: write KIND/NAME (`tessera get {}` lists them)",
            args.what,
            args.what
        );
    };
    let target = args.server.target().await?;
    let all = fetch(&target, &args.server, args.namespace.as_deref()).await?;
    let found = select(&all, Some(&wanted));
    let object = match found.as_slice() {
        [] => bail!("no {}/{name}", wanted.kind),
        [one] => one,
        several => bail!(
            "{}/{name} is in several namespaces ({}): pass -n NAMESPACE",
            wanted.kind,
            several
                .iter()
                .map(|o| o.namespace.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // None: the events cannot be known (no server, or one without the events endpoint).
    let events = match &target {
        Target::Api(api) => {
            let path = format!(
                "/api/v1/events?for={}&limit={EVENTS_SHOWN}",
                encode(&format!("{}/{}", object.kind, object.name))
            );
            api.get_optional::<EventList>(&path)
                .await?
                .map(|list| list.events)
        }
        Target::State(db) => {
            let query = crate::store::db::journal::EventQuery {
                kind: Some(object.kind.as_str().to_owned()),
                name: Some(object.name.clone()),
                namespace: Some(object.namespace.clone()).filter(|ns| !ns.is_empty()),
                after: None,
                limit: EVENTS_SHOWN,
            };
            // A short query: run in place rather than moving the database to a thread.
            let logged = tokio::task::block_in_place(|| db.event_log(&query))
                .context("failed to read the events from the state database")?;
            Some(serde_json::from_value(serde_json::to_value(logged)?)?)
        }
    };
    let mut out = std::io::stdout().lock();
    match args.format.output {
        Format::Table => {
            let now = jiff::Timestamp::now();
            write_description(
                &mut out,
                object,
                events.as_deref(),
                matches!(target, Target::Api(_)),
                now,
            )?
        }
        format => write_data(
            &mut out,
            format,
            &Described {
                object,
                events: events.as_deref(),
            },
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `object` for people; `from_server` says whether events could be known (the state
/// directory alone has none).
fn write_description(
    out: &mut impl Write,
    object: &ObjectReport,
    events: Option<&[EventLine]>,
    from_server: bool,
    now: jiff::Timestamp,
) -> Result<()> {
    writeln!(out, "Name:        {}", object.name)?;
    writeln!(out, "Namespace:   {}", object.namespace)?;
    writeln!(out, "Kind:        {} ({})", object.kind, object.api_version)?;
    if let Some(source) = &object.source {
        writeln!(out, "Source:      {}:{}", source.file, source.line)?;
    }
    writeln!(
        out,
        "Generation:  {} (observed: {})",
        object.generation,
        object
            .observed_generation
            .map_or("none in effect".to_owned(), |g| g.to_string())
    )?;
    writeln!(out, "Revision:    {}", object.source_revision)?;
    if !object.details.is_empty() {
        writeln!(out, "Status:")?;
        write_indented(out, &serde_saphyr::to_string(&object.details)?)?;
    }
    match &object.spec {
        Some(spec) => {
            writeln!(out, "Spec:")?;
            write_indented(out, &serde_saphyr::to_string(spec)?)?;
        }
        None => writeln!(out, "Spec:        <no valid version applied>")?,
    }
    writeln!(out, "Conditions:")?;
    let rows: Vec<Vec<String>> = object
        .conditions
        .iter()
        .map(|c| {
            vec![
                c.type_.to_string(),
                c.status.as_str().to_owned(),
                c.reason.clone(),
                c.last_transition_time.clone(),
                c.message.clone(),
            ]
        })
        .collect();
    let mut table = Vec::new();
    write_table(
        &mut table,
        &["TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"],
        &rows,
    )?;
    write_indented(out, &String::from_utf8_lossy(&table))?;
    if object.problems.is_empty() {
        writeln!(out, "Problems:    <none>")?;
    } else {
        writeln!(out, "Problems:")?;
        for p in &object.problems {
            let place = match (&p.file, p.line) {
                (Some(file), Some(line)) => format!("{file}:{line}: "),
                (Some(file), None) => format!("{file}: "),
                _ => String::new(),
            };
            let field = p
                .field
                .as_deref()
                .map_or(String::new(), |f| format!("{f}: "));
            writeln!(out, "  {place}{field}{}", p.message)?;
        }
    }
    write_related(out, object)?;
    write_events(out, events, from_server, now)?;
    Ok(())
}

/// The objects `object` names and those naming it.
fn write_related(out: &mut impl Write, object: &ObjectReport) -> Result<()> {
    if object.related.is_empty() {
        writeln!(out, "Related:     <none>")?;
    } else {
        writeln!(out, "Related:")?;
        let rows: Vec<Vec<String>> = object
            .related
            .iter()
            .map(|r| {
                let how = match r.relation {
                    Relation::RefersTo => format!("named in {}", r.field),
                    Relation::ReferredBy => format!("names this in {}", r.field),
                };
                vec![format!("{}/{}", r.kind, r.name), r.namespace.clone(), how]
            })
            .collect();
        let mut table = Vec::new();
        write_table(&mut table, &["OBJECT", "NAMESPACE", "RELATION"], &rows)?;
        write_indented(out, &String::from_utf8_lossy(&table))?;
    }
    Ok(())
}

/// The recent events (`None`: not known).
fn write_events(
    out: &mut impl Write,
    events: Option<&[EventLine]>,
    from_server: bool,
    now: jiff::Timestamp,
) -> Result<()> {
    match events {
        None if !from_server => writeln!(out, "Events:      <needs a running server>")?,
        None => writeln!(out, "Events:      <none>")?,
        Some([]) => writeln!(out, "Events:      <none>")?,
        Some(events) => {
            writeln!(out, "Events:")?;
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    // Offers and results already name their computer in the message.
                    let message = match &e.computer {
                        Some(computer) if !e.message.contains(computer.as_str()) => {
                            format!("{computer}: {}", e.message)
                        }
                        _ => e.message.clone(),
                    };
                    vec![age(&e.at, now), e.type_.clone(), e.reason.clone(), message]
                })
                .collect();
            let mut table = Vec::new();
            write_table(&mut table, &["AGE", "TYPE", "REASON", "MESSAGE"], &rows)?;
            write_indented(out, &String::from_utf8_lossy(&table))?;
        }
    }
    Ok(())
}

/// How long ago an event's `at` (RFC 3339 or epoch seconds) was.
fn age(at: &Value, now: jiff::Timestamp) -> String {
    let seconds = match at {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse::<jiff::Timestamp>().ok().map(|t| t.as_second()),
        _ => None,
    };
    seconds.map_or("-".to_owned(), |s| span((now.as_second() - s).max(0)))
}

/// Writes `text` two spaces in.
fn write_indented(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    for line in text.lines() {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admin::{
        ConditionReport, ConditionStatus, ConditionType, ObjectKind, ProblemReport, RelatedReport,
        SourceRef,
    };

    #[test]
    fn a_description_has_spec_conditions_problems_related_and_events() {
        let object = ObjectReport {
            api_version: "tessera.dev/v1alpha1".into(),
            kind: ObjectKind::Activation,
            namespace: "default".into(),
            name: "hello".into(),
            source: Some(SourceRef {
                file: "activations.yaml".into(),
                line: 4,
            }),
            generation: 3,
            observed_generation: Some(2),
            source_revision: "abc".into(),
            details: serde_json::json!({"packageId": "1700000001"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
            conditions: vec![ConditionReport {
                type_: ConditionType::Ready,
                status: ConditionStatus::False,
                reason: "InvalidSpec".into(),
                message: "the last valid version is served".into(),
                last_transition_time: "2026-01-01T00:00:00Z".into(),
            }],
            problems: vec![ProblemReport {
                file: Some("activations.yaml".into()),
                line: Some(9),
                object: None,
                field: Some("spec.infoLocation".into()),
                message: "must be HTTPS".into(),
            }],
            spec: Some(serde_json::json!({"packageRef": {"name": "hello"}})),
            related: vec![
                RelatedReport {
                    relation: Relation::RefersTo,
                    kind: ObjectKind::Package,
                    namespace: "default".into(),
                    name: "hello".into(),
                    field: "spec.packageRef".into(),
                },
                RelatedReport {
                    relation: Relation::ReferredBy,
                    kind: ObjectKind::Affectation,
                    namespace: "default".into(),
                    name: "lab-hello".into(),
                    field: "spec.activationRef".into(),
                },
            ],
        };
        let events = [EventLine {
            id: Value::from(7),
            at: Value::from("2026-01-01T00:04:00Z"),
            type_: "Normal".into(),
            reason: "Offered".into(),
            message: "offered package 1700000001".into(),
            computer: Some("pc-1".into()),
        }];
        let mut out = Vec::new();
        let now = "2026-01-01T00:05:00Z".parse().unwrap();
        write_description(&mut out, &object, Some(&events), true, now).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                "Name:        hello\n",
                "Namespace:   default\n",
                "Kind:        Activation (tessera.dev/v1alpha1)\n",
                "Source:      activations.yaml:4\n",
                "Generation:  3 (observed: 2)\n",
                "Revision:    abc\n",
                "Status:\n",
                "  packageId: \"1700000001\"\n",
                "Spec:\n",
                "  packageRef:\n",
                "    name: hello\n",
                "Conditions:\n",
                "  TYPE   STATUS  REASON       LAST TRANSITION       MESSAGE\n",
                "  Ready  False   InvalidSpec  2026-01-01T00:00:00Z  the last valid version is served\n",
                "Problems:\n",
                "  activations.yaml:9: spec.infoLocation: must be HTTPS\n",
                "Related:\n",
                "  OBJECT                 NAMESPACE  RELATION\n",
                "  Package/hello          default    named in spec.packageRef\n",
                "  Affectation/lab-hello  default    names this in spec.activationRef\n",
                "Events:\n",
                "  AGE  TYPE    REASON   MESSAGE\n",
                "  60s  Normal  Offered  pc-1: offered package 1700000001\n",
            )
        );
    }

    #[test]
    fn without_a_server_the_description_says_what_it_cannot_know() {
        let object = ObjectReport {
            api_version: "tessera.dev/v1alpha1".into(),
            kind: ObjectKind::Package,
            namespace: "default".into(),
            name: "hello".into(),
            source: None,
            generation: 1,
            observed_generation: None,
            source_revision: "abc".into(),
            details: serde_json::Map::new(),
            conditions: vec![],
            problems: vec![],
            spec: None,
            related: vec![],
        };
        let mut out = Vec::new();
        write_description(&mut out, &object, None, false, jiff::Timestamp::UNIX_EPOCH).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Generation:  1 (observed: none in effect)"),
            "{text}"
        );
        assert!(
            text.contains("Spec:        <no valid version applied>"),
            "{text}"
        );
        assert!(
            text.contains("Events:      <needs a running server>"),
            "{text}"
        );
    }

    #[test]
    fn an_event_names_its_computer_once() {
        let event = |message: &str| EventLine {
            id: Value::from(1),
            at: Value::from("2026-01-01T00:04:00Z"),
            type_: "Normal".into(),
            reason: "Offered".into(),
            message: message.into(),
            computer: Some("pc-1".into()),
        };
        let events = [
            event("package 1700000001 offered to pc-1"),
            event("offered package 1700000001"),
        ];
        let mut out = Vec::new();
        let now = "2026-01-01T00:05:00Z".parse().unwrap();
        write_events(&mut out, Some(&events), true, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("  Offered  package 1700000001 offered to pc-1\n"),
            "{text}"
        );
        assert!(
            text.contains("  Offered  pc-1: offered package 1700000001\n"),
            "{text}"
        );
    }
}
