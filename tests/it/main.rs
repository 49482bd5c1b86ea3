//! Integration tests, in one binary so the crate links once.

// A scenario test reads top to bottom as the story it checks (start, act, look, act again);
// the 100-line limit of `src/` would cut it into pieces read out of order.
#![allow(clippy::too_many_lines)]
// Test builders take their `json!` literals by value, as they are written at the call.
#![allow(clippy::needless_pass_by_value)]

mod admin_auth;
mod agent;
mod cert_lifetimes;
mod certificates;
mod chart;
mod cluster;
mod connections;
mod console;
mod crash;
mod crds;
mod dial_out;
mod doctor;
mod drain;
mod enroll;
mod events;
mod examples;
mod export;
mod fetch;
mod fleet_sim;
mod fuzz_corpus;
mod gateway;
mod git;
mod hostile_logs;
mod hostile_ocs;
mod kube;
mod kube_cluster;
mod legacy_http;
mod logs;
mod metrics;
mod ocs;
mod ocs_agent;
mod operating;
mod packages;
mod plan;
mod proxy_protocol;
mod push;
mod quickstart;
mod rollout_health;
mod serve;
mod state_faults;
mod steer;
mod support;
mod tls;
mod tokens;
mod tunnel;
mod url_content;
mod validate;
mod views;
mod wave_kill;
