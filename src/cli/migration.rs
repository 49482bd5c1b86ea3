//! `tessera migration-package`: writes the Package that moves OCS Unix agents still calling
//! over plain HTTP (`spec.ocs.plainHttp`) to verified HTTPS, keeping their identity.
//!
//! The Package is files for the configuration repository (a YAML of Package and
//! Activation, and a content directory with the script and the CA), reviewed and
//! committed like any other, then targeted with an Affectation. Nothing is sent anywhere
//! by this command. What the script does and why is in [`HEADER`] and [`SCRIPT`], which
//! are what the user reads too.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

/// `tessera migration-package`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera migration-package --https-url https://tessera.example.com:8443/ocsinventory \\
      --ca .tessera/certificates/default/tessera-server/ca.crt --out packages/
  git add packages/ocs-https-migration* && git commit -m 'move OCS agents to HTTPS'")]
pub(super) struct MigrationArgs {
    /// The URL agents move to, e.g. `https://tessera.example.com:8443/ocsinventory`; its
    /// host must be a name or address the Server's certificate carries.
    #[arg(long)]
    https_url: String,
    /// The CA certificate (PEM) that signed the Server's certificate, e.g.
    /// `.tessera/certificates/default/tessera-server/ca.crt`.
    #[arg(long)]
    ca: PathBuf,
    /// The directory of the configuration to write into, e.g. `packages/`.
    #[arg(long)]
    out: PathBuf,
    /// Name of the Package and Activation, and of its content directory.
    #[arg(long, default_value = "ocs-https-migration")]
    name: String,
    /// Replace files a previous run wrote.
    #[arg(long)]
    force: bool,
}

/// Writes the package and prints what to do next.
pub(super) fn run(args: &MigrationArgs) -> Result<ExitCode> {
    let ca = std::fs::read_to_string(&args.ca)
        .with_context(|| format!("failed to read the CA certificate {}", args.ca.display()))?;
    let package = MigrationPackage::new(&args.name, &args.https_url, &ca)?;
    let written = package.write(&args.out, args.force)?;
    let mut out = std::io::stdout().lock();
    for path in &written {
        writeln!(out, "wrote {}", path.display())?;
    }
    writeln!(
        out,
        "Next: commit these files, then target the computers to move with an Affectation:\n\n{}",
        package.affectation_example()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The files of a migration package, checked and rendered.
#[derive(Debug)]
pub(super) struct MigrationPackage {
    name: String,
    https_url: String,
    ca: String,
}

impl MigrationPackage {
    /// Checks the inputs: a Kubernetes name, an `https://` URL the agent can use as it is,
    /// and PEM certificates.
    pub(super) fn new(name: &str, https_url: &str, ca: &str) -> Result<Self> {
        let valid_name = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid_name {
            bail!("--name {name:?} must be a lower-case DNS label (a-z, 0-9, '-')");
        }
        let Some(rest) = https_url.strip_prefix("https://") else {
            bail!("--https-url {https_url:?} must start with https://");
        };
        // It is written between single quotes in a shell script and on a line of the
        // agent's configuration: only what a URL needs.
        let plain = https_url
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&()*+,;=%".contains(&b));
        if !plain || rest.is_empty() || rest.starts_with('/') {
            bail!("--https-url {https_url:?} is not a plain https://host[:port]/path URL");
        }
        if !ca.contains("-----BEGIN CERTIFICATE-----") {
            bail!("the CA file holds no PEM certificate");
        }
        Ok(Self {
            name: name.to_owned(),
            https_url: https_url.to_owned(),
            ca: ca.to_owned(),
        })
    }

    /// `(path below the output directory, contents, executable)` of every file.
    pub(super) fn files(&self) -> Vec<(PathBuf, String, bool)> {
        let content = PathBuf::from(&self.name);
        vec![
            (
                PathBuf::from(format!("{}.yaml", self.name)),
                self.yaml(),
                false,
            ),
            (
                content.join("migrate.sh"),
                SCRIPT.replace("@HTTPS_URL@", &self.https_url),
                true,
            ),
            (content.join("ca.pem"), self.ca.clone(), false),
        ]
    }

    /// Writes the files into `out`, refusing to replace any unless `force`; the paths written.
    pub(super) fn write(&self, out: &Path, force: bool) -> Result<Vec<PathBuf>> {
        let files = self.files();
        let existing = files.iter().find(|(path, ..)| out.join(path).exists());
        if let Some((path, ..)) = existing.filter(|_| !force) {
            bail!(
                "{} exists: give --force to replace it",
                out.join(path).display()
            );
        }
        let mut written = Vec::new();
        for (path, text, executable) in files {
            let path = out.join(path);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("failed to create {}", parent.display()))?;
            }
            std::fs::write(&path, text)
                .with_context(|| format!("failed to write {}", path.display()))?;
            if executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("failed to make {} executable", path.display()))?;
            }
            written.push(path);
        }
        Ok(written)
    }

    /// The Package and its Activation, after the header that explains them.
    fn yaml(&self) -> String {
        let header = HEADER.replace("@HTTPS_URL@", &self.https_url);
        let name = &self.name;
        format!(
            "{header}apiVersion: tessera.dev/v1alpha1
kind: Package
metadata:
  name: {name}
spec:
  displayName: Move the OCS agent to HTTPS
  os: linux
  # First, alone: every later contact then comes over HTTPS.
  priority: 0
  content:
    directory: {name}
  action:
    launch:
      command: migrate.sh
  successExitCodes: [0]
---
apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: {name}
spec:
  packageRef:
    name: {name}
"
        )
    }

    /// An Affectation that moves every Linux computer, to adapt and commit.
    fn affectation_example(&self) -> String {
        let name = &self.name;
        format!(
            "apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: {name}
spec:
  activationRef:
    name: {name}
  targets:
    all: true
    os: [linux]
"
        )
    }
}

