//! Sandbox: container images, running Claude Code in a container through
//! bollard, stream-json parsing, limits and stop. Filled by the sandbox issue;
//! knows nothing of email or Slack.
