//! Deploys and the per-environment deploy lease.
//!
//! A deploy row holds the rollout plan and the state machine's state as
//! JSON (the rollout crate owns their shape); the executor saves the state
//! *before* acting on a transition. `deploy_events` is the timeline.
//!
//! The lease makes deploys to one environment exclusive. Its identity is
//! the deploy id, never a name two deploys could share: a deploy is
//! recorded and takes the lease in one transaction ([`Store::begin_deploy`]),
//! so two deploys started at once (by the same actor, of the same release)
//! cannot both hold it. It expires, so a deployer that crashed does not
//! block the environment forever; the holder renews it while working, and
//! may renew an expired lease as long as nobody else took it.

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
    /// The backend set it starts: `r<release>`, or `r<release>-<id>` when
    /// a set of that release already ran (none for older deploys, whose
    /// set was always `r<release>`).
    pub new_set: Option<String>,
    /// The set it replaces, if one served.
    pub old_set: Option<String>,
}

impl DeployRecord {
    /// The name of the set this deploy starts.
    pub fn new_set_name(&self) -> String {
        self.new_set
            .clone()
            .unwrap_or_else(|| format!("r{}", self.release))
    }

    /// The name of the set it replaces (older rows: the previous release's).
    pub fn old_set_name(&self) -> Option<String> {
        self.old_set
            .clone()
            .or_else(|| self.previous_release.map(|r| format!("r{r}")))
    }
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
    /// Who started the holding deploy.
    pub holder: String,
    pub deploy_id: Option<i64>,
    /// The release the holding deploy ships, and its phase now.
    pub release: Option<i64>,
    pub phase: Option<String>,
    pub acquired_at: i64,
    pub expires_at: i64,
}

/// A deploy to record (see [`Store::begin_deploy`]).
#[derive(Debug, Clone)]
pub struct NewDeploy<'a> {
    pub app: &'a str,
    pub env: &'a str,
    pub release: i64,
    pub previous_release: Option<i64>,
    pub config_version: i64,
    pub actor: &'a str,
    pub plan: &'a str,
    pub state: &'a str,
    pub phase: &'a str,
    /// The set it starts; `None` names it `r<release>`, or `r<release>-<id>`
    /// when `taken` holds that name.
    pub taken: &'a [String],
    pub old_set: Option<&'a str>,
}

const COLUMNS: &str = "id, app, env, release, previous_release, actor, plan, state, phase, outcome, created_at, finished_at, config_version, new_set, old_set";

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
        new_set: r.get(13)?,
        old_set: r.get(14)?,
    })
}

fn current_lease(conn: &rusqlite::Connection, app: &str, env: &str) -> Result<Option<Lease>> {
    Ok(conn
        .query_row(
            "SELECT l.holder, l.deploy_id, d.release, d.phase, l.acquired_at, l.expires_at
             FROM env_leases l LEFT JOIN deploys d ON d.id = l.deploy_id
             WHERE l.app=?1 AND l.env=?2",
            params![app, env],
            |r| {
                Ok(Lease {
                    holder: r.get(0)?,
                    deploy_id: r.get(1)?,
                    release: r.get(2)?,
                    phase: r.get(3)?,
                    acquired_at: r.get(4)?,
                    expires_at: r.get(5)?,
                })
            },
        )
        .optional()?)
}

