//! Where the budget comes from: a flag, the container's memory limit, or the
//! machine's physical memory.
//!
//! # Default policy
//!
//! [`BudgetPolicy::resolve`] picks the governor's budget in this order:
//!
//! 1. An explicit size (`--memory 512MiB`) wins. If it exceeds the container
//!    limit the decision carries a warning: the kernel will still kill the
//!    process at the limit.
//! 2. Else, with a container limit `L` (cgroup v2 `memory.max`, or cgroup v1
//!    `memory.limit_in_bytes`; the smallest limit of the cgroup and its
//!    ancestors): `budget = (L - base_reserve) * limit_fraction`, and never
//!    less than `L / 4`. With the defaults (64 MiB reserve, 0.8) a 512 MiB pod
//!    gets a 358 MiB budget. The reserve pays for the binary, thread stacks and
//!    runtime; the remaining 20 % absorbs allocator fragmentation and memory
//!    nobody reserves (sockets, TLS state, the kernel's share charged to the
//!    cgroup).
//! 3. Else, without any limit: `physical_fraction` (one quarter) of physical
//!    memory (`MemTotal`), so an unconfigured run never takes over a laptop.
//! 4. If nothing can be read (not Linux, no /proc): 512 MiB.
//!
//! Detection reads Linux's `/proc/self/cgroup`, `/proc/meminfo` and the
//! cgroup filesystem; [`BudgetPolicy::resolve`] is the same policy on
//! explicit inputs, on any platform:
//!
//! ```
//! use headroom_governor::{BudgetPolicy, BudgetSource, CgroupVersion};
//!
//! const MIB: u64 = 1 << 20;
//! let policy = BudgetPolicy::default();
//! // A 512 MiB pod: (512 - 64) * 0.8 = 358.4 MiB.
//! let d = policy.resolve(None, Some((CgroupVersion::V2, 512 * MIB)), Some(64 << 30));
//! assert_eq!(d.budget / MIB, 358);
//! assert!(matches!(d.source, BudgetSource::Cgroup { .. }));
//! // No limit: a quarter of physical memory.
//! assert_eq!(policy.resolve(None, None, Some(16 << 30)).budget, 4 << 30);
//! // An explicit budget above the limit wins, with a warning.
//! let d = policy.resolve(Some(1 << 30), Some((CgroupVersion::V1, 512 * MIB)), None);
//! assert!(d.warning.is_some());
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::ByteSize;

/// cgroup v1 reports "no limit" as a page-aligned `i64::MAX`; anything this
/// large is not a real limit.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Which cgroup hierarchy the limit came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// The unified hierarchy: `memory.max`, `memory.current`.
    V2,
    /// The legacy memory controller: `memory.limit_in_bytes`, `memory.usage_in_bytes`.
    V1,
}

/// The memory controller of the cgroup this process lives in.
///
/// Every accessor reads the files afresh, so a limit changed at run time
/// (`kubectl` in-place resize) is seen by the next call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMemory {
    version: CgroupVersion,
    /// The cgroup's own directory.
    dir: PathBuf,
    /// The hierarchy's mount point; ancestors are walked up to here.
    root: PathBuf,
}

impl CgroupMemory {
    /// Finds the memory cgroup of the current process under `/sys/fs/cgroup`.
    pub fn detect() -> Option<Self> {
        let proc_self = fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::detect_in(Path::new("/sys/fs/cgroup"), &proc_self)
    }

