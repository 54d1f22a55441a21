//! The standard process metrics (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, `process_max_fds`, `process_virtual_memory_bytes`,
//! `process_start_time_seconds`), read from `/proc` at each scrape, under the names Prometheus's
//! own client libraries give them, so that the usual dashboards and alerts find them. Elsewhere
//! than Linux there is no `/proc` and they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc` counts CPU time and start time in USER_HZ ticks, 100 per second on every Linux
/// architecture the operator is built for (proc(5); the kernel converts from its own HZ).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug)]
pub struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    start_time_seconds: Option<f64>,
    virtual_bytes: u64,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(sample) = read() else { return Ok(()) };
        let cpu = ConstCounter::new(sample.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", sample.resident_bytes.map(|b| b as f64)),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", Some(sample.virtual_bytes as f64)),
            ("process_open_fds", "Number of open file descriptors", sample.open_fds.map(|n| n as f64)),
            ("process_max_fds", "Maximum number of open file descriptors", sample.max_fds.map(|n| n as f64)),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                sample.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
            }
        }
        Ok(())
    }
}

fn read() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| boot_time(&s));
    let mut sample = parse_stat(&stat, boot_time)?;
    sample.resident_bytes = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| resident_bytes(&s));
    sample.open_fds = std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64);
    sample.max_fds = std::fs::read_to_string("/proc/self/limits").ok().and_then(|s| max_fds(&s));
    Some(sample)
}

/// `/proc/self/stat`: the fields after the command name (which may hold spaces and parentheses,
/// hence the last `)`); utime and stime are fields 14 and 15, starttime 22, vsize 23 (proc(5)).
fn parse_stat(stat: &str, boot_time: Option<u64>) -> Option<Sample> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14)? + field(15)?;
    let start_time_seconds =
        boot_time.zip(field(22)).map(|(boot, start)| boot as f64 + start as f64 / TICKS_PER_SECOND);
    Some(Sample {
        cpu_seconds: ticks as f64 / TICKS_PER_SECOND,
        start_time_seconds,
        virtual_bytes: field(23)?,
        ..Sample::default()
    })
}

/// `btime` of `/proc/stat`: when the system booted, in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, given in kB.
fn resident_bytes(status: &str) -> Option<u64> {
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?;
    kb.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_status_and_limits_are_read_as_proc_5_describes_them() {
        // A command name with a space and a parenthesis, as a process may be named.
        let stat = "4242 (tiny ops) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 250 50 0 0 20 0 9 0 \
                    12345 104857600 2048 18446744073709551615";
        let sample = parse_stat(stat, Some(1_700_000_000)).expect("parsed");
        assert_eq!(sample.cpu_seconds, 3.0);
        assert_eq!(sample.virtual_bytes, 104_857_600);
        assert_eq!(sample.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"), Some(1_700_000_000));
        assert_eq!(resident_bytes("Name:\tx\nVmRSS:\t   20480 kB\nThreads: 9\n"), Some(20_971_520));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(max_fds(limits), Some(1_048_576));
        assert_eq!(parse_stat("garbage", None), None);
    }

    #[test]
    fn this_process_is_measured() {
        let sample = read().expect("/proc is readable on Linux");
        assert!(sample.resident_bytes.is_some_and(|b| b > 0));
        assert!(sample.open_fds.is_some_and(|n| n > 0));
        assert!(sample.start_time_seconds.is_some_and(|t| t > 1_600_000_000.0));
    }
}
