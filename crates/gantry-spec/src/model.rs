//! The typed app spec. Every field's doc comment becomes its description in
//! the JSON Schema, so write them for the person editing `gantry.toml`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
use crate::formats::{EnvValue, HostName, Pause, SecretName};
use crate::size::ByteSize;

/// The app spec `gantry.toml` for one environment: the base keys with that
/// environment's `[environments.<name>]` overrides merged in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "gantry.toml")]
pub struct AppSpec {
    /// The app's identity.
    pub app: App,
    /// How to build the artifact that is deployed. Optional: without it the
    /// working directory is the artifact.
    #[serde(default)]
    pub build: Build,
    /// How to run one instance of the app. Gantry sets `PORT` for each instance.
    pub run: Run,
    /// Readiness and liveness probes.
    #[serde(default)]
    pub health: Health,
    /// How a new release replaces the running one.
    #[serde(default)]
    pub deploy: Deploy,
    /// The gates a new release must pass while it takes traffic.
    #[serde(default)]
    pub analysis: Analysis,
    /// Database migrations run before new instances start.
    #[serde(default)]
    pub migrate: Migrate,
    /// Environment variables for the app. A value may reference a secret as
    /// `${secret.NAME}`, as the whole value or embedded in it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "format": "env-name" }))]
    pub env: BTreeMap<String, EnvValue>,
    /// Names of the secrets this app uses (never their values; set them with
    /// `gantry secrets set`). Each is injected as an environment variable of
    /// the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("uniqueItems" = true))]
    pub secrets: Vec<SecretName>,
    /// How the edge proxy routes and protects traffic to the app.
    #[serde(default)]
    pub proxy: Proxy,
    /// Scheduled, verified backups. No backups are taken without this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
    /// Alert rules over the built-in series.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertRule>,
    /// Notification channels, by name; alert rules send to them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "format": "label" }))]
    pub notify: BTreeMap<String, NotifyChannel>,
}

// === [app] ===

/// The app's identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app's name: lowercase letters, digits and `-`, starting with a
    /// letter (it is used in host names, paths and process names).
    #[schemars(schema_with = "crate::formats::label_schema")]
    pub name: String,
    /// A sentence about what the app does, shown in the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

// === [build] ===

/// How to build the artifact.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Build {
    /// Shell command that builds the app, e.g. `cargo build --release`.
    /// Without it nothing is built.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Paths or globs, relative to `workdir`, kept as the artifact. Empty
    /// means the whole working directory.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Directory the command runs in, relative to `gantry.toml`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

// === [run] ===

/// How to run one instance of the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// Command that starts one instance, e.g. `./hello-app`. It must listen
    /// on the port given in `PORT`.
    pub command: String,
    /// Number of instances to run behind the proxy (1 to 64).
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 64))]
    pub instances: u32,
    /// Working directory of the process, relative to the artifact root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Signal sent to stop an instance gracefully.
    #[serde(default)]
    pub stop_signal: StopSignal,
    /// Time between the stop signal and SIGKILL.
    #[serde(default = "default_grace_period")]
    #[schemars(extend("maxDuration" = "1d"))]
    pub grace_period: Duration,
    /// When to restart an instance that exited.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Delay between restarts, doubling from `initial` up to `max`.
    #[serde(default)]
    pub backoff: Backoff,
    /// When restarts are so frequent that the instance is marked crash-looping
    /// and restarts stop.
    #[serde(default)]
    pub crash_loop: CrashLoop,
    /// Resource limits per instance.
    #[serde(default)]
    pub limits: Limits,
    /// Variables of the server's own environment that each instance
    /// inherits: names, or patterns with `*` (`LC_*`). When not set:
    /// `PATH`, `HOME`, `LANG`, `LC_*` and `TZ`. Giving the list replaces
    /// that default (`[]` inherits nothing), e.g. `["PATH", "HOME",
    /// "VIRTUAL_ENV"]` for an app run from the server's virtualenv. `[env]`,
    /// secrets, `PORT`, `DATA_DIR`, `GANTRY_APP`, `GANTRY_ENV` and
    /// `INSTANCE_ID` are set on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("items" = { "type": "string", "format": "env-pattern" }))]
    pub inherit_env: Option<Vec<String>>,
}

