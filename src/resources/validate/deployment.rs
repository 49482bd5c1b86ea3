//! Checks of the deployment kinds on their own: Package, Activation, Affectation.

use std::net::IpAddr;

use super::{Found, is_dns_name};
use crate::resources::activation::ActivationSpec;
use crate::resources::affectation::AffectationSpec;
use crate::resources::meta::Os;
use crate::resources::package::{
    MAX_FRAGMENT_SIZE, MAX_PRIORITY, MIN_FRAGMENT_SIZE, PackageContent, PackageSpec,
};

pub(super) fn package(spec: &PackageSpec, found: &mut Found) {
    if !(0..=MAX_PRIORITY).contains(&spec.priority) {
        found.add(
            "spec.priority",
            format!(
                "priority must be between 0 and {MAX_PRIORITY}, got {}",
                spec.priority
            ),
        );
    }
    let size = spec.fragment_size;
    if size < MIN_FRAGMENT_SIZE || size > MAX_FRAGMENT_SIZE {
        found.add(
            "spec.fragmentSize",
            format!(
                "fragment size must be between {MIN_FRAGMENT_SIZE} and {MAX_FRAGMENT_SIZE}, got {size}"
            ),
        );
    }

    package_action(spec, found);
    if let Some(content) = &spec.content {
        package_content(spec, content, found);
    }
    if spec.success_exit_codes.is_empty() {
        found.add(
            "spec.successExitCodes",
            "at least one exit code must count as success",
        );
    }
    if let Some(notification) = &spec.notification
        && notification.text.trim().is_empty()
    {
        found.add(
            "spec.notification.text",
            "the notification text cannot be empty",
        );
    }
}

