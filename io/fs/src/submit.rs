//! The submit prologue every executor runs before it queues an op, in this order: an executor
//! that was shut down finishes the op [`Outcome::Cancelled`]; one with no room hands it back
//! ([`crate::Full`]); otherwise the op's row is leased (a write lease for a load, a read lease
//! for a store), and a refused lease (the row is busy, the slot out of range) finishes the op
//! [`Outcome::Failed`] at once. The threaded executor makes the first two checks under its
//! queue lock and leases with [`lease_row`] there.

use std::sync::Arc;

use kvtier_core::Part;

use crate::op::{Batch, BatchData, FileOp};
use crate::outcome::{OpError, Outcome};
use crate::region::{Access, Lease, PrimaryRegion};

/// Why an executor does not run a submitted op.
#[derive(Debug)]
pub enum Refusal {
    /// No room: the op goes back to the caller.
    Full,
    /// The op is finished at once with this outcome.
    Finished(Outcome),
}

/// The lease `op` needs on its row, or the outcome it finishes with when refused.
pub fn lease_row(region: &Arc<PrimaryRegion>, op: &FileOp) -> Result<Lease, Outcome> {
    region.lease(op.slot, Access::for_op(op.dir)).map_err(|e| Outcome::Failed(e.into()))
}

/// The prologue (see the module docs): the op's lease, or why it does not run.
pub fn admit(region: &Arc<PrimaryRegion>, op: &FileOp, stopped: bool, has_room: bool) -> Result<Lease, Refusal> {
    if stopped {
        return Err(Refusal::Finished(Outcome::Cancelled));
    }
    if !has_room {
        return Err(Refusal::Full);
    }
    lease_row(region, op).map_err(Refusal::Finished)
}

/// The prologue of a batch ([`crate::Executor::submit_batch`]), in this order: stopped
/// (`Cancelled`), no room (`Full`), a batch that cannot run as asked (an unknown file: `!known`;
/// no block; parts that do not match its data: `Failed(Invalid)`), then a read lease on every
/// row it writes (a refused one fails the batch, and the leases taken so far are released).
pub fn admit_batch(
    region: &Arc<PrimaryRegion>,
    batch: &Batch,
    parts: usize,
    known: bool,
    stopped: bool,
    has_room: bool,
) -> Result<Vec<Lease>, Refusal> {
    if stopped {
        return Err(Refusal::Finished(Outcome::Cancelled));
    }
    if !has_room {
        return Err(Refusal::Full);
    }
    let empty = matches!(&batch.data, BatchData::Blocks(b) if b.is_empty());
    if !known || empty || parts != batch.data.parts() {
        return Err(Refusal::Finished(Outcome::Failed(OpError::Invalid)));
    }
    match &batch.data {
        BatchData::Blocks(blocks) => blocks
            .iter()
            .map(|b| region.lease(b.slot, Access::Read).map_err(|e| Refusal::Finished(Outcome::Failed(e.into()))))
            .collect(),
        BatchData::Bytes(_) | BatchData::Copy { .. } => Ok(Vec::new()),
    }
}

/// Finishes every part of a batch with `outcome` (its leases must be gone already).
pub fn finish_parts(parts: Vec<Part>, outcome: Outcome) {
    let code = outcome.code();
    for part in parts {
        part.finish(code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{BlockFormat, Target};
    use crate::outcome::OpError;
    use kvtier_core::{Direction, SlotId};

    #[test]
    fn stopped_then_full_then_lease() {
        let region = Arc::new(PrimaryRegion::anonymous(1, 4096).unwrap());
        let op = |slot| FileOp {
            dir: Direction::Load,
            slot: SlotId(slot),
            target: Target::Path("/x".into()),
            format: BlockFormat::Vllm,
            sync: false,
            mode: Default::default(),
            evict: None,
        };
        assert!(matches!(admit(&region, &op(0), true, false), Err(Refusal::Finished(Outcome::Cancelled))));
        assert!(matches!(admit(&region, &op(0), false, false), Err(Refusal::Full)));
        let lease = admit(&region, &op(0), false, true).unwrap();
        assert_eq!(lease.access(), Access::Write);
        assert!(matches!(admit(&region, &op(0), false, true), Err(Refusal::Finished(Outcome::Failed(OpError::Busy)))));
        assert!(matches!(lease_row(&region, &op(1)), Err(Outcome::Failed(OpError::OutOfRange))));
    }
}