/// The comment at the top of the YAML: what the package does, what it needs, and the
/// Windows equivalent.
const HEADER: &str = r#"# Written by `tessera migration-package`. It moves OCS Inventory NG Unix agents that call
# this server over plain HTTP (Server spec.ocs.plainHttp: true) to verified HTTPS at
#   @HTTPS_URL@
# and keeps each computer's identity. Target it with an Affectation (`tessera
# migration-package` prints one); once tessera_ocs_plain_http_computers reads 0, set
# spec.ocs.plainHttp back to false.
#
# What migrate.sh does on each computer, run by the agent's download worker:
#   1. installs ca.pem (the CA of the Server's certificate) as tessera-ca.pem next to the
#      agent's ocsinventory-agent.cfg (Debian: /etc/ocsinventory/);
#   2. copies the agent's identity to the state directory of the new URL (below);
#   3. rewrites server=, ca= and ssl=1 in ocsinventory-agent.cfg, keeping the old file as
#      ocsinventory-agent.cfg.before-tessera. This is the last step: if anything before it
#      fails, the agent stays on HTTP and reports the error.
# The agent reports the result over HTTP; from its next run on, it calls over HTTPS and
# verifies the server with the CA.
#
# Why the identity is copied: the Unix agent keeps its state per server URL, in
# <basevardir>/<the URL with '/' as '_'>/ (Debian: /var/lib/ocsinventory-agent/), with its
# DEVICEID in ocsinv.conf, its TAG in ocsinv.adm and its installed packages in
# download/history. Given a new URL, it would start an empty directory and invent a new
# DEVICEID: a second computer in `tessera status`, and the first one stale. The script
# copies those three files to the new URL's directory (adding this package to the
# history), so the next contact over HTTPS is the same computer.
#
# What the agent needs before this can run:
#   - The package's info file is always fetched over HTTPS, even by an agent on HTTP: the
#     agent must already accept the Server's certificate there (a cacert.pem in its state
#     directory or ca= naming the CA, a Server certificate from the CA the fleet already
#     trusts, or ssl=0 for the move).
#   - Agents started with --server=... on their command line (a cron line, a systemd
#     unit) do not read server= from the file: change that command line instead.
#   - A configuration file somewhere else: set TESSERA_OCS_AGENT_CFG in the agent's
#     environment to its path.
#
# Windows agents (OCS Inventory NG Agent for Windows 2.x) are not moved by this package
# (os: linux). The equivalent, to ship as an os: windows package of its own:
#   - copy the CA to the agent's data folder, %ProgramData%\OCS Inventory NG\Agent\, as
#     cacert.pem;
#   - in ocsinventory.ini there, section [HTTP], set
#       Server=@HTTPS_URL@
#       SSL=1
#       CaBundle=cacert.pem
#     (the installer sets the same with /SERVER=... /SSL=1 /CA=...);
#   - restart the service "OCS Inventory Service".
# The Windows agent keeps its DEVICEID in that folder (ocsinventory.dat), not per URL, so
# it stays the same computer without copying anything. Not run by Tessera's tests: only
# the Unix path is.
#
"#;

