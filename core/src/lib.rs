//! # kvtier-core
//!
//! The deterministic heart of kvtier, a multi-tier KV-cache offloading engine for LLM
//! inference servers: the primary (CPU) pool with reference counts and LRU/ARC eviction, the
//! tiering engine that cascades stored blocks to secondary tiers and promotes them back, and
//! the job accounting tiers use when their block operations finish on other threads
//! ([`jobs`]).
//!
//! ## A state machine, not a runtime
//!
//! This crate performs no I/O, reads no clock, draws no random numbers and never lets a
//! hash map's iteration order decide anything (its tables use a fixed, seedless hasher). Given
//! the same sequence of calls and tier completions it produces the same outputs, bit for bit,
//! which is what lets `kvtier replay` reproduce a production trace offline. It is `#![no_std]`
//! (with `alloc`) and contains no `unsafe`.
//!
//! Tables are sized at construction from the slot count and every buffer an operation fills
//! is caller-owned and reusable ([`StorePlan`], [`EventLog`], [`Completions`]), so steady-state
//! operations do not allocate.
//!
//! ## Driving the engine
//!
//! Per scheduler step, call [`TieringEngine::lookup`], [`TieringEngine::prepare_store`] /
//! [`TieringEngine::complete_store`], [`TieringEngine::prepare_load`] /
//! [`TieringEngine::complete_load`] and [`TieringEngine::touch`] as the scheduler needs, then
//! [`TieringEngine::end_step`] once (it submits the promotions reserved during the step), then
//! drain [`TieringEngine::take_events`]. The engine polls its tiers itself, at most once per
//! step (see [`engine`]). [`TieringEngine::shutdown`] drains every tier before the end.
//!
//! ```
//! use kvtier_core::{
//!     AnyPolicy, EngineConfig, LookupResult, MemoryTier, OffloadKey, PolicyKind, ReqContext,
//!     SecondaryTier, StorePlan, TieringEngine,
//! };
//!
//! let tiers: Vec<Box<dyn SecondaryTier>> = vec![Box::new(MemoryTier::new(None))];
//! let mut engine = TieringEngine::new(AnyPolicy::new(PolicyKind::Lru, 2), tiers, EngineConfig::default());
//! let req = ReqContext::new(1);
//! let key = OffloadKey::new(b"prefix", 0).unwrap();
//!
//! let mut plan = StorePlan::new();
//! engine.prepare_store(&[key], req, &mut plan).unwrap();
//! // ... copy the GPU block into row `plan.slots[0]` ...
//! engine.complete_store(&[key], req, true).unwrap(); // cascades to the memory tier
//! engine.end_step();
//! assert_eq!(engine.lookup(&key, req), LookupResult::Ready);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

extern crate alloc;

pub mod arc;
pub mod engine;
pub mod error;
pub mod event;
mod job_book;
pub mod jobs;
mod key;
mod list;
pub mod lru;
pub mod memory_tier;
pub mod policy;
pub mod pool;
mod promotion;
pub mod sync;
pub mod tier;

pub use arc::ArcPolicy;
pub use engine::{EngineConfig, EngineStats, LookupResult, TieringEngine};
pub use error::{LoadError, ProtocolError, ShutDown, StoreError, UnpinError};
pub use event::{Event, EventLog, Medium};
pub use jobs::{CompletionQueue, JobHandle, JobTable, JobTableStats, Part, TableError};
pub use key::{JobId, KeyError, OffloadKey, ReqContext, ReqId, SlotId, GROUP_LEN, MAX_KEY_LEN};
pub use lru::LruPolicy;
pub use memory_tier::{MemoryTier, RowIo, RowRefused};
pub use policy::{AnyPolicy, EvictionPolicy, PolicyKind};
pub use pool::{PoolLookup, PrimaryPool, StorePlan, IN_FLIGHT};
pub use tier::{Completions, Direction, Job, JobResult, SecondaryTier, TierLookup};
