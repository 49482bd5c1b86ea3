//! `tessera plan` as text: what was compared, the changes, the computers that receive or
//! lose a package, problems and a one-line summary, written to any `impl Write`.

use super::{CertificateAction, Change, PackageAction, Plan};

/// What a printed plan says besides the plan itself: what was compared with what, and what
/// was left out.
#[derive(Clone, Copy, Debug)]
pub struct Heading<'a> {
    /// The configuration planned: a directory, or a repository and branch.
    pub label: &'a str,
    /// The state directory compared against.
    pub state: &'a std::path::Path,
    /// What the comparison could not include.
    pub notes: &'a [String],
    /// Problems of the configuration, and packages that could not be built.
    pub problems: &'a [String],
}

/// Prints `plan` as `tessera plan` shows it: what is compared, then objects, packages,
/// certificates and computers that change, problems, and a one-line summary.
pub fn write_plan(
    out: &mut impl std::io::Write,
    plan: &Plan,
    heading: &Heading<'_>,
) -> std::io::Result<()> {
    let short = |r: &Option<String>| {
        r.as_deref()
            .map_or_else(|| "nothing".to_owned(), |r| r.chars().take(12).collect())
    };
    writeln!(
        out,
        "plan: {} ({}) against {} (applied: {})",
        heading.label,
        short(&plan.revision),
        heading.state.display(),
        short(&plan.applied_revision)
    )?;
    for note in heading.notes {
        writeln!(out, "note: {note}")?;
    }
    write_changes(out, plan)?;
    write_deployments(out, plan)?;
    if !heading.problems.is_empty() {
        writeln!(out, "\nproblems:")?;
        for problem in heading.problems {
            writeln!(out, "  {problem}")?;
        }
    }
    write_summary(out, plan)
}

/// The objects, packages and certificates that change.
fn write_changes(out: &mut impl std::io::Write, plan: &Plan) -> std::io::Result<()> {
    if !plan.objects.is_empty() {
        writeln!(out, "\nobjects:")?;
        for o in &plan.objects {
            let sign = match o.change {
                Change::Add => "+",
                Change::Change => "~",
                Change::Remove => "-",
            };
            writeln!(out, "  {sign} {}", o.object)?;
        }
    }
    if !plan.packages.is_empty() {
        writeln!(out, "\npackages:")?;
        for p in &plan.packages {
            let id = |i: &Option<String>| i.clone().unwrap_or_default();
            match p.action {
                PackageAction::Build => writeln!(out, "  + {}: build {}", p.package, id(&p.to))?,
                PackageAction::Rebuild => writeln!(
                    out,
                    "  ~ {}: rebuild {} -> {}",
                    p.package,
                    id(&p.from),
                    id(&p.to)
                )?,
                PackageAction::Remove => {
                    writeln!(out, "  - {}: remove {}", p.package, id(&p.from))?
                }
            }
        }
    }
    if !plan.certificates.is_empty() {
        writeln!(out, "\ncertificates:")?;
        for c in &plan.certificates {
            let (sign, verb) = match c.action {
                CertificateAction::Issue => ("+", "issue"),
                CertificateAction::Renew => ("~", "renew"),
                CertificateAction::Remove => ("-", "remove"),
            };
            writeln!(out, "  {sign} {}: {verb} ({})", c.certificate, c.reason)?;
        }
    }
    Ok(())
}

/// Per activation, the computers that would receive or lose its package.
fn write_deployments(out: &mut impl std::io::Write, plan: &Plan) -> std::io::Result<()> {
    if !plan.deployments.is_empty() {
        writeln!(out, "\ncomputers ({} known):", plan.computers)?;
        for d in &plan.deployments {
            writeln!(
                out,
                "  {} (package {} {}):",
                d.activation, d.package, d.package_id
            )?;
            for (what, sample) in [("would receive", &d.receive), ("would lose", &d.lose)] {
                if sample.count == 0 {
                    continue;
                }
                let more = sample.count - sample.names.len();
                writeln!(
                    out,
                    "    {what}: {} computer{}: {}{}",
                    sample.count,
                    plural(sample.count),
                    sample.names.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                )?;
            }
        }
    }
    Ok(())
}

