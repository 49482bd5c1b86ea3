//! `tessera computers [NAME]`: the fleet as the OCS console shows it: each computer's OS,
//! tags, last contact and where it stands with each activation, then the result codes per
//! activation; or one computer in full.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;

use super::api::{Format, FormatArgs, ServerArgs, Target, write_data};
use super::get::{encode, quiet_on_closed_pipe, span, write_table};
use super::running::runtime;
use crate::server::admin::{
    self, ComputerReport, FleetComputer, FleetPage, FleetQuery, fleet_page_of, qualified,
};
use crate::store::db::CodeCount;

/// `tessera computers`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera computers                                    the whole fleet
  tessera computers --selector tag=lab,os=linux        computers tagged lab running Linux
  tessera computers --selector silent=7d               computers not heard from for a week
  tessera computers --activation hello --status error  who failed hello, and with which codes
  tessera computers lab-01                             one computer: facts, deployments, history")]
pub(super) struct ComputersArgs {
    /// One computer (device id or name): its facts, deployments with their output, and
    /// history.
    name: Option<String>,
    /// `name=GLOB,tag=TAG,os=TEXT,silent=7d`: only the computers every term holds for
    /// (`silent`: no contact for that long; units s, m, h, d).
    #[arg(long, short = 'l', help_heading = "Selection")]
    selector: Option<String>,
    /// Only the computers this Activation targets (`name`, or `namespace/name`).
    #[arg(long, help_heading = "Selection")]
    activation: Option<String>,
    /// Only the computers with a deployment in this state (of `--activation`, if given):
    /// waiting, notified, downloading, installing, success, error. (`--state` names the
    /// state directory, as for every command that reads one.)
    #[arg(long, value_name = "STATE", help_heading = "Selection")]
    status: Option<String>,
    /// Show at most this many computers [default: all, read a page at a time].
    #[arg(long, help_heading = "Selection")]
    limit: Option<usize>,
    /// Always show the device id (it is shown anyway when two computers share a name).
    #[arg(long, help_heading = "Output")]
    wide: bool,
    #[command(flatten, next_help_heading = "Output")]
    format: FormatArgs,
    #[command(flatten, next_help_heading = "Server")]
    server: ServerArgs,
}

/// Prints the fleet, or one computer.
pub(super) fn run(args: &ComputersArgs) -> Result<ExitCode> {
    quiet_on_closed_pipe(runtime()?.block_on(computers(args)))
}

