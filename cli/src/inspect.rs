//! `kvtier inspect PATH [--verify] [--json]`: what is in an FS-tier root directory or a region
//! engine's device, and is it healthy.
//!
//! A region device (PATH is a file or a block device) is read by
//! [`kvtier_regions::inspect_device`]: its header and region summaries, and with `--verify`
//! every record, checked as recovery checks it, and every summary against its records.
//!
//! A namespace is a directory holding a `config.json`; its blocks live in the sibling
//! directories `{namespace}_r{rank}`. With `--verify` every block file is read and checked: a
//! native block's header and payload checksum, a vllm-format block's length only (raw rows
//! carry no checksum; a file whose length differs from the namespace's common length is
//! counted corrupt).
//!
//! It is a health check: after printing its report it exits non-zero when it found damage (a
//! namespace whose `config.json` is unreadable or does not match its directory, or, with
//! `--verify`, a corrupt block) or no kvtier data at all (no namespace under `ROOT`). Files
//! and directories that users other than the owner and the group can read are counted and
//! reported (a KV block can be turned back into the prompt it came from; kvtier creates them
//! owner-only unless its `file_mode` says otherwise), without failing the check: a deployment
//! may have chosen such a mode.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kvtier_fs::namespace::{digest12, parse_block_path, Layout, RunConfig, CONFIG_FILE, NATIVE_STORAGE_FORMAT};
use kvtier_fs::tmpname;
use serde::Serialize;

/// Flags of `kvtier inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The FS tier's root directory, or a region engine's device (a file or a block device).
    pub root: PathBuf,
    /// Read and check every block file (every record of a region device).
    #[arg(long)]
    pub verify: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Findings for a whole root.
#[derive(Debug, Serialize)]
pub struct RootReport {
    /// The inspected root.
    pub root: PathBuf,
    /// Namespaces found, by directory name.
    pub namespaces: Vec<NamespaceReport>,
}

/// One namespace.
#[derive(Debug, Serialize)]
pub struct NamespaceReport {
    /// The namespace's base directory.
    pub dir: PathBuf,
    /// `model_name` from its config (None if unreadable).
    pub model_name: Option<String>,
    /// `native` or `vllm`.
    pub format: &'static str,
    /// Its config's digest.
    pub digest: Option<String>,
    /// A problem with `config.json` (unreadable, or not matching the directory name).
    pub config_problem: Option<String>,
    /// Of the namespace directory and its `config.json`, how many others can read (see
    /// [`others_can_read`]).
    pub others_readable: u64,
    /// Per rank directory.
    pub ranks: Vec<RankReport>,
}

/// One rank directory.
#[derive(Debug, Default, Serialize)]
pub struct RankReport {
    /// The rank.
    pub rank: u32,
    /// Block files.
    pub blocks: u64,
    /// Their total size.
    pub bytes: u64,
    /// Temp files (stores in progress or left by a crash).
    pub temp_files: u64,
    /// Files that are neither blocks nor temp files.
    pub foreign_files: u64,
    /// Open markers: tiers open on this rank now, or runs that did not shut down cleanly.
    pub open_markers: u64,
    /// With `--verify`: blocks that check out.
    pub intact: Option<u64>,
    /// With `--verify`: blocks that do not.
    pub corrupt: Option<u64>,
    /// Files and directories of the rank (itself included) that others can read (see
    /// [`others_can_read`]).
    pub others_readable: u64,
}

/// Whether users other than the owner and the file's group can read a file or list a
/// directory of mode `mode` (its "other" read bit).
pub fn others_can_read(mode: u32) -> bool {
    mode & 0o004 != 0
}

fn others_read(path: &Path) -> io::Result<bool> {
    let meta = fs::symlink_metadata(path).map_err(|e| named(e, "cannot stat", path))?;
    Ok(others_can_read(meta.permissions().mode()))
}

/// `e` naming what failed, where.
fn named(e: io::Error, what: &str, path: &Path) -> io::Error {
    kvtier_fs::files::annotate(e, format!("inspect: {what} {}", path.display()))
}

/// The entries of directory `dir`, each error naming it.
fn entries(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    let read = |e| named(e, "cannot read directory", dir);
    fs::read_dir(dir).map_err(read)?.map(|e| e.map_err(read)).collect()
}

impl RootReport {
    /// Why the root is not healthy, if it is not: no kvtier data, a namespace whose config is
    /// a problem, corrupt blocks (counted with `--verify`).
    pub fn damage(&self) -> Option<String> {
        if self.namespaces.is_empty() {
            return Some(format!(
                "no kvtier data under {} (no namespace: no directory holding a config.json)",
                self.root.display()
            ));
        }
        let bad_configs = self.namespaces.iter().filter(|ns| ns.config_problem.is_some()).count();
        let corrupt: u64 = self.namespaces.iter().flat_map(|ns| &ns.ranks).filter_map(|r| r.corrupt).sum();
        let mut found = Vec::new();
        if bad_configs > 0 {
            found.push(format!("{bad_configs} namespace(s) with a config.json problem"));
        }
        if corrupt > 0 {
            found.push(format!("{corrupt} corrupt block(s)"));
        }
        (!found.is_empty()).then(|| format!("{}: {}", self.root.display(), found.join(", ")))
    }
}

