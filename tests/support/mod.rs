//! Shared test support: a real Kubernetes cluster for end-to-end tests (`cluster`), moto for
//! the AWS layer (`moto`), a fault-injecting proxy in front of it (`fault_proxy`), EventBridge's
//! events on an SQS queue (`eventbridge`),
//! objects and a controller context for scripted-API-server tests (`objects`), and
//! the simulated provider and the AWS one (on moto) at scale against a real cluster
//! (`sim_scale`, `aws_scale`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod aws;
pub mod aws_scale;
pub mod cluster;
pub mod driver;
pub mod eventbridge;
pub mod fault_proxy;
pub mod lifecycle;
pub mod moto;
pub mod objects;
pub mod sim_scale;
