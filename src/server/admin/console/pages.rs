//! The console's pages as markup, from the values the JSON API answers: pure functions, so
//! the escaping of hostile values is tested without a server.

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::FleetParams;
use crate::server::admin::fleet::FleetPage;
use crate::server::admin::report::{ObjectKind, ObjectReport, Report};
use crate::server::admin::routes::{ComputerReport, DeploymentTable};
use crate::server::deployments::{Counts, PackageLine};
use crate::store::db::journal::{EventType, LoggedEvent};
use crate::store::db::{CodeCount, State};

/// Computers per Fleet page: a screenful that renders fast; the API allows up to 500.
pub(super) const PAGE_SIZE: i64 = 100;

/// Lines of a command's output shown per deployment, as `tessera status --computer` does.
const OUTPUT_TAIL: usize = 5;

/// A day, in seconds.
const DAY: i64 = 24 * 3600;
/// Certificates expiring within this many days are shown in red.
const CRITICAL_DAYS: i64 = 7;
/// ... and within this many in amber.
const WARNING_DAYS: i64 = 30;

/// The pages of the nav bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Nav {
    Fleet,
    Deployments,
    Certificates,
    Health,
    Events,
}

impl Nav {
    const ALL: [Self; 5] = [
        Self::Fleet,
        Self::Deployments,
        Self::Certificates,
        Self::Health,
        Self::Events,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Fleet => "Fleet",
            Self::Deployments => "Deployments",
            Self::Certificates => "Certificates",
            Self::Health => "Health",
            Self::Events => "Events",
        }
    }

    fn href(self) -> &'static str {
        match self {
            Self::Fleet => "/ui/",
            Self::Deployments => "/ui/deployments",
            Self::Certificates => "/ui/certificates",
            Self::Health => "/ui/health",
            Self::Events => "/ui/events",
        }
    }
}

/// A page: what stays (the filter form) and what the script refreshes.
pub(super) struct Page {
    pub title: &'static str,
    pub nav: Nav,
    pub controls: Option<Markup>,
    pub live: Markup,
}

/// The whole document around a page's regions.
pub(super) fn layout(
    title: &str,
    nav: Option<Nav>,
    controls: Option<Markup>,
    live: &Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tessera" }
                link rel="stylesheet" href="/ui/assets/console.css";
                script src="/ui/assets/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "Tessera" }
                    nav {
                        @for item in Nav::ALL {
                            @if Some(item) == nav {
                                a.active href=(item.href()) aria-current="page" { (item.label()) }
                            } @else {
                                a href=(item.href()) { (item.label()) }
                            }
                        }
                    }
                    form.logout method="post" action="/ui/logout" {
                        button type="submit" { "Log out" }
                    }
                }
                main {
                    h1 { (title) }
                    div #flash role="status" aria-live="polite" {}
                    @if let Some(controls) = controls { (controls) }
                    div #live { (live) }
                }
            }
        }
    }
}

/// An error page's body.
pub(super) fn error(message: &str) -> Markup {
    html! { p.error { (message) } }
}

/// `at` (Unix seconds) as RFC 3339.
fn timestamp(at: i64) -> String {
    jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

/// How long ago, as `kubectl` writes it: `42s`, `5m`, `3h`, `12d`.
fn age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * DAY => format!("{}h", s / 3600),
        s => format!("{}d", s / DAY),
    }
}

/// A time with its age, the exact time in the tooltip.
fn when(at: i64, now: i64) -> Markup {
    html! { time datetime=(timestamp(at)) title=(timestamp(at)) { (age(now - at)) " ago" } }
}

/// A link to the Fleet page with these filters.
fn fleet_link(pairs: &[(&str, &str)]) -> String {
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        query.append_pair(key, value);
    }
    format!("/ui/?{}", query.finish())
}

/// A link to one computer's page.
fn computer_link(device_id: &str) -> String {
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("id", device_id)
        .finish();
    format!("/ui/computer?{query}")
}