/// Runs the command: prints the report, then fails if it found damage or no kvtier data.
pub fn run(args: &InspectArgs) -> Result<(), Box<dyn std::error::Error>> {
    // A path that is there and not a directory is a region device; anything else is a root
    // (whose errors name it: `no such directory`).
    if fs::metadata(&args.root).is_ok_and(|m| !m.is_dir()) {
        let report = kvtier_regions::inspect_device(&kvtier_fs::vfs::HostFs::default(), &args.root, args.verify)?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print_device(&report);
        }
        // A health check, as for a root: `--verify` finding blocks a summary names whose
        // record does not verify exits non-zero. Corrupt records no summary names are not
        // damage: a crash leaves torn records in the region it was writing, never served.
        return match report.verify {
            Some(v) if v.summary_mismatches > 0 => Err(format!(
                "inspect: {}: {} summarized block(s) whose record does not verify",
                args.root.display(),
                v.summary_mismatches
            )
            .into()),
            _ => Ok(()),
        };
    }
    let report = inspect(&args.root, args.verify)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_human(&report, args.verify);
    }
    match report.damage() {
        Some(damage) => Err(format!("inspect: {damage}").into()),
        None => Ok(()),
    }
}

/// Inspects `root`. Errors name the path and what failed (`inspect: /x: no such directory`).
pub fn inspect(root: &Path, verify: bool) -> io::Result<RootReport> {
    match fs::metadata(root) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(e.kind(), format!("inspect: {}: no such directory", root.display())))
        }
        Err(e) => return Err(named(e, "cannot stat", root)),
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("inspect: {}: not a directory", root.display()),
            ))
        }
        Ok(_) => {}
    }
    let mut names: Vec<PathBuf> =
        entries(root)?.into_iter().map(|e| e.path()).filter(|p| p.join(CONFIG_FILE).is_file()).collect();
    names.sort();
    let mut namespaces = Vec::new();
    for dir in names {
        namespaces.push(inspect_namespace(root, &dir, verify)?);
    }
    Ok(RootReport { root: root.to_path_buf(), namespaces })
}

fn inspect_namespace(root: &Path, dir: &Path, verify: bool) -> io::Result<NamespaceReport> {
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let parsed: Result<RunConfig, String> = fs::read_to_string(dir.join(CONFIG_FILE))
        .map_err(|e| e.to_string())
        .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()));
    let (run, mut config_problem) = match parsed {
        Ok(run) => (Some(run), None),
        Err(e) => (None, Some(format!("unreadable config.json: {e}"))),
    };
    let digest = run.as_ref().map(digest12);
    if let (Some(run), Some(d)) = (&run, &digest) {
        let expected = Layout::new(root, run, 0);
        if expected.base() != dir {
            config_problem =
                Some(format!("config.json digests to {d}, which does not match the directory name {dir_name}"));
        }
    }
    let native = run.as_ref().is_some_and(|r| r.storage_format.as_deref() == Some(NATIVE_STORAGE_FORMAT));
    let others_readable = u64::from(others_read(dir)?) + u64::from(others_read(&dir.join(CONFIG_FILE))?);
    let prefix = format!("{dir_name}_r");
    let mut rank_dirs: Vec<(u32, PathBuf)> = entries(root)?
        .into_iter()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rank = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((rank, e.path()))
        })
        .collect();
    rank_dirs.sort();
    let mut ranks = Vec::new();
    for (rank, rank_dir) in rank_dirs {
        let ns = digest.as_deref().map(|d| {
            let mut b = [0u8; 12];
            b.copy_from_slice(&d.as_bytes()[..12]);
            b
        });
        ranks.push(inspect_rank(rank, &rank_dir, native, ns, verify)?);
    }
    Ok(NamespaceReport {
        dir: dir.to_path_buf(),
        model_name: run.map(|r| r.model_name),
        format: if native { "native" } else { "vllm" },
        digest,
        config_problem,
        others_readable,
        ranks,
    })
}