/// The script the Unix agent runs, from `<basevardir>/<old URL>/download/<id>/tmp` (see
/// `Ocsinventory::Agent::Modules::Download::execute`).
const SCRIPT: &str = r#"#!/bin/sh
# Written by `tessera migration-package`: moves this OCS Inventory NG Unix agent to
# verified HTTPS at the URL below and keeps its DEVICEID. See the Package's YAML for why.
set -eu

HTTPS_URL='@HTTPS_URL@'

fail() {
    echo "tessera migration: $*" >&2
    exit 1
}

# The agent runs this three levels below its per-URL state directory.
old_vardir=$(cd ../../.. && pwd -P)
package_id=$(basename "$(cd .. && pwd -P)")
basevardir=$(dirname "$old_vardir")
new_vardir="$basevardir/$(printf '%s' "$HTTPS_URL" | tr '/' '_')"
[ -f "$old_vardir/ocsinv.conf" ] || fail "no ocsinv.conf in $old_vardir: not run by the OCS agent?"

# The configuration file the agent reads: the first of these (Ocsinventory::Agent::Config).
cfg="${TESSERA_OCS_AGENT_CFG:-}"
if [ -z "$cfg" ]; then
    for dir in /etc/ocsinventory /usr/local/etc/ocsinventory /etc/ocsinventory-agent "${HOME:-/root}/.ocsinventory"; do
        if [ -f "$dir/ocsinventory-agent.cfg" ]; then
            cfg="$dir/ocsinventory-agent.cfg"
            break
        fi
    done
fi
[ -n "$cfg" ] && [ -f "$cfg" ] || fail "no ocsinventory-agent.cfg found (set TESSERA_OCS_AGENT_CFG)"
ca="$(dirname "$cfg")/tessera-ca.pem"

# 1. The CA, where ca= will point.
cp ca.pem "$ca.tmp"
chmod 0644 "$ca.tmp"
mv -f "$ca.tmp" "$ca"

# 2. The identity: DEVICEID (ocsinv.conf), TAG (ocsinv.adm) and the history of installed
# packages, this one included, in the new URL's state directory.
if [ "$new_vardir" != "$old_vardir" ]; then
    mkdir -p "$new_vardir/download"
    for file in ocsinv.conf ocsinv.adm; do
        if [ -f "$old_vardir/$file" ]; then
            cp -p "$old_vardir/$file" "$new_vardir/$file"
        fi
    done
    {
        cat "$old_vardir/download/history" "$new_vardir/download/history" 2>/dev/null || true
        echo "$package_id"
    } | awk 'NF && !seen[$0]++' >"$new_vardir/download/history.tmp"
    mv -f "$new_vardir/download/history.tmp" "$new_vardir/download/history"
fi

# 3. The server, its CA and verification, last: the agent reads the last value of a key.
[ -f "$cfg.before-tessera" ] || cp -p "$cfg" "$cfg.before-tessera"
cp -p "$cfg" "$cfg.tmp"
awk -v url="$HTTPS_URL" -v ca="$ca" '
    { key = $0; sub(/^[ \t]*/, "", key); sub(/[ \t]*=.*$/, "", key); key = tolower(key) }
    /=/ && !/^#/ && (key == "server" || key == "ca" || key == "ssl") { next }
    { print }
    END { print "server=" url; print "ca=" ca; print "ssl=1" }
