//! Integration tests, in one binary so the crate links once.

mod agent;
mod certificates;
mod chart;
mod cluster;
mod connections;
mod crash;
mod crds;
mod dial_out;
mod doctor;
mod enroll;
mod examples;
mod export;
mod gateway;
mod git;
mod kube;
mod ocs;
mod ocs_agent;
mod packages;
mod plan;
mod serve;
mod support;
mod tls;
mod tokens;
mod tunnel;
mod validate;
