//! Deploys and the per-environment deploy lease.
//!
//! A deploy row holds the rollout plan and the state machine's state as
//! JSON (the rollout crate owns their shape); the executor saves the state
//! *before* acting on a transition. `deploy_events` is the timeline.
//!
//! The lease makes deploys to one environment exclusive. It expires, so a
//! deployer that crashed does not block the environment forever; the holder
//! renews it while working.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::{Result, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub release: i64,
    pub previous_release: Option<i64>,
    pub actor: String,
    /// JSON of the rollout plan.
    pub plan: String,
    /// JSON of the state machine's state.
    pub state: String,
    pub phase: String,
    pub outcome: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    /// The environment's config version the deploy ran with (none for
    /// deploys recorded before this was kept).
    pub config_version: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployEvent {
    pub at: i64,
    pub phase: String,
    pub message: String,
}

/// Who holds an environment's deploy lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub deploy_id: Option<i64>,
    pub acquired_at: i64,
    pub expires_at: i64,
}

const COLUMNS: &str = "id, app, env, release, previous_release, actor, plan, state, phase, outcome, created_at, finished_at, config_version";

fn deploy(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeployRecord> {
    Ok(DeployRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        env: r.get(2)?,
        release: r.get(3)?,
        previous_release: r.get(4)?,
        actor: r.get(5)?,
        plan: r.get(6)?,
        state: r.get(7)?,
        phase: r.get(8)?,
        outcome: r.get(9)?,
        created_at: r.get(10)?,
        finished_at: r.get(11)?,
        config_version: r.get(12)?,
    })
}

