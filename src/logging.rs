//! How log lines are written: every field value and message escaped, so nothing a client
//! sends can start a line of its own or steer a terminal, and libraries' repeated warnings
//! throttled. Imports only `throttle`; `cli` and `agent::cli` install it (`init`).
//!
//! Escaping is done once, in the field formatter of the subscriber, rather than at each call
//! site: no `tracing::warn!` can forget it. A newline becomes `\n`, a carriage return `\r`, a
//! tab `\t`, and every other control character (C0, DEL, C1, among them the ESC that starts
//! ANSI sequences) and the Unicode line separators and bidirectional overrides become
//! `\u{..}`. Backslashes are kept as they are: an escaped `\n` and a literal backslash-n
//! read the same, but neither makes a new line.
//!
//! `--log-format json` writes one JSON object a line instead (`timestamp`, `level`,
//! `fields`, `target`, and the spans), for log pipelines: serde escapes the values there,
//! and the same throttle of libraries' repeats applies, its count in `fields.suppressed`.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::throttle::{Repeats, Verdict};

/// The field formatter that escapes every value and the message (see the module doc); the
/// rest of the line is the default format: `message key=value key=value`.
#[derive(Clone, Copy, Debug, Default)]
pub struct EscapedFields;

impl<'writer> MakeVisitor<Writer<'writer>> for EscapedFields {
    type Visitor = EscapedVisitor<'writer>;

    fn make_visitor(&self, target: Writer<'writer>) -> Self::Visitor {
        EscapedVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields through [`Escaper`].
#[derive(Debug)]
pub struct EscapedVisitor<'writer> {
    writer: Writer<'writer>,
    is_empty: bool,
    result: fmt::Result,
}

impl EscapedVisitor<'_> {
    fn write(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        let name = field.name();
        // The `log` crate's metadata, already shown as the line's target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        self.result = self.write_field(name, value);
    }

