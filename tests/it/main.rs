//! Integration tests, in one binary so the crate links once.

mod agent;
mod certificates;
mod crash;
mod crds;
mod doctor;
mod enroll;
mod examples;
mod export;
mod gateway;
mod git;
mod ocs;
mod ocs_agent;
mod packages;
mod plan;
mod serve;
mod support;
mod tls;
mod tokens;
mod validate;
