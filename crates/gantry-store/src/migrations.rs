//! Versioned schema migrations, applied in order at open.
//!
//! The schema version lives in SQLite's `user_version`. Migrations are only
//! ever appended to [`MIGRATIONS`]; an applied one is never edited.

use std::path::Path;

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

use crate::{Result, StoreError};

/// Each entry moves the schema one version up.
const MIGRATIONS: &[&str] = &[
    // 1: config versions, secrets, tokens, audit log.
    "CREATE TABLE config_versions (
        id          INTEGER PRIMARY KEY,
        app         TEXT NOT NULL,
        env         TEXT NOT NULL,
        version     INTEGER NOT NULL,
        author      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        hash        TEXT NOT NULL,
        file_name   TEXT NOT NULL,
        source      TEXT NOT NULL,
        note        TEXT NOT NULL DEFAULT '',
        UNIQUE (app, env, version)
    );
    CREATE TABLE secrets (
        app         TEXT NOT NULL,
        env         TEXT NOT NULL,
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        ciphertext  BLOB NOT NULL,
        updated_at  INTEGER NOT NULL,
        updated_by  TEXT NOT NULL,
        PRIMARY KEY (app, env, name)
    );
    CREATE TABLE tokens (
        id          TEXT PRIMARY KEY,
        hash        TEXT NOT NULL UNIQUE,
        role        TEXT NOT NULL,
        env         TEXT,
        description TEXT NOT NULL DEFAULT '',
        created_at  INTEGER NOT NULL,
        created_by  TEXT NOT NULL,
        expires_at  INTEGER,
        revoked_at  INTEGER,
        last_used_at INTEGER
    );
    CREATE TABLE audit_log (
        seq         INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        action      TEXT NOT NULL,
        target      TEXT NOT NULL,
        params      TEXT NOT NULL,
        outcome     TEXT NOT NULL,
        prev_hash   TEXT NOT NULL,
        hash        TEXT NOT NULL
    );
    CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
    CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
        BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;",
    // 2: runtime instances (for adoption), their events and usage samples.
    "CREATE TABLE instances (
        id          TEXT PRIMARY KEY,
        app         TEXT NOT NULL,
        env         TEXT NOT NULL,
        set_name    TEXT NOT NULL,
        idx         INTEGER NOT NULL,
        port        INTEGER NOT NULL UNIQUE,
        spec        TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX instances_app_env ON instances (app, env);
    CREATE TABLE events (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        app         TEXT NOT NULL,
        env         TEXT NOT NULL,
        instance    TEXT NOT NULL,
        kind        TEXT NOT NULL,
        message     TEXT NOT NULL
    );
    CREATE INDEX events_app_env_at ON events (app, env, at);
    CREATE TABLE usage_samples (
        instance    TEXT NOT NULL,
        at          INTEGER NOT NULL,
        cpu_percent REAL,
        rss_bytes   INTEGER
    );
    CREATE INDEX usage_instance_at ON usage_samples (instance, at);",
    // 3: releases (built artifacts, content-addressed) and deploys.
    "CREATE TABLE releases (
        app         TEXT NOT NULL,
        number      INTEGER NOT NULL,
        digest      TEXT NOT NULL,
        source_commit TEXT,
        author      TEXT NOT NULL,
        created_at  INTEGER NOT NULL,
        build_log   TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (app, number)
    );
    CREATE INDEX releases_digest ON releases (app, digest);",
    // 4: deploys, their timelines, and the per-environment deploy lease.
    "CREATE TABLE deploys (
        id          INTEGER PRIMARY KEY,
        app         TEXT NOT NULL,
        env         TEXT NOT NULL,
        release     INTEGER NOT NULL,
        previous_release INTEGER,
        actor       TEXT NOT NULL,
        plan        TEXT NOT NULL,
        state       TEXT NOT NULL,
        phase       TEXT NOT NULL,
        outcome     TEXT,
        created_at  INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX deploys_app_env ON deploys (app, env, id);
    CREATE TABLE deploy_events (
        deploy_id   INTEGER NOT NULL REFERENCES deploys (id),
        at          INTEGER NOT NULL,
        phase       TEXT NOT NULL,
        message     TEXT NOT NULL
    );
    CREATE INDEX deploy_events_deploy ON deploy_events (deploy_id, at);
    CREATE TABLE env_leases (
        app         TEXT NOT NULL,
        env         TEXT NOT NULL,
        holder      TEXT NOT NULL,
        deploy_id   INTEGER,
        acquired_at INTEGER NOT NULL,
        expires_at  INTEGER NOT NULL,
        PRIMARY KEY (app, env)
    );",
    // 5: the config version each deploy ran with (a rollback restores it).
    "ALTER TABLE deploys ADD COLUMN config_version INTEGER;",
    // 6: the backend sets a deploy starts and retires, by name (a redeploy
    // of the serving release runs as a set of its own, `r<N>-<deploy>`).
    "ALTER TABLE deploys ADD COLUMN new_set TEXT;
     ALTER TABLE deploys ADD COLUMN old_set TEXT;",
];

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(crate) fn apply(conn: &mut Connection, path: &Path) -> Result<()> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
    migrations
        .to_latest(conn)
        .map_err(|e| StoreError::Migration(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_valid() {
        let migrations = Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect());
        migrations.validate().unwrap();
    }
}