/// A button the script posts to `url` (an action of the JSON API).
fn action(url: &str, label: &str) -> Markup {
    html! { button.action type="button" data-post=(url) { (label) } }
}

/// `?namespace=NS` of an action on `object`.
fn in_namespace(object: &ObjectReport) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("namespace", &object.namespace)
        .finish()
}

/// A state as a badge.
fn state_badge(state: State, code: Option<&str>) -> Markup {
    html! {
        span class=(format!("badge state-{}", state.as_str())) {
            (state.as_str())
            @if let Some(code) = code { " " code { (code) } }
        }
    }
}

/// The Fleet page: the filter form, then a page of computers.
pub(super) fn fleet(
    page: &FleetPage,
    params: &FleetParams,
    activations: &[String],
    now: i64,
) -> Page {
    let controls = html! {
        form.filters method="get" action="/ui/" {
            label { "Name " input type="search" name="name" placeholder="pc-*" value=(params.name); }
            label { "Tag " input type="text" name="tag" value=(params.tag); }
            label { "OS " input type="text" name="os" value=(params.os); }
            label { "Activation "
                select name="activation" {
                    option value="" { "any" }
                    @for name in activations {
                        option value=(name) selected[*name == params.activation || *name == super::qualified(&params.activation)] { (name) }
                    }
                }
            }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for state in State::ALL {
                        option value=(state.as_str()) selected[state.as_str() == params.state] { (state.as_str()) }
                    }
                }
            }
            label { "Silent for "
                select name="silent" {
                    @for (value, label) in [("", "any time"), ("1h", "1 hour"), ("1d", "1 day"), ("7d", "7 days"), ("30d", "30 days")] {
                        option value=(value) selected[value == params.silent] { (label) }
                    }
                }
            }
            button type="submit" { "Filter" }
            a href="/ui/" { "Clear" }
        }
    };
    let live = html! {
        @if !page.codes.is_empty() {
            details.codes {
                summary { "Result codes" }
                (codes_table(&page.codes))
            }
        }
        table.fleet {
            thead { tr { th { "Name" } th { "OS" } th { "Tags" } th { "Last contact" } th { "Deployments" } } }
            tbody {
                @for c in &page.computers {
                    tr {
                        td {
                            a href=(computer_link(&c.computer.device_id)) {
                                @if c.computer.name.is_empty() { (c.computer.device_id) } @else { (c.computer.name) }
                            }
                            br; small.muted { (c.computer.device_id) }
                        }
                        td { (c.computer.os_name) " " (c.computer.os_version) }
                        td { @for tag in &c.computer.tags { span.tag { (tag) } " " } }
                        td { (when(c.computer.last_contact, now)) }
                        td {
                            @for d in &c.deployments {
                                div.deployment {
                                    span.activation { (d.activation) } " "
                                    (state_badge(d.state, d.code.as_deref()))
                                }
                            }
                        }
                    }
                }
                @if page.computers.is_empty() {
                    tr { td colspan="5" { "No computer matches." } }
                }
            }
        }
        p.pager {
            @if !params.after.is_empty() {
                a href=(fleet_link(&[("name", &params.name), ("tag", &params.tag), ("os", &params.os), ("activation", &params.activation), ("state", &params.state)])) { "First page" }
                " "
            }
            @if let Some(next) = &page.next {
                a.next href=(fleet_link(&[("name", &params.name), ("tag", &params.tag), ("os", &params.os), ("activation", &params.activation), ("state", &params.state), ("after", next)])) { "Next page" }
            }
            " " small.muted { (page.computers.len()) " computers on this page (" (PAGE_SIZE) " at most)" }
        }
    };
    Page {
        title: "Fleet",
        nav: Nav::Fleet,
        controls: Some(controls),
        live,
    }
}

fn codes_table(codes: &[CodeCount]) -> Markup {
    html! {
        table.codes {
            thead { tr { th { "Activation" } th { "Code" } th.num { "Computers" } } }
            tbody {
                @for c in codes {
                    tr { td { (c.activation) } td { code { (c.code) } } td.num { (c.computers) } }
                }
            }
        }
    }
}

