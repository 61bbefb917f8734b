//! The one integration-test binary (one link on 2 cores); each module covers
//! one area against real components.

mod cli;
mod dashboard;
mod dashboard_browser;
mod email;
mod events;
mod log;
mod projections;
