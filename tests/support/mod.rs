//! Shared test support: a real Kubernetes cluster for end-to-end tests (`cluster`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
#![allow(dead_code)]

pub mod cluster;
