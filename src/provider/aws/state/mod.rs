//! The shared state one provider keeps across requests: `fleet_state` (every tracked fleet,
//! spot fleet request and group, described together), `poller` (instances and fleets refreshed
//! in one cycle) and `sweep` (leaked resources found and removed). Depends on `handlers` and
//! `calls`; nothing depends on it but the provider.

pub mod fleet_state;
pub mod poller;
pub mod sweep;
