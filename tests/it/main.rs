//! All integration tests in one binary (one link of pingora instead of one per file).
mod cli;
mod config;
mod deployment;
mod inbound;
mod limits;
mod metrics;
mod mock_gateway;
mod outbound;
mod production;
mod properties;
mod python_sdk;
mod sdk_compat;
mod support;
mod vectors;