/// The one-line summary: changes or no changes, and the counts.
fn write_summary(out: &mut impl std::io::Write, plan: &Plan) -> std::io::Result<()> {
    let receive: usize = plan.deployments.iter().map(|d| d.receive.count).sum();
    let lose: usize = plan.deployments.iter().map(|d| d.lose.count).sum();
    let count = |action: PackageAction| plan.packages.iter().filter(|p| p.action == action).count();
    writeln!(
        out,
        "\n{}: {} object change{}, {} package{} to build, {} to rebuild, {} to remove, {} certificate{} to issue or renew; {receive} deployment{} to receive, {lose} to lose",
        if plan.changes() {
            "changes"
        } else {
            "no changes"
        },
        plan.objects.len(),
        plural(plan.objects.len()),
        count(PackageAction::Build),
        plural(count(PackageAction::Build)),
        count(PackageAction::Rebuild),
        count(PackageAction::Remove),
        plan.certificates.len(),
        plural(plan.certificates.len()),
        plural(receive),
    )?;
    Ok(())
}

/// "s" after a count other than one.
fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod render_tests {
    use super::super::{CertificateChange, DeploymentChange, ObjectChange, PackageChange, Sample};
    use super::*;

    fn rendered(plan: &Plan, heading: &Heading<'_>) -> String {
        let mut out = Vec::new();
        write_plan(&mut out, plan, heading).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_empty_plan_says_no_changes() {
        let heading = Heading {
            label: "fleet",
            state: std::path::Path::new("fleet/.tessera"),
            notes: &[],
            problems: &[],
        };
        assert_eq!(
            rendered(&Plan::default(), &heading),
            concat!(
                "plan: fleet (nothing) against fleet/.tessera (applied: nothing)\n",
                "\n",
                "no changes: 0 object changes, 0 packages to build, 0 to rebuild, 0 to remove, 0 certificates to issue or renew; 0 deployments to receive, 0 to lose\n",
            )
        );
    }

    #[test]
    fn a_plan_lists_every_change_note_and_problem_then_sums_up() {
        let plan = Plan {
            applied_revision: Some("0123456789abcdef0123".into()),
            revision: Some("fedcba9876543210fedc".into()),
            objects: vec![
                ObjectChange {
                    object: "Package/default/hello".into(),
                    change: Change::Change,
                },
                ObjectChange {
                    object: "Package/default/old".into(),
                    change: Change::Remove,
                },
            ],
            packages: vec![
                PackageChange {
                    package: "default/hello".into(),
                    action: PackageAction::Rebuild,
                    from: Some("1700000001".into()),
                    to: Some("1700000002".into()),
                },
                PackageChange {
                    package: "default/old".into(),
                    action: PackageAction::Remove,
                    from: Some("1600000000".into()),
                    to: None,
                },
            ],
            certificates: vec![CertificateChange {
                certificate: "default/server".into(),
                action: CertificateAction::Issue,
                reason: "DoesNotExist".into(),
            }],
            deployments: vec![DeploymentChange {
                activation: "default/hello-everywhere".into(),
                package: "default/hello".into(),
                package_id: "1700000002".into(),
                receive: Sample {
                    count: 12,
                    names: vec!["pc-1".into(), "pc-2".into()],
                },
                lose: Sample::default(),
            }],
            computers: 40,
        };
        let heading = Heading {
            label: "fleet",
            state: std::path::Path::new("/var/lib/tessera"),
            notes: &["left out of the comparison: Package/default/x".to_owned()],
            problems: &["Package/default/y: not built: no such file".to_owned()],
        };
        assert_eq!(
            rendered(&plan, &heading),
            concat!(
                "plan: fleet (fedcba987654) against /var/lib/tessera (applied: 0123456789ab)\n",
                "note: left out of the comparison: Package/default/x\n",
                "\n",
                "objects:\n",
                "  ~ Package/default/hello\n",
                "  - Package/default/old\n",
                "\n",
                "packages:\n",
                "  ~ default/hello: rebuild 1700000001 -> 1700000002\n",
                "  - default/old: remove 1600000000\n",
                "\n",
                "certificates:\n",
                "  + default/server: issue (DoesNotExist)\n",
                "\n",
                "computers (40 known):\n",
                "  default/hello-everywhere (package default/hello 1700000002):\n",
                "    would receive: 12 computers: pc-1, pc-2 and 10 more\n",
                "\n",
                "problems:\n",
                "  Package/default/y: not built: no such file\n",
                "\n",
                "changes: 2 object changes, 0 packages to build, 1 to rebuild, 1 to remove, 1 certificate to issue or renew; 12 deployments to receive, 0 to lose\n",
            )
        );
    }
}