impl Store {
    /// Takes the deploy lease of `app`/`env` for `ttl_ms`, unless someone
    /// else holds an unexpired one: then returns theirs as the error value.
    pub fn acquire_lease(
        &self,
        app: &str,
        env: &str,
        holder: &str,
        deploy_id: Option<i64>,
        ttl_ms: i64,
        now: i64,
    ) -> Result<std::result::Result<Lease, Lease>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current = tx
            .query_row(
                "SELECT holder, deploy_id, acquired_at, expires_at FROM env_leases WHERE app=?1 AND env=?2",
                params![app, env],
                |r| {
                    Ok(Lease {
                        holder: r.get(0)?,
                        deploy_id: r.get(1)?,
                        acquired_at: r.get(2)?,
                        expires_at: r.get(3)?,
                    })
                },
            )
            .optional()?;
        if let Some(l) = current.filter(|l| l.expires_at > now && l.holder != holder) {
            return Ok(Err(l));
        }
        let lease = Lease {
            holder: holder.into(),
            deploy_id,
            acquired_at: now,
            expires_at: now + ttl_ms,
        };
        tx.execute(
            "INSERT INTO env_leases (app, env, holder, deploy_id, acquired_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (app, env) DO UPDATE SET holder=excluded.holder,
                deploy_id=excluded.deploy_id, acquired_at=excluded.acquired_at,
                expires_at=excluded.expires_at",
            params![
                app,
                env,
                lease.holder,
                lease.deploy_id,
                lease.acquired_at,
                lease.expires_at
            ],
        )?;
        tx.commit()?;
        Ok(Ok(lease))
    }

    /// Extends a held lease; an error if `holder` no longer holds it.
    pub fn renew_lease(
        &self,
        app: &str,
        env: &str,
        holder: &str,
        ttl_ms: i64,
        now: i64,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE env_leases SET expires_at=?4 WHERE app=?1 AND env=?2 AND holder=?3",
            params![app, env, holder, now + ttl_ms],
        )?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "the deploy lease of {app}/{env} is no longer held by {holder}"
            )));
        }
        Ok(())
    }

    pub fn release_lease(&self, app: &str, env: &str, holder: &str) -> Result<()> {
        self.conn().execute(
            "DELETE FROM env_leases WHERE app=?1 AND env=?2 AND holder=?3",
            params![app, env, holder],
        )?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create_deploy(
        &self,
        app: &str,
        env: &str,
        release: i64,
        previous_release: Option<i64>,
        config_version: i64,
        actor: &str,
        plan: &str,
        state: &str,
        phase: &str,
    ) -> Result<DeployRecord> {
        let conn = self.conn();
        let now = crate::now_ms();
        conn.execute(
            "INSERT INTO deploys (app, env, release, previous_release, config_version, actor, plan, state, phase, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![app, env, release, previous_release, config_version, actor, plan, state, phase, now],
        )?;
        let id = conn.last_insert_rowid();
        Ok(conn.query_row(
            &format!("SELECT {COLUMNS} FROM deploys WHERE id=?1"),
            [id],
            deploy,
        )?)
    }

    /// Saves the state machine's new state (before its actions run), and
    /// the timeline lines of this transition, in one transaction. A final
    /// state (with an outcome) also frees the environment's lease held by
    /// `holder`, in the same transaction, so nobody sees a finished deploy
    /// that still holds the lease.
    pub fn save_deploy(
        &self,
        id: i64,
        state: &str,
        phase: &str,
        outcome: Option<&str>,
        events: &[(i64, String)],
    ) -> Result<()> {
        self.save_deploy_as(id, state, phase, outcome, events, None)
    }

    /// [`Store::save_deploy`], freeing `holder`'s lease when `outcome` is set.
    pub fn save_deploy_as(
        &self,
        id: i64,
        state: &str,
        phase: &str,
        outcome: Option<&str>,
        events: &[(i64, String)],
        holder: Option<&str>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let (Some(_), Some(h)) = (outcome, holder) {
            tx.execute(
                "DELETE FROM env_leases WHERE holder=?1 AND (app, env) IN (SELECT app, env FROM deploys WHERE id=?2)",
                params![h, id],
            )?;
        }
        let finished = outcome.map(|_| crate::now_ms());
        let n = tx.execute(
            "UPDATE deploys SET state=?2, phase=?3, outcome=?4, finished_at=coalesce(finished_at, ?5) WHERE id=?1",
            params![id, state, phase, outcome, finished],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("no deploy {id}")));
        }
        for (at, message) in events {
            tx.execute(
                "INSERT INTO deploy_events (deploy_id, at, phase, message) VALUES (?1, ?2, ?3, ?4)",
                params![id, at, phase, message],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Appends one line to a deploy's timeline.
    pub fn add_deploy_event(&self, id: i64, at: i64, phase: &str, message: &str) -> Result<()> {
        self.conn().execute(
            "INSERT INTO deploy_events (deploy_id, at, phase, message) VALUES (?1, ?2, ?3, ?4)",
            params![id, at, phase, message],
        )?;
        Ok(())
    }

    pub fn deploy(&self, id: i64) -> Result<DeployRecord> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM deploys WHERE id=?1"),
                [id],
                deploy,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("no deploy {id}; see `gantry deploys`")))
    }

    /// Deploys, newest first; of one app environment if given.
    pub fn deploys(
        &self,
        app_env: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<DeployRecord>> {
        let conn = self.conn();
        let rows = match app_env {
            Some((a, e)) => conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM deploys WHERE app=?1 AND env=?2 ORDER BY id DESC LIMIT ?3"
                ))?
                .query_map(params![a, e, limit as i64], deploy)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
            None => conn
                .prepare(&format!("SELECT {COLUMNS} FROM deploys ORDER BY id DESC LIMIT ?1"))?
                .query_map([limit as i64], deploy)?
                .collect::<rusqlite::Result<Vec<_>>>()?,
        };
        Ok(rows)
    }

    /// Deploys that have not finished (to resume after a restart).
    pub fn unfinished_deploys(&self) -> Result<Vec<DeployRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM deploys WHERE outcome IS NULL ORDER BY id"
        ))?;
        let rows = stmt.query_map([], deploy)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn deploy_events(&self, id: i64) -> Result<Vec<DeployEvent>> {
        Ok(self
            .deploy_events_from(id, id)?
            .into_iter()
            .map(|(_, e)| e)
            .collect())
    }

    /// The timelines of deploys `first..=last` in one query, as
    /// (deploy id, event), by deploy then time.
    pub fn deploy_events_from(&self, first: i64, last: i64) -> Result<Vec<(i64, DeployEvent)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT deploy_id, at, phase, message FROM deploy_events
             WHERE deploy_id BETWEEN ?1 AND ?2 ORDER BY deploy_id, at, rowid",
        )?;
        let rows = stmt.query_map([first, last], |r| {
            Ok((
                r.get(0)?,
                DeployEvent {
                    at: r.get(1)?,
                    phase: r.get(2)?,
                    message: r.get(3)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_is_exclusive_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s
            .acquire_lease("hello", "prod", "alice", Some(1), 1000, 0)
            .unwrap()
            .unwrap();
        assert_eq!(a.expires_at, 1000);
        // Bob is refused with Alice's lease in hand.
        let held = s
            .acquire_lease("hello", "prod", "bob", Some(2), 1000, 500)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (held.holder.as_str(), held.deploy_id, held.acquired_at),
            ("alice", Some(1), 0)
        );
        // Other environments are independent.
        assert!(
            s.acquire_lease("hello", "staging", "bob", None, 1000, 500)
                .unwrap()
                .is_ok()
        );
        // Renewed, Alice keeps it past the first expiry.
        s.renew_lease("hello", "prod", "alice", 1000, 900).unwrap();
        assert!(
            s.acquire_lease("hello", "prod", "bob", None, 1000, 1500)
                .unwrap()
                .is_err()
        );
        // A crashed holder's lease expires.
        assert!(
            s.acquire_lease("hello", "prod", "bob", Some(3), 1000, 1901)
                .unwrap()
                .is_ok()
        );
        assert!(s.renew_lease("hello", "prod", "alice", 1000, 2000).is_err());
        s.release_lease("hello", "prod", "bob").unwrap();
        assert!(
            s.acquire_lease("hello", "prod", "carol", None, 1000, 2000)
                .unwrap()
                .is_ok()
        );
    }

    #[test]
    fn deploys_states_and_timelines() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = s
            .create_deploy(
                "hello",
                "prod",
                2,
                Some(1),
                7,
                "alice",
                "{}",
                "{\"p\":0}",
                "pending",
            )
            .unwrap();
        assert_eq!(s.unfinished_deploys().unwrap().len(), 1);
        assert_eq!(d.config_version, Some(7));
        s.save_deploy(d.id, "{\"p\":1}", "build", None, &[(10, "build".into())])
            .unwrap();
        s.save_deploy(
            d.id,
            "{\"p\":2}",
            "done",
            Some("succeeded"),
            &[(20, "done: deployed".into())],
        )
        .unwrap();
        let got = s.deploy(d.id).unwrap();
        assert_eq!(
            (
                got.phase.as_str(),
                got.outcome.as_deref(),
                got.state.as_str()
            ),
            ("done", Some("succeeded"), "{\"p\":2}")
        );
        assert!(got.finished_at.is_some());
        assert!(s.unfinished_deploys().unwrap().is_empty());
        let ev = s.deploy_events(d.id).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["build", "done: deployed"]
        );
        assert_eq!(s.deploys(Some(("hello", "prod")), 10).unwrap().len(), 1);
        assert!(
            s.deploys(Some(("hello", "staging")), 10)
                .unwrap()
                .is_empty()
        );
        assert!(s.save_deploy(99, "{}", "x", None, &[]).is_err());
    }
}
