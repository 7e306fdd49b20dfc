//! `sluice check`: checks the host and the data dir before `sluice start`.
//!
//! Takes the same flags, environment and `--config` file as `start` and
//! resolves them the same way, then looks at what the broker will depend
//! on: io_uring, locked memory for the shards' io_memory arenas, the
//! open-files limit, the data dir's file system (O_DIRECT, durability),
//! free disk, CPUs, and the host tuning that costs latency (transparent
//! huge pages, CPU frequency governor, clock source). Each check prints one
//! line, `PASS`, `WARN` or `FAIL`, with what it found and, unless it
//! passed, the fix. Any `FAIL` makes the exit code 1.
//!
//! Runs on the main thread only, before (and instead of) a broker. Reading
//! the host (`Host::probe`) is kept apart from judging it (`evaluate`, pure),
//! so tests judge hosts they cannot make.
//!
//! # Invariants
//! - Nothing on the host changes: the only file written is a 4 KiB probe
//!   file in the data dir (or its nearest existing parent), removed at once.
//! - The limits are those of this process: run the check as the service
//!   runs (its user, its unit's limits) to check what the service gets.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{ArgMatches, Args, ValueEnum};
use serde::Serialize;

use crate::config::{cores, Settings, StartArgs};

/// glommio 0.9 refuses to start an executor below this RLIMIT_MEMLOCK
/// (`Reactor::new`, `MIN_MEMLOCK_LIMIT`), whatever the capabilities.
pub const GLOMMIO_MEMLOCK_MIN_BYTES: u64 = 512 << 10;
/// Rings of one glommio executor (main, latency, poll); each registers the
/// whole io_memory arena, and io_uring charges each registration.
pub const RINGS_PER_SHARD: u64 = 3;
/// glommio rounds io_memory up to pages and to at least this much.
const IO_MEMORY_FLOOR_BYTES: u64 = 64 << 10;
/// Entries of the probe ring: glommio's default ring depth.
const PROBE_RING_ENTRIES: u32 = 128;
/// File descriptors a shard holds besides its connections: WAL segments
/// open for writing and reading, its rings and eventfds, its listeners,
/// search index files.
pub const FDS_PER_SHARD_HEADROOM: u64 = 128;
/// File descriptors of the node besides the shards': the metadata log and
/// snapshot, the admin and node-to-node sockets, stdio, thread pools.
pub const FDS_NODE_HEADROOM: u64 = 256;
/// Oldest kernel glommio 0.9 supports (io_uring features it relies on).
const KERNEL_MIN: (u32, u32) = (5, 8);
/// CPUs whose governor is read at most.
const CPUS_READ_MAX: usize = 4096;
/// CAP_IPC_LOCK's bit in the capability sets of `/proc/self/status`.
const CAP_IPC_LOCK_BIT: u32 = 14;

/// `sluice check`: the settings of `sluice start` and an output format.
#[derive(Args, Debug, Clone)]
pub struct CheckArgs {
    #[command(flatten)]
    pub start: StartArgs,

    /// Output: one line per check (text) or one JSON document (json).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    pub format: Format,
}

/// Output format of `sluice check`.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// Outcome of one check. Warnings do not fail the check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result: what was found and, unless it passed, the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub found: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Finding {
    fn pass(check: &'static str, found: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Pass,
            found: found.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    /// The text line: `STATUS check  found[; fix: fix]`.
    pub fn line(&self) -> String {
        let mut line = format!("{} {:<12} {}", self.status.label(), self.check, self.found);
        if let Some(fix) = &self.fix {
            line.push_str("; fix: ");
            line.push_str(fix);
        }
        line
    }
}

/// What the configuration asks of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub shards: u32,
    pub io_memory_bytes: u64,
    pub connections_per_shard_max: u32,
    pub wal_segment_bytes: u64,
    pub data_dir: PathBuf,
}

impl Needs {
    pub fn of(settings: &Settings) -> Needs {
        Needs {
            shards: settings.shards,
            io_memory_bytes: crate::plane::io_memory_bytes(settings),
            connections_per_shard_max: settings.connections_per_shard_max,
            wal_segment_bytes: settings.wal_segment_bytes,
            data_dir: settings.data_dir.clone(),
        }
    }

    /// Locked memory for every shard's rings to register its io_memory.
    pub fn memlock_bytes(&self) -> u64 {
        let arena = self
            .io_memory_bytes
            .max(IO_MEMORY_FLOOR_BYTES)
            .div_ceil(4096)
            * 4096;
        u64::from(self.shards) * RINGS_PER_SHARD * arena
    }

