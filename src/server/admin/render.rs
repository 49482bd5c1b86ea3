//! `tessera status` as text: the deployment table and one computer's report, written to any
//! `impl Write` so they are tested without a terminal.

use super::routes::{ComputerReport, DeploymentTable};

/// Prints `table` as `tessera status` shows it: one line per activation and package id.
pub fn write_deployment_table(
    out: &mut impl std::io::Write,
    table: &DeploymentTable,
) -> std::io::Result<()> {
    if table.packages.is_empty() {
        writeln!(out, "no deployments yet")?;
        return Ok(());
    }
    let width = table
        .packages
        .iter()
        .map(|l| l.activation.len().max(l.package.len()))
        .max()
        .unwrap_or(0)
        .max(10);
    writeln!(
        out,
        "{:width$}  {:width$}  {:10}  {:>7}  {:>7}  {:>8}  {:>5}  {:>7}  {:>5}",
        "ACTIVATION",
        "PACKAGE",
        "ID",
        "TARGETS",
        "WAITING",
        "NOTIFIED",
        "STALE",
        "SUCCESS",
        "ERROR"
    )?;
    for line in &table.packages {
        let c = &line.counts;
        writeln!(
            out,
            "{:width$}  {:width$}  {:10}  {:>7}  {:>7}  {:>8}  {:>5}  {:>7}  {:>5}",
            line.activation,
            line.package,
            line.package_id,
            c.targets,
            c.waiting,
            c.notified + c.downloading + c.installing,
            c.stale,
            c.success,
            c.error
        )?;
    }
    writeln!(
        out,
        "stale: notified more than {:#} ago without a result",
        jiff::SignedDuration::from_secs(table.stale_after)
    )?;
    for d in &table.draining {
        writeln!(
            out,
            "draining: {} package {} is no longer offered; still served to {} computer{} downloading it, until {}",
            d.package,
            d.package_id,
            d.downloading,
            if d.downloading == 1 { "" } else { "s" },
            jiff::Timestamp::from_second(d.until)
                .map_or_else(|_| d.until.to_string(), |t| t.to_string())
        )?;
    }
    Ok(())
}