    /// Finds the memory cgroup given the cgroup filesystem root and the text
    /// of `/proc/self/cgroup`. cgroup v2 is preferred; v1 is the fallback.
    ///
    /// Inside a cgroup namespace the path in `/proc/self/cgroup` may not exist
    /// below the mount (the container sees its own cgroup as the root); the
    /// mount root itself is then used.
    pub fn detect_in(root: &Path, proc_self_cgroup: &str) -> Option<Self> {
        let mut v1_path = None;
        let mut v2_path = None;
        for line in proc_self_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2_path = Some(path);
            } else if controllers.split(',').any(|c| c == "memory") {
                v1_path = Some(path);
            }
        }
        if let Some(path) = v2_path {
            let found = Self::find_dir(root, path, "memory.max").map(|dir| CgroupMemory {
                version: CgroupVersion::V2,
                dir,
                root: root.to_path_buf(),
            });
            if found.is_some() {
                return found;
            }
        }
        let v1_root = root.join("memory");
        let path = v1_path.unwrap_or("/");
        Self::find_dir(&v1_root, path, "memory.limit_in_bytes").map(|dir| CgroupMemory {
            version: CgroupVersion::V1,
            dir,
            root: v1_root,
        })
    }

    fn find_dir(root: &Path, path: &str, marker: &str) -> Option<PathBuf> {
        let own = root.join(path.trim_start_matches('/'));
        [own, root.to_path_buf()]
            .into_iter()
            .find(|dir| dir.join(marker).is_file())
    }

    /// Which hierarchy this is.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The effective memory limit: the smallest limit of this cgroup and its
    /// ancestors, `None` when there is none.
    pub fn limit(&self) -> Option<u64> {
        match self.version {
            CgroupVersion::V2 => {
                let mut best: Option<u64> = None;
                let mut dir = Some(self.dir.as_path());
                while let Some(d) = dir {
                    if let Some(limit) = read_trimmed(&d.join("memory.max"))
                        .filter(|v| v != "max")
                        .and_then(|v| v.parse::<u64>().ok())
                    {
                        best = Some(best.map_or(limit, |b| b.min(limit)));
                    }
                    if d == self.root {
                        break;
                    }
                    dir = d.parent().filter(|p| p.starts_with(&self.root));
                }
                best
            }
            CgroupVersion::V1 => {
                let own = read_u64(&self.dir.join("memory.limit_in_bytes"));
                // The kernel folds the ancestors' limits into this field.
                let hierarchical =
                    read_stat(&self.dir.join("memory.stat"), "hierarchical_memory_limit");
                [own, hierarchical]
                    .into_iter()
                    .flatten()
                    .filter(|&v| v < V1_UNLIMITED_THRESHOLD)
                    .min()
            }
        }
    }

    /// Memory charged to the cgroup now, page cache included.
    pub fn current(&self) -> Option<u64> {
        match self.version {
            CgroupVersion::V2 => read_u64(&self.dir.join("memory.current")),
            CgroupVersion::V1 => read_u64(&self.dir.join("memory.usage_in_bytes")),
        }
    }

    /// The working set, as the kubelet computes it: usage minus the inactive
    /// page cache the kernel can drop without OOM-killing anyone. This is the
    /// number that approaches the limit before an OOM kill.
    pub fn working_set(&self) -> Option<u64> {
        let current = self.current()?;
        let key = match self.version {
            CgroupVersion::V2 => "inactive_file",
            CgroupVersion::V1 => "total_inactive_file",
        };
        let inactive = read_stat(&self.dir.join("memory.stat"), key).unwrap_or(0);
        Some(current.saturating_sub(inactive))
    }

    /// The cgroup's memory pressure file (v2 only).
    pub fn pressure_file(&self) -> Option<PathBuf> {
        let p = self.dir.join("memory.pressure");
        (self.version == CgroupVersion::V2 && p.is_file()).then_some(p)
    }
}

/// Reads a file and trims it; `None` if it cannot be read.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Reads `key value` from a cgroup `memory.stat` file.
fn read_stat(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Physical memory from `/proc/meminfo` (`MemTotal`).
pub fn physical_memory() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Where a budget came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BudgetSource {
    /// An explicit size given by the user.
    Explicit,
    /// Derived from the container's memory limit.
    Cgroup {
        /// Which hierarchy the limit came from.
        version: CgroupVersion,
        /// The limit in bytes.
        limit: u64,
    },
    /// A fraction of physical memory; no container limit was found.
    Physical {
        /// `MemTotal` in bytes.
        total: u64,
    },
    /// Nothing could be read; a fixed default.
    Fallback,
}

/// The chosen budget and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BudgetDecision {
    /// Bytes the governor may hand out.
    pub budget: u64,
    /// Where the number came from.
    pub source: BudgetSource,
    /// The hard limit the kernel enforces, if any: the breaker's reference.
    pub limit: Option<u64>,
    /// Something the user should know (e.g. a budget above the limit).
    pub warning: Option<String>,
}

