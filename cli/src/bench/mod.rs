//! `kvtier bench ...`: benchmarks that print ratios against a ceiling or peer measured in the
//! same run.

pub mod core;
pub mod fs;
pub mod redis;
pub mod vllm;
