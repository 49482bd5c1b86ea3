//! How fast a package is built into the fragment store, against `md5sum` on the same file.
//!
//! `cargo bench --bench build` writes an incompressible archive (default 256 MiB, or
//! `TESSERA_BENCH_MIB`), stores it as a package in 1 MiB fragments (MD5 and SHA-256 of the
//! whole, SHA-256 of each fragment, every fragment written and synced), and times
//! `md5sum` reading the same file. The build is timed until `build` returns, that is until
//! the package is published, every fragment on disk. It prints figures; it asserts nothing
//! (the machine's other load moves them: run it on a quiet machine).

use std::io::Write;
use std::time::Instant;

use sha2::Digest;
use tessera::store::fragments::FragmentStore;

fn main() {
    let mib: u64 = std::env::var("TESSERA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir = tempfile::tempdir().expect("temporary directory");
    let archive = dir.path().join("archive.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&archive).unwrap());
        let mut block = [0u8; 32];
        for i in 0..(mib << 20) / 32 {
            block = sha2::Sha256::digest([&block[..], &i.to_be_bytes()].concat()).into();
            file.write_all(&block).unwrap();
        }
        // On disk before anything is timed: the build must not pay for flushing its input.
        file.into_inner().unwrap().sync_all().unwrap();
    }
    let bytes = (mib << 20) as f64;
    // Warm the page cache so both read from memory.
    let _ = std::fs::read(&archive);

    let started = Instant::now();
    let output = std::process::Command::new("md5sum")
        .arg(&archive)
        .output()
        .expect("md5sum");
    let md5sum = started.elapsed();
    let reference = String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();

    let store = FragmentStore::open(dir.path().join("download")).unwrap();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let manifest = store
        .build(
            "1234567890",
            Some(&archive),
            1 << 20,
            b"<DOWNLOAD/>",
            &mut |_, _| {},
        )
        .unwrap();
    let build = started.elapsed();
    let build_cpu = cpu_seconds() - cpu_before;
    assert_eq!(manifest.md5, reference, "the store's MD5 is md5sum's");

    // Where the time goes: each part alone, in this process, over the cached file.
    let data = std::fs::read(&archive).unwrap();
    let started = Instant::now();
    let _ = md5::Md5::digest(&data);
    let md5_alone = started.elapsed();
    let started = Instant::now();
    let _ = sha2::Sha256::digest(&data);
    let sha_alone = started.elapsed();
    let started = Instant::now();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        let path = dir.path().join(format!("w-{i}"));
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(chunk).unwrap();
        file.sync_all().unwrap();
    }
    let write_sync = started.elapsed();

    let rate = |d: std::time::Duration| bytes / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "build: {mib} MiB archive, {} fragments of 1 MiB",
        manifest.fragments.len()
    );
    println!(
        "  md5sum:                      {:>7.0} MiB/s ({:.2} s)",
        rate(md5sum),
        md5sum.as_secs_f64()
    );
    println!(
        "  tessera build (MD5 | SHA-256 + per-fragment SHA-256 + write | fdatasync): {:>7.0} MiB/s ({:.2} s), {:.0}% of md5sum",
        rate(build),
        build.as_secs_f64(),
        100.0 * md5sum.as_secs_f64() / build.as_secs_f64()
    );
    println!(
        "  the build used {build_cpu:.2} s of CPU in {:.2} s ({} cores here)",
        build.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "  parts alone: MD5 {:.0} MiB/s, SHA-256 {:.0} MiB/s, write + fsync of 1 MiB files {:.0} MiB/s",
        rate(md5_alone),
        rate(sha_alone),
        rate(write_sync)
    );
}

/// CPU time (user and system) this process has used so far, from `/proc/self/stat` (0 where
/// there is none).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields 14 and 15 (utime, stime), counted after the command name in parentheses, in
    // clock ticks of 1/100 s (USER_HZ on Linux).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
