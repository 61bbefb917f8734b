//! Slack channel: Socket Mode in, Web API out. Filled by a later issue.
