//! The `Op` enum and the naive oracle (feature `testing`).