    /// Open files for every shard's connection limit plus headroom.
    pub fn open_files(&self) -> u64 {
        let shards = u64::from(self.shards);
        shards * (u64::from(self.connections_per_shard_max) + FDS_PER_SHARD_HEADROOM)
            + FDS_NODE_HEADROOM
    }

    /// Disk for one preallocated WAL segment per shard.
    pub fn disk_bytes(&self) -> u64 {
        u64::from(self.shards) * self.wal_segment_bytes
    }
}

/// A resource limit; `None` is unlimited (RLIM_INFINITY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The data dir's file system as `statfs` saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    /// `f_type`, the file system's magic number.
    pub magic: u32,
    pub avail_bytes: u64,
}

/// What was found at the data dir.
#[derive(Debug)]
pub struct DirProbe {
    /// The directory probed: the data dir, or its nearest existing parent.
    pub probed: PathBuf,
    pub exists: bool,
    /// The data dir holds files already: a restart, which reopens its WAL
    /// segments instead of creating them.
    pub has_data: bool,
    pub statfs: Result<FsStat, String>,
    /// Creating, writing (4 KiB, aligned) and removing a file with O_DIRECT.
    pub o_direct: Result<(), std::io::Error>,
}

/// Everything the checks read from the host; tests fill one by hand.
#[derive(Debug)]
pub struct Host {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel: Option<String>,
    /// `/proc/sys/kernel/io_uring_disabled`, where the kernel has it.
    pub io_uring_disabled: Option<u32>,
    /// Setting up (and dropping) a ring of `PROBE_RING_ENTRIES`.
    pub ring: Result<(), std::io::Error>,
    pub memlock: Limit,
    pub cap_ipc_lock: bool,
    pub nofile: Limit,
    pub dir: DirProbe,
    pub cpus: u32,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp: Option<String>,
    /// The scaling governor of each CPU that has one readable.
    pub governors: Vec<String>,
    pub clocksource: Option<String>,
    /// The CPU flags name a hypervisor (a VM).
    pub hypervisor: bool,
}

impl Host {
    /// Reads the real host. Only the O_DIRECT probe writes (and removes) a file.
    pub fn probe(needs: &Needs) -> Host {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        Host {
            kernel: read("/proc/sys/kernel/osrelease"),
            io_uring_disabled: read("/proc/sys/kernel/io_uring_disabled")
                .and_then(|s| s.parse().ok()),
            ring: io_uring::IoUring::new(PROBE_RING_ENTRIES).map(drop),
            memlock: rlimit(libc::RLIMIT_MEMLOCK),
            cap_ipc_lock: cap_ipc_lock(),
            nofile: rlimit(libc::RLIMIT_NOFILE),
            dir: probe_dir(&needs.data_dir),
            cpus: cores(),
            thp: read("/sys/kernel/mm/transparent_hugepage/enabled"),
            governors: governors(),
            clocksource: read("/sys/devices/system/clocksource/clocksource0/current_clocksource"),
            hypervisor: read("/proc/cpuinfo").is_some_and(|c| {
                c.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
            }),
        }
    }
}

/// Runs `sluice check`; the exit code is 1 when a check failed.
pub fn run(args: CheckArgs, matches: &ArgMatches) -> anyhow::Result<ExitCode> {
    let format = args.format;
    let resolved = args.start.merge_file(matches).and_then(Settings::resolve);
    let findings = match resolved {
        Ok(settings) => {
            let needs = Needs::of(&settings);
            let host = Host::probe(&needs);
            let mut all = vec![settings_finding(&settings)];
            all.extend(evaluate(&host, &needs));
            all
        }
        Err(e) => vec![Finding::fail(
            "settings",
            format!("{e:#}"),
            "correct the setting named (flag, SLUICE_* variable or --config key)",
        )],
    };
    print(&findings, format)?;
    let failed = findings.iter().any(|f| f.status == Status::Fail);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print(findings: &[Finding], format: Format) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Text => {
            for f in findings {
                writeln!(out, "{}", f.line()).context("writing to stdout")?;
            }
        }
        Format::Json => {
            let doc = serde_json::json!({
                "ok": findings.iter().all(|f| f.status != Status::Fail),
                "checks": findings,
            });
            let text = serde_json::to_string_pretty(&doc).context("encoding the results")?;
            writeln!(out, "{text}").context("writing to stdout")?;
        }
    }
    out.flush().context("writing to stdout")
}

