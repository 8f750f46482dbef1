//! What every command needs: where the server is, the token, the output mode.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gantry_api::{Client, ClientError, Endpoint};

use crate::Cli;

pub(crate) struct Ctx {
    pub(crate) data_dir: PathBuf,
    server: Option<String>,
    token: Option<String>,
    pub(crate) json: bool,
}

impl Ctx {
    pub(crate) fn new(cli: &Cli) -> Self {
        Self {
            data_dir: cli
                .data_dir
                .clone()
                .unwrap_or_else(crate::env::default_data_dir),
            server: cli.server.clone(),
            token: cli.token.clone(),
            json: cli.json,
        }
    }

    /// The API client for the configured server.
    pub(crate) fn client(&self) -> anyhow::Result<Client> {
        let endpoint = match &self.server {
            Some(s) => s
                .parse::<Endpoint>()
                .map_err(|e| anyhow::anyhow!("--server: {e}"))?,
            None => Endpoint::Unix(self.data_dir.join(gantry_server::SOCKET_FILE)),
        };
        Ok(Client::new(endpoint, self.token.clone()))
    }
}

/// Runs an async block on a small runtime (the CLI does one thing at a time).
pub(crate) fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime always builds")
        .block_on(f)
}

/// The app a command acts on: `--app`, else `[app] name` of the gantry.toml
/// in the current directory.
pub(crate) fn resolve_app(app: Option<String>, file: &Path) -> anyhow::Result<String> {
    if let Some(a) = app {
        return Ok(a);
    }
    if !file.exists() {
        bail!(
            "no --app given and no {} here to read the app name from; pass --app NAME or run \
             in the app's directory",
            file.display()
        );
    }
    let spec = gantry_spec::load(file).map_err(|d| {
        anyhow::anyhow!("{d}\n(the app name is read from this file; fix it or pass --app NAME)")
    })?;
    Ok(spec.app_name().to_string())
}

/// Maps an error to the documented exit code.
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Connect { .. }) => 3,
        Some(ClientError::Api {
            status: 401 | 403, ..
        }) => 4,
        _ => 1,
    }
}

/// Reads a file with its name in the error.
pub(crate) fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}