impl fmt::Display for BudgetDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "budget {}", ByteSize(self.budget))?;
        match &self.source {
            BudgetSource::Explicit => write!(f, " (from --memory)")?,
            BudgetSource::Cgroup { version, limit } => write!(
                f,
                " (from the cgroup {} limit of {})",
                match version {
                    CgroupVersion::V2 => "v2",
                    CgroupVersion::V1 => "v1",
                },
                ByteSize(*limit)
            )?,
            BudgetSource::Physical { total } => write!(
                f,
                " (no container limit; a share of {} physical memory)",
                ByteSize(*total)
            )?,
            BudgetSource::Fallback => {
                write!(f, " (no limit or physical memory readable; fixed default)")?
            }
        }
        if let Some(w) = &self.warning {
            write!(f, "; warning: {w}")?;
        }
        Ok(())
    }
}

/// The default budget policy; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct BudgetPolicy {
    /// Bytes kept back from a container limit for the runtime itself.
    pub base_reserve: u64,
    /// Share of what remains of a container limit after the reserve.
    pub limit_fraction: f64,
    /// Share of physical memory when there is no container limit.
    pub physical_fraction: f64,
    /// Budget when nothing can be read.
    pub fallback: u64,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        BudgetPolicy {
            base_reserve: 64 << 20,
            limit_fraction: 0.8,
            physical_fraction: 0.25,
            fallback: 512 << 20,
        }
    }
}

impl BudgetPolicy {
    /// Resolves the budget for this process: `explicit` if given, else from
    /// the detected cgroup, else from physical memory.
    pub fn resolve_here(&self, explicit: Option<u64>) -> BudgetDecision {
        let cgroup = CgroupMemory::detect();
        let limit = cgroup.as_ref().and_then(|c| c.limit());
        let version = cgroup.as_ref().map_or(CgroupVersion::V2, |c| c.version());
        self.resolve(explicit, limit.map(|l| (version, l)), physical_memory())
    }