fn settings_finding(s: &Settings) -> Finding {
    Finding::pass(
        "settings",
        format!(
            "{} shards, data dir {}, memory {}, WAL segments of {}, {} connections per shard",
            s.shards,
            s.data_dir.display(),
            bytes(s.memory_bytes),
            bytes(s.wal_segment_bytes),
            s.connections_per_shard_max
        ),
    )
}

/// Judges a host against what the configuration needs. Pure.
pub fn evaluate(host: &Host, needs: &Needs) -> Vec<Finding> {
    vec![
        check_io_uring(host),
        check_memlock(host, needs),
        check_open_files(host.nofile, needs),
        check_filesystem(&host.dir),
        check_o_direct(&host.dir),
        check_disk_space(&host.dir, needs),
        check_cpus(host.cpus, needs.shards),
        check_thp(host.thp.as_deref()),
        check_governor(&host.governors),
        check_clocksource(host.clocksource.as_deref(), host.hypervisor),
    ]
}

fn check_io_uring(host: &Host) -> Finding {
    const NAME: &str = "io_uring";
    let kernel = host.kernel.as_deref().unwrap_or("unknown");
    let sysctl = match host.io_uring_disabled {
        Some(n) => format!("kernel.io_uring_disabled={n}"),
        None => "no kernel.io_uring_disabled".to_string(),
    };
    if host.io_uring_disabled == Some(2) {
        return Finding::fail(
            NAME,
            format!("disabled for every process ({sysctl}, kernel {kernel})"),
            "sysctl -w kernel.io_uring_disabled=0 (and set it in /etc/sysctl.d/)",
        );
    }
    if let Err(e) = &host.ring {
        let fix = ring_fix(e, host.io_uring_disabled);
        return Finding::fail(
            NAME,
            format!("setting up a ring failed: {e} ({sysctl}, kernel {kernel})"),
            fix,
        );
    }
    if let Some(version) = host.kernel.as_deref().and_then(kernel_version) {
        if version < KERNEL_MIN {
            return Finding::fail(
                NAME,
                format!("kernel {kernel} is older than the 5.8 glommio needs"),
                "run on a kernel 5.8 or later",
            );
        }
    }
    Finding::pass(
        NAME,
        format!("a ring of {PROBE_RING_ENTRIES} entries was set up (kernel {kernel}, {sysctl})"),
    )
}

fn ring_fix(e: &std::io::Error, disabled: Option<u32>) -> String {
    match (e.raw_os_error(), disabled) {
        (Some(libc::ENOSYS), _) => {
            "run on a kernel 5.8 or later built with io_uring (CONFIG_IO_URING=y)".into()
        }
        (Some(libc::EPERM), Some(1)) => {
            "sysctl -w kernel.io_uring_disabled=0, or put the service user in the group of kernel.io_uring_group".into()
        }
        (Some(libc::EPERM), _) => {
            "a seccomp profile blocks io_uring_setup (containers): allow io_uring_setup, io_uring_enter and io_uring_register".into()
        }
        (Some(libc::ENOMEM), _) => {
            "raise RLIMIT_MEMLOCK (kernels before 5.12 charge rings to it): LimitMEMLOCK=infinity".into()
        }
        _ => "check the kernel log (dmesg) for io_uring errors".into(),
    }
}

/// `major.minor` of a kernel release such as `6.8.0-45-generic`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_memlock(host: &Host, needs: &Needs) -> Finding {
    const NAME: &str = "memlock";
    let need = needs.memlock_bytes();
    let fix = format!(
        "LimitMEMLOCK=infinity in the systemd unit (as deploy/sluice.service), or ulimit -l {} (KiB), or a memlock line in /etc/security/limits.conf",
        need.div_ceil(1024)
    );
    let Some(soft) = host.memlock.soft else {
        return Finding::pass(NAME, "RLIMIT_MEMLOCK unlimited");
    };
    if soft < GLOMMIO_MEMLOCK_MIN_BYTES {
        return Finding::fail(
            NAME,
            format!(
                "RLIMIT_MEMLOCK {}: below the {} glommio needs to start a shard",
                bytes(soft),
                bytes(GLOMMIO_MEMLOCK_MIN_BYTES)
            ),
            fix,
        );
    }
    let wanted = format!(
        "{} shards x {RINGS_PER_SHARD} rings x {} io_memory = {}",
        needs.shards,
        bytes(needs.io_memory_bytes),
        bytes(need)
    );
    if host.cap_ipc_lock {
        return Finding::pass(
            NAME,
            format!(
                "RLIMIT_MEMLOCK {}, and CAP_IPC_LOCK: io_uring does not charge registered buffers ({wanted})",
                bytes(soft)
            ),
        );
    }
    if soft < need {
        return Finding::warn(
            NAME,
            format!(
                "RLIMIT_MEMLOCK {} is below {wanted}: glommio does not register the io_memory arenas with io_uring (slower WAL writes)",
                bytes(soft)
            ),
            fix,
        );
    }
    Finding::pass(
        NAME,
        format!("RLIMIT_MEMLOCK {}, needs {wanted}", bytes(soft)),
    )
}