/// The last `OUTPUT_TAIL` lines of a command's output.
fn tail(output: &str) -> String {
    let lines: Vec<&str> = output.trim_end().lines().collect();
    lines[lines.len().saturating_sub(OUTPUT_TAIL)..].join("\n")
}

/// One computer (or several, when a name is shared): facts, deployments, history.
pub(super) fn computer(reports: &[ComputerReport], now: i64) -> Page {
    let live = html! {
        @for report in reports {
            @let c = &report.computer;
            section.computer {
                h2 { @if c.name.is_empty() { "(no inventory yet)" } @else { (c.name) } }
                dl.facts {
                    dt { "Device id" } dd { code { (c.device_id) } }
                    dt { "OS" } dd { (c.os_name) " " (c.os_version) }
                    dt { "Tags" } dd { @for tag in &c.tags { span.tag { (tag) } " " } }
                    dt { "Addresses" } dd { (c.ip_addresses.join(", ")) }
                    @if let Some(address) = &c.address { dt { "Connects from" } dd { (address) } }
                    dt { "Installed" } dd { (c.history.join(", ")) }
                    dt { "First seen" } dd { (timestamp(c.first_seen)) }
                    dt { "Last contact" } dd { (when(c.last_contact, now)) }
                    dt { "Inventory" } dd {
                        @if let Some(at) = c.last_inventory {
                            a href=(format!("/ui/inventory?{}", url::form_urlencoded::Serializer::new(String::new()).append_pair("id", &c.device_id).finish())) { "raw inventory" }
                            " (" (when(at, now)) ")"
                        } @else { "none yet" }
                    }
                }
                h3 { "Deployments" }
                table.deployments {
                    thead { tr { th { "Activation" } th { "Package" } th { "Id" } th { "State" } th { "Changed" } th { "Output (last lines)" } } }
                    tbody {
                        @for d in &report.deployments {
                            tr {
                                td { (d.activation) } td { (d.package) } td { code { (d.package_id) } }
                                td { (state_badge(d.state, d.code.as_deref())) }
                                td { (when(d.changed_at, now)) }
                                td { @if let Some(output) = d.output.as_deref().filter(|o| !o.trim().is_empty()) { pre.output { (tail(output)) } } }
                            }
                        }
                    }
                }
                h3 { "History" }
                table.history {
                    thead { tr { th { "When" } th { "Activation" } th { "Id" } th { "State" } } }
                    tbody {
                        @for e in &report.history {
                            tr {
                                td { (timestamp(e.at)) }
                                td { @if e.activation.is_empty() { "(not deployed here)" } @else { (e.activation) } }
                                td { code { (e.package_id) } }
                                td { (state_badge(e.state, e.code.as_deref())) }
                            }
                        }
                    }
                }
            }
        }
    };
    Page {
        title: "Computer",
        nav: Nav::Fleet,
        controls: None,
        live,
    }
}

/// The raw inventory of one computer, as escaped text.
pub(super) fn inventory(device_id: &str, text: &str) -> Page {
    Page {
        title: "Inventory",
        nav: Nav::Fleet,
        controls: Some(
            html! { p { a href=(computer_link(device_id)) { "Back to " (device_id) } } },
        ),
        live: html! { pre.inventory { (text) } },
    }
}