    /// Resolves the budget from explicit inputs (pure; used by
    /// [`resolve_here`](Self::resolve_here) and by tests).
    pub fn resolve(
        &self,
        explicit: Option<u64>,
        cgroup_limit: Option<(CgroupVersion, u64)>,
        physical: Option<u64>,
    ) -> BudgetDecision {
        let limit = cgroup_limit.map(|(_, l)| l);
        if let Some(budget) = explicit {
            let warning = limit.filter(|&l| budget > l).map(|l| {
                format!(
                    "the budget exceeds the container limit of {}; the kernel will kill the process before the governor stops it",
                    ByteSize(l)
                )
            });
            return BudgetDecision {
                budget,
                source: BudgetSource::Explicit,
                limit,
                warning,
            };
        }
        if let Some((version, l)) = cgroup_limit {
            let derived = (l.saturating_sub(self.base_reserve) as f64 * self.limit_fraction) as u64;
            return BudgetDecision {
                budget: derived.max(l / 4),
                source: BudgetSource::Cgroup { version, limit: l },
                limit,
                warning: None,
            };
        }
        if let Some(total) = physical {
            return BudgetDecision {
                budget: (total as f64 * self.physical_fraction) as u64,
                source: BudgetSource::Physical { total },
                limit: None,
                warning: None,
            };
        }
        BudgetDecision {
            budget: self.fallback,
            source: BudgetSource::Fallback,
            limit: None,
            warning: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn v2_reads_memory_max_and_treats_max_as_unlimited() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("kubepods/pod1/ctr");
        write(&dir.join("memory.max"), "536870912\n");
        write(&dir.join("memory.current"), "1000\n");
        let cg = CgroupMemory::detect_in(root.path(), "0::/kubepods/pod1/ctr\n").unwrap();
        assert_eq!(cg.version(), CgroupVersion::V2);
        assert_eq!(cg.limit(), Some(512 << 20));
        assert_eq!(cg.current(), Some(1000));

        write(&dir.join("memory.max"), "max\n");
        assert_eq!(cg.limit(), None, "`max` means no limit");
    }

    #[test]
    fn v2_limit_is_the_smallest_of_the_ancestors() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join("kubepods/memory.max"), "max\n");
        write(&root.path().join("kubepods/pod1/memory.max"), "268435456\n");
        write(&root.path().join("kubepods/pod1/ctr/memory.max"), "max\n");
        let cg = CgroupMemory::detect_in(root.path(), "0::/kubepods/pod1/ctr").unwrap();
        assert_eq!(cg.limit(), Some(256 << 20));
    }

    #[test]
    fn v2_in_a_cgroup_namespace_uses_the_mount_root() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join("memory.max"), "1073741824\n");
        let cg = CgroupMemory::detect_in(root.path(), "0::/\n").unwrap();
        assert_eq!(cg.limit(), Some(1 << 30));
        // A path that does not exist below the mount falls back to the root.
        let cg = CgroupMemory::detect_in(root.path(), "0::/not/here\n").unwrap();
        assert_eq!(cg.dir(), root.path());
    }

    #[test]
    fn v1_fallback_reads_limit_in_bytes_and_ignores_the_unlimited_sentinel() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("memory/docker/abc");
        write(&dir.join("memory.limit_in_bytes"), "9223372036854771712\n");
        write(&dir.join("memory.usage_in_bytes"), "4096\n");
        let proc_self = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n";
        let cg = CgroupMemory::detect_in(root.path(), proc_self).unwrap();
        assert_eq!(cg.version(), CgroupVersion::V1);
        assert_eq!(cg.limit(), None);
        assert_eq!(cg.current(), Some(4096));

        write(&dir.join("memory.limit_in_bytes"), "134217728\n");
        assert_eq!(cg.limit(), Some(128 << 20));

        // A parent limit shows in memory.stat's hierarchical_memory_limit.
        write(&dir.join("memory.limit_in_bytes"), "9223372036854771712\n");
        write(
            &dir.join("memory.stat"),
            "cache 0\nhierarchical_memory_limit 67108864\ntotal_inactive_file 1024\n",
        );
        assert_eq!(cg.limit(), Some(64 << 20));
        assert_eq!(cg.working_set(), Some(3072));
    }

    #[test]
    fn no_cgroup_files_means_no_cgroup() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(CgroupMemory::detect_in(root.path(), "0::/x\n"), None);
        assert_eq!(CgroupMemory::detect_in(root.path(), "garbage"), None);
    }

    #[test]
    fn working_set_subtracts_inactive_file_cache() {
        let root = tempfile::tempdir().unwrap();
        write(&root.path().join("memory.max"), "max\n");
        write(&root.path().join("memory.current"), "10000\n");
        write(
            &root.path().join("memory.stat"),
            "anon 6000\ninactive_file 3000\nactive_file 1000\n",
        );
        let cg = CgroupMemory::detect_in(root.path(), "0::/").unwrap();
        assert_eq!(cg.working_set(), Some(7000));
    }

    #[test]
    fn meminfo_total_is_parsed_in_bytes() {
        let text = "MemTotal:       24578300 kB\nMemFree:        1000 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24578300 * 1024));
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn policy_prefers_explicit_then_cgroup_then_physical() {
        let p = BudgetPolicy::default();
        let cg = Some((CgroupVersion::V2, 512 << 20));

        let d = p.resolve(Some(100 << 20), cg, Some(16 << 30));
        assert_eq!(
            (d.budget, &d.source, d.warning.is_none()),
            (100 << 20, &BudgetSource::Explicit, true)
        );

        let d = p.resolve(Some(1 << 30), cg, None);
        assert!(d.warning.unwrap().contains("exceeds the container limit"));

        let d = p.resolve(None, cg, Some(16 << 30));
        assert_eq!(d.budget, ((512u64 - 64) << 20) * 4 / 5);
        assert_eq!(d.limit, Some(512 << 20));
        assert!(
            d.to_string().contains("cgroup v2 limit of 512.0 MiB"),
            "{d}"
        );

        // A tiny limit still leaves a usable quarter.
        let d = p.resolve(None, Some((CgroupVersion::V1, 64 << 20)), None);
        assert_eq!(d.budget, 16 << 20);

        let d = p.resolve(None, None, Some(16 << 30));
        assert_eq!((d.budget, d.limit), (4 << 30, None));

        let d = p.resolve(None, None, None);
        assert_eq!((d.budget, d.source), (512 << 20, BudgetSource::Fallback));
    }
}