fn check_open_files(nofile: Limit, needs: &Needs) -> Finding {
    const NAME: &str = "open_files";
    let need = needs.open_files();
    let wanted = format!(
        "{} shards x ({} connections + {FDS_PER_SHARD_HEADROOM}) + {FDS_NODE_HEADROOM} = {need}",
        needs.shards, needs.connections_per_shard_max
    );
    let Some(soft) = nofile.soft else {
        return Finding::pass(NAME, format!("RLIMIT_NOFILE unlimited, needs {wanted}"));
    };
    if soft >= need {
        return Finding::pass(NAME, format!("RLIMIT_NOFILE {soft}, needs {wanted}"));
    }
    let hard = nofile
        .hard
        .map_or("unlimited".to_string(), |h| h.to_string());
    Finding::fail(
        NAME,
        format!("RLIMIT_NOFILE {soft} (hard {hard}) is below {wanted}: accepts fail before --connections-per-shard-max"),
        format!(
            "LimitNOFILE=1048576 in the systemd unit (as deploy/sluice.service), or ulimit -n {need}, or a lower --connections-per-shard-max"
        ),
    )
}

/// What a file system is, as far as the WAL cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FsKind {
    Local,
    Memory,
    Network,
    Fuse,
    Overlay,
    Unknown,
}

/// Names and kinds of the file systems `statfs` may report (linux/magic.h).
fn fs_kind(magic: u32) -> (&'static str, FsKind) {
    match magic {
        0xEF53 => ("ext2/3/4", FsKind::Local),
        0x5846_5342 => ("xfs", FsKind::Local),
        0x9123_683E => ("btrfs", FsKind::Local),
        0x2FC1_2FC1 => ("zfs", FsKind::Local),
        0xF2F5_2010 => ("f2fs", FsKind::Local),
        0x0102_1994 => ("tmpfs", FsKind::Memory),
        0x8584_58F6 => ("ramfs", FsKind::Memory),
        0x6969 => ("nfs", FsKind::Network),
        0xFF53_4D42 => ("cifs", FsKind::Network),
        0xFE53_4D42 => ("smb2", FsKind::Network),
        0x517B => ("smb", FsKind::Network),
        0x0102_1997 => ("9p", FsKind::Network),
        0x00C3_6400 => ("ceph", FsKind::Network),
        0x0BD0_0BD0 => ("lustre", FsKind::Network),
        0x4750_4653 => ("gpfs", FsKind::Network),
        0x6573_5546 => ("fuse", FsKind::Fuse),
        0x794C_7630 => ("overlayfs", FsKind::Overlay),
        _ => ("unknown", FsKind::Unknown),
    }
}

fn check_filesystem(dir: &DirProbe) -> Finding {
    const NAME: &str = "filesystem";
    let at = probed_at(dir);
    let stat = match &dir.statfs {
        Ok(stat) => stat,
        Err(e) => {
            return Finding::fail(
                NAME,
                format!("statfs {at}: {e}"),
                "make --data-dir (or its parent) exist and readable",
            )
        }
    };
    let (name, kind) = fs_kind(stat.magic);
    let found = format!("{name} (0x{:x}) at {at}", stat.magic);
    let local = "put --data-dir on a local disk file system (XFS or ext4)";
    match kind {
        FsKind::Local => Finding::pass(NAME, found),
        FsKind::Unknown => Finding::pass(NAME, format!("{found}: not one known to be unfit")),
        FsKind::Memory => Finding::warn(NAME, format!("{found}: memory, lost at reboot"), local),
        FsKind::Network => Finding::warn(
            NAME,
            format!("{found}: a network file system (latency, fsync and O_DIRECT semantics vary)"),
            local,
        ),
        FsKind::Fuse => Finding::warn(
            NAME,
            format!("{found}: FUSE (user-space file system: latency, O_DIRECT support varies)"),
            local,
        ),
        FsKind::Overlay => Finding::warn(
            NAME,
            format!("{found}: a container's copy-on-write layer"),
            "mount a volume on a local disk at --data-dir",
        ),
    }
}

