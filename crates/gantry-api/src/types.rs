//! Request and response bodies of `/api/v1`. Times are milliseconds since the
//! Unix epoch. No type here ever carries a secret value out of the server.

use serde::{Deserialize, Serialize};

/// What a caller may do. Each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read state: configs, secrets' names, history.
    Viewer,
    /// Also change what runs: apply and roll back config, deploy.
    Deployer,
    /// Also manage secrets, tokens, and read the audit log.
    Admin,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Viewer, Role::Deployer, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Deployer => "deployer",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is none of Gantry's roles.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`; expected one of `viewer`, `deployer`, `admin`")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "deployer" => Ok(Role::Deployer),
            "admin" => Ok(Role::Admin),
            other => Err(UnknownRole(other.to_string())),
        }
    }
}

/// Every error answer: a message that says what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /api/v1/whoami`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub actor: String,
    pub role: Role,
    /// The one environment the caller is limited to, if any.
    pub env: Option<String>,
}

/// `GET /api/v1/apps`: one line per app environment with a config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEnvSummary {
    pub app: String,
    pub env: String,
    pub config_version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// `PUT /api/v1/apps/{app}/envs/{env}/config`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyConfig {
    /// Shown in error locations, e.g. `gantry.toml`.
    pub file_name: String,
    /// The whole `gantry.toml` text.
    pub source: String,
    #[serde(default)]
    pub note: String,
}

/// A stored config version, without its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersionInfo {
    pub app: String,
    pub env: String,
    pub version: i64,
    pub author: String,
    pub created_at: i64,
    pub hash: String,
    pub note: String,
}

/// Answer to an apply or a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedConfig {
    /// False when the source equals the current version (nothing stored).
    pub changed: bool,
    pub version: ConfigVersionInfo,
}

/// `GET .../config` and `GET .../config/versions/{v}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDetail {
    pub version: ConfigVersionInfo,
    pub file_name: String,
    /// The stored `gantry.toml` text (it holds secret names, never values).
    pub source: String,
    /// The merged config for this environment, with credentials redacted.
    pub resolved: serde_json::Value,
}

/// `GET .../config/diff?from=V1&to=V2`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDiff {
    pub from: i64,
    pub to: i64,
    /// A unified diff of the two sources; empty when they are equal.
    pub diff: String,
}

/// `POST .../config/rollback`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackConfig {
    pub version: i64,
}

/// `PUT .../secrets/{name}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetSecret {
    pub value: String,
}

/// A secret's name and version, never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub version: i64,
    pub updated_at: i64,
    pub updated_by: String,
}

/// `POST /api/v1/secrets/rotate-key`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotated {
    pub reencrypted: usize,
}

/// `POST /api/v1/tokens`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateToken {
    pub role: Role,
    /// Limit the token to one environment.
    #[serde(default)]
    pub env: Option<String>,
    /// Lifetime in seconds; none means it does not expire.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub env: Option<String>,
    pub description: String,
    pub created_at: i64,
    pub created_by: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

/// The answer to a token creation: the only time the token is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub token: String,
    pub info: TokenInfo,
}

/// One audit log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub params: serde_json::Value,
    pub outcome: String,
    pub hash: String,
}

/// `GET /api/v1/audit/verify`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerify {
    pub ok: bool,
    pub entries: i64,
    pub head_seq: i64,
    pub head_hash: String,
    /// The first broken link: its sequence number and what is wrong.
    pub broken_at: Option<i64>,
    pub reason: Option<String>,
}

/// `GET /readyz`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub schema_version: i64,
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /api/v1/apps/{app}/envs/{env}/start`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartEnv {
    /// Run this release's artifact (the usual way).
    #[serde(default)]
    pub release: Option<i64>,
    /// Or: an absolute directory to run the app in (a local build).
    #[serde(default)]
    pub dir: Option<String>,
}

/// One instance as `gantry ps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    pub app: String,
    pub env: String,
    pub set: String,
    pub index: u32,
    /// starting, running, backoff, crash-loop, stopping, stopped, exited
    pub phase: String,
    pub ready: bool,
    pub pid: Option<i32>,
    pub port: u16,
    pub started_at: Option<i64>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub last_probe: Option<String>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// How limits are enforced on this host.
    pub limits: Option<String>,
}