/// What [`Run::inherit_env`] is when not set.
pub const DEFAULT_INHERIT_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_*", "TZ"];

impl Run {
    /// The names and patterns of the server's variables an instance
    /// inherits ([`Run::inherit_env`] or [`DEFAULT_INHERIT_ENV`]).
    pub fn inherited_env(&self) -> Vec<String> {
        match &self.inherit_env {
            Some(list) => list.clone(),
            None => DEFAULT_INHERIT_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

fn default_instances() -> u32 {
    1
}

fn default_grace_period() -> Duration {
    Duration::from_secs(10)
}

/// Signal used for graceful stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum StopSignal {
    /// SIGTERM (the default).
    #[default]
    Sigterm,
    /// SIGINT, as from Ctrl-C.
    Sigint,
    /// SIGQUIT.
    Sigquit,
    /// SIGHUP.
    Sighup,
    /// SIGUSR1.
    Sigusr1,
    /// SIGUSR2.
    Sigusr2,
}

/// When to restart an instance that exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever it exits.
    #[default]
    Always,
    /// Restart only when it exits with a non-zero status or a signal.
    OnFailure,
    /// Never restart.
    Never,
}

/// Exponential backoff between restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Backoff {
    /// Delay before the first restart.
    #[schemars(extend("maxDuration" = "1d"))]
    pub initial: Duration,
    /// Longest delay between restarts.
    #[schemars(extend("maxDuration" = "1d"))]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Crash-loop detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CrashLoop {
    /// Restarts allowed within `window` before the instance is marked crash-looping.
    #[schemars(range(min = 1))]
    pub max_restarts: u32,
    /// The sliding window the restarts are counted in.
    #[schemars(extend("maxDuration" = "7d"))]
    pub window: Duration,
}

impl Default for CrashLoop {
    fn default() -> Self {
        CrashLoop {
            max_restarts: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// Resource limits per instance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Memory limit, e.g. "512MiB".
    pub memory: ByteSize,
    /// CPU limit as a fraction of one core, e.g. 0.5 or 2.
    #[schemars(range(min = 0.01, max = 1024.0))]
    pub cpu: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: ByteSize::mib(512),
            cpu: 1.0,
        }
    }
}

// === [health] ===

/// Readiness and liveness probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Health {
    /// Decides when a new instance may take traffic. The default is a TCP
    /// connect to the instance's port.
    pub readiness: Probe,
    /// Restarts an instance that stops answering. None by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            readiness: Probe {
                kind: ProbeKind::Tcp,
                ..Probe::default()
            },
            liveness: None,
        }
    }
}

/// A health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Probe {
    /// How to probe: `http` request, `tcp` connect, or `exec` a command.
    pub kind: ProbeKind,
    /// Path requested by an `http` probe; starts with `/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Port to probe; by default the instance's `PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Status codes an `http` probe accepts.
    pub expect_status: StatusRange,
    /// Text an `http` probe's response body must contain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Command an `exec` probe runs; exit status 0 means healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Time between probes.
    #[schemars(extend("maxDuration" = "1d"))]
    pub interval: Duration,
    /// Time one probe may take.
    #[schemars(extend("maxDuration" = "1h"))]
    pub timeout: Duration,
    /// Consecutive successes needed to count as healthy.
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: u32,
    /// Consecutive failures needed to count as unhealthy.
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: u32,
    /// Time after start during which failures are not counted.
    #[schemars(schema_with = "crate::duration::zero_allowed_schema")]
    #[schemars(extend("maxDuration" = "1d"))]
    pub startup_grace: Duration,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            kind: ProbeKind::Http,
            path: None,
            port: None,
            expect_status: StatusRange::default(),
            body_contains: None,
            command: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 3,
            startup_grace: Duration::from_secs(0),
        }
    }
}