fn check_o_direct(dir: &DirProbe) -> Finding {
    const NAME: &str = "o_direct";
    let at = probed_at(dir);
    match &dir.o_direct {
        Ok(()) => Finding::pass(
            NAME,
            format!("created, wrote 4 KiB to and removed a file at {at}"),
        ),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Finding::fail(
            NAME,
            format!("the file system at {at} refuses O_DIRECT: {e}"),
            "put --data-dir on a file system with O_DIRECT (XFS or ext4 on a local disk)",
        ),
        // A full disk is `disk_space`'s to judge (a node with data must
        // still start, to serve reads and let retention free space).
        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => Finding::warn(
            NAME,
            format!("no space left at {at} to probe O_DIRECT: {e}"),
            "free space on the data dir's file system",
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Finding::fail(
            NAME,
            format!("cannot create a file at {at}: {e}"),
            format!("chown the data dir to the service user (chown -R sluice: {at})"),
        ),
        Err(e) => Finding::fail(
            NAME,
            format!("O_DIRECT probe at {at}: {e}"),
            "give --data-dir a writable local file system with O_DIRECT",
        ),
    }
}

fn check_disk_space(dir: &DirProbe, needs: &Needs) -> Finding {
    const NAME: &str = "disk_space";
    let at = probed_at(dir);
    let Ok(stat) = &dir.statfs else {
        return Finding::fail(
            NAME,
            format!("free space at {at} unknown (statfs failed)"),
            "make --data-dir (or its parent) exist and readable",
        );
    };
    let need = needs.disk_bytes();
    let wanted = format!(
        "{} shards x {} WAL segment = {}",
        needs.shards,
        bytes(needs.wal_segment_bytes),
        bytes(need)
    );
    let found = format!("{} free at {at}", bytes(stat.avail_bytes));
    let fix = "free space there, or use a smaller --wal-segment-bytes or fewer --shards";
    if stat.avail_bytes < need && dir.has_data {
        // A restart reopens its segments: the node starts, serves reads
        // and lets retention free space; new segments may not fit.
        return Finding::warn(
            NAME,
            format!("{found}: below {wanted}; the node restarts on its data, but rolling a segment may fail"),
            fix,
        );
    }
    if stat.avail_bytes < need {
        return Finding::fail(
            NAME,
            format!("{found}: below {wanted} (each shard preallocates its active segment)"),
            fix,
        );
    }
    // Retention frees whole sealed segments, so a shard needs room for a
    // next segment before it can drop an old one.
    if stat.avail_bytes < 2 * need {
        return Finding::warn(
            NAME,
            format!("{found}: less than twice {wanted}, no room to roll segments"),
            fix,
        );
    }
    Finding::pass(NAME, format!("{found}, needs at least {wanted}"))
}

fn check_cpus(cpus: u32, shards: u32) -> Finding {
    const NAME: &str = "cpus";
    let found = format!("{cpus} CPUs for {shards} shards + 1 control core");
    if cpus > shards {
        return Finding::pass(NAME, found);
    }
    let fit = cpus.saturating_sub(1).max(1);
    Finding::warn(
        NAME,
        format!("{found}: shards share cores with each other or with the control thread"),
        format!("--shards {fit}, or more CPUs for the process (cgroup cpuset, affinity)"),
    )
}

fn check_thp(text: Option<&str>) -> Finding {
    const NAME: &str = "thp";
    let Some(text) = text else {
        return Finding::pass(NAME, "transparent huge pages: not readable, skipped");
    };
    let mode = selected(text).unwrap_or(text);
    if mode == "always" {
        return Finding::warn(
            NAME,
            "transparent huge pages: always (khugepaged compaction stalls cost tail latency)",
            "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (persist: transparent_hugepage=madvise on the kernel command line)",
        );
    }
    Finding::pass(NAME, format!("transparent huge pages: {mode}"))
}

/// The bracketed choice of a sysfs list such as `always [madvise] never`.
fn selected(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

fn check_governor(governors: &[String]) -> Finding {
    const NAME: &str = "cpu_governor";
    if governors.is_empty() {
        return Finding::pass(
            NAME,
            "CPU frequency governor: not readable (no cpufreq), skipped",
        );
    }
    let slow = governors.iter().filter(|g| *g != "performance").count();
    let mut kinds: Vec<&str> = governors.iter().map(String::as_str).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let found = format!(
        "CPU frequency governor: {} on {} CPUs",
        kinds.join(", "),
        governors.len()
    );
    if slow == 0 {
        return Finding::pass(NAME, found);
    }
    Finding::warn(
        NAME,
        format!("{found}: {slow} not on performance (clock ramp-up costs latency)"),
        "cpupower frequency-set -g performance",
    )
}

fn check_clocksource(source: Option<&str>, hypervisor: bool) -> Finding {
    const NAME: &str = "clocksource";
    let Some(source) = source else {
        return Finding::pass(NAME, "clock source: not readable, skipped");
    };
    let good = match source {
        // arch_sys_counter is arm64's architected timer, its tsc.
        "tsc" | "arch_sys_counter" => true,
        "kvm-clock" | "hyperv_clocksource_tsc_page" => hypervisor,
        _ => false,
    };
    let vm = if hypervisor { ", in a VM" } else { "" };
    let found = format!("clock source: {source}{vm}");
    if good {
        return Finding::pass(NAME, found);
    }
    Finding::warn(
        NAME,
        format!("{found}: slower clock reads on every timestamp and timer"),
        "echo tsc > /sys/devices/system/clocksource/clocksource0/current_clocksource if available_clocksource lists tsc (persist: clocksource=tsc on the kernel command line)",
    )
}

fn probed_at(dir: &DirProbe) -> String {
    if dir.exists {
        dir.probed.display().to_string()
    } else {
        format!("{} (nearest existing parent)", dir.probed.display())
    }
}

/// The resource argument of `getrlimit`, whose type differs between libcs.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

fn rlimit(resource: Resource) -> Limit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given.
    let rc = unsafe { libc::getrlimit(resource, &mut r) };
    if rc != 0 {
        // Unknowable: judge as the most restrictive, so it shows.
        return Limit {
            soft: Some(0),
            hard: Some(0),
        };
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Limit {
        soft: finite(r.rlim_cur),
        hard: finite(r.rlim_max),
    }
}

/// Whether this process has CAP_IPC_LOCK in its effective set.
fn cap_ipc_lock() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

fn governors() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/devices/system/cpu") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix("cpu")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .take(CPUS_READ_MAX)
        .filter_map(|e| std::fs::read_to_string(e.path().join("cpufreq/scaling_governor")).ok())
        .map(|g| g.trim().to_string())
        .collect()
}

/// The data dir, or its nearest existing ancestor when it is not made yet.
fn nearest_existing(path: &Path) -> (PathBuf, bool) {
    if path.is_dir() {
        return (path.to_path_buf(), true);
    }
    let found = path
        .ancestors()
        .skip(1)
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.is_dir());
    (found.unwrap_or(Path::new("/")).to_path_buf(), false)
}

