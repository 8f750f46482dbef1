//! Every API endpoint × every kind of caller, over real TCP: missing or bad
//! tokens get 401, a role or environment the caller lacks gets 403, and
//! everything else reaches the handler. Every mutating call, allowed or not,
//! lands in the audit log.

mod support;

use gantry_api::{Client, Endpoint, Method, TokenCreated};
use serde_json::{Value, json};
use support::TestServer;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scope {
    /// Needs an unscoped token.
    Global,
    /// Has `{env}` = production in its path.
    Env,
    /// Any authenticated caller.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Role {
    Viewer,
    Deployer,
    Admin,
}

struct Endpoint_ {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    role: Role,
    scope: Scope,
}

const ENV: &str = "/api/v1/apps/hello/envs/production";

fn endpoints(source: &str) -> Vec<Endpoint_> {
    let e = |method: Method, path: &'static str, body: Option<Value>, role, scope| Endpoint_ {
        method,
        path,
        body,
        role,
        scope,
    };
    use Role::*;
    use Scope::*;
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    vec![
        e(Method::GET, "/api/v1/whoami", None, Viewer, Any),
        e(Method::GET, "/api/v1/apps", None, Viewer, Global),
        e(
            Method::GET,
            leak(format!("{ENV}/config")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::PUT,
            leak(format!("{ENV}/config")),
            Some(json!({"file_name": "gantry.toml", "source": source})),
            Deployer,
            Env,
        ),
        e(
            Method::GET,
            leak(format!("{ENV}/config/versions")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::GET,
            leak(format!("{ENV}/config/versions/1")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::GET,
            leak(format!("{ENV}/config/diff?from=1&to=1")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/config/rollback")),
            Some(json!({"version": 1})),
            Deployer,
            Env,
        ),
        e(
            Method::GET,
            leak(format!("{ENV}/secrets")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::PUT,
            leak(format!("{ENV}/secrets/MATRIX_SECRET")),
            Some(json!({"value": "matrix-value"})),
            Admin,
            Env,
        ),
        e(
            Method::DELETE,
            leak(format!("{ENV}/secrets/NOT_SET")),
            None,
            Admin,
            Env,
        ),
        e(
            Method::POST,
            "/api/v1/secrets/rotate-key",
            Some(json!({})),
            Admin,
            Global,
        ),
        e(Method::GET, "/api/v1/tokens", None, Admin, Global),
        e(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "viewer"})),
            Admin,
            Global,
        ),
        e(
            Method::DELETE,
            "/api/v1/tokens/no-such-id",
            None,
            Admin,
            Global,
        ),
        e(Method::GET, "/api/v1/instances", None, Viewer, Global),
        e(
            Method::GET,
            leak(format!("{ENV}/instances")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/start")),
            Some(json!({"dir": "/nonexistent-gantry-dir"})),
            Deployer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/stop")),
            Some(json!({})),
            Deployer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/restart")),
            Some(json!({})),
            Deployer,
            Env,
        ),
        e(Method::GET, leak(format!("{ENV}/logs")), None, Viewer, Env),
        e(
            Method::GET,
            leak(format!("{ENV}/events")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::GET,
            leak(format!("{ENV}/releases")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/releases")),
            Some(json!({})),
            Deployer,
            Env,
        ),
        e(
            Method::GET,
            leak(format!("{ENV}/deploys")),
            None,
            Viewer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/deploys")),
            Some(json!({"release": 99})),
            Deployer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/deploys/99/approve")),
            Some(json!({})),
            Deployer,
            Env,
        ),
        e(
            Method::POST,
            leak(format!("{ENV}/deploys/99/abort")),
            Some(json!({})),
            Deployer,
            Env,
        ),
        e(Method::GET, "/api/v1/audit", None, Admin, Global),
        e(Method::GET, "/api/v1/audit/verify", None, Admin, Global),
    ]
}

#[derive(Debug)]
enum Caller {
    Anonymous,
    /// Revoked, expired or unknown (the name shows in failure messages).
    Invalid(#[allow(dead_code)] &'static str),
    Token {
        role: Role,
        env: Option<&'static str>,
    },
}

async fn create(admin: &Client, role: &str, env: Option<&str>, expires: Option<u64>) -> String {
    let t: TokenCreated = admin
        .post(
            "/api/v1/tokens",
            &json!({"role": role, "env": env, "expires_in_secs": expires}),
        )
        .await
        .unwrap();
    t.token
}

#[test]
fn role_by_endpoint_matrix() {
    let server = TestServer::start();
    let source =
        std::fs::read_to_string(support::repo_root().join("examples/hello-app/gantry.toml"))
            .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    support::block_on(&rt, "the role-by-endpoint matrix", async {
        let local = Client::new(Endpoint::Unix(server.socket.clone()), None);
        // Seed: one config version so the read endpoints have data.
        let _: Value = local
            .put(
                &format!("{ENV}/config"),
                &json!({"file_name": "gantry.toml", "source": source}),
            )
            .await
            .unwrap();

        let mut tokens = Vec::new();
        for (role, name) in [
            (Role::Viewer, "viewer"),
            (Role::Deployer, "deployer"),
            (Role::Admin, "admin"),
        ] {
            for env in [None, Some("production"), Some("staging")] {
                tokens.push((
                    Caller::Token { role, env },
                    Some(create(&local, name, env, None).await),
                ));
            }
        }
        let revoked = create(&local, "admin", None, None).await;
        let id = revoked.split('_').nth(1).unwrap().to_string();
        let _: Value = local.delete(&format!("/api/v1/tokens/{id}")).await.unwrap();
        let expired = create(&local, "admin", None, Some(1)).await;
        // Deliberately past the token's one second: it has expired now.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        tokens.push((Caller::Invalid("revoked"), Some(revoked)));
        tokens.push((Caller::Invalid("expired"), Some(expired)));
        tokens.push((
            Caller::Invalid("unknown"),
            Some("gantry_deadbeef_00".into()),
        ));
        tokens.push((Caller::Anonymous, None));

        let before = audit_entries(&local).await;
        let mut mutating = 0;
        let mut checked = 0;
        for (caller, token) in &tokens {
            let client = Client::new(
                Endpoint::Tcp(server.api.trim_start_matches("http://").into()),
                token.clone(),
            );
            for ep in endpoints(&source) {
                let (status, body) = client
                    .raw(ep.method.clone(), ep.path, ep.body.as_ref())
                    .await
                    .unwrap();
                let status = status.as_u16();
                let body = String::from_utf8_lossy(&body);
                if ep.method != Method::GET {
                    mutating += 1;
                }
                let expect = match caller {
                    Caller::Anonymous | Caller::Invalid(_) => Some(401),
                    Caller::Token { role, env } => {
                        let scope_ok = match (ep.scope, env) {
                            (_, None) | (Scope::Any, _) => true,
                            (Scope::Global, Some(_)) => false,
                            (Scope::Env, Some(e)) => *e == "production",
                        };
                        if *role < ep.role || !scope_ok {
                            Some(403)
                        } else {
                            None
                        }
                    }
                };
                match expect {
                    Some(code) => assert_eq!(
                        status, code,
                        "{caller:?} {} {}: expected {code}, got {status}: {body}",
                        ep.method, ep.path
                    ),
                    None => {
                        assert!(
                            status != 401 && status != 403 && status < 500,
                            "{caller:?} {} {}: expected access, got {status}: {body}",
                            ep.method,
                            ep.path
                        );
                        if ep.method == Method::GET {
                            assert!(status < 300, "{caller:?} GET {}: {status}: {body}", ep.path);
                        }
                    }
                }
                // Error answers say what to do, and never leak a secret.
                if status == 401 {
                    assert!(body.contains("token"), "{body}");
                }
                assert!(
                    !body.contains("matrix-value"),
                    "secret value leaked: {body}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, tokens.len() * endpoints(&source).len());
        // Every mutating call, allowed or denied, appended one audit entry.
        let after = audit_entries(&local).await;
        assert_eq!(after - before, mutating, "audit entries for mutating calls");
        let v: Value = local.get("/api/v1/audit/verify").await.unwrap();
        assert_eq!(v["ok"], true, "{v}");
        let log: Value = local.get("/api/v1/audit?limit=10000").await.unwrap();
        let text = log.to_string();
        assert!(!text.contains("matrix-value"), "secret value in audit log");
        assert!(
            text.contains("anonymous"),
            "denied anonymous calls are audited"
        );
        assert!(text.contains("401 Unauthorized"), "outcomes are recorded");
    });
}

async fn audit_entries(local: &Client) -> usize {
    let v: Value = local.get("/api/v1/audit/verify").await.unwrap();
    v["entries"].as_u64().unwrap() as usize
}

#[test]
fn health_endpoints_need_no_token() {
    let server = TestServer::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    support::block_on(&rt, "the health endpoints", async {
        let tcp = Client::new(
            Endpoint::Tcp(server.api.trim_start_matches("http://").into()),
            None,
        );
        let (s, b) = tcp.raw(Method::GET, "/healthz", None::<&()>).await.unwrap();
        assert_eq!((s.as_u16(), &b[..]), (200, &b"ok\n"[..]));
        let r: gantry_api::Readiness = tcp.get("/readyz").await.unwrap();
        assert!(r.ready);
        assert!(r.schema_version >= 1, "{r:?}");
        let (s, _) = tcp
            .raw(Method::GET, "/api/v1/nope", None::<&()>)
            .await
            .unwrap();
        assert_eq!(s.as_u16(), 404);
    });
}