' "$cfg" >"$cfg.tmp"
mv -f "$cfg.tmp" "$cfg"

echo "tessera migration: $cfg now names $HTTPS_URL (CA $ca); DEVICEID kept in $new_vardir"
"#;

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const URL: &str = "https://tessera.lab:8443/ocsinventory";

    #[test]
    fn inputs_that_would_break_the_script_or_the_agent_are_refused() {
        assert!(MigrationPackage::new("move", URL, CA).is_ok());
        for (name, url, ca) in [
            ("Move", URL, CA),
            ("move", "http://tessera.lab/ocsinventory", CA),
            ("move", "https://x/o'; rm -rf /'", CA),
            ("move", "https://", CA),
            ("move", URL, "not a certificate"),
        ] {
            assert!(
                MigrationPackage::new(name, url, ca).is_err(),
                "{name} {url} {ca}"
            );
        }
    }

    #[test]
    fn the_yaml_is_a_package_and_an_activation_tessera_reads() {
        let package = MigrationPackage::new("move", URL, CA).unwrap();
        let files = package.files();
        let parsed = crate::resources::parse::parse_file("move.yaml", &files[0].1);
        assert_eq!(parsed.objects.len(), 2, "{:?}", parsed.problems);
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert!(
            files[0]
                .1
                .contains("Server=https://tessera.lab:8443/ocsinventory")
        );
        assert!(
            files[1]
                .1
                .contains("HTTPS_URL='https://tessera.lab:8443/ocsinventory'")
        );
    }

    #[test]
    fn files_are_not_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let package = MigrationPackage::new("move", URL, CA).unwrap();
        assert_eq!(package.write(dir.path(), false).unwrap().len(), 3);
        assert!(package.write(dir.path(), false).is_err());
        assert!(package.write(dir.path(), true).is_ok());
    }

    /// The script on a layout like the agent's: a per-URL state directory, a configuration
    /// file, run from `download/<id>/tmp` as the agent does.
    #[test]
    fn the_script_moves_the_configuration_and_keeps_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("var");
        let old = base.join("http:__srv:8080_ocsinventory");
        let work = old.join("download/1234567890/tmp");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(
            old.join("ocsinv.conf"),
            "<CONF><DEVICEID>lab-1</DEVICEID></CONF>\n",
        )
        .unwrap();
        std::fs::write(old.join("ocsinv.adm"), "<ADM><TAG>lab</TAG></ADM>\n").unwrap();
        std::fs::write(old.join("download/history"), "111\n222\n").unwrap();
        let cfg = dir.path().join("ocsinventory-agent.cfg");
        std::fs::write(
            &cfg,
            "# comment\nServer = http://srv:8080/ocsinventory\nssl=0\ntag=lab\n",
        )
        .unwrap();
        let package = MigrationPackage::new("move", URL, CA).unwrap();
        for (path, text, _) in package.files().into_iter().skip(1) {
            std::fs::write(work.join(path.file_name().unwrap()), text).unwrap();
        }
        for run in 0..2 {
            let output = Command::new("sh")
                .arg("migrate.sh")
                .current_dir(&work)
                .env("TESSERA_OCS_AGENT_CFG", &cfg)
                .output()
                .unwrap();
            assert!(output.status.success(), "run {run}: {output:?}");
        }
        let new = base.join("https:__tessera.lab:8443_ocsinventory");
        let read = |path: PathBuf| std::fs::read_to_string(path).unwrap();
        assert!(read(new.join("ocsinv.conf")).contains("lab-1"));
        assert!(read(new.join("ocsinv.adm")).contains("lab"));
        assert_eq!(read(new.join("download/history")), "111\n222\n1234567890\n");
        let ca = dir.path().join("tessera-ca.pem");
        assert_eq!(read(ca.clone()), CA);
        assert_eq!(
            read(cfg),
            format!(
                "# comment\ntag=lab\nserver={URL}\nca={}\nssl=1\n",
                ca.display()
            ),
            "run twice, written once"
        );
        assert!(read(dir.path().join("ocsinventory-agent.cfg.before-tessera")).contains("ssl=0"));
    }
}