async fn computers(args: &ComputersArgs) -> Result<ExitCode> {
    let target = args.server.target().await?;
    let mut out = std::io::stdout().lock();
    let now = jiff::Timestamp::now().as_second();
    if let Some(name) = &args.name {
        let found: Vec<ComputerReport> = match &target {
            Target::Api(api) => api
                .get_optional(&format!("/api/v1/computers/{}", encode(name)))
                .await?
                .unwrap_or_default(),
            Target::State(db) => admin::computer_reports(db, name)?,
        };
        if found.is_empty() {
            bail!("no computer with device id or name {name:?}");
        }
        match args.format.output {
            Format::Table => {
                for report in &found {
                    admin::write_computer_report(&mut out, report, now)?;
                }
            }
            format => write_data(&mut out, format, &found)?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let query = FleetQuery {
        selector: args.selector.clone(),
        activation: args.activation.clone(),
        state: args.status.clone(),
        ..FleetQuery::default()
    };
    let fleet = read_fleet(&target, &query, args.limit).await?;
    match args.format.output {
        Format::Table => write_fleet(&mut out, &fleet, args.activation.as_deref(), args.wide, now)?,
        format => write_data(&mut out, format, &fleet)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Every page of the fleet `query` selects (up to `limit` computers), from the server or
/// the state database.
async fn read_fleet(
    target: &Target,
    query: &FleetQuery,
    limit: Option<usize>,
) -> Result<FleetPage> {
    let filter = query.filter()?;
    let mut fleet = FleetPage::default();
    let mut after: Option<String> = None;
    loop {
        let page = match target {
            Target::Api(api) => {
                let mut path = String::from("/api/v1/computers?");
                for (key, value) in [
                    ("selector", &query.selector),
                    ("activation", &query.activation),
                    ("state", &query.state),
                    ("after", &after),
                ] {
                    if let Some(value) = value {
                        path.push_str(&format!("{key}={}&", encode(value)));
                    }
                }
                api.get::<FleetPage>(path.trim_end_matches('&')).await?
            }
            Target::State(db) => fleet_page_of(db, &filter, after.as_deref(), None)?,
        };
        if after.is_none() {
            fleet.codes = page.codes;
        }
        fleet.computers.extend(page.computers);
        if let Some(limit) = limit
            && fleet.computers.len() >= limit
        {
            fleet.computers.truncate(limit);
            break;
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(fleet)
}

/// Writes the fleet: one line per computer, then the result codes per activation. With
/// `activation`, that activation's state and code get their own columns.
fn write_fleet(
    out: &mut impl Write,
    fleet: &FleetPage,
    activation: Option<&str>,
    wide: bool,
    now: i64,
) -> Result<()> {
    if fleet.computers.is_empty() {
        writeln!(out, "No computers found.")?;
    } else {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for c in &fleet.computers {
            *names.entry(c.computer.name.as_str()).or_default() += 1;
        }
        let show_id = wide || names.values().any(|n| *n > 1);
        let activation = activation.map(qualified);
        let mut headers = vec!["NAME"];
        if show_id {
            headers.push("DEVICE ID");
        }
        headers.extend(["OS", "TAGS", "LAST CONTACT"]);
        if activation.is_some() {
            headers.extend(["STATE", "CODE"]);
        } else {
            headers.push("DEPLOYMENTS");
        }
        let rows: Vec<Vec<String>> = fleet
            .computers
            .iter()
            .map(|c| row(c, show_id, activation.as_deref(), now))
            .collect();
        write_table(out, &headers, &rows)?;
    }
    if !fleet.codes.is_empty() {
        writeln!(out)?;
        writeln!(out, "Result codes:")?;
        for line in code_lines(&fleet.codes) {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

fn row(c: &FleetComputer, show_id: bool, activation: Option<&str>, now: i64) -> Vec<String> {
    let computer = &c.computer;
    let mut cells = vec![if computer.name.is_empty() {
        computer.device_id.clone()
    } else {
        computer.name.clone()
    }];
    if show_id {
        cells.push(computer.device_id.clone());
    }
    // OCS agents often repeat the version in the name (`Debian GNU/Linux 12`, `12`).
    let os = if computer.os_name.contains(&computer.os_version) {
        computer.os_name.clone()
    } else {
        format!("{} {}", computer.os_name, computer.os_version)
    };
    cells.push(if os.trim().is_empty() {
        "-".to_owned()
    } else {
        os.trim().to_owned()
    });
    cells.push(if computer.tags.is_empty() {
        "-".to_owned()
    } else {
        computer.tags.join(",")
    });
    cells.push(format!(
        "{} ago",
        span((now - computer.last_contact).max(0))
    ));
    match activation {
        Some(activation) => {
            let found = c.deployments.iter().find(|d| d.activation == activation);
            cells.push(found.map_or("-".to_owned(), |d| d.state.to_string()));
            cells.push(
                found
                    .and_then(|d| d.code.clone())
                    .unwrap_or_else(|| "-".to_owned()),
            );
        }
        None => cells.push(if c.deployments.is_empty() {
            "-".to_owned()
        } else {
            c.deployments
                .iter()
                .map(|d| {
                    let name = d
                        .activation
                        .strip_prefix("default/")
                        .unwrap_or(&d.activation);
                    match &d.code {
                        Some(code) if d.state == crate::store::db::State::Error => {
                            format!("{name}={}({code})", d.state)
                        }
                        _ => format!("{name}={}", d.state),
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        }),
    }
    cells
}

/// `default/hello: SUCCESS ×3, ERR_DOWNLOAD_INFO ×2` per activation, most frequent first
/// (the order the server sends).
fn code_lines(codes: &[CodeCount]) -> Vec<String> {
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    for c in codes {
        let part = format!("{} ×{}", c.code, c.computers);
        match lines.last_mut() {
            Some((activation, parts)) if *activation == c.activation => parts.push(part),
            _ => lines.push((c.activation.clone(), vec![part])),
        }
    }
    lines
        .into_iter()
        .map(|(activation, parts)| format!("{activation}: {}", parts.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admin::FleetDeployment;
    use crate::store::db::{Computer, State};

    fn computer(device_id: &str, name: &str, deployments: Vec<FleetDeployment>) -> FleetComputer {
        FleetComputer {
            computer: Computer {
                device_id: device_id.into(),
                name: name.into(),
                os_name: "Debian GNU/Linux".into(),
                os_version: "13".into(),
                tags: vec!["lab".into()],
                last_contact: 1_000,
                ..Computer::default()
            },
            deployments,
        }
    }

    fn deployment(activation: &str, state: State, code: Option<&str>) -> FleetDeployment {
        FleetDeployment {
            activation: activation.into(),
            package_id: "1700000001".into(),
            state,
            code: code.map(str::to_owned),
            changed_at: 1_000,
        }
    }

    fn fleet() -> FleetPage {
        FleetPage {
            computers: vec![
                computer(
                    "lab-01-2026",
                    "lab-01",
                    vec![
                        deployment("default/hello", State::Error, Some("ERR_DOWNLOAD_INFO")),
                        deployment("default/tools", State::Success, Some("SUCCESS")),
                    ],
                ),
                computer("lab-02-2026", "lab-02", vec![]),
            ],
            next: None,
            codes: vec![
                CodeCount {
                    activation: "default/hello".into(),
                    code: "ERR_DOWNLOAD_INFO".into(),
                    computers: 3,
                },
                CodeCount {
                    activation: "default/hello".into(),
                    code: "EXIT_CODE_1".into(),
                    computers: 2,
                },
                CodeCount {
                    activation: "default/tools".into(),
                    code: "SUCCESS".into(),
                    computers: 1,
                },
            ],
        }
    }

    fn rendered(fleet: &FleetPage, activation: Option<&str>, wide: bool) -> String {
        let mut out = Vec::new();
        write_fleet(&mut out, fleet, activation, wide, 1_090).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_fleet_shows_each_computer_its_deployments_and_codes_per_activation() {
        assert_eq!(
            rendered(&fleet(), None, false),
            concat!(
                "NAME    OS                   TAGS  LAST CONTACT  DEPLOYMENTS\n",
                "lab-01  Debian GNU/Linux 13  lab   90s ago       hello=error(ERR_DOWNLOAD_INFO) tools=success\n",
                "lab-02  Debian GNU/Linux 13  lab   90s ago       -\n",
                "\n",
                "Result codes:\n",
                "  default/hello: ERR_DOWNLOAD_INFO ×3, EXIT_CODE_1 ×2\n",
                "  default/tools: SUCCESS ×1\n",
            )
        );
    }

    #[test]
    fn device_ids_show_when_names_collide_or_wide_is_asked_and_one_activation_gets_columns() {
        let mut twins = fleet();
        twins.computers[1].computer.name = "lab-01".into();
        twins.codes.clear();
        assert_eq!(
            rendered(&twins, Some("hello"), false),
            concat!(
                "NAME    DEVICE ID    OS                   TAGS  LAST CONTACT  STATE  CODE\n",
                "lab-01  lab-01-2026  Debian GNU/Linux 13  lab   90s ago       error  ERR_DOWNLOAD_INFO\n",
                "lab-01  lab-02-2026  Debian GNU/Linux 13  lab   90s ago       -      -\n",
            )
        );
        let mut single = fleet();
        single.computers.truncate(1);
        single.codes.clear();
        assert!(rendered(&single, None, true).starts_with("NAME    DEVICE ID"));
        assert_eq!(
            rendered(&FleetPage::default(), None, false),
            "No computers found.\n"
        );
    }
}
