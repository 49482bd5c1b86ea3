//! How fast `tessera validate` reads a large configuration, and the memory it takes.
//!
//! `cargo bench --bench validate` writes N objects (packages, activations, affectations,
//! certificates; default 1,000, or `TESSERA_BENCH_OBJECTS`) into a temporary directory,
//! then times reading and evaluating it, as a pre-commit hook would run it. It prints
//! figures; it asserts nothing.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use tessera::desired::{self, Options};
use tessera::sources::dir::DirSource;

fn main() {
    let objects: usize = std::env::var("TESSERA_BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let groups = objects / 4;
    let mut written = 1;
    let mut text = String::from(
        "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned: {}\n",
    );
    for i in 0..groups {
        write!(
            text,
            "---\napiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: pkg-{i}\nspec:\n  os: linux\n  priority: {p}\n  content:\n    url: https://mirror.example.com/p{i}.tar.gz\n    sha256: {digest}\n  action:\n    launch:\n      command: sh install.sh --quiet\n  fragmentSize: 512Ki\n\
             ---\napiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: pkg-{i}\nspec:\n  packageRef:\n    name: pkg-{i}\n  packLocation: http://mirror.example.com/download\n\
             ---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: pkg-{i}\nspec:\n  activationRef:\n    name: pkg-{i}\n  targets:\n    nameGlobs: [\"LAB-{i}-*\"]\n    tags: [lab, site-{i}]\n    os: [linux]\n\
             ---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: cert-{i}\nspec:\n  issuerRef:\n    name: ca\n  dnsNames: [host-{i}.example.com]\n  ipAddresses: [10.0.{a}.{b}]\n  usages: [server auth]\n  duration: 2160h\n",
            p = i % 11,
            digest = "ab".repeat(32),
            a = i / 250,
            b = i % 250,
        )
        .unwrap();
        written += 4;
        // Ten files, as a real repository spreads objects over several.
        if (i + 1) % (groups / 10).max(1) == 0 || i + 1 == groups {
            std::fs::write(dir.path().join(format!("part-{i}.yaml")), &text).unwrap();
            text.clear();
        }
    }
    if !text.is_empty() {
        std::fs::write(dir.path().join("rest.yaml"), &text).unwrap();
    }

    let source = DirSource::new(dir.path(), vec![]).unwrap();
    let runs = 5;
    let mut times = Vec::new();
    let mut problems = 0;
    let mut entries = 0;
    for _ in 0..runs {
        let start = Instant::now();
        let state = desired::evaluate(&source.scan(), None, Options::default());
        times.push(start.elapsed());
        problems = state.problems.len();
        entries = state.entries.len();
    }
    times.sort();
    let median = times[runs / 2];
    println!(
        "validate: {entries} objects ({written} written) in {} files, {problems} problems",
        std::fs::read_dir(dir.path()).unwrap().count()
    );
    println!(
        "  read + evaluate: median {:.1} ms, best {:.1} ms over {runs} runs ({:.0} objects/s)",
        ms(median),
        ms(times[0]),
        entries as f64 / median.as_secs_f64()
    );
    if let Some(peak) = peak_rss_kib() {
        println!(
            "  peak resident memory of the process: {:.1} MiB",
            peak as f64 / 1024.0
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// VmHWM from /proc (Linux): the peak resident set size, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
