//! `tessera events`: what happened, newest last (builds, issuance and renewals, CA rollover
//! steps, offers, results, refusals, leadership changes, operator actions), from a running
//! server's admin API or, when none runs, its state database; `-w` follows.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use super::api::{Format, FormatArgs, ServerArgs, Target, write_data};
use super::running::runtime;
use crate::server::admin::{EventFilter, EventList};
use crate::store::db::journal::{EventType, LoggedEvent};

/// How often `-w` asks for new events. Polling, because the admin API answers requests and
/// streams nothing, and a state directory read without a server has nobody to push; each
/// poll is one query of what came after the last event seen, through primary keys. A
/// second is as fresh as statuses themselves (deployment counts lag by as much).
const POLL: Duration = Duration::from_secs(1);

/// `tessera events`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera events                              the last events, newest last
  tessera events --for Package/hello -o json  one object's
  tessera events --for Certificate -n lab     every Certificate's in namespace lab
  tessera events -w --admin http://127.0.0.1:9090")]
pub(super) struct EventsArgs {
    /// Only events of this object: `Kind/NAME` (`Package/hello`), or a whole kind.
    #[arg(long = "for", value_name = "KIND/NAME", help_heading = "Selection")]
    object: Option<String>,
    /// Only events of objects in this namespace.
    #[arg(short = 'n', long, help_heading = "Selection")]
    namespace: Option<String>,
    /// After printing, follow: print new events as they happen, until interrupted.
    #[arg(short = 'w', long, help_heading = "Output")]
    watch: bool,
    /// At most this many events (the newest).
    #[arg(long, default_value_t = crate::server::admin::EVENTS_LIMIT, help_heading = "Selection")]
    limit: usize,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
}

/// Prints the events; with `-w`, then follows. A closed pipe (`| head`) ends quietly.
pub(super) fn run(args: &EventsArgs) -> Result<ExitCode> {
    let done = runtime()?.block_on(print_events(args, &mut std::io::stdout()));
    match done {
        Err(error) if closed_pipe(&error) => Ok(ExitCode::SUCCESS),
        Err(error) => Err(error),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

async fn print_events(args: &EventsArgs, out: &mut impl Write) -> Result<()> {
    let target = args.server.target().await?;
    let mut filter = EventFilter {
        object: args.object.clone(),
        namespace: args.namespace.clone(),
        after: None,
        limit: Some(args.limit),
    };
    let first = read(&target, &filter).await?;
    let mut table = Table::default();
    match args.format.output {
        Format::Table => {
            if first.is_empty() && !args.watch {
                // As `kubectl`: the news on stderr, so a pipe reads no table that is not one.
                eprintln!("No events found.");
            } else {
                table.fit(&first);
                table.header(out)?;
                table.rows(out, &first, jiff::Timestamp::now())?;
            }
        }
        // Followed, JSON and YAML print one document per batch, as `kubectl get -w` does.
        format => write_data(
            out,
            format,
            &EventList {
                events: first.clone(),
            },
        )?,
    }
    out.flush()?;
    if !args.watch {
        return Ok(());
    }
    let mut after = first.last().map(|e| e.id.clone());
    loop {
        tokio::time::sleep(POLL).await;
        filter.after = Some(after.clone().unwrap_or_else(|| "0-0".to_owned()));
        let new = read(&target, &filter).await?;
        let Some(last) = new.last() else {
            // Nothing new: a write finds a closed pipe, so `| head` ends here too.
            out.flush()?;
            continue;
        };
        after = Some(last.id.clone());
        match args.format.output {
            Format::Table => table.rows(out, &new, jiff::Timestamp::now())?,
            format => write_data(out, format, &EventList { events: new })?,
        }
        out.flush()?;
    }
}

/// The events `filter` asks for, from the server's admin API or its database.
async fn read(target: &Target, filter: &EventFilter) -> Result<Vec<LoggedEvent>> {
    match target {
        Target::Api(api) => {
            let list: EventList = api
                .get(&format!("/api/v1/events{}", query_string(filter)))
                .await?;
            Ok(list.events)
        }
        Target::State(db) => {
            let query = filter.query()?;
            // A short query: run in place rather than moving the database to a thread.
            tokio::task::block_in_place(|| db.event_log(&query))
                .context("failed to read the events from the state database")
        }
    }
}

/// `?for=…&namespace=…&after=…&limit=…`, each value percent-encoded.
fn query_string(filter: &EventFilter) -> String {
    let pairs = [
        ("for", filter.object.clone()),
        ("namespace", filter.namespace.clone()),
        ("after", filter.after.clone()),
        ("limit", filter.limit.map(|l| l.to_string())),
    ];
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| {
            let value: String =
                url::form_urlencoded::byte_serialize(value.as_ref()?.as_bytes()).collect();
            Some(format!("{name}={value}"))
        })
        .collect();
    if encoded.is_empty() {
        String::new()
    } else {
        format!("?{}", encoded.join("&"))
    }
}

/// The table's column widths, fitted to the first batch so followed rows line up with it.
#[derive(Debug)]
struct Table {
    reason: usize,
    object: usize,
}

impl Default for Table {
    fn default() -> Self {
        Self {
            reason: "REASON".len(),
            object: "OBJECT".len(),
        }
    }
}

/// Width of the AGE column: ages are at most four characters (`59s`, `23h`, `364d`).
const AGE: usize = 5;
/// Width of the TYPE column (`Warning`).
const TYPE: usize = 7;

impl Table {
    fn fit(&mut self, events: &[LoggedEvent]) {
        for event in events {
            self.reason = self.reason.max(event.reason.len());
            self.object = self.object.max(object(event).len());
        }
    }

    fn header(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{:AGE$}  {:TYPE$}  {:reason$}  {:object$}  MESSAGE",
            "AGE",
            "TYPE",
            "REASON",
            "OBJECT",
            reason = self.reason,
            object = self.object,
        )
    }

    fn rows(
        &self,
        out: &mut impl Write,
        events: &[LoggedEvent],
        now: jiff::Timestamp,
    ) -> std::io::Result<()> {
        for event in events {
            let message = match &event.computer {
                Some(computer) if !event.message.contains(computer.as_str()) => {
                    format!("{computer}: {}", event.message)
                }
                _ => event.message.clone(),
            };
            writeln!(
                out,
                "{:AGE$}  {:TYPE$}  {:reason$}  {:object$}  {}",
                age(&event.at, now),
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                },
                event.reason,
                object(event),
                message.replace('\n', " "),
                reason = self.reason,
                object = self.object,
            )?;
        }
        Ok(())
    }
}

