//! Workspaces: git mirrors, conversation directories (workspace, inbox,
//! outbox, storage, Claude state) and their garbage collection. Filled by the
//! gateway issue.
