//! Who is calling, and may they do this?
//!
//! Authentication is one middleware: a caller on the unix socket whose uid
//! owns the data directory is the local admin; everyone else presents a
//! bearer token (401 without a valid one). Authorization is in the handler's
//! signature: it takes a [`Viewer`], [`Deployer`] or [`Admin`] extractor,
//! which checks the role and, for a token limited to one environment, that
//! the request's `{env}` path parameter is that environment (403 otherwise;
//! such tokens cannot use endpoints without an `{env}`).

use std::net::SocketAddr;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use gantry_api::Role;
use tokio::net::{TcpListener, UnixListener};

use crate::error::ApiError;
use crate::state::AppState;

/// The connection's peer.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Unix { uid: Option<u32> },
    Tcp(SocketAddr),
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Peer::Unix {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer::Tcp(*stream.remote_addr())
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Unix { uid: Some(u) } => write!(f, "unix uid {u}"),
            Peer::Unix { uid: None } => write!(f, "unix (unknown uid)"),
            Peer::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    /// Who, as the audit log names them: `local:uid=0` or `token:<id>`.
    pub(crate) actor: String,
    pub(crate) role: Role,
    /// The one environment a scoped token may act on.
    pub(crate) env: Option<String>,
}

/// Set on every response of the API so the audit layer knows the actor.
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub(crate) String);

pub(crate) async fn authenticate(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    // Owned before any await: a request body is not Sync.
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|h| h.to_str().unwrap_or("").to_string());
    let principal = match identify(&state, &peer, header).await {
        Ok(p) => p,
        Err(e) => {
            let mut resp = e.into_response();
            resp.extensions_mut()
                .insert(Actor(format!("anonymous ({peer})")));
            return resp;
        }
    };
    let actor = Actor(principal.actor.clone());
    req.extensions_mut().insert(principal);
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(actor);
    resp
}

async fn identify(
    state: &AppState,
    peer: &Peer,
    header: Option<String>,
) -> Result<Principal, ApiError> {
    if header.is_none() {
        if let Peer::Unix { uid: Some(uid) } = peer
            && *uid == state.owner_uid
        {
            return Ok(Principal {
                actor: format!("local:uid={uid}"),
                role: Role::Admin,
                env: None,
            });
        }
        return Err(ApiError::unauthorized(
            "this API needs a token: pass `--token` or set GANTRY_TOKEN (an admin creates one \
             with `gantry token create --role viewer`)",
        ));
    }
    let token = header
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::unauthorized("the Authorization header must be `Bearer <token>`"))?
        .to_string();
    let now = gantry_common::now_ms();
    let rec = state
        .db(move |s| s.authenticate_token(&token, now))
        .await?
        .map_err(|why| {
            ApiError::unauthorized(format!(
                "{why}; ask an admin for a valid token (`gantry token create`)"
            ))
        })?;
    let role: Role = rec.role.parse().map_err(|e: gantry_api::UnknownRole| {
        ApiError::internal(format!("token {}: {e}", rec.id))
    })?;
    Ok(Principal {
        actor: format!("token:{}", rec.id),
        role,
        env: rec.env,
    })
}

/// Checks `principal` against the endpoint's minimum role and environment.
pub(crate) fn authorize(
    principal: &Principal,
    needed: Role,
    env: Option<&str>,
) -> Result<(), ApiError> {
    if principal.role < needed {
        return Err(ApiError::forbidden(format!(
            "{} has role `{}`, and this needs `{needed}`; ask an admin for a {needed} token",
            principal.actor, principal.role
        )));
    }
    match (&principal.env, env) {
        (None, _) => Ok(()),
        (Some(mine), Some(asked)) if mine == asked => Ok(()),
        (Some(mine), Some(asked)) => Err(ApiError::forbidden(format!(
            "{} is limited to environment `{mine}` and cannot act on `{asked}`",
            principal.actor
        ))),
        (Some(mine), None) => Err(ApiError::forbidden(format!(
            "{} is limited to environment `{mine}`; this endpoint is not per environment and \
             needs an unscoped token",
            principal.actor
        ))),
    }
}

async fn extract(parts: &mut Parts, state: &AppState, needed: Role) -> Result<Principal, ApiError> {
    let principal = parts
        .extensions
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| ApiError::internal("route is missing the authentication layer"))?;
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let env = params
        .iter()
        .find(|(k, _)| *k == "env")
        .map(|(_, v)| v.to_string());
    authorize(&principal, needed, env.as_deref())?;
    Ok(principal)
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $doc:literal) => {
        #[doc = $doc]
        // Handlers that only gate on the role leave the principal unread.
        #[allow(dead_code)]
        pub(crate) struct $name(pub(crate) Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;
            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, ApiError> {
                extract(parts, state, $role).await.map($name)
            }
        }
    };
}

role_extractor!(
    Viewer,
    Role::Viewer,
    "A caller with at least the viewer role."
);
role_extractor!(
    Deployer,
    Role::Deployer,
    "A caller with at least the deployer role."
);
role_extractor!(Admin, Role::Admin, "A caller with the admin role.");

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, env: Option<&str>) -> Principal {
        Principal {
            actor: "token:t".into(),
            role,
            env: env.map(str::to_string),
        }
    }

    #[test]
    fn roles_are_ordered_and_scopes_enforced() {
        assert!(authorize(&p(Role::Admin, None), Role::Viewer, None).is_ok());
        assert!(authorize(&p(Role::Viewer, None), Role::Deployer, Some("prod")).is_err());
        assert!(
            authorize(
                &p(Role::Deployer, Some("prod")),
                Role::Deployer,
                Some("prod")
            )
            .is_ok()
        );
        let e =
            authorize(&p(Role::Admin, Some("prod")), Role::Viewer, Some("staging")).unwrap_err();
        assert!(
            e.message.contains("limited to environment `prod`"),
            "{}",
            e.message
        );
        assert!(authorize(&p(Role::Admin, Some("prod")), Role::Admin, None).is_err());
    }
}