/// A runtime event of an app environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInfo {
    pub id: i64,
    pub at: i64,
    pub instance: String,
    pub kind: String,
    pub message: String,
}

/// `GET .../logs`: captured lines, oldest first, each
/// `<rfc3339> <stream> <text>` and prefixed with the instance index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLines {
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance: String,
    /// RFC 3339 with milliseconds, as captured.
    pub at: String,
    /// `stdout`, `stderr` or `gantry`.
    pub stream: String,
    pub text: String,
}

/// A built release: a numbered, content-addressed artifact of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub app: String,
    pub number: i64,
    /// `sha256:<hex>` of the artifact's files.
    pub digest: String,
    pub source_commit: Option<String>,
    pub author: String,
    pub created_at: i64,
    /// Output of the build command (the end of it, when long).
    pub build_log: String,
}

/// `POST /api/v1/apps/{app}/envs/{env}/deploys`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartDeploy {
    /// The release to deploy (see `gantry releases`).
    pub release: i64,
    /// Deploy with this version of the environment's config instead of the
    /// current one (a rollback restores what the release ran with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<i64>,
}

/// A deploy, with its live state and timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployInfo {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub release: i64,
    pub previous_release: Option<i64>,
    /// The config version it ran with.
    #[serde(default)]
    pub config_version: Option<i64>,
    pub actor: String,
    pub phase: String,
    /// succeeded, rolled-back, failed, aborted; none while running.
    pub outcome: Option<String>,
    pub reason: Option<String>,
    /// Share of traffic on the new release now.
    pub weight: u8,
    /// While the deploy runs: the new release's instances, and how many of
    /// them are ready.
    #[serde(default)]
    pub instances: u32,
    #[serde(default)]
    pub ready: u32,
    /// The latest gate values against their thresholds.
    pub gates: Vec<GateInfo>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// How long each phase took, in order (the current one until now).
    #[serde(default)]
    pub phases: Vec<PhaseTime>,
    pub timeline: Vec<TimelineEntry>,
    /// The backend set it starts (`r<release>`, or `r<release>-<deploy>`
    /// for a redeploy of a release whose set runs) and the one it replaces.
    #[serde(default)]
    pub new_set: String,
    #[serde(default)]
    pub old_set: Option<String>,
    /// Blue-green's warm window: until when the previous set stays ready
    /// for an instant rollback (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_until: Option<i64>,
    /// What the running deploy is held by (a store that refuses writes, a
    /// proxy that does not answer, a set that did not stop), retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holding: Option<String>,
    /// Set when starting it did nothing: why (the release already serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noop: Option<String>,
}

/// One phase of a deploy and its duration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTime {
    pub phase: String,
    pub ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateInfo {
    pub name: String,
    pub value: String,
    pub threshold: String,
    /// pass, fail, pending
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: i64,
    pub phase: String,
    pub message: String,
}

/// `GET /api/v1/metrics/status`: the embedded metrics store and its
/// scrape targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsStatus {
    /// Series in the head (the recent hours in memory).
    pub series: u64,
    /// Samples in the head and in the blocks on disk (an aggregate point
    /// of a downsampled block counts one).
    pub samples: u64,
    /// Encoded bytes of the head's chunks.
    pub head_bytes: u64,
    /// Bytes of the blocks on disk.
    pub disk_bytes: u64,
    /// Blocks on disk (raw, 1m and 1h together).
    pub blocks: u64,
    /// Bytes per sample over head and blocks; `None` while empty.
    pub bytes_per_sample: Option<f64>,
    /// The oldest sample's time (ms since the epoch); `None` while empty.
    pub oldest: Option<i64>,
    pub targets: Vec<MetricsTarget>,
}

/// One scrape target in [`MetricsStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsTarget {
    pub job: String,
    pub instance: String,
    /// Whether the last scrape succeeded; false before the first.
    pub up: bool,
    /// When the last scrape started (ms since the epoch).
    pub last_scrape: Option<i64>,
    pub last_duration_seconds: Option<f64>,
    /// Samples the last scrape returned.
    pub samples_scraped: u64,
    /// Why the last scrape failed.
    pub last_error: Option<String>,
}