/// How a probe checks the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// An HTTP GET of `path`; healthy when the status is in `expect_status`.
    #[default]
    Http,
    /// A TCP connect to the port.
    Tcp,
    /// Run `command`; healthy when it exits 0.
    Exec,
}

/// An inclusive range of HTTP status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct StatusRange {
    /// Lowest accepted status.
    #[schemars(range(min = 100, max = 599))]
    pub min: u16,
    /// Highest accepted status.
    #[schemars(range(min = 100, max = 599))]
    pub max: u16,
}

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange { min: 200, max: 399 }
    }
}

// === [deploy] ===

/// How a new release replaces the running one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Deploy {
    /// `blue-green` switches all traffic at once and keeps the old set warm;
    /// `canary` shifts traffic in `steps`.
    pub strategy: Strategy,
    /// How long the previous release is kept running for instant rollback.
    #[schemars(extend("maxDuration" = "30d"))]
    pub rollback_window: Duration,
    /// Number of releases kept for `gantry rollback`.
    #[schemars(range(min = 1, max = 100))]
    pub keep_releases: u32,
    /// Pause before taking traffic until `gantry approve`.
    pub require_approval: bool,
    /// Canary steps, in order: the canary's share of traffic and how long to
    /// hold it. Required for the `canary` strategy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    /// Requests made to the new release before it takes traffic; any failure
    /// rolls back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub smoke: Vec<SmokeCheck>,
    /// Commands run around a deploy.
    #[serde(skip_serializing_if = "Hooks::is_empty")]
    pub hooks: Hooks,
    /// How long to wait for another deploy to the same environment to finish.
    #[schemars(extend("maxDuration" = "1d"))]
    pub lock_timeout: Duration,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            strategy: Strategy::BlueGreen,
            rollback_window: Duration::from_secs(1800),
            keep_releases: 5,
            require_approval: false,
            steps: Vec::new(),
            smoke: Vec::new(),
            hooks: Hooks::default(),
            lock_timeout: Duration::from_secs(600),
        }
    }
}

/// Deploy strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Start the new set, switch all traffic atomically, keep the old set warm.
    #[default]
    BlueGreen,
    /// Shift traffic step by step while analysis compares the new set.
    Canary,
}

/// One canary step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percentage of traffic sent to the canary (0 to 100).
    #[schemars(range(min = 0, max = 100))]
    pub weight: u8,
    /// How long to hold this step, e.g. "10m", or "approval" to wait for
    /// `gantry approve`.
    #[serde(default)]
    #[schemars(extend("maxDuration" = "30d"))]
    pub pause: Pause,
}

/// A request made to the new release before it takes traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmokeCheck {
    /// Path to request; starts with `/`.
    pub path: String,
    /// HTTP method.
    #[serde(default)]
    pub method: HttpMethod,
    /// Status the response must have.
    #[serde(default = "default_smoke_status")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: u16,
    /// Text the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Longest acceptable response time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxDuration" = "1h"))]
    pub max_latency: Option<Duration>,
}

fn default_smoke_status() -> u16 {
    200
}

/// HTTP method of a smoke check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// GET.
    #[default]
    Get,
    /// HEAD.
    Head,
    /// POST (with an empty body).
    Post,
    /// OPTIONS.
    Options,
}

/// Commands run around a deploy, in the artifact's directory with the app's
/// environment.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    /// Runs before migrations; a failure aborts the deploy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_deploy: Option<String>,
    /// Runs after promotion; a failure is reported but does not roll back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_deploy: Option<String>,
}

impl Hooks {
    /// True when no hook is set.
    pub fn is_empty(&self) -> bool {
        self.pre_deploy.is_none() && self.post_deploy.is_none()
    }
}

