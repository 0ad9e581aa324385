//! The device: opening (creating and preallocating it if it is an absent file), locking it
//! (one owner), and the run-config check of its header. Never overwrites anything it does not
//! recognize as a blank device or its own.

use std::any::Any;
use std::io;
use std::path::{Path, PathBuf};

use kvtier_fs::namespace::{canonical_json, compare_config, digest12};
use kvtier_fs::vfs::Vfs;

use crate::config::RegionsTierConfig;
use crate::geometry::{Geometry, HEADER_AREA};
use crate::meta::{DeviceHeader, DeviceState, MetaError, DEVICE_HEADER_LEN, NAMESPACE_LEN};

/// An open, locked device.
pub struct Device {
    /// Its path.
    pub path: PathBuf,
    /// Its layout.
    pub geometry: Geometry,
    /// The namespace digest its records carry.
    pub namespace: [u8; NAMESPACE_LEN],
    /// The run config's canonical text, as its header keeps it.
    pub config_text: String,
    /// The header as this process keeps it.
    pub header: DeviceHeader,
    /// The header found at open (`None`: the device was blank and is initialized now).
    pub found: Option<DeviceHeader>,
    /// The lock (`flock`), held while the device is open.
    lock: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device").field("path", &self.path).field("geometry", &self.geometry).finish_non_exhaustive()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn foreign(path: &Path, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{} is not a kvtier region device ({why}); it is left untouched", path.display()),
    )
}

/// Takes the device's lock, creating it (preallocated, owner-only) if it does not exist.
fn lock(fs: &dyn Vfs, path: &Path, capacity: u64) -> io::Result<Box<dyn Any + Send + Sync>> {
    for _ in 0..8 {
        match fs.lock(path) {
            Ok(guard) => return Ok(guard),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Created here, or by another process first: either way, lock it next.
                if let Err(e) = fs.create_sized(path, capacity) {
                    if !fs.exists(path) {
                        return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display())));
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another process (it holds the device's lock): a region device has one \
                         owner; share blocks between processes with an fs tier on a shared directory",
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()))),
        }
    }
    Err(io::Error::other(format!("cannot open {}: it keeps appearing and vanishing", path.display())))
}

impl Device {
    /// Opens the device of `config` for blocks of `block_bytes`: locks it (creating it if it is
    /// an absent file), checks its header against the run config, the rank and the geometry
    /// (a mismatch is an error, never an overwrite), or initializes a blank one.
    pub fn open(fs: &dyn Vfs, config: &RegionsTierConfig, block_bytes: u64) -> io::Result<Device> {
        let geometry = Geometry::new(config.capacity, config.region_bytes, block_bytes)
            .map_err(|e| invalid(format!("regions device {}: {e}", config.path.display())))?;
        let run = config.effective_run_config();
        let config_text = canonical_json(&run);
        if config_text.len() > HEADER_AREA as usize - DEVICE_HEADER_LEN {
            return Err(invalid(format!(
                "the run config is {} bytes; a region device's header holds at most {}",
                config_text.len(),
                HEADER_AREA as usize - DEVICE_HEADER_LEN
            )));
        }
        let mut namespace = [0u8; NAMESPACE_LEN];
        namespace.copy_from_slice(&digest12(&run).as_bytes()[..NAMESPACE_LEN]);
        let path = config.path.clone();
        let guard = lock(fs, &path, geometry.capacity)?;
        let mut area = vec![0u8; HEADER_AREA as usize];
        let n = fs.read_at(&path, 0, &mut area)?;
        if n < area.len() {
            return Err(foreign(&path, "shorter than its header area"));
        }
        let header = DeviceHeader {
            capacity: geometry.capacity,
            region_bytes: geometry.region_bytes,
            block_bytes,
            rank: config.rank,
            namespace,
            config_len: config_text.len() as u32,
            config_crc: crc32c::crc32c(config_text.as_bytes()),
            state: DeviceState::Closed,
            pid: fs.process_id(),
            fsync: config.fsync,
            boot_id: fs.boot_id().unwrap_or_default(),
        };
        let found = match DeviceHeader::decode(&area) {
            Err(MetaError::Blank) if area.iter().all(|&b| b == 0) => None,
            Err(e) => return Err(foreign(&path, e)),
            Ok(h) => {
                let text_end = DEVICE_HEADER_LEN + h.config_len as usize;
                let text =
                    area.get(DEVICE_HEADER_LEN..text_end).ok_or_else(|| foreign(&path, "run config too long"))?;
                if crc32c::crc32c(text) != h.config_crc {
                    return Err(foreign(&path, "run config checksum mismatch"));
                }
                compare_config(&path, text, &run).map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("regions device {}: {e}", path.display()))
                })?;
                let mut differ = Vec::new();
                if h.rank != config.rank {
                    differ.push(format!("rank {} (this run: {})", h.rank, config.rank));
                }
                if h.capacity != geometry.capacity {
                    differ.push(format!("capacity {} (this run: {})", h.capacity, geometry.capacity));
                }
                if h.region_bytes != geometry.region_bytes {
                    differ.push(format!("region_bytes {} (this run: {})", h.region_bytes, geometry.region_bytes));
                }
                if h.block_bytes != block_bytes {
                    differ.push(format!("block_bytes {} (this run: {block_bytes})", h.block_bytes));
                }
                if h.namespace != namespace {
                    differ.push("namespace digest".into());
                }
                if !differ.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "regions device {} was made for another layout: {} (it is left untouched; use another \
                             path or remove it)",
                            path.display(),
                            differ.join(", ")
                        ),
                    ));
                }
                Some(h)
            }
        };
        let size = fs.device_size(&path)?;
        if size < geometry.capacity {
            return Err(invalid(format!(
                "{} holds {size} bytes, less than the capacity {} (a file of the engine's is created at its \
                 capacity; give a capacity that fits the device)",
                path.display(),
                geometry.capacity
            )));
        }
        let device = Device { path, geometry, namespace, config_text, header, found, lock: Some(guard) };
        if device.found.is_none() {
            // A blank device: its run config first, then its header (closed, so a crash now
            // leaves a device with nothing to recover).
            fs.write_at(&device.path, DEVICE_HEADER_LEN as u64, device.config_text.as_bytes(), false)?;
            device.write_header(fs, DeviceState::Closed, true)?;
        }
        Ok(device)
    }

    /// Releases the lock: another process (or another engine of this one) may open the
    /// device. Nothing may be written to it afterwards.
    pub fn unlock(&mut self) {
        self.lock = None;
    }

    /// Whether this process still holds the lock.
    pub fn locked(&self) -> bool {
        self.lock.is_some()
    }

    /// Writes the header with `state` (and this process's pid, boot and fsync setting);
    /// `sync`: durably.
    pub fn write_header(&self, fs: &dyn Vfs, state: DeviceState, sync: bool) -> io::Result<()> {
        let mut page = [0u8; DEVICE_HEADER_LEN];
        DeviceHeader { state, ..self.header.clone() }.encode(&mut page);
        fs.write_at(&self.path, 0, &page, sync)
    }
}
