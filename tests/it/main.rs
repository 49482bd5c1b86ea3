//! Integration tests, in one binary so the crate links once.

mod agent;
mod certificates;
mod cluster;
mod crash;
mod crds;
mod doctor;
mod enroll;
mod examples;
mod export;
mod gateway;
mod ocs;
mod ocs_agent;
mod packages;
mod serve;
mod support;
mod tls;
mod tokens;
mod validate;
