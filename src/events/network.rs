//! Network events: every request through the egress proxy and every DNS
//! query the sandbox's relay reported.

use super::{TaskId, frozen};

frozen! {
    /// One request through the proxy, allowed, blocked or failed.
    pub struct ProxyRequestV1 {
        /// The task whose socket it came in on.
        pub task: TaskId,
        /// HTTP method.
        pub method: String,
        /// `http` or `https`.
        pub scheme: String,
        /// Host as requested.
        pub host: String,
        /// Port as claimed by the relay (80 or 443).
        pub port: u16,
        /// Path and query, as requested.
        pub path: String,
        /// The decision.
        pub decision: Decision,
        /// The allowlist rule that matched, as written.
        pub rule: Option<String>,
        /// Why it was blocked or failed.
        pub reason: Option<String>,
        /// Response status sent to the client.
        pub status: Option<u16>,
        /// Bytes from the client (request body).
        pub bytes_in: u64,
        /// Bytes to the client (response body).
        pub bytes_out: u64,
        /// Time from request to end of response.
        pub duration_us: u64,
        /// What was done with credentials (names and counts, never values).
        pub credentials: Vec<CredentialAnnotation>,
        /// The upstream URL when an override redirected the host.
        pub upstream_override: Option<String>,
        /// Other annotations for the audit view, each `key: value` in the
        /// order applied (`graphql-op: mutation/createIssue`,
        /// `github-app: cached`, `region: us-east-1`). Never secret values.
        pub notes: Vec<String>,
    }

    /// A DNS query reported by the relay (answered locally; never forwarded).
    pub struct DnsQueryV1 {
        /// The task.
        pub task: TaskId,
        /// The name asked for.
        pub name: String,
        /// The query type (1 = A, 28 = AAAA, ...).
        pub qtype: u16,
        /// What the relay answered (`loopback`, `refused`, ...).
        pub answer: String,
    }

    /// The proxy's decision on a request.
    pub enum Decision {
        /// Allowed by the allowlist and forwarded.
        Allowed,
        /// Refused (allowlist, consistency checks).
        Blocked,
        /// Allowed but the upstream failed or timed out.
        Failed,
    }

    /// One credential action on a request.
    pub struct CredentialAnnotation {
        /// The secret's configured name.
        pub secret: String,
        /// What was done.
        pub action: CredentialAction,
        /// How many occurrences.
        pub count: u32,
        /// The header acted on, lower-cased, when the action was on one
        /// header (a stripped foreign `authorization`); none when it was
        /// on the whole request (a re-signed request).
        pub header: Option<String>,
    }

    /// What the proxy did with a credential.
    pub enum CredentialAction {
        /// A surrogate was swapped for the real value (scoped host).
        Swapped,
        /// A surrogate was left as it is (host out of scope).
        LeftMasked,
        /// A foreign or duplicate credential header was removed.
        Stripped,
        /// The request was re-signed with the real key (AWS SigV4/SigV4A).
        Resigned,
    }
}
