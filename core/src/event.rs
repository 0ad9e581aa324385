//! Offloading events, kept in a caller-reusable log so that raising one allocates nothing in
//! steady state.

use alloc::vec::Vec;

use crate::OffloadKey;

/// Where an event's blocks live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Medium {
    /// The primary (CPU memory) tier.
    Cpu,
    /// A storage tier (the FS tier).
    Storage,
}

impl Medium {
    /// The medium's name in vLLM's events (`"CPU"`, `"STORAGE"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Medium::Cpu => "CPU",
            Medium::Storage => "STORAGE",
        }
    }
}

/// One event: `keys` were stored into (`removed == false`) or removed from `medium`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The tier's medium.
    pub medium: Medium,
    /// Removal (eviction) rather than storage.
    pub removed: bool,
    /// The blocks, in the order the operation handled them.
    pub keys: &'a [OffloadKey],
}

#[derive(Debug, Clone, Copy)]
struct Header {
    medium: Medium,
    removed: bool,
    start: usize,
    end: usize,
}

/// An ordered list of events whose keys share one buffer. Reuse one log across steps
/// (`clear` keeps its capacity) and raising events allocates nothing once it has grown.
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    headers: Vec<Header>,
    keys: Vec<OffloadKey>,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one event listing `keys`; an empty list raises no event.
    pub fn push<'k>(&mut self, medium: Medium, removed: bool, keys: impl IntoIterator<Item = &'k OffloadKey>) {
        let start = self.keys.len();
        self.keys.extend(keys.into_iter().copied());
        let end = self.keys.len();
        if end > start {
            self.headers.push(Header { medium, removed, start, end });
        }
    }

    /// Moves every event of `other` to the end of this log.
    pub fn append(&mut self, other: &mut EventLog) {
        for h in &other.headers {
            let keys = &other.keys[h.start..h.end];
            let start = self.keys.len();
            self.keys.extend_from_slice(keys);
            self.headers.push(Header { start, end: self.keys.len(), ..*h });
        }
        other.clear();
    }

    /// The events, oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Event<'_>> + '_ {
        self.headers.iter().map(|h| Event { medium: h.medium, removed: h.removed, keys: &self.keys[h.start..h.end] })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// True when there is no event.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Forgets every event, keeping the buffers.
    pub fn clear(&mut self) {
        self.headers.clear();
        self.keys.clear();
    }
}
