//! The one integration-test binary (one link on 2 cores); each module covers
//! one area against real components.

mod check;
mod cli;
mod dashboard;
mod dashboard_browser;
mod e2e;
mod email;
mod email_imap;
mod email_smtp;
mod email_support;
mod events;
mod gateway;
mod log;
mod netsec;
mod projections;
mod proxy;
mod sandbox;
mod support;
mod workspace;
