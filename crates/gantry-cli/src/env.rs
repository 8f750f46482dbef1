//! Every environment variable Gantry reads, documented once.

/// Data directory of the server (store, keys, socket). Default:
/// `$XDG_DATA_HOME/gantry`, else `~/.local/share/gantry`.
pub(crate) const DATA_DIR: &str = "GANTRY_DATA_DIR";
/// Where the CLI finds the server: `unix:/path` or `http://host:port`.
/// Default: the socket in the data directory.
pub(crate) const SERVER: &str = "GANTRY_SERVER";
/// Bearer token for the API (needed over TCP, or as another user).
pub(crate) const TOKEN: &str = "GANTRY_TOKEN";
/// The age identity that encrypts secrets, instead of the key file in the
/// data directory.
pub(crate) const SECRET_KEY: &str = "GANTRY_SECRET_KEY";
/// Log filter for `gantry server` (tracing's env-filter syntax), default `info`.
pub(crate) const LOG: &str = "GANTRY_LOG";

/// The default data directory when neither `--data-dir` nor GANTRY_DATA_DIR is set.
pub(crate) fn default_data_dir() -> std::path::PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return std::path::PathBuf::from(x).join("gantry");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(h) => std::path::PathBuf::from(h).join(".local/share/gantry"),
        None => std::path::PathBuf::from("/var/lib/gantry"),
    }
}
