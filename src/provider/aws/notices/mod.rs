//! What AWS announces about instances before it acts: EventBridge events (spot interruption
//! warnings, rebalance recommendations, state changes, scheduled changes) read from the
//! provider's interruption queue. `events` parses them; `queue` reads the queue and hands them
//! to the poller, which keeps the notices with the machines it tracks.

pub mod events;
pub mod queue;
