//! All integration tests in one binary (one link of pingora instead of one per file).
mod cli;
mod config;
mod deployment;
mod engine;
mod inbound;
mod metrics;
mod mock_gateway;
mod outbound;
mod production;
mod properties;
mod support;
mod vectors;