/// Prints one computer as `tessera status --computer` shows it: facts, deployments (with
/// the last lines of their output) and history, ages counted from `now`.
pub fn write_computer_report(
    out: &mut impl std::io::Write,
    report: &ComputerReport,
    now: i64,
) -> std::io::Result<()> {
    let c = &report.computer;
    let when =
        |t: i64| jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string());
    writeln!(
        out,
        "{} ({})",
        c.device_id,
        if c.name.is_empty() {
            "no inventory yet"
        } else {
            &c.name
        }
    )?;
    writeln!(out, "  os:        {}", os_line(&c.os_name, &c.os_version))?;
    writeln!(out, "  tags:      {}", or_none(&c.tags.join(", ")))?;
    writeln!(out, "  addresses: {}", or_none(&c.ip_addresses.join(", ")))?;
    if let Some(address) = &c.address {
        writeln!(out, "  connects from: {address}")?;
    }
    writeln!(out, "  installed: {}", c.history.join(", "))?;
    writeln!(
        out,
        "  first seen {}, last contact {} ({}s ago)",
        when(c.first_seen),
        when(c.last_contact),
        now - c.last_contact
    )?;
    writeln!(out, "  deployments:")?;
    for d in &report.deployments {
        writeln!(
            out,
            "    {:30} {:10} {:9} {}",
            d.activation,
            d.package_id,
            d.state.as_str(),
            d.code.as_deref().unwrap_or("")
        )?;
        if let Some(output) = d.output.as_deref().filter(|o| !o.trim().is_empty()) {
            for line in output
                .trim_end()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                writeln!(out, "      | {line}")?;
            }
        }
    }
    writeln!(out, "  history:")?;
    for e in &report.history {
        writeln!(
            out,
            "    {}  {:30} {:10} {:9} {}",
            when(e.at),
            if e.activation.is_empty() {
                "(not deployed here)"
            } else {
                &e.activation
            },
            e.package_id,
            e.state.as_str(),
            e.code.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}
/// The OS name with its version, once: agents often put the version in the name already
/// ("Debian GNU/Linux 12" with version "12").
fn os_line(name: &str, version: &str) -> String {
    let (name, version) = (name.trim(), version.trim());
    if version.is_empty() || name.contains(version) {
        or_none(name).to_owned()
    } else if name.is_empty() {
        version.to_owned()
    } else {
        format!("{name} {version}")
    }
}

/// `-` for a fact the computer has not reported.
fn or_none(text: &str) -> &str {
    if text.trim().is_empty() { "-" } else { text }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::server::deployments::Counts;
    use crate::server::deployments::PackageLine;
    use crate::store::db::State;
    use crate::store::db::{Computer, Deployment, Event};

    fn rendered(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_os_version_already_in_its_name_is_written_once_and_missing_facts_are_a_dash() {
        assert_eq!(os_line("Debian GNU/Linux 12", "12"), "Debian GNU/Linux 12");
        assert_eq!(
            os_line("Debian GNU/Linux 12 (bookworm) ", ""),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(os_line("Debian", "13"), "Debian 13");
        assert_eq!(os_line("", ""), "-");
        assert_eq!(or_none(""), "-");
    }

    #[test]
    fn an_empty_deployment_table_says_so() {
        let table = DeploymentTable {
            stale_after: 3600,
            packages: Vec::new(),
            draining: Vec::new(),
        };
        let text = rendered(|out| write_deployment_table(out, &table));
        assert_eq!(text, "no deployments yet\n");
    }

    #[test]
    fn the_deployment_table_counts_in_flight_states_as_notified() {
        let table = DeploymentTable {
            stale_after: 7 * 24 * 3600,
            packages: vec![PackageLine {
                activation: "default/hello-everywhere".into(),
                package: "default/hello".into(),
                package_id: "1700000001".into(),
                counts: Counts {
                    targets: 9,
                    waiting: 1,
                    notified: 1,
                    stale: 1,
                    downloading: 2,
                    installing: 1,
                    success: 2,
                    error: 1,
                },
            }],
            draining: vec![crate::server::deployments::Draining {
                package: "default/hello".into(),
                package_id: "1600000001".into(),
                downloading: 2,
                until: 1_800_000_000,
            }],
        };
        let text = rendered(|out| write_deployment_table(out, &table));
        // NOTIFIED sums notified, downloading and installing; stale is its own column.
        assert_eq!(
            text,
            concat!(
                "ACTIVATION                PACKAGE                   ID          TARGETS  WAITING  NOTIFIED  STALE  SUCCESS  ERROR\n",
                "default/hello-everywhere  default/hello             1700000001        9        1         4      1        2      1\n",
                "stale: notified more than 168h ago without a result\n",
                "draining: default/hello package 1600000001 is no longer offered; still served to 2 computers downloading it, until 2027-01-15T08:00:00Z\n",
            )
        );
    }

    #[test]
    fn a_computer_report_shows_facts_deployments_output_tail_and_history() {
        let report = ComputerReport {
            computer: Computer {
                device_id: "pc-1-2026-01-01-00-00-00".into(),
                name: "pc-1".into(),
                os_name: "Debian".into(),
                os_version: "13".into(),
                tags: vec!["lab".into(), "paris".into()],
                ip_addresses: vec!["192.0.2.10".into()],
                history: vec!["1700000001".into()],
                first_seen: 1_767_225_600,
                last_contact: 1_767_229_200,
                last_inventory: Some(1_767_229_200),
                address: Some("198.51.100.7".into()),
            },
            deployments: vec![Deployment {
                device_id: "pc-1-2026-01-01-00-00-00".into(),
                activation: "default/hello-everywhere".into(),
                package: "default/hello".into(),
                package_id: "1700000001".into(),
                token: String::new(),
                state: State::Error,
                code: Some("ERR_EXIT_CODE_2".into()),
                output: Some("one\ntwo\nthree\nfour\nfive\nsix\n\n".into()),
                changed_at: 1_767_229_200,
                notified_at: Some(1_767_225_600),
            }],
            history: vec![Event {
                device_id: "pc-1-2026-01-01-00-00-00".into(),
                activation: String::new(),
                package_id: "1600000000".into(),
                state: State::Success,
                code: Some("SUCCESS".into()),
                output: None,
                at: 1_767_225_600,
            }],
        };
        let text = rendered(|out| write_computer_report(out, &report, 1_767_229_260));
        assert_eq!(
            text,
            concat!(
                "pc-1-2026-01-01-00-00-00 (pc-1)\n",
                "  os:        Debian 13\n",
                "  tags:      lab, paris\n",
                "  addresses: 192.0.2.10\n",
                "  connects from: 198.51.100.7\n",
                "  installed: 1700000001\n",
                "  first seen 2026-01-01T00:00:00Z, last contact 2026-01-01T01:00:00Z (60s ago)\n",
                "  deployments:\n",
                "    default/hello-everywhere       1700000001 error     ERR_EXIT_CODE_2\n",
                "      | two\n",
                "      | three\n",
                "      | four\n",
                "      | five\n",
                "      | six\n",
                "  history:\n",
                "    2026-01-01T00:00:00Z  (not deployed here)            1600000000 success   SUCCESS\n",
            )
        );
    }
}
