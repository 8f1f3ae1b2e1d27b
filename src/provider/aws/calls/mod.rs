//! The call machinery every handler shares: `ops` (the SDK clients, the cluster's tags, the
//! shared memories), `client` (SDK configuration), `limits` (the rate limiter), `gather` (removals
//! batched across requests), `id_lists` (ids per DescribeInstances), `call_metrics`, `errors`
//! (AWS errors classified) and `capacity_memory` (offerings that failed for capacity). Depends
//! on nothing else in `aws`.

pub mod call_metrics;
pub mod capacity_memory;
pub mod client;
pub mod errors;
pub mod gather;
pub mod id_lists;
pub mod limits;
pub mod ops;