impl Store {
    /// Records a deploy and takes its environment's lease for `ttl_ms`, in
    /// one transaction, unless another deploy holds an unexpired lease:
    /// then nothing is recorded and the holder's lease is the error value.
    pub fn begin_deploy(
        &self,
        d: &NewDeploy<'_>,
        ttl_ms: i64,
        now: i64,
    ) -> Result<std::result::Result<DeployRecord, Lease>> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(l) = current_lease(&tx, d.app, d.env)?.filter(|l| l.expires_at > now) {
            return Ok(Err(l));
        }
        tx.execute(
            "INSERT INTO deploys (app, env, release, previous_release, config_version, actor, plan, state, phase, created_at, old_set)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                d.app,
                d.env,
                d.release,
                d.previous_release,
                d.config_version,
                d.actor,
                d.plan,
                d.state,
                d.phase,
                now,
                d.old_set
            ],
        )?;
        let id = tx.last_insert_rowid();
        let plain = format!("r{}", d.release);
        let new_set = if d.taken.contains(&plain) {
            format!("r{}-{id}", d.release)
        } else {
            plain
        };
        tx.execute(
            "UPDATE deploys SET new_set=?2 WHERE id=?1",
            params![id, new_set],
        )?;
        tx.execute(
            "INSERT INTO env_leases (app, env, holder, deploy_id, acquired_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (app, env) DO UPDATE SET holder=excluded.holder,
                deploy_id=excluded.deploy_id, acquired_at=excluded.acquired_at,
                expires_at=excluded.expires_at",
            params![d.app, d.env, d.actor, id, now, now + ttl_ms],
        )?;
        let rec = tx.query_row(
            &format!("SELECT {COLUMNS} FROM deploys WHERE id=?1"),
            [id],
            deploy,
        )?;
        tx.commit()?;
        Ok(Ok(rec))
    }

    /// Who holds the deploy lease of `app`/`env`, expired or not.
    pub fn lease(&self, app: &str, env: &str) -> Result<Option<Lease>> {
        current_lease(&self.conn(), app, env)
    }

    /// Extends deploy `deploy_id`'s lease to `now + ttl_ms`. It may have
    /// expired meanwhile; it is still ours as long as nobody else took it.
    /// A `Conflict` error when another deploy holds it, or nobody does.
    pub fn renew_lease(
        &self,
        app: &str,
        env: &str,
        deploy_id: i64,
        ttl_ms: i64,
        now: i64,
    ) -> Result<()> {
        let n = self.conn().execute(
            "UPDATE env_leases SET expires_at=?4 WHERE app=?1 AND env=?2 AND deploy_id=?3",
            params![app, env, deploy_id, now + ttl_ms],
        )?;
        if n == 0 {
            let who = self.lease(app, env)?.map_or_else(
                || "nobody holds it".to_string(),
                |l| {
                    format!(
                        "deploy {} by {} holds it",
                        l.deploy_id.map_or("?".into(), |d| d.to_string()),
                        l.holder
                    )
                },
            );
            return Err(StoreError::Conflict(format!(
                "deploy {deploy_id} no longer holds the deploy lease of {app}/{env}: {who}"
            )));
        }
        Ok(())
    }

    /// Takes the lease for an unfinished deploy resumed after a restart of
    /// the control plane (which held it), whoever's name is on it.
    pub fn take_over_lease(
        &self,
        app: &str,
        env: &str,
        deploy_id: i64,
        actor: &str,
        ttl_ms: i64,
        now: i64,
    ) -> Result<()> {
        self.conn().execute(
            "INSERT INTO env_leases (app, env, holder, deploy_id, acquired_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (app, env) DO UPDATE SET holder=excluded.holder,
                deploy_id=excluded.deploy_id, acquired_at=excluded.acquired_at,
                expires_at=excluded.expires_at",
            params![app, env, actor, deploy_id, now, now + ttl_ms],
        )?;
        Ok(())
    }

    /// Frees deploy `deploy_id`'s lease (nothing if it holds none).
    pub fn release_lease(&self, app: &str, env: &str, deploy_id: i64) -> Result<()> {
        self.conn().execute(
            "DELETE FROM env_leases WHERE app=?1 AND env=?2 AND deploy_id=?3",
            params![app, env, deploy_id],
        )?;
        Ok(())
    }

    /// Records a deploy without a lease (tests and imports).
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
    /// state (with an outcome) also frees the deploy's lease in the same
    /// transaction, so nobody sees a finished deploy that still holds it.
    pub fn save_deploy(
        &self,
        id: i64,
        state: &str,
        phase: &str,
        outcome: Option<&str>,
        events: &[(i64, String)],
    ) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if outcome.is_some() {
            tx.execute(
                "DELETE FROM env_leases WHERE deploy_id=?1 AND (app, env) IN (SELECT app, env FROM deploys WHERE id=?1)",
                params![id],
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

    fn new<'a>(release: i64, actor: &'a str, taken: &'a [String]) -> NewDeploy<'a> {
        NewDeploy {
            app: "hello",
            env: "prod",
            release,
            previous_release: None,
            config_version: 1,
            actor,
            plan: "{}",
            state: "{}",
            phase: "pending",
            taken,
            old_set: None,
        }
    }

    #[test]
    fn the_lease_belongs_to_one_deploy_until_it_expires_or_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let a = s
            .begin_deploy(&new(4, "alice", &[]), 1000, 0)
            .unwrap()
            .unwrap();
        assert_eq!(a.new_set_name(), "r4");
        // The same actor deploying the same release is refused too, with
        // the holder's deploy, release and phase; nothing is recorded.
        let held = s
            .begin_deploy(&new(4, "alice", &[]), 1000, 500)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (
                held.holder.as_str(),
                held.deploy_id,
                held.release,
                held.phase.as_deref(),
                held.acquired_at
            ),
            ("alice", Some(a.id), Some(4), Some("pending"), 0)
        );
        assert_eq!(s.deploys(None, 10).unwrap().len(), 1);
        // Other environments are independent.
        let mut staging = new(4, "bob", &[]);
        staging.env = "staging";
        assert!(s.begin_deploy(&staging, 1000, 500).unwrap().is_ok());
        // Renewed, the deploy keeps it past the first expiry; renewing is
        // by deploy id, so another deploy cannot renew it.
        s.renew_lease("hello", "prod", a.id, 1000, 900).unwrap();
        assert!(
            s.renew_lease("hello", "prod", a.id + 100, 1000, 900)
                .is_err()
        );
        assert!(
            s.begin_deploy(&new(5, "bob", &[]), 1000, 1500)
                .unwrap()
                .is_err()
        );
        // Expired but not taken: still ours to renew.
        s.renew_lease("hello", "prod", a.id, 1000, 2500).unwrap();
        // A crashed holder's lease expires, and another deploy takes it;
        // the old holder's renewal then fails and says who holds it.
        let b = s
            .begin_deploy(&new(5, "bob", &[]), 1000, 3501)
            .unwrap()
            .unwrap();
        let lost = s
            .renew_lease("hello", "prod", a.id, 1000, 3600)
            .unwrap_err();
        assert!(
            lost.to_string()
                .contains(&format!("deploy {} by bob holds it", b.id)),
            "{lost}"
        );
        // Releasing someone else's lease does nothing; the holder's frees it.
        s.release_lease("hello", "prod", a.id).unwrap();
        assert_eq!(
            s.lease("hello", "prod").unwrap().unwrap().deploy_id,
            Some(b.id)
        );
        s.release_lease("hello", "prod", b.id).unwrap();
        assert!(s.lease("hello", "prod").unwrap().is_none());
        assert!(
            s.begin_deploy(&new(6, "carol", &[]), 1000, 3700)
                .unwrap()
                .is_ok()
        );
    }

    #[test]
    fn a_redeploy_of_a_running_set_gets_a_set_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let taken = vec!["r4".to_string()];
        let mut d = new(4, "alice", &taken);
        d.old_set = Some("r4");
        let rec = s.begin_deploy(&d, 1000, 0).unwrap().unwrap();
        assert_eq!(rec.new_set_name(), format!("r4-{}", rec.id));
        assert_eq!(rec.old_set_name().as_deref(), Some("r4"));
        // A final save frees the lease in the same transaction.
        s.save_deploy(rec.id, "{}", "done", Some("succeeded"), &[])
            .unwrap();
        assert!(s.lease("hello", "prod").unwrap().is_none());
        // Older rows (no set names stored) fall back to `r<release>`.
        let old = s
            .create_deploy("hello", "prod", 7, Some(6), 1, "a", "{}", "{}", "done")
            .unwrap();
        assert_eq!(
            (old.new_set_name().as_str(), old.old_set_name().as_deref()),
            ("r7", Some("r6"))
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
