//! What the process and its container really use: RSS, peak RSS, cgroup
//! usage and limit, memory pressure, and heap bytes.
//!
//! Everything is read from `/proc` and the cgroup filesystem on each call; a
//! value that cannot be read (not Linux, no cgroup, no PSI) is `None`. The
//! readings are Linux only; elsewhere every field is `None` (the heap bytes
//! come from [`CountingAlloc`](crate::CountingAlloc), when it is the global
//! allocator, on any platform).
//!
//! ```
//! use headroom_governor::MemoryProbe;
//!
//! let probe = MemoryProbe::detect();
//! let sample = probe.sample();
//! if cfg!(target_os = "linux") {
//!     assert!(sample.rss.is_some_and(|rss| rss > 0));
//!     assert!(sample.peak_rss >= sample.rss);
//! }
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::budget::CgroupMemory;

/// One reading of the probe.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MemorySample {
    /// Resident set size of this process (`VmRSS`).
    pub rss: Option<u64>,
    /// Peak resident set size of this process (`VmHWM`).
    pub peak_rss: Option<u64>,
    /// Memory charged to the cgroup (`memory.current`), page cache included.
    pub cgroup_current: Option<u64>,
    /// The cgroup's working set: usage minus inactive page cache.
    pub cgroup_working_set: Option<u64>,
    /// The effective cgroup limit.
    pub cgroup_limit: Option<u64>,
    /// Memory pressure: share of the last 10 s in which some task stalled
    /// on memory (`some avg10`, percent).
    pub psi_some_avg10: Option<f64>,
    /// Live heap bytes, when the [`CountingAlloc`](crate::CountingAlloc) is
    /// the global allocator.
    pub heap: Option<u64>,
}

/// Reads memory figures for this process and its cgroup.
#[derive(Clone, Debug)]
pub struct MemoryProbe {
    cgroup: Option<CgroupMemory>,
    psi_file: Option<PathBuf>,
}

impl Default for MemoryProbe {
    fn default() -> Self {
        Self::detect()
    }
}

impl MemoryProbe {
    /// A probe for this process, its cgroup (if any) and memory PSI (the
    /// cgroup's own pressure file, else the system-wide one).
    pub fn detect() -> Self {
        let cgroup = CgroupMemory::detect();
        let psi_file = cgroup
            .as_ref()
            .and_then(|c| c.pressure_file())
            .or_else(|| Some(PathBuf::from("/proc/pressure/memory")).filter(|p| p.is_file()));
        MemoryProbe { cgroup, psi_file }
    }

    /// The cgroup this probe reads, if any.
    pub fn cgroup(&self) -> Option<&CgroupMemory> {
        self.cgroup.as_ref()
    }

    /// Reads everything now.
    pub fn sample(&self) -> MemorySample {
        let (rss, peak_rss) = process_memory_self();
        MemorySample {
            rss,
            peak_rss,
            cgroup_current: self.cgroup.as_ref().and_then(|c| c.current()),
            cgroup_working_set: self.cgroup.as_ref().and_then(|c| c.working_set()),
            cgroup_limit: self.cgroup.as_ref().and_then(|c| c.limit()),
            psi_some_avg10: self
                .psi_file
                .as_deref()
                .and_then(|p| fs::read_to_string(p).ok())
                .and_then(|t| parse_psi_some_avg10(&t)),
            heap: crate::alloc::heap_bytes(),
        }
    }
}

/// `(VmRSS, VmHWM)` of this process.
fn process_memory_self() -> (Option<u64>, Option<u64>) {
    read_status(Path::new("/proc/self/status"))
}

/// `(VmRSS, VmHWM)` of process `pid`, e.g. a child under test: the peak
/// resident memory a user would see in `kubectl top` or an OOM report.
pub fn process_memory(pid: u32) -> (Option<u64>, Option<u64>) {
    read_status(&PathBuf::from(format!("/proc/{pid}/status")))
}

fn read_status(path: &Path) -> (Option<u64>, Option<u64>) {
    match fs::read_to_string(path) {
        Ok(text) => parse_status(&text),
        Err(_) => (None, None),
    }
}

/// Parses `VmRSS` and `VmHWM` (in kB) from `/proc/<pid>/status` text.
fn parse_status(text: &str) -> (Option<u64>, Option<u64>) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Parses `some avg10=` from a PSI file (`/proc/pressure/memory` format).
fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rss_and_peak_from_proc_status() {
        let text = "Name:\theadroom\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n";
        assert_eq!(parse_status(text), (Some(1024 * 1024), Some(2048 * 1024)));
        assert_eq!(parse_status("Name: x\n"), (None, None));
    }

    #[test]
    fn parses_psi_some_avg10() {
        let text = "some avg10=1.25 avg60=0.50 avg300=0.00 total=12345\nfull avg10=0.10 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(parse_psi_some_avg10(text), Some(1.25));
        assert_eq!(parse_psi_some_avg10("full avg10=3.00\n"), None);
    }

    #[test]
    fn sampling_this_process_reads_real_rss() {
        let s = MemoryProbe::detect().sample();
        let rss = s.rss.expect("Linux has /proc/self/status");
        let peak = s.peak_rss.expect("VmHWM");
        assert!(rss > 0 && peak >= rss, "rss {rss} peak {peak}");
        let (child_rss, _) = process_memory(std::process::id());
        assert!(child_rss.is_some());
    }
}