// === [analysis] ===

/// Gates measured by the proxy for the new release's traffic alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Analysis {
    /// How often the gates are evaluated.
    #[schemars(extend("maxDuration" = "1d"))]
    pub interval: Duration,
    /// Highest acceptable share of 5xx responses (0 to 1). Judged against
    /// the stable set (`baseline = "stable"`), it is how much higher than
    /// stable's the new set's share may be.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Lowest acceptable share of 1xx–3xx responses (0 to 1). Against the
    /// stable set: at most `1 - min_success_rate` below stable's.
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_success_rate: f64,
    /// Highest acceptable 99th-percentile latency (absolute: on a first
    /// deploy, or `baseline = "absolute"`).
    #[schemars(extend("maxDuration" = "1h"))]
    pub max_p99: Duration,
    /// What the new set is judged against. `stable` (the default): the
    /// stable set measured over the same window (the gates wait until it
    /// has `min_requests` requests), so the same code on a busy machine is
    /// never rolled back; with no stable set (a first deploy), the absolute
    /// limits. `absolute`: the absolute limits only.
    pub baseline: Baseline,
    /// Against the stable set: the new set's p99 may be at most
    /// `p99_ratio` × stable's p99 + `p99_margin`.
    #[schemars(range(min = 1.0, max = 100.0))]
    pub p99_ratio: f64,
    /// Against the stable set: latency the new set may add on top of
    /// `p99_ratio` × stable's p99.
    #[schemars(extend("maxDuration" = "1h"))]
    pub p99_margin: Duration,
    /// Requests needed in an interval before the gates decide anything.
    #[schemars(range(min = 1))]
    pub min_requests: u32,
    /// Also fail when the new release is clearly worse than the stable one,
    /// even within the absolute thresholds.
    pub compare_to_stable: bool,
    /// What a canary step does when it ends before the gates could judge
    /// (fewer than `min_requests`).
    pub inconclusive: Inconclusive,
}

/// What the new set's metrics are compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// The stable set over the same window, when it can be measured.
    #[default]
    Stable,
    /// The absolute limits only.
    Absolute,
}

/// What a canary step does when it ends with too few requests to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Inconclusive {
    /// The step goes on until the gates decide (`gantry approve` moves on
    /// anyway, `gantry abort` rolls back).
    #[default]
    Wait,
    /// Move on to the next step: for apps with too little traffic to judge.
    Continue,
    /// Roll back.
    Rollback,
}

impl Default for Analysis {
    fn default() -> Self {
        Analysis {
            interval: Duration::from_secs(60),
            max_error_rate: 0.01,
            min_success_rate: 0.99,
            max_p99: Duration::from_millis(500),
            baseline: Baseline::Stable,
            p99_ratio: 1.5,
            p99_margin: Duration::from_millis(50),
            min_requests: 50,
            compare_to_stable: false,
            inconclusive: Inconclusive::Wait,
        }
    }
}

// === [migrate] ===

/// Database migrations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Migrate {
    /// Command that migrates the database forward. None: no migrations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Command that undoes the migration, run when a deploy rolls back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// Longest time a migration may run.
    #[schemars(extend("maxDuration" = "7d"))]
    pub timeout: Duration,
}

impl Default for Migrate {
    fn default() -> Self {
        Migrate {
            command: None,
            rollback: None,
            timeout: Duration::from_secs(300),
        }
    }
}

// === [proxy] ===