/// A JSON value as text: strings as they are, an object of counts as `key: n` pairs
/// (an Affectation's `counts`), the rest as compact JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) if map.values().all(Value::is_number) => map
            .iter()
            .map(|(key, n)| format!("{key}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// An object's `details`, every key.
fn details(object: &ObjectReport) -> Markup {
    html! {
        @if !object.details.is_empty() {
            dl.details {
                @for (key, value) in &object.details {
                    dt { (key) } dd { (value_text(value)) }
                }
            }
        }
    }
}

/// An object's Ready condition, as a badge with its message.
fn readiness(object: &ObjectReport) -> Markup {
    let ready = object
        .conditions
        .iter()
        .find(|c| c.type_.as_str() == "Ready");
    html! {
        @match ready {
            Some(c) => {
                span class=(format!("badge cond-{}", c.status.as_str().to_ascii_lowercase())) { "Ready " (c.status.as_str()) }
                " " small { (c.reason) ": " (c.message) }
            }
            None => span.badge."cond-unknown" { "Ready Unknown" },
        }
    }
}

/// The states of a bar, in the order they are drawn, with their counts and the fleet filter
/// that lists their computers (stale ones are notified ones).
fn segments(c: &Counts) -> [(&'static str, i64, &'static str); 7] {
    [
        ("success", c.success, "success"),
        ("error", c.error, "error"),
        ("installing", c.installing, "installing"),
        ("downloading", c.downloading, "downloading"),
        ("notified", c.notified, "notified"),
        ("stale", c.stale, "notified"),
        ("waiting", c.waiting, "waiting"),
    ]
}

/// A stacked bar of the states of one line, widths in whole percent (CSS classes `w0`..`w100`).
fn progress(line: &PackageLine) -> Markup {
    let total = line.counts.targets.max(1);
    html! {
        div.bar role="img" aria-label=(format!("{} targets", line.counts.targets)) {
            @for (class, count, _) in segments(&line.counts) {
                @if count > 0 {
                    span class=(format!("seg state-{class} w{}", (count * 100 + total / 2) / total)) title=(format!("{class}: {count}")) {}
                }
            }
        }
        ul.legend {
            li { (line.counts.targets) " targets" }
            @for (class, count, state) in segments(&line.counts) {
                li {
                    span class=(format!("dot state-{class}")) {}
                    a href=(fleet_link(&[("activation", &line.activation), ("state", state)])) { (class) ": " (count) }
                }
            }
        }
    }
}

/// Where an Activation's packages are fetched from (its spec), this server by default.
fn served_from(object: &ObjectReport) -> Markup {
    let field = |name: &str| {
        object
            .spec
            .as_ref()
            .and_then(|s| s.get(name))
            .map(value_text)
            .unwrap_or_else(|| "this server".to_owned())
    };
    html! { "info: " (field("infoLocation")) "; fragments: " (field("packLocation")) }
}

/// Suspend or resume buttons for an Activation or an Affectation.
fn suspension(object: &ObjectReport) -> Markup {
    let base = format!(
        "/api/v1/objects/{}/{}",
        object.kind.as_str(),
        encode_segment(&object.name)
    );
    let ns = in_namespace(object);
    html! {
        @if let Some(by) = object.details.get(crate::server::admin::SUSPENDED_DETAIL) {
            span.badge.suspended { "suspended (" (value_text(by)) ")" } " "
            (action(&format!("{base}/resume?{ns}"), "Resume"))
        } @else {
            span.badge.active { "active" } " "
            (action(&format!("{base}/suspend?{ns}"), "Suspend"))
        }
    }
}

/// `segment` for a URL path (object names are DNS names, but nothing is assumed).
fn encode_segment(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The Deployments page: per Activation its bars, codes and rollout; the Affectations; the
/// Packages.
pub(super) fn deployments(report: &Report, table: &DeploymentTable, codes: &[CodeCount]) -> Page {
    let of = |kind: ObjectKind| report.objects.iter().filter(move |o| o.kind == kind);
    let known: Vec<String> = of(ObjectKind::Activation)
        .map(|o| format!("{}/{}", o.namespace, o.name))
        .collect();
    let live = html! {
        h2 { "Activations" }
        @for object in of(ObjectKind::Activation) {
            @let qualified = format!("{}/{}", object.namespace, object.name);
            section.activation {
                h3 { (qualified) " " (suspension(object)) }
                p { (readiness(object)) }
                p.muted { (served_from(object)) }
                (details(object))
                @for line in table.packages.iter().filter(|l| l.activation == qualified) {
                    h4 { "Package " (line.package) " " code { (line.package_id) } }
                    (progress(line))
                }
                @let mine: Vec<CodeCount> = codes.iter().filter(|c| c.activation == qualified).cloned().collect();
                @if !mine.is_empty() { (codes_table(&mine)) }
            }
        }
        @let orphans: Vec<&PackageLine> = table.packages.iter().filter(|l| !known.contains(&l.activation)).collect();
        @if !orphans.is_empty() {
            h3 { "No longer declared" }
            @for line in orphans {
                h4 { (line.activation) " · " (line.package) " " code { (line.package_id) } }
                (progress(line))
            }
        }
        @for d in &table.draining {
            p.draining { "Draining: " (d.package) " " code { (d.package_id) } " is still served to " (d.downloading) " computers until " (timestamp(d.until)) }
        }
        h2 { "Affectations" }
        table.objects {
            thead { tr { th { "Affectation" } th { "Ready" } th { "Details" } th { "Suspended" } } }
            tbody {
                @for object in of(ObjectKind::Affectation) {
                    tr {
                        td { (object.namespace) "/" (object.name) }
                        td { (readiness(object)) }
                        td { (details(object)) }
                        td { (suspension(object)) }
                    }
                }
            }
        }
        h2 { "Packages" }
        table.objects {
            thead { tr { th { "Package" } th { "Ready" } th { "Id, size, fragments, digests" } th { "Activated by" } } }
            tbody {
                @for object in of(ObjectKind::Package) {
                    tr {
                        td { (object.namespace) "/" (object.name) }
                        td { (readiness(object)) }
                        td { (details(object)) }
                        td {
                            @for related in object.related.iter().filter(|r| r.kind == ObjectKind::Activation) {
                                (related.namespace) "/" (related.name) br;
                            }
                        }
                    }
                }
            }
        }
    };
    Page {
        title: "Deployments",
        nav: Nav::Deployments,
        controls: None,
        live,
    }
}

/// The class of a certificate by the time left until `not_after`.
pub(super) fn expiry_class(not_after: Option<&str>, now: jiff::Timestamp) -> &'static str {
    let Some(at) = not_after.and_then(|t| t.parse::<jiff::Timestamp>().ok()) else {
        return "expiry-unknown";
    };
    let left = at.as_second() - now.as_second();
    if left <= 0 {
        "expiry-expired"
    } else if left < CRITICAL_DAYS * DAY {
        "expiry-critical"
    } else if left < WARNING_DAYS * DAY {
        "expiry-warning"
    } else {
        "expiry-ok"
    }
}

/// Days left until `not_after`, in words.
fn time_left(not_after: Option<&str>, now: jiff::Timestamp) -> String {
    match not_after.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(at) if at > now => format!("{} left", age(at.as_second() - now.as_second())),
        Some(_) => "expired".to_owned(),
        None => "not issued".to_owned(),
    }
}

/// The Certificates page: every Issuer and Certificate, coloured by time left.
pub(super) fn certificates(report: &Report, now: jiff::Timestamp) -> Page {
    let live = html! {
        @for kind in [ObjectKind::Issuer, ObjectKind::Certificate] {
            h2 { (kind.as_str()) "s" }
            table.objects.certificates {
                thead { tr { th { "Name" } th { "Not after" } th { "Renewal" } th { "Ready" } th { "Details" } th {} } }
                tbody {
                    @for object in report.objects.iter().filter(|o| o.kind == kind) {
                        @let not_after = object.details.get("notAfter").and_then(Value::as_str);
                        tr class=(expiry_class(not_after, now)) {
                            td { (object.namespace) "/" (object.name) }
                            td.expiry { (not_after.unwrap_or("—")) br; small { (time_left(not_after, now)) } }
                            td { (object.details.get("renewalTime").map(value_text).unwrap_or_default()) }
                            td { (readiness(object)) }
                            td { (details(object)) }
                            td {
                                @if kind == ObjectKind::Certificate {
                                    (action(&format!("/api/v1/certificates/{}/renew?{}", encode_segment(&object.name), in_namespace(object)), "Renew"))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Page {
        title: "Certificates",
        nav: Nav::Certificates,
        controls: None,
        live,
    }
}

/// The Health page: revision, leader, the server's own conditions, every problem, every
/// object's conditions.
pub(super) fn health(report: &Report, leader: &str) -> Page {
    let live = html! {
        dl.facts {
            dt { "Source revision" } dd { code { (report.revision) } }
            dt { "Leader" } dd { (leader) }
            dt { "First reconcile" } dd { @if report.ready { "done" } @else { "not finished yet" } }
        }
        p { (action("/api/v1/reconcile", "Reconcile now")) }
        @if !report.conditions.is_empty() {
            h2 { "Server" }
            (conditions_table(&report.conditions))
        }
        @let problems: Vec<_> = report.problems.iter().chain(report.objects.iter().flat_map(|o| o.problems.iter())).collect();
        h2 { "Problems (" (problems.len()) ")" }
        @if !problems.is_empty() {
            table.problems {
                thead { tr { th { "Where" } th { "Object" } th { "Field" } th { "Problem" } } }
                tbody {
                    @for p in problems {
                        tr {
                            td { code { (p.file.as_deref().unwrap_or("")) @if let Some(line) = p.line { ":" (line) } } }
                            td { (p.object.as_deref().unwrap_or("")) }
                            td { (p.field.as_deref().unwrap_or("")) }
                            td { (p.message) }
                        }
                    }
                }
            }
        }
        h2 { "Objects" }
        @for object in &report.objects {
            section.object {
                h3 {
                    (object.kind.as_str()) " " (object.namespace) "/" (object.name) " "
                    small.muted {
                        "generation " (object.generation)
                        @if let Some(g) = object.observed_generation { ", observed " (g) }
                        @if let Some(source) = &object.source { ", " code { (source.file) ":" (source.line) } }
                    }
                }
                (conditions_table(&object.conditions))
            }
        }
    };
    Page {
        title: "Health",
        nav: Nav::Health,
        controls: None,
        live,
    }
}

fn conditions_table(conditions: &[crate::server::admin::ConditionReport]) -> Markup {
    html! {
        table.conditions {
            tbody {
                @for c in conditions {
                    tr class=(format!("cond-{}", c.status.as_str().to_ascii_lowercase())) {
                        td { (c.type_.as_str()) }
                        td { (c.status.as_str()) }
                        td { (c.reason) }
                        td { (c.message) }
                        td { small.muted { (c.last_transition_time) } }
                    }
                }
            }
        }
    }
}

/// The Events page, newest last, with `tessera events`' columns.
pub(super) fn events(events: &[LoggedEvent], now: jiff::Timestamp) -> Page {
    let live = html! {
        table.events {
            thead { tr { th { "Age" } th { "Type" } th { "Reason" } th { "Object" } th { "Message" } } }
            tbody {
                @for e in events {
                    @let at = e.at.parse::<jiff::Timestamp>().ok();
                    tr class=(match e.type_ { EventType::Normal => "normal", EventType::Warning => "warning" }) {
                        td { time datetime=(e.at) title=(e.at) { (at.map_or_else(|| "?".to_owned(), |at| age(now.as_second() - at.as_second()))) } }
                        td { (match e.type_ { EventType::Normal => "Normal", EventType::Warning => "Warning" }) }
                        td { (e.reason) }
                        td { (e.kind) "/" @if let Some(ns) = &e.namespace { (ns) "/" } (e.name) }
                        td {
                            @if let Some(computer) = e.computer.as_deref().filter(|c| !e.message.contains(*c)) { (computer) ": " }
                            (e.message)
                        }
                    }
                }
                @if events.is_empty() { tr { td colspan="5" { "No events yet." } } }
            }
        }
    };
    Page {
        title: "Events",
        nav: Nav::Events,
        controls: None,
        live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_pairs_and_other_values_as_json() {
        let counts = serde_json::json!({"error": 0, "success": 3});
        assert_eq!(value_text(&counts), "error: 0, success: 3");
        assert_eq!(value_text(&serde_json::json!("operator")), "operator");
        assert_eq!(value_text(&serde_json::json!(["a"])), r#"["a"]"#);
    }
}
