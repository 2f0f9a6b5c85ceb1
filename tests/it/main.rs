//! All integration tests in one binary (one link of pingora instead of one per file).
mod cli;
mod config;
mod demo;
mod deployment;
mod engine;
mod inbound;
mod limits;
mod metrics;
mod mock_gateway;
mod operator;
mod outbound;
mod production;
mod properties;
mod python_sdk;
mod sdk_compat;
mod support;
mod vectors;