/// How the edge proxy routes and protects traffic to the app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Host names routed to this app: exact, or `*.example.com`. Each host
    /// may belong to one environment only.
    #[schemars(extend("uniqueItems" = true))]
    pub hosts: Vec<HostName>,
    /// Only requests under this path are routed to the app; starts with `/`.
    pub path_prefix: String,
    /// TLS termination.
    pub tls: Tls,
    /// Redirect plain HTTP requests to HTTPS.
    pub redirect_http: bool,
    /// Security headers added to responses that lack them. Set one to `""`
    /// to not send it.
    pub headers: SecurityHeaders,
    /// Per-client-IP rate limit. None by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Timeouts that protect the app and the proxy from slow peers.
    pub timeouts: Timeouts,
    /// Largest request body accepted (413 above it); `0B` for no limit.
    pub max_body: ByteSize,
    /// Maintenance mode: answer 503 with a message instead of proxying.
    pub maintenance: Maintenance,
    /// Compress text, JSON, JavaScript, XML, SVG and wasm responses with
    /// brotli or gzip when the client accepts it and the app did not.
    pub compress: bool,
    /// Send each client back to the same instance while it is up, with a
    /// `gantry_sticky` cookie the proxy sets.
    pub sticky_sessions: bool,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            hosts: Vec::new(),
            path_prefix: "/".to_string(),
            tls: Tls::default(),
            redirect_http: false,
            headers: SecurityHeaders::default(),
            rate_limit: None,
            timeouts: Timeouts::default(),
            max_body: ByteSize::mib(10),
            maintenance: Maintenance::default(),
            compress: false,
            sticky_sessions: false,
        }
    }
}

/// TLS termination at the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// `off`, certificate `files`, or certificates from `acme` (Let's Encrypt).
    pub mode: TlsMode,
    /// PEM certificate chain, for `files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// PEM private key file, for `files`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Contact address registered with the ACME provider, for `acme`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acme_email: Option<String>,
}

/// Where TLS certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// No TLS at this proxy.
    #[default]
    Off,
    /// Certificate and key from files.
    Files,
    /// Obtained and renewed automatically over ACME.
    Acme,
}

/// Security headers. The defaults are strict; loosen them per app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityHeaders {
    /// `Content-Security-Policy`. The default allows same-origin content
    /// only, requires Trusted Types for scripts, and sends violation
    /// reports to the proxy (`/_gantry/csp-report`; read them with
    /// `gantry check headers --reports --env ENV`).
    pub csp: String,
    /// `enforce` the CSP, or send it as `report-only`
    /// (`Content-Security-Policy-Report-Only`): browsers then only report
    /// what it would block, so pages with inline scripts keep working while
    /// the policy is tuned. Set it per environment to try a policy in
    /// staging first.
    pub csp_mode: CspMode,
    /// `Reporting-Endpoints`: the report groups the CSP's `report-to`
    /// names; the default names `gantry-csp`, the proxy's own endpoint.
    pub reporting_endpoints: String,
    /// `Strict-Transport-Security` (sent over HTTPS only).
    pub hsts: String,
    /// `X-Frame-Options`.
    pub frame_options: String,
    /// `Referrer-Policy`.
    pub referrer_policy: String,
    /// `Permissions-Policy`.
    pub permissions_policy: String,
    /// `X-Content-Type-Options`.
    pub content_type_options: String,
}

/// Whether browsers enforce the CSP or only report what it would block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CspMode {
    /// `Content-Security-Policy`: browsers block what the policy does not
    /// allow, and report it.
    #[default]
    Enforce,
    /// `Content-Security-Policy-Report-Only`: browsers block nothing and
    /// report what the policy would block.
    ReportOnly,
}

impl Default for SecurityHeaders {
    fn default() -> Self {
        SecurityHeaders {
            csp: "default-src 'self'; object-src 'none'; base-uri 'self'; \
                  frame-ancestors 'none'; require-trusted-types-for 'script'; \
                  report-uri /_gantry/csp-report; report-to gantry-csp"
                .to_string(),
            csp_mode: CspMode::Enforce,
            reporting_endpoints: "gantry-csp=\"/_gantry/csp-report\"".to_string(),
            hsts: "max-age=31536000; includeSubDomains".to_string(),
            frame_options: "DENY".to_string(),
            referrer_policy: "strict-origin-when-cross-origin".to_string(),
            permissions_policy: "camera=(), microphone=(), geolocation=()".to_string(),
            content_type_options: "nosniff".to_string(),
        }
    }
}