fn probe_dir(data_dir: &Path) -> DirProbe {
    let (probed, exists) = nearest_existing(data_dir);
    let has_data =
        exists && std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some());
    DirProbe {
        statfs: statfs(&probed),
        o_direct: probe_o_direct(&probed),
        probed,
        exists,
        has_data,
    }
}

fn statfs(dir: &Path) -> Result<FsStat, String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: an all-zero statfs is a valid value of the plain C struct.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `buf` is a statfs to write.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut buf) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // Magic numbers are 32-bit; f_type's width varies by libc.
    Ok(FsStat {
        magic: buf.f_type as u32,
        avail_bytes: (buf.f_bavail as u64).saturating_mul(buf.f_bsize as u64),
    })
}

/// Creates a file with O_DIRECT in `dir`, removes its name, then writes
/// one aligned 4 KiB block through the open descriptor (some file systems
/// accept the flag at open and refuse the write). The name is gone before
/// the write, so a check killed mid-probe leaves nothing behind.
fn probe_o_direct(dir: &Path) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let path = dir.join(format!(".sluice-check-{}", std::process::id()));
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let buf = vec![0u8; 2 * BLOCK];
    let start = buf.as_ptr().align_offset(BLOCK);
    assert!(start < BLOCK, "a 2-block buffer holds an aligned block");
    (&file).write_all(&buf[start..start + BLOCK])
}

