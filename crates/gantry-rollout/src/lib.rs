//! The rollout engine's decisions, kept pure.
//!
//! A deploy is a persisted [`machine::Deploy`] state. The executor (in the
//! control plane) feeds it [`machine::Input`]s — results of the work it did,
//! metrics read from the proxy, ticks of the clock, operator commands — with
//! the current time, and gets back [`machine::Action`]s to carry out. The
//! executor stores the new state *before* acting on it, so a crash leaves a
//! state that [`machine::Input::Resumed`] turns into a consistent next move:
//! resume where traffic is already shifted, roll back where it is not.
//!
//! Nothing here does I/O or reads a clock, so every transition is tested
//! with simulated time ([`gates`] for the metric gates).
#![forbid(unsafe_code)]

pub mod gates;
pub mod machine;

pub use gates::{Baseline, GateReport, GateResult, Gates, SetMetrics, Status};
pub use machine::{
    Action, Deploy, Inconclusive, Input, Outcome, Pause, Phase, Plan, Step, Strategy,
};