/// Token-bucket rate limit per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    #[schemars(range(min = 0.001))]
    pub requests_per_second: f64,
    /// Requests allowed in a burst above the sustained rate.
    #[serde(default = "default_burst")]
    #[schemars(range(min = 1))]
    pub burst: u32,
}

fn default_burst() -> u32 {
    50
}

/// Proxy timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Connecting to an instance.
    #[schemars(extend("maxDuration" = "1d"))]
    pub connect: Duration,
    /// Waiting for the app's response headers.
    #[schemars(extend("maxDuration" = "1d"))]
    pub response: Duration,
    /// An idle client connection is closed after this.
    #[schemars(extend("maxDuration" = "1d"))]
    pub idle: Duration,
    /// A client must send its request headers within this.
    #[schemars(extend("maxDuration" = "1d"))]
    pub header_read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(90),
            header_read: Duration::from_secs(10),
        }
    }
}

/// Maintenance mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Maintenance {
    /// Answer every request with 503 and `message`.
    pub enabled: bool,
    /// The page text shown during maintenance.
    pub message: String,
}

impl Default for Maintenance {
    fn default() -> Self {
        Maintenance {
            enabled: false,
            message: "This service is down for maintenance and will be back shortly.".to_string(),
        }
    }
}

// === [backup] ===

/// Scheduled backups, each verified by restoring it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// When to back up, as a cron schedule in UTC, e.g. "0 3 * * *".
    #[serde(default = "default_schedule")]
    #[schemars(schema_with = "crate::formats::cron_schema")]
    pub schedule: String,
    /// What to back up.
    #[schemars(length(min = 1))]
    pub targets: Vec<BackupTarget>,
    /// Where backups are stored.
    pub destination: BackupDestination,
    /// How many backups to keep (grandfather-father-son).
    #[serde(default)]
    pub retention: Retention,
    /// Restore every backup into a scratch location and check it.
    #[serde(default = "default_true")]
    pub verify: bool,
}

fn default_schedule() -> String {
    "0 3 * * *".to_string()
}

fn default_true() -> bool {
    true
}

/// Something to back up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackupTarget {
    /// A SQLite database, copied with the online backup API.
    Sqlite {
        /// Path of the database file.
        path: String,
    },
    /// A PostgreSQL database, dumped with `pg_dump`.
    Postgres {
        /// Secret holding the connection URL.
        url_secret: SecretName,
    },
    /// A directory tree.
    Files {
        /// The directory.
        path: String,
        /// Globs to leave out.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<String>,
    },
}

/// Where backups are stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackupDestination {
    /// A directory on this machine (ideally another disk).
    Local {
        /// The directory.
        path: String,
    },
    /// An S3-compatible object store.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prefix: Option<String>,
        /// Region.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        /// Endpoint URL for non-AWS stores.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// Secret holding the access key id.
        access_key_id_secret: SecretName,
        /// Secret holding the secret access key.
        secret_access_key_secret: SecretName,
    },
}

/// Backup retention, grandfather-father-son.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Daily backups kept.
    #[schemars(range(max = 3650))]
    pub daily: u32,
    /// Weekly backups kept.
    #[schemars(range(max = 520))]
    pub weekly: u32,
    /// Monthly backups kept.
    #[schemars(range(max = 1200))]
    pub monthly: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            daily: 7,
            weekly: 4,
            monthly: 6,
        }
    }
}

// === [[alerts]] ===

