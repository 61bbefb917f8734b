//! Dashboard: axum routes, askama templates and SSE over the projections.
//! Filled by the dashboard issue; the JSON API used by the CLI lives in
//! `cli::api` until then.