/// The action: exactly one of launch, execute or store, each with what it needs.
fn package_action(spec: &PackageSpec, found: &mut Found) {
    let action = &spec.action;
    let chosen: Vec<&str> = [
        ("launch", action.launch.is_some()),
        ("execute", action.execute.is_some()),
        ("store", action.store.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    match chosen.as_slice() {
        [] => found.add(
            "spec.action",
            "no action: set exactly one of launch, execute or store",
        ),
        [_] => {}
        several => found.add(
            "spec.action",
            format!(
                "{} actions ({}): set exactly one of launch, execute or store",
                several.len(),
                several.join(", ")
            ),
        ),
    }
    if let Some(launch) = &action.launch {
        if launch.command.trim().is_empty() {
            found.add("spec.action.launch.command", "the command cannot be empty");
        }
        if spec.content.is_none() {
            found.add(
                "spec.action.launch",
                "launch runs a file from the package's content, but the package has no content",
            );
        }
    }
    if let Some(execute) = &action.execute
        && execute.command.trim().is_empty()
    {
        found.add("spec.action.execute.command", "the command cannot be empty");
    }
    if let Some(store) = &action.store {
        if store.path.trim().is_empty() {
            found.add(
                "spec.action.store.path",
                "the destination path cannot be empty",
            );
        }
        if spec.content.is_none() {
            found.add(
                "spec.action.store",
                "store unpacks the package's content, but the package has no content",
            );
        }
    }
}

/// Where the content comes from: exactly one source, a url with its digest, an archive
/// format the target OS can unpack.
fn package_content(spec: &PackageSpec, content: &PackageContent, found: &mut Found) {
    let sources: Vec<&str> = [
        ("directory", content.directory.is_some()),
        ("archive", content.archive.is_some()),
        ("url", content.url.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, set)| set.then_some(name))
    .collect();
    if sources.len() != 1 {
        found.add(
            "spec.content",
            format!(
                "content must name exactly one of directory, archive or url (found {})",
                if sources.is_empty() {
                    "none".to_owned()
                } else {
                    sources.join(", ")
                }
            ),
        );
    }
    if let Some(url) = &content.url {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            found.add(
                "spec.content.url",
                format!("`{url}` is not an http:// or https:// address"),
            );
        }
        if content.sha256.is_none() {
            found.add(
                "spec.content.sha256",
                "a package downloaded from a url needs its sha256, so a changed or tampered file is refused",
            );
        }
    }
    if let Some(digest) = &content.sha256
        && !(digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        found.add(
            "spec.content.sha256",
            "sha256 must be 64 hexadecimal digits",
        );
    }
    if let Some(archive) = &content.archive {
        let lower = archive.to_ascii_lowercase();
        let zip = lower.ends_with(".zip");
        let targz = lower.ends_with(".tar.gz") || lower.ends_with(".tgz");
        if spec.os == Os::Windows && !zip {
            found.add(
                "spec.content.archive",
                "Windows agents only unpack zip archives: use a .zip file",
            );
        } else if spec.os != Os::Windows && !targz {
            // The info file tells Tessera's own agent `tar.gz` for Linux and macOS, and the
            // build checks the archive's first bytes the same way.
            found.add(
                "spec.content.archive",
                "Linux and macOS agents unpack tar.gz archives: use a .tar.gz or .tgz file",
            );
        }
    }
}

pub(super) fn activation(spec: &ActivationSpec, found: &mut Found) {
    if let Some(info) = &spec.info_location
        && let Some(reason) = location_problem(info, &["https"])
    {
        found.add(
            "spec.infoLocation",
            format!("{reason} (agents always fetch the info file over HTTPS)"),
        );
    }
    if let Some(pack) = &spec.pack_location
        && let Some(reason) = location_problem(pack, &["https", "http"])
    {
        found.add("spec.packLocation", reason);
    }
}

/// Why `location` is not a base address `scheme://host[:port][/path]` with one of `schemes`.
fn location_problem(location: &str, schemes: &[&str]) -> Option<String> {
    let Some((scheme, rest)) = location.split_once("://") else {
        return Some(format!(
            "`{location}` needs a scheme: write {}://host/path",
            schemes[0]
        ));
    };
    if !schemes.contains(&scheme) {
        return Some(format!(
            "`{location}` must start with {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    let host_port = rest.split('/').next().unwrap_or_default();
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
            if port.parse::<u16>().is_err() {
                return Some(format!("`{location}` has an invalid port `{port}`"));
            }
            host
        }
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || !(is_dns_name(host) || host.parse::<IpAddr>().is_ok()) {
        return Some(format!("`{location}` has no valid host name"));
    }
    if rest.contains(['?', '#']) {
        return Some(format!(
            "`{location}` cannot have a query or fragment: it is a base address"
        ));
    }
    None
}

pub(super) fn affectation(spec: &AffectationSpec, found: &mut Found) {
    let targets = &spec.targets;
    let selectors =
        !(targets.names.is_empty() && targets.name_globs.is_empty() && targets.tags.is_empty());
    if targets.all && selectors {
        found.add(
            "spec.targets.all",
            "all: true already selects every computer; remove names, nameGlobs and tags, or set all: false",
        );
    } else if !targets.all && !selectors {
        found.add(
            "spec.targets",
            "no computer selected: set names, nameGlobs, tags, or all: true",
        );
    }
    for (i, glob) in targets.name_globs.iter().enumerate() {
        if let Err(error) = globset::Glob::new(glob) {
            found.add(
                format!("spec.targets.nameGlobs[{i}]"),
                format!("`{glob}` is not a valid pattern: {}", error.kind()),
            );
        }
    }
    for (i, name) in targets.names.iter().enumerate() {
        if name.trim().is_empty() {
            found.add(
                format!("spec.targets.names[{i}]"),
                "a computer name cannot be empty",
            );
        }
    }
    if let Some(schedule) = &spec.schedule {
        let mut instant = |field: &str, value: &Option<String>| {
            let value = value.as_ref()?;
            match value.parse::<jiff::Timestamp>() {
                Ok(t) => Some(t),
                Err(_) => {
                    found.add(
                        format!("spec.schedule.{field}"),
                        format!("`{value}` is not an RFC 3339 time such as 2026-12-01T18:00:00Z"),
                    );
                    None
                }
            }
        };
        let not_before = instant("notBefore", &schedule.not_before);
        let not_after = instant("notAfter", &schedule.not_after);
        if let (Some(start), Some(end)) = (not_before, not_after)
            && start >= end
        {
            found.add(
                "spec.schedule.notAfter",
                "notAfter must be later than notBefore",
            );
        }
    }
    if let Some(rollout) = &spec.rollout {
        if rollout.stages.is_empty() {
            found.add("spec.rollout.stages", "a rollout needs at least one stage");
        }
        let mut previous = 0;
        for (i, stage) in rollout.stages.iter().enumerate() {
            if !(1..=100).contains(&stage.percent) {
                found.add(
                    format!("spec.rollout.stages[{i}].percent"),
                    format!("percent must be between 1 and 100, got {}", stage.percent),
                );
            } else if stage.percent <= previous {
                found.add(
                    format!("spec.rollout.stages[{i}].percent"),
                    format!(
                        "stages must grow: {}% does not follow {previous}%",
                        stage.percent
                    ),
                );
            }
            previous = previous.max(stage.percent);
        }
        if let Some(max) = rollout.max_errors
            && max < 1
        {
            found.add("spec.rollout.maxErrors", "maxErrors must be at least 1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_need_the_right_scheme_and_a_host() {
        assert!(location_problem("https://mirror.lan/download", &["https"]).is_none());
        assert!(location_problem("https://127.0.0.1:8443/download", &["https"]).is_none());
        assert!(location_problem("http://[::1]:8080/d", &["https", "http"]).is_none());
        assert!(location_problem("mirror.lan/download", &["https"]).is_some());
        assert!(location_problem("http://mirror.lan/download", &["https"]).is_some());
        assert!(location_problem("https://:8443/x", &["https"]).is_some());
        assert!(location_problem("https://a.lan:99999/x", &["https"]).is_some());
        assert!(location_problem("https://a.lan/x?y=1", &["https"]).is_some());
    }
}
