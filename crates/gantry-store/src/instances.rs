//! Runtime state: the instances the control plane supervises (so a new
//! control plane can adopt them), their events, and usage samples.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::{Result, Store};

/// An instance the control plane is responsible for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub id: String,
    pub app: String,
    pub env: String,
    pub set_name: String,
    pub idx: i64,
    pub port: u16,
    /// The runtime's instance spec, as JSON.
    pub spec: String,
    pub created_at: i64,
}

/// A runtime event, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub at: i64,
    pub app: String,
    pub env: String,
    pub instance: String,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageSample {
    pub instance: String,
    pub at: i64,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<i64>,
}

fn instance(r: &rusqlite::Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        id: r.get(0)?,
        app: r.get(1)?,
        env: r.get(2)?,
        set_name: r.get(3)?,
        idx: r.get(4)?,
        port: r.get(5)?,
        spec: r.get(6)?,
        created_at: r.get(7)?,
    })
}

const COLUMNS: &str = "id, app, env, set_name, idx, port, spec, created_at";

impl Store {
    /// Records instances (all or none), before they are started.
    pub fn add_instances(&self, records: &[InstanceRecord]) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for r in records {
            tx.execute(
                &format!("INSERT INTO instances ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8)"),
                params![
                    r.id,
                    r.app,
                    r.env,
                    r.set_name,
                    r.idx,
                    r.port,
                    r.spec,
                    r.created_at
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets the given instances (after they stopped).
    pub fn remove_instance_ids(&self, ids: &[String]) -> Result<usize> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut n = 0;
        for id in ids {
            n += tx.execute("DELETE FROM instances WHERE id=?1", [id])?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Every recorded instance, or those of one app environment.
    pub fn instances(&self, app_env: Option<(&str, &str)>) -> Result<Vec<InstanceRecord>> {
        let conn = self.conn();
        let rows = match app_env {
            Some((app, env)) => {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM instances WHERE app=?1 AND env=?2 ORDER BY set_name, idx"
                ))?;
                stmt.query_map(params![app, env], instance)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut stmt = conn.prepare(&format!(
                    "SELECT {COLUMNS} FROM instances ORDER BY app, env, set_name, idx"
                ))?;
                stmt.query_map([], instance)?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        Ok(rows)
    }

    pub fn append_event(
        &self,
        at: i64,
        app: &str,
        env: &str,
        instance: &str,
        kind: &str,
        message: &str,
    ) -> Result<i64> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO events (at, app, env, instance, kind, message) VALUES (?1,?2,?3,?4,?5,?6)",
            params![at, app, env, instance, kind, message],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The newest `limit` events of an app environment, oldest first.
    pub fn events(&self, app: &str, env: &str, limit: usize) -> Result<Vec<EventRecord>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at, app, env, instance, kind, message FROM events
             WHERE app=?1 AND env=?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let mut rows = stmt
            .query_map(params![app, env, limit as i64], |r| {
                Ok(EventRecord {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    app: r.get(2)?,
                    env: r.get(3)?,
                    instance: r.get(4)?,
                    kind: r.get(5)?,
                    message: r.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// Stores usage samples and drops those older than `keep_ms`.
    pub fn record_usage(&self, samples: &[UsageSample], keep_ms: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for s in samples {
            tx.execute(
                "INSERT INTO usage_samples (instance, at, cpu_percent, rss_bytes) VALUES (?1,?2,?3,?4)",
                params![s.instance, s.at, s.cpu_percent, s.rss_bytes],
            )?;
        }
        tx.execute(
            "DELETE FROM usage_samples WHERE at < ?1",
            [crate::now_ms() - keep_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Usage samples of one instance since `since` (ms), oldest first.
    pub fn usage(&self, instance: &str, since: i64) -> Result<Vec<UsageSample>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT instance, at, cpu_percent, rss_bytes FROM usage_samples
             WHERE instance=?1 AND at >= ?2 ORDER BY at",
        )?;
        let rows = stmt.query_map(params![instance, since], |r| {
            Ok(UsageSample {
                instance: r.get(0)?,
                at: r.get(1)?,
                cpu_percent: r.get(2)?,
                rss_bytes: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, env: &str, port: u16) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            app: "hello".into(),
            env: env.into(),
            set_name: "main".into(),
            idx: 0,
            port,
            spec: "{}".into(),
            created_at: 1,
        }
    }

    #[test]
    fn instances_events_and_usage() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .add_instances(&[rec("a", "prod", 20001), rec("b", "staging", 20002)])
            .unwrap();
        // A port is never recorded twice: all or nothing.
        assert!(
            store
                .add_instances(&[rec("c", "prod", 20003), rec("d", "prod", 20001)])
                .is_err()
        );
        assert_eq!(store.instances(None).unwrap().len(), 2);
        assert_eq!(store.instances(Some(("hello", "prod"))).unwrap()[0].id, "a");
        assert_eq!(store.remove_instance_ids(&["a".to_string()]).unwrap(), 1);
        assert!(store.instances(Some(("hello", "prod"))).unwrap().is_empty());

        for i in 0..5 {
            store
                .append_event(i, "hello", "prod", "a", "started", &format!("e{i}"))
                .unwrap();
        }
        let ev = store.events("hello", "prod", 2).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["e3", "e4"]
        );

        let now = crate::now_ms();
        let s = |at| UsageSample {
            instance: "a".into(),
            at,
            cpu_percent: Some(1.5),
            rss_bytes: Some(1000),
        };
        store
            .record_usage(&[s(now - 10_000), s(now)], 5_000)
            .unwrap();
        assert_eq!(store.usage("a", 0).unwrap(), vec![s(now)]);
    }
}
