//! orb-operator: a Kubernetes operator that turns declarative capacity requests
//! (`MachineRequest`) into machines launched from a `MachineTemplate` through a provider (AWS
//! or the in-memory simulator). See DESIGN.md for the architecture.

pub mod api;
pub mod config;
pub mod controller;
pub mod hostfactory;
pub mod http;
pub mod metrics;
pub mod provider;
