//! Gateway: intake → conversation → queue/coalesce → run → reply,
//! and recovery after a restart. Filled by the gateway issue; it is the only
//! module that knows channels, the sandbox and workspaces.