/// Bytes in binary units, for messages.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> Needs {
        Needs {
            shards: 2,
            io_memory_bytes: (2 * (2 << 20)) + (512 << 10),
            connections_per_shard_max: 1000,
            wal_segment_bytes: 64 << 20,
            data_dir: PathBuf::from("/var/lib/sluice"),
        }
    }

    /// A well-set host: every check passes.
    fn good() -> Host {
        Host {
            kernel: Some("6.8.0-45-generic".into()),
            io_uring_disabled: Some(0),
            ring: Ok(()),
            memlock: Limit {
                soft: None,
                hard: None,
            },
            cap_ipc_lock: false,
            nofile: Limit {
                soft: Some(1 << 20),
                hard: Some(1 << 20),
            },
            dir: DirProbe {
                probed: PathBuf::from("/var/lib/sluice"),
                exists: true,
                has_data: false,
                statfs: Ok(FsStat {
                    magic: 0x5846_5342,
                    avail_bytes: 100 << 30,
                }),
                o_direct: Ok(()),
            },
            cpus: 4,
            thp: Some("always [madvise] never".into()),
            governors: vec!["performance".into(); 4],
            clocksource: Some("tsc".into()),
            hypervisor: false,
        }
    }

    fn status_of(host: &Host, check: &str) -> Status {
        let all = evaluate(host, &needs());
        let f = all.iter().find(|f| f.check == check).expect("check ran");
        assert_eq!(f.fix.is_some(), f.status != Status::Pass, "{f:?}");
        f.status
    }

    #[test]
    fn a_good_host_passes_everything() {
        let all = evaluate(&good(), &needs());
        assert_eq!(all.len(), 10);
        for f in &all {
            assert_eq!(f.status, Status::Pass, "{f:?}");
        }
    }

    #[test]
    fn needs_follow_the_settings() {
        let n = needs();
        // 4.5 MiB arena, 3 rings, 2 shards.
        assert_eq!(n.memlock_bytes(), 2 * 3 * (4608 << 10));
        assert_eq!(n.open_files(), 2 * (1000 + 128) + 256);
        assert_eq!(n.disk_bytes(), 128 << 20);
        let tiny = Needs {
            io_memory_bytes: 1,
            shards: 1,
            ..needs()
        };
        assert_eq!(tiny.memlock_bytes(), 3 * (64 << 10), "glommio's floor");
    }

    #[test]
    fn io_uring_disabled_or_failing_fails() {
        let mut h = good();
        h.io_uring_disabled = Some(2);
        assert_eq!(status_of(&h, "io_uring"), Status::Fail);
        let mut h = good();
        h.io_uring_disabled = Some(1);
        h.ring = Err(std::io::Error::from_raw_os_error(libc::EPERM));
        let f = evaluate(&h, &needs()).remove(0);
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.fix.as_deref().unwrap_or("").contains("io_uring_group"),
            "{f:?}"
        );
        let mut h = good();
        h.kernel = Some("5.4.0".into());
        assert_eq!(status_of(&h, "io_uring"), Status::Fail);
        let mut h = good();
        h.io_uring_disabled = None;
        assert_eq!(status_of(&h, "io_uring"), Status::Pass);
    }

    #[test]
    fn memlock_below_glommio_fails_below_need_warns() {
        let mut h = good();
        h.memlock.soft = Some(64 << 10);
        h.cap_ipc_lock = true;
        assert_eq!(
            status_of(&h, "memlock"),
            Status::Fail,
            "glommio checks it anyway"
        );
        let mut h = good();
        h.memlock.soft = Some(8 << 20);
        assert_eq!(status_of(&h, "memlock"), Status::Warn);
        h.cap_ipc_lock = true;
        assert_eq!(status_of(&h, "memlock"), Status::Pass);
        let mut h = good();
        h.memlock.soft = Some(needs().memlock_bytes());
        assert_eq!(status_of(&h, "memlock"), Status::Pass);
    }

    #[test]
    fn open_files_below_need_fails() {
        let mut h = good();
        h.nofile.soft = Some(1024);
        assert_eq!(status_of(&h, "open_files"), Status::Fail);
        h.nofile.soft = Some(needs().open_files());
        assert_eq!(status_of(&h, "open_files"), Status::Pass);
        h.nofile.soft = None;
        assert_eq!(status_of(&h, "open_files"), Status::Pass);
    }

    #[test]
    fn file_systems_are_judged_by_kind() {
        for (magic, want) in [
            (0xEF53, Status::Pass),
            (0x0102_1994, Status::Warn),
            (0x6969, Status::Warn),
            (0xFF53_4D42, Status::Warn),
            (0x6573_5546, Status::Warn),
            (0x794C_7630, Status::Warn),
            (0x1234, Status::Pass),
        ] {
            let mut h = good();
            h.dir.statfs = Ok(FsStat {
                magic,
                avail_bytes: 100 << 30,
            });
            assert_eq!(status_of(&h, "filesystem"), want, "0x{magic:x}");
        }
        let mut h = good();
        h.dir.statfs = Err("no such file".into());
        assert_eq!(status_of(&h, "filesystem"), Status::Fail);
        assert_eq!(status_of(&h, "disk_space"), Status::Fail);
    }

    #[test]
    fn o_direct_refused_fails() {
        let mut h = good();
        h.dir.o_direct = Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(status_of(&h, "o_direct"), Status::Fail);
        h.dir.o_direct = Err(std::io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(status_of(&h, "o_direct"), Status::Fail);
    }

    #[test]
    fn disk_space_against_segments() {
        let need = needs().disk_bytes();
        for (avail, want) in [
            (need - 1, Status::Fail),
            (need, Status::Warn),
            (2 * need, Status::Pass),
        ] {
            let mut h = good();
            h.dir.statfs = Ok(FsStat {
                magic: 0xEF53,
                avail_bytes: avail,
            });
            assert_eq!(status_of(&h, "disk_space"), want, "{avail}");
        }
        // A restart on a nearly full disk starts (a warning, not a fail).
        let mut h = good();
        h.dir.has_data = true;
        h.dir.statfs = Ok(FsStat {
            magic: 0xEF53,
            avail_bytes: need - 1,
        });
        assert_eq!(status_of(&h, "disk_space"), Status::Warn);
        h.dir.o_direct = Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(status_of(&h, "o_direct"), Status::Warn);
    }

    #[test]
    fn cpus_thp_governor_clocksource() {
        assert_eq!(check_cpus(3, 2).status, Status::Pass);
        assert_eq!(check_cpus(2, 2).status, Status::Warn);
        assert_eq!(
            check_cpus(1, 4)
                .fix
                .as_deref()
                .map(|f| f.starts_with("--shards 1")),
            Some(true)
        );
        assert_eq!(
            check_thp(Some("[always] madvise never")).status,
            Status::Warn
        );
        assert_eq!(
            check_thp(Some("always madvise [never]")).status,
            Status::Pass
        );
        assert_eq!(check_thp(None).status, Status::Pass);
        let govs = vec!["performance".to_string(), "powersave".to_string()];
        let f = check_governor(&govs);
        assert_eq!(f.status, Status::Warn);
        assert!(f.found.contains("1 not on performance"), "{f:?}");
        assert_eq!(check_governor(&[]).status, Status::Pass);
        assert_eq!(check_clocksource(Some("tsc"), false).status, Status::Pass);
        assert_eq!(
            check_clocksource(Some("kvm-clock"), true).status,
            Status::Pass
        );
        assert_eq!(
            check_clocksource(Some("kvm-clock"), false).status,
            Status::Warn
        );
        assert_eq!(check_clocksource(Some("hpet"), false).status, Status::Warn);
        assert_eq!(check_clocksource(None, false).status, Status::Pass);
    }

    #[test]
    fn lines_carry_the_fix_only_when_not_passing() {
        let pass = Finding::pass("cpus", "4 CPUs");
        assert_eq!(pass.line(), "PASS cpus         4 CPUs");
        let warn = Finding::warn("thp", "always", "echo madvise");
        assert_eq!(warn.line(), "WARN thp          always; fix: echo madvise");
    }

    #[test]
    fn helpers() {
        assert_eq!(kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(
            kernel_version("5.15.153.1-microsoft-standard"),
            Some((5, 15))
        );
        assert_eq!(kernel_version("garbage"), None);
        assert_eq!(bytes(512 << 10), "512 KiB");
        assert_eq!(bytes(4608 << 10), "4.5 MiB");
        assert_eq!(bytes(100), "100 B");
        assert_eq!(selected("always [madvise] never"), Some("madvise"));
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("a/b/c");
        assert_eq!(
            nearest_existing(&missing),
            (dir.path().to_path_buf(), false)
        );
        assert_eq!(
            nearest_existing(dir.path()),
            (dir.path().to_path_buf(), true)
        );
        assert_eq!(
            nearest_existing(Path::new("not-here-at-all")).0,
            PathBuf::from(".")
        );
    }

    #[test]
    fn o_direct_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The result depends on the file system under the temp dir; what
        // must hold either way is that the probe file is gone.
        let _ = probe_o_direct(dir.path());
        let left = std::fs::read_dir(dir.path()).expect("read_dir").count();
        assert_eq!(left, 0);
    }
}