/// `Kind/name`, with the namespace when it is not the default one.
fn object(event: &LoggedEvent) -> String {
    match event.namespace.as_deref() {
        Some(namespace) if namespace != crate::resources::DEFAULT_NAMESPACE => {
            format!("{}/{namespace}/{}", event.kind, event.name)
        }
        _ => format!("{}/{}", event.kind, event.name),
    }
}

/// How long ago `at` (RFC 3339) was, as `kubectl` writes it: `42s`, `5m`, `3h`, `12d`.
fn age(at: &str, now: jiff::Timestamp) -> String {
    let Ok(at) = at.parse::<jiff::Timestamp>() else {
        return "?".to_owned();
    };
    let seconds = now.as_second().saturating_sub(at.as_second()).max(0);
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Whether `error` is a write to a closed pipe (the reader, `head`, has gone).
fn closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: &str, reason: &str, kind: &str, name: &str) -> LoggedEvent {
        LoggedEvent {
            id: "1-0".into(),
            at: at.into(),
            kind: kind.into(),
            namespace: Some("default".into()),
            name: name.into(),
            type_: EventType::Normal,
            reason: reason.into(),
            message: "package id 1, 1 fragments".into(),
            computer: None,
        }
    }

    #[test]
    fn the_table_lines_up_newest_last() {
        let events = [
            event("2026-01-01T00:00:00Z", "Built", "Package", "hello"),
            event(
                "2026-01-01T00:59:30Z",
                "Renewed",
                "Certificate",
                "server-tls",
            ),
        ];
        let mut table = Table::default();
        table.fit(&events);
        let mut out = Vec::new();
        table.header(&mut out).unwrap();
        let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        table.rows(&mut out, &events, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "AGE    TYPE     REASON   OBJECT                  MESSAGE"
        );
        assert_eq!(
            lines[1],
            "1h     Normal   Built    Package/hello           package id 1, 1 fragments"
        );
        assert!(lines[2].starts_with("30s    Normal   Renewed  Certificate/server-tls"));
    }

    #[test]
    fn the_query_string_is_encoded() {
        let filter = EventFilter {
            object: Some("Package/hello world".into()),
            namespace: None,
            after: Some("3-4".into()),
            limit: Some(10),
        };
        assert_eq!(
            query_string(&filter),
            "?for=Package%2Fhello+world&after=3-4&limit=10"
        );
    }

    #[test]
    fn a_closed_pipe_is_recognised_through_context() {
        let error = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("printing");
        assert!(closed_pipe(&error));
        assert!(!closed_pipe(&anyhow::anyhow!("other")));
    }
}
