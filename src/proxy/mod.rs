//! Egress proxy: allowlist, TLS interception, masked secrets and one audit
//! event per request. Filled by the network-sandbox issue; knows tasks only by
//! an opaque id.