/// An alert rule: fires when `expr op threshold` holds for `for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRule {
    /// Name of the rule, unique in the spec.
    pub name: String,
    /// Expression over the built-in series, e.g. `error_rate` or `p99_latency_ms`.
    pub expr: String,
    /// Value the expression is compared with.
    pub threshold: f64,
    /// Comparison: `>`, `<`, `>=` or `<=`.
    #[serde(default)]
    pub op: CompareOp,
    /// How long the condition must hold before the alert fires.
    #[serde(rename = "for", default)]
    #[schemars(schema_with = "crate::duration::zero_allowed_schema")]
    #[schemars(extend("maxDuration" = "30d"))]
    pub for_: Duration,
    /// How urgent the alert is.
    #[serde(default)]
    pub severity: Severity,
    /// Labels attached to the alert, used for routing and grouping.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Names of `[notify.<name>]` channels to send to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
}

/// Comparison operator of an alert rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum CompareOp {
    /// Greater than.
    #[default]
    #[serde(rename = ">")]
    Gt,
    /// Less than.
    #[serde(rename = "<")]
    Lt,
    /// Greater than or equal.
    #[serde(rename = ">=")]
    Ge,
    /// Less than or equal.
    #[serde(rename = "<=")]
    Le,
}

/// Alert severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// For the record.
    Info,
    /// Needs attention soon.
    #[default]
    Warning,
    /// Needs attention now.
    Critical,
}

// === [notify.<name>] ===

/// A notification channel. Credentials are named secrets, never values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum NotifyChannel {
    /// A JSON POST to any URL, signed with HMAC-SHA256 when `signing_secret` is set.
    Webhook {
        /// The URL to POST to.
        url: String,
        /// Secret holding the HMAC key for the `X-Gantry-Signature` header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signing_secret: Option<SecretName>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// Secret holding the Slack webhook URL.
        url_secret: SecretName,
        /// Channel override, e.g. `#ops`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
    /// PagerDuty Events API v2.
    Pagerduty {
        /// Secret holding the integration's routing key.
        routing_key_secret: SecretName,
    },
    /// Email over SMTP.
    Email {
        /// SMTP server host.
        smtp_host: String,
        /// SMTP server port.
        #[serde(default = "default_smtp_port")]
        #[schemars(range(min = 1, max = 65535))]
        smtp_port: u16,
        /// Sender address.
        from: String,
        /// Recipient addresses.
        #[schemars(length(min = 1))]
        to: Vec<String>,
        /// SMTP user name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Secret holding the SMTP password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_secret: Option<SecretName>,
    },
    /// A Prometheus Alertmanager's v2 API.
    Alertmanager {
        /// Base URL of the Alertmanager, e.g. `http://127.0.0.1:9093`.
        url: String,
        /// Basic-auth user name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        /// Secret holding the basic-auth password.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_secret: Option<SecretName>,
    },
}

fn default_smtp_port() -> u16 {
    587
}

#[cfg(test)]
mod inherit_env_tests {
    const BASE: &str = "[app]\nname = \"hello\"\n\n[run]\ncommand = \"./hello-app\"\n";

    #[test]
    fn inherit_env_defaults_and_is_checked() {
        let spec = crate::parse_str("gantry.toml", BASE).unwrap();
        let resolved = spec.resolve("production").unwrap();
        assert_eq!(
            resolved.run.inherited_env(),
            super::DEFAULT_INHERIT_ENV.to_vec()
        );

        let text = format!("{BASE}inherit_env = [\"PATH\", \"VIRTUAL_ENV\", \"LC_*\"]\n");
        let spec = crate::parse_str("gantry.toml", &text).unwrap();
        let resolved = spec.resolve("production").unwrap();
        assert_eq!(
            resolved.run.inherited_env(),
            ["PATH", "VIRTUAL_ENV", "LC_*"]
        );

        let text = format!("{BASE}inherit_env = [\"PATH\", \"9LIVES\", \"A-B\", 3]\n");
        let err = crate::parse_str("gantry.toml", &text)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid variable name or pattern `9LIVES`"),
            "{err}"
        );
        assert!(err.contains("`A-B`"), "{err}");
        assert!(err.contains("run.inherit_env[3]"), "{err}");
        assert!(err.contains("gantry.toml:6:"), "{err}");
    }
}