    fn write_field(&mut self, name: &str, value: fmt::Arguments<'_>) -> fmt::Result {
        if !std::mem::take(&mut self.is_empty) {
            self.writer.write_char(' ')?;
        }
        if name != "message" {
            // Field names are the program's own: written as they are, styled as the default
            // formatter does (italic name, dimmed `=`).
            if self.writer.has_ansi_escapes() {
                write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
            } else {
                write!(self.writer, "{name}=")?;
            }
        }
        write!(Escaper(&mut self.writer), "{value}")
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, format_args!("{value}"));
        } else {
            self.write(field, format_args!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, format_args!("{}", Chain(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, format_args!("{value:?}"));
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        // A library's warning that `LibraryRepeats` let through after leaving some out.
        let suppressed = PENDING.take();
        if suppressed > 0 && self.result.is_ok() {
            let value = format_args!("{suppressed}");
            self.result = self.write_field("suppressed", value);
        }
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// An error and its causes, `outer: inner`.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A writer that escapes what could break a line or steer a terminal (see the module doc).
pub struct Escaper<W>(pub W);

impl<W: fmt::Write> fmt::Write for Escaper<W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut rest = text;
        while let Some(at) = rest.find(needs_escape) {
            self.0.write_str(&rest[..at])?;
            let Some(c) = rest[at..].chars().next() else {
                break;
            };
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", u32::from(c))?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Control characters (C0, DEL, C1), the Unicode line and paragraph separators, and the
/// bidirectional embeddings, overrides and isolates (which reorder what a reader sees).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `text` escaped as log lines show it.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let _ = write!(Escaper(&mut out), "{text}");
    out
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `time LEVEL target: message key=value`, escaped (see the module doc), for people.
    #[default]
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields`, `target`, spans), for log
    /// pipelines.
    Json,
}

/// Directives added to every filter that names none of these targets: libraries' lines that
/// say nothing to an operator. notify's inotify backend logs at INFO and WARN when a watched
/// directory goes away before its watch is removed, which is what every temporary directory
/// the state or a git checkout renames does.
const QUIET_LIBRARIES: &[(&str, &str)] = &[("notify::inotify", "notify::inotify=error")];

/// Installs the process's subscriber: `RUST_LOG` if set (not empty, and valid), else
/// `filter` (else `info`), to
/// standard error in `format`, with libraries' repeats throttled (and, as text, every field
/// escaped). Both binaries call it once at start-up.
pub fn init(filter: &str, format: LogFormat) {
    let requested = std::env::var("RUST_LOG")
        .ok()
        .filter(|text| {
            !text.trim().is_empty() && tracing_subscriber::EnvFilter::try_new(text).is_ok()
        })
        .unwrap_or_else(|| filter.to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(directives(&requested))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .fmt_fields(EscapedFields)
            .finish()
            .with(LibraryRepeats::default())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .event_format(CountedJson::default())
            .finish()
            .with(LibraryRepeats::default())
            .try_init(),
    };
}

/// The filter `requested`, with the quiet libraries' directives for the targets it names no
/// directive for (`notify=debug` names `notify::inotify`, as EnvFilter matches by prefix).
fn directives(requested: &str) -> String {
    // A bare level (`debug`) names no target.
    let named = |quiet: &str| {
        requested.split(',').any(|directive| {
            let target = directive
                .split(['=', '['])
                .next()
                .unwrap_or_default()
                .trim();
            !target.is_empty()
                && target
                    .parse::<tracing::level_filters::LevelFilter>()
                    .is_err()
                && quiet.starts_with(target)
        })
    };
    let mut directives = requested.trim().trim_end_matches(',').to_owned();
    for (target, directive) in QUIET_LIBRARIES {
        if !named(target) {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(directive);
        }
    }
    directives
}

/// tracing-subscriber's JSON lines, with the count of a library's repeats that
/// [`LibraryRepeats`] left out as the first of `fields` (`"suppressed":N`), as the text
/// format ends its line with `suppressed=N`.
#[derive(Debug)]
pub struct CountedJson(Format<Json>);

impl Default for CountedJson {
    fn default() -> Self {
        Self(tracing_subscriber::fmt::format().json())
    }
}

impl<S, N> FormatEvent<S, N> for CountedJson
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let suppressed = PENDING.take();
        if suppressed == 0 {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        // `timestamp` and `level` come first and cannot hold this text: the first match
        // opens the event's own fields.
        const FIELDS: &str = "\"fields\":{";
        match line.find(FIELDS) {
            Some(at) => {
                let (head, tail) = line.split_at(at + FIELDS.len());
                let comma = if tail.starts_with('}') { "" } else { "," };
                write!(writer, "{head}\"suppressed\":{suppressed}{comma}{tail}")
            }
            None => writer.write_str(&line),
        }
    }
}

/// Throttles warnings and errors of libraries (events whose target is not Tessera's), per
/// call site: rustls, for one, warns once per handshake that names an IP address in SNI,
/// which any client can repeat at will. The first is written, the rest of the window left
/// out and counted, and the first one after the window carries the count as a last field
/// (`suppressed=N`, written by [`EscapedFields`]). Tessera's own repeated warnings are
/// throttled at their call sites, per client, with `throttle::Repeats`.
pub struct LibraryRepeats {
    repeats: Repeats<String>,
    clock: Box<dyn Fn() -> Instant + Send + Sync>,
}

impl Default for LibraryRepeats {
    fn default() -> Self {
        Self {
            repeats: Repeats::default(),
            clock: Box::new(Instant::now),
        }
    }
}

impl fmt::Debug for LibraryRepeats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LibraryRepeats")
            .field("repeats", &self.repeats)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// How many repeats of the event being written `LibraryRepeats` left out, for
    /// `EscapedFields` to add to its line.
    static PENDING: Cell<u64> = const { Cell::new(0) };
}

impl<S: Subscriber> Layer<S> for LibraryRepeats {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let Some(key) = library_call_site(event) else {
            return true;
        };
        match self.repeats.check(key, (self.clock)()) {
            Verdict::Quiet => false,
            Verdict::Log { suppressed } => {
                PENDING.set(suppressed);
                true
            }
        }
    }

    fn on_event(&self, _event: &Event<'_>, _: Context<'_, S>) {
        // This layer is the outermost: the line is written, with its count, by now.
        PENDING.set(0);
    }
}

/// `target:line` of a library's warning or error, `None` for anything else.
fn library_call_site(event: &Event<'_>) -> Option<String> {
    let metadata = event.metadata();
    if *metadata.level() > Level::WARN {
        return None;
    }
    let (target, line) = if metadata.target() == "log" {
        // Through the `log` crate: the real call site is in the fields.
        let mut origin = LogOrigin::default();
        event.record(&mut origin);
        (origin.target?, origin.line)
    } else {
        (metadata.target().to_owned(), metadata.line().map(u64::from))
    };
    if target == "tessera" || target.starts_with("tessera::") {
        return None;
    }
    Some(format!("{target}:{}", line.unwrap_or(0)))
}

/// `log.target` and `log.line` of an event that came through the `log` crate.
#[derive(Default)]
struct LogOrigin {
    target: Option<String>,
    line: Option<u64>,
}

impl Visit for LogOrigin {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "log.target" {
            self.target = Some(value.to_owned());
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "log.line" {
            self.line = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn subscriber(out: &Captured, ansi: bool) -> impl Subscriber + Send + Sync {
        let out = out.clone();
        tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(ansi)
            .fmt_fields(EscapedFields)
            .finish()
    }

    const FORGED: &str =
        "x\n2026-01-01T00:00:00Z  INFO forged: deployment result\r\x1b[2J\u{9b}\u{2028}\t";

    #[test]
    fn values_and_messages_from_the_network_stay_on_their_line() {
        let out = Captured::default();
        tracing::subscriber::with_default(subscriber(&out, false), || {
            let device = FORGED.to_owned();
            let error = std::io::Error::other(FORGED);
            tracing::info!(%device, debug = ?device, plain = device.as_str(), %error, "result of {device}");
            let span = tracing::info_span!("request", client = %device);
            span.in_scope(|| tracing::warn!("inside"));
        });
        let text = out.text();
        assert_eq!(text.lines().count(), 2, "{text}");
        for line in text.lines() {
            assert!(!line.contains('\x1b') && !line.contains('\r') && !line.contains('\t'));
            assert!(!line.contains('\u{9b}') && !line.contains('\u{2028}'));
        }
        let escaped =
            r"x\n2026-01-01T00:00:00Z  INFO forged: deployment result\r\u{1b}[2J\u{9b}\u{2028}\t";
        // Display, message, error and span fields; Debug values are escaped by Debug first.
        assert!(
            text.contains(&format!("result of {escaped} device={escaped} ")),
            "{text}"
        );
        assert!(text.contains(&format!("error={escaped}")), "{text}");
        assert!(
            text.contains(&format!("request{{client={escaped}}}")),
            "{text}"
        );
        assert!(text.contains(r#"debug="x\n2026"#), "{text}");
    }

    #[test]
    fn the_line_keeps_the_default_format() {
        let (ours, theirs) = (Captured::default(), Captured::default());
        let event = || tracing::info!(agent = "a1", count = 3, ok = true, "enrolling an agent");
        tracing::subscriber::with_default(subscriber(&ours, false), event);
        let default = {
            let out = theirs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || out.clone())
                .with_ansi(false)
                .finish()
        };
        tracing::subscriber::with_default(default, event);
        let strip_time = |text: String| text.split_once(' ').map(|(_, rest)| rest.to_owned());
        assert_eq!(strip_time(ours.text()), strip_time(theirs.text()));
        assert!(
            ours.text()
                .ends_with("enrolling an agent agent=\"a1\" count=3 ok=true\n")
        );
    }

    #[test]
    fn field_names_are_styled_on_a_terminal_and_values_still_escaped() {
        let out = Captured::default();
        tracing::subscriber::with_default(subscriber(&out, true), || {
            tracing::info!(device = %"a\x1b[31mb", "m");
        });
        assert!(
            out.text()
                .contains("\x1b[3mdevice\x1b[0m\x1b[2m=\x1b[0ma\\u{1b}[31mb")
        );
    }

    #[test]
    fn escaped_leaves_ordinary_text_alone() {
        assert_eq!(escaped("héllo wörld \\n 日本"), "héllo wörld \\n 日本");
        assert_eq!(escaped("a\u{0}b\u{7f}c\u{202e}"), r"a\u{0}b\u{7f}c\u{202e}");
    }

    #[test]
    fn a_library_warning_repeated_is_written_once_per_window_with_a_count() {
        let out = Captured::default();
        let stack = subscriber(&out, false).with(LibraryRepeats::default());
        tracing::subscriber::with_default(stack, || {
            for n in 0..100 {
                tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI extension: ignoring IP address {n}");
                tracing::warn!(target: "tessera::server", "our own {n}");
            }
        });
        let text = out.text();
        assert_eq!(text.matches("Illegal SNI").count(), 1, "{text}");
        assert_eq!(text.matches("our own").count(), 100);
        assert!(!text.contains("suppressed"));
    }

    #[test]
    fn the_first_library_warning_after_the_window_carries_the_count() {
        let out = Captured::default();
        let start = Instant::now();
        let now = Arc::new(Mutex::new(start));
        let clock = now.clone();
        let layer = LibraryRepeats {
            clock: Box::new(move || *clock.lock().unwrap()),
            ..LibraryRepeats::default()
        };
        let stack = subscriber(&out, false).with(layer);
        tracing::subscriber::with_default(stack, || {
            let warn = || tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI");
            for _ in 0..4 {
                warn();
            }
            *now.lock().unwrap() = start + crate::throttle::REPEAT_WINDOW;
            warn();
        });
        let text = out.text();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("Illegal SNI"), "{text}");
        assert!(lines[1].ends_with("Illegal SNI suppressed=3"), "{text}");
    }

    fn json_subscriber(out: &Captured) -> impl Subscriber + Send + Sync {
        let out = out.clone();
        tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .json()
            .event_format(CountedJson::default())
            .finish()
    }

    #[test]
    fn json_lines_are_one_object_each_with_level_fields_and_target() {
        let out = Captured::default();
        tracing::subscriber::with_default(json_subscriber(&out), || {
            tracing::info!(device_id = %FORGED, code = "SUCCESS", "deployment result");
            let span = tracing::info_span!("request", client = %FORGED);
            span.in_scope(|| tracing::warn!("inside"));
        });
        let text = out.text();
        assert_eq!(text.lines().count(), 2, "{text}");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["target"], "tessera::logging::tests");
        assert_eq!(lines[0]["fields"]["message"], "deployment result");
        assert_eq!(lines[0]["fields"]["device_id"], FORGED);
        assert_eq!(lines[1]["span"]["client"], FORGED);
        assert!(!text.contains('\x1b') && !text.contains('\r'), "{text}");
    }

    #[test]
    fn a_library_warning_repeated_in_json_carries_its_count_in_the_fields() {
        let out = Captured::default();
        let start = Instant::now();
        let now = Arc::new(Mutex::new(start));
        let clock = now.clone();
        let layer = LibraryRepeats {
            clock: Box::new(move || *clock.lock().unwrap()),
            ..LibraryRepeats::default()
        };
        let stack = json_subscriber(&out).with(layer);
        tracing::subscriber::with_default(stack, || {
            let warn = || tracing::warn!(target: "rustls::msgs::handshake", "Illegal SNI");
            for _ in 0..4 {
                warn();
            }
            *now.lock().unwrap() = start + crate::throttle::REPEAT_WINDOW;
            warn();
            tracing::warn!(target: "tessera::server", "ours");
        });
        let text = out.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["fields"].get("suppressed"), None, "{text}");
        assert_eq!(lines[1]["fields"]["suppressed"], 3, "{text}");
        assert_eq!(lines[1]["fields"]["message"], "Illegal SNI", "{text}");
        assert_eq!(lines[2]["fields"].get("suppressed"), None, "{text}");
    }

    #[test]
    fn inotify_noise_is_filtered_unless_the_filter_names_it() {
        assert_eq!(directives("info"), "info,notify::inotify=error");
        assert_eq!(directives(""), "notify::inotify=error");
        assert_eq!(directives("debug,"), "debug,notify::inotify=error");
        assert_eq!(
            directives("info,notify::inotify=debug"),
            "info,notify::inotify=debug"
        );
        assert_eq!(directives("warn,notify=trace"), "warn,notify=trace");
        assert_eq!(directives("trace"), "trace,notify::inotify=error");
        assert_eq!(
            directives("tessera=debug"),
            "tessera=debug,notify::inotify=error"
        );
        let filter = tracing_subscriber::EnvFilter::new(directives("info"));
        let out = Captured::default();
        let stack = subscriber(&out, false).with(filter);
        tracing::subscriber::with_default(stack, || {
            tracing::warn!(target: "notify::inotify", "Unable to remove the path from the watches");
            tracing::info!(target: "notify::inotify", "unable to remove watch descriptor");
            tracing::info!(target: "tessera::sources::dir", "kept");
        });
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("kept"), "{text}");
    }
}