fn inspect_rank(
    rank: u32,
    rank_dir: &Path,
    native: bool,
    ns: Option<[u8; 12]>,
    verify: bool,
) -> io::Result<RankReport> {
    let mut report = RankReport { rank, ..RankReport::default() };
    report.others_readable += u64::from(others_read(rank_dir)?);
    let mut blocks = Vec::new();
    let mut dirs = vec![(rank_dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        for entry in entries(&dir)? {
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| named(e, "cannot stat", &path))?;
            let kind = meta.file_type();
            if (kind.is_file() || kind.is_dir()) && others_can_read(meta.permissions().mode()) {
                report.others_readable += 1;
            }
            if kind.is_dir() {
                if depth < 2 {
                    dirs.push((path, depth + 1));
                } else {
                    report.foreign_files += 1;
                }
            } else if tmpname::parse_temp(&entry.file_name()).is_some() {
                report.temp_files += 1;
            } else if depth == 0 && tmpname::parse_marker(&entry.file_name()).is_some() {
                report.open_markers += 1;
            } else if depth == 0 && entry.file_name() == tmpname::SHARE_FILE {
                // The lock file open tiers share: neither a block nor foreign.
            } else if let Some(key) =
                path.strip_prefix(rank_dir).ok().and_then(parse_block_path).filter(|_| kind.is_file())
            {
                let len = meta.len();
                report.blocks += 1;
                report.bytes += len;
                blocks.push((path, key, len));
            } else {
                report.foreign_files += 1;
            }
        }
    }
    if verify {
        let (mut intact, mut corrupt) = (0, 0);
        // Raw rows carry no checksum: the namespace's most common length is the reference.
        let mut lengths: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, _, len) in &blocks {
            *lengths.entry(*len).or_default() += 1;
        }
        let common = lengths.iter().max_by_key(|(len, n)| (**n, **len)).map(|(len, _)| *len);
        for (path, key, len) in &blocks {
            let ok = if native { verify_native(path, key, ns).unwrap_or(false) } else { Some(*len) == common };
            if ok {
                intact += 1;
            } else {
                corrupt += 1;
            }
        }
        report.intact = Some(intact);
        report.corrupt = Some(corrupt);
    }
    Ok(report)
}

fn verify_native(path: &Path, key: &kvtier_core::OffloadKey, ns: Option<[u8; 12]>) -> io::Result<bool> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.read_to_end(&mut bytes)?;
    let Some(ns) = ns else { return Ok(false) };
    Ok(kvtier_fs::format::verify_file(&bytes, &ns, key).is_ok())
}

fn print_human(report: &RootReport, verify: bool) {
    println!("{}: {} namespace(s)", report.root.display(), report.namespaces.len());
    for ns in &report.namespaces {
        println!(
            "\n{}  model={}  format={}  digest={}",
            ns.dir.display(),
            ns.model_name.as_deref().unwrap_or("?"),
            ns.format,
            ns.digest.as_deref().unwrap_or("?")
        );
        if let Some(p) = &ns.config_problem {
            println!("  problem: {p}");
        }
        let exposed = ns.others_readable + ns.ranks.iter().map(|r| r.others_readable).sum::<u64>();
        if exposed > 0 {
            println!(
                "  warning: {exposed} file(s) and directories others can read (KV blocks reveal prompts; \
                 kvtier creates them owner-only unless file_mode says otherwise)"
            );
        }
        for r in &ns.ranks {
            print!(
                "  rank {}: {} blocks, {:.1} MiB, {} temp files, {} foreign files, {} open markers",
                r.rank,
                r.blocks,
                r.bytes as f64 / (1 << 20) as f64,
                r.temp_files,
                r.foreign_files,
                r.open_markers
            );
            if verify {
                print!(", {} intact, {} corrupt", r.intact.unwrap_or(0), r.corrupt.unwrap_or(0));
            }
            println!();
        }
    }
}

fn print_device(r: &kvtier_regions::DeviceReport) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{}: region device, {} ({}), rank {}, namespace {}{}",
        r.path.display(),
        r.state,
        if r.state == "open" { format!("last written by pid {}", r.pid) } else { "cleanly".into() },
        r.rank,
        r.namespace,
        if r.in_use { "; IN USE by another process (its open region may change while read)" } else { "" }
    );
    println!("  run config: {}", r.run_config);
    println!(
        "  {:.0} MiB: {} regions of {:.1} MiB, {} slots of {} KiB blocks",
        mib(r.capacity),
        r.regions,
        mib(r.region_bytes),
        r.slots,
        r.block_bytes >> 10
    );
    println!(
        "  regions: {} sealed ({} blocks in their summaries), {} free, {} blank, {} without a valid summary",
        r.regions_sealed, r.blocks_summarized, r.regions_free, r.regions_blank, r.regions_unsummarized
    );
    if let Some(v) = &r.verify {
        println!(
            "  verify: {} intact, {} corrupt, {} stale (older passes), {} summary entries not matching their \
             record, {} intact records no summary names; {:.1} MiB read",
            v.intact,
            v.corrupt,
            v.stale,
            v.summary_mismatches,
            v.unsummarized,
            mib(v.bytes_read)
        );
    }
}
