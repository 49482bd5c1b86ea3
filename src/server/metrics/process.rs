//! The standard `process_*` metrics (resident memory, CPU seconds, open descriptors, start
//! time), read from `/proc/self` at each scrape. prometheus-client has no process collector;
//! this one is Linux only and writes nothing elsewhere (the series are then absent).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

/// Reads `/proc` on each scrape.
#[derive(Debug, Default)]
pub struct Process;

/// What `/proc` says about this process.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// Clock ticks per second in `/proc/*/stat`: `USER_HZ`, which Linux fixes at 100 in its
/// user-space ABI on every architecture it supports.
const USER_HZ: f64 = 100.0;

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = sample() else {
            return Ok(());
        };
        let mut gauge = |name: &str, help: &str, value: f64, kind: MetricType| {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            match kind {
                MetricType::Counter => metric
                    .encode_counter::<prometheus_client::encoding::NoLabelSet, f64, f64>(
                        &value, None,
                    ),
                _ => metric.encode_gauge(&value),
            }
        };
        gauge(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            sample.cpu_seconds,
            MetricType::Counter,
        )?;
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            sample.resident_bytes as f64,
            MetricType::Gauge,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            sample.virtual_bytes as f64,
            MetricType::Gauge,
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            sample.open_fds as f64,
            MetricType::Gauge,
        )?;
        if let Some(max) = sample.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
                MetricType::Gauge,
            )?;
        }
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            sample.start_time_seconds,
            MetricType::Gauge,
        )
    }
}

/// This process now; `None` where there is no `/proc` (not Linux) or it cannot be read.
pub fn sample() -> Option<Sample> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    parse(&stat, &status, &boot, &limits, open_fds)
}

/// The sample out of the texts of `/proc/self/stat`, `/proc/self/status`, `/proc/stat`
/// and `/proc/self/limits`.
fn parse(stat: &str, status: &str, boot: &str, limits: &str, open_fds: u64) -> Option<Sample> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted after
    // its last `)`. There, field 3 (state) is index 0, so utime (14), stime (15) and
    // starttime (22) are 11, 12 and 19.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    let (utime, stime, start) = (ticks(11)?, ticks(12)?, ticks(19)?);
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|k| k * 1024)
    };
    let boot_time = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    let max_fds = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
    Some(Sample {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_bytes: kib("VmRSS:").unwrap_or(0),
        virtual_bytes: kib("VmSize:").unwrap_or(0),
        open_fds,
        max_fds,
        start_time_seconds: boot_time as f64 + start as f64 / USER_HZ,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_texts_parse_into_a_sample() {
        let stat = "4242 (tessera (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345 1000 200 18446744073709551615";
        let status = "Name:\ttessera\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        let boot = "cpu  1 2 3\nbtime 1700000000\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1024                 524288               files\n";
        let sample = parse(stat, status, boot, limits, 7).unwrap();
        assert!((sample.cpu_seconds - 3.0).abs() < 1e-9);
        assert_eq!(sample.resident_bytes, 1024 * 1024);
        assert_eq!(sample.virtual_bytes, 2048 * 1024);
        assert_eq!((sample.open_fds, sample.max_fds), (7, Some(1024)));
        assert!((sample.start_time_seconds - 1_700_000_123.45).abs() < 1e-3);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_sampled_on_linux() {
        let sample = sample().unwrap();
        assert!(sample.resident_bytes > 0);
        assert!(sample.open_fds > 0);
        assert!(sample.start_time_seconds > 1_600_000_000.0);
    }
}
