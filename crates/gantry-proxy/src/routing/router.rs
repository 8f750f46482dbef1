//! Phase 1: the compiled table, route matching and the weighted set draw.
//!
//! Matching: the request's host (lower-cased, port stripped) is looked up
//! as an exact name, then as a one-label wildcard (`*.example.com`), then
//! `*`. At each level the route with the longest path prefix that matches
//! on a segment boundary wins; a level with no matching prefix falls
//! through to the next.

use std::collections::HashMap;

use crate::fasthash::Fast;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::observe::stats::{Registry, SetStats, StatsSnapshot};
use crate::policy::{CompiledHeaders, PolicyRegistry, RoutePolicy};
use crate::routing::balance::{Instance, Instances};
use crate::routing::table::{Maintenance, Table, normalize_host_pattern, normalize_prefix};

pub(crate) struct CompiledSet {
    pub(crate) name: String,
    pub(crate) weight: u32,
    pub(crate) stats: Arc<SetStats>,
    pub(crate) instances: Vec<Arc<Instance>>,
    /// Sticky-session token of each instance (empty unless the route is
    /// sticky).
    pub(crate) tokens: Vec<u64>,
}

pub(crate) struct CompiledRoute {
    pub(crate) id: String,
    prefix: String,
    pub(crate) sets: Vec<CompiledSet>,
    total_weight: u32,
    pub(crate) maintenance: Option<Maintenance>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) connect_timeout: Option<Duration>,
    pub(crate) policy: RoutePolicy,
    pub(crate) compress: bool,
    /// Sticky-session token → (set, instance) indexes; None unless sticky.
    pub(crate) sticky: Option<HashMap<u64, (usize, usize)>>,
}

impl CompiledRoute {
    fn matches_path(&self, path: &str) -> bool {
        let p = self.prefix.as_str();
        p == "/"
            || path == p
            || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
    }

    /// A weighted draw among the sets; None when all weights are 0.
    pub(crate) fn choose_set(&self) -> Option<&CompiledSet> {
        if self.total_weight == 0 {
            return None;
        }
        let mut ticket = fastrand::u32(..self.total_weight);
        for set in &self.sets {
            if ticket < set.weight {
                return Some(set);
            }
            ticket -= set.weight;
        }
        None
    }
}

// === impl Router ===

/// One immutable routing table snapshot.
pub(crate) struct Router {
    pub(crate) table: Table,
    routes: Vec<CompiledRoute>,
    // Keys from the table (`fasthash`); looked up with the request's host.
    exact: HashMap<String, Vec<usize>, Fast>,
    wildcard: HashMap<String, Vec<usize>, Fast>,
    any: Vec<usize>,
}

impl Router {
    /// Compiles a validated table.
    fn compile(
        table: Table,
        registry: &Registry,
        instances: &Instances,
        policies: &PolicyRegistry,
    ) -> Router {
        let mut routes = Vec::with_capacity(table.routes.len());
        let mut exact: HashMap<String, Vec<usize>, Fast> = HashMap::default();
        let mut wildcard: HashMap<String, Vec<usize>, Fast> = HashMap::default();
        let mut any = Vec::new();
        for (i, r) in table.routes.iter().enumerate() {
            let sets: Vec<CompiledSet> = r
                .sets
                .iter()
                .map(|s| {
                    let instances: Vec<Arc<Instance>> = s
                        .instances
                        .iter()
                        .filter_map(|a| a.parse::<SocketAddr>().ok())
                        .map(|a| instances.get(a))
                        .collect();
                    CompiledSet {
                        name: s.name.clone(),
                        weight: s.weight,
                        stats: registry.set_stats(&r.id, &s.name),
                        tokens: if r.sticky {
                            instances
                                .iter()
                                .map(|i| crate::routing::sticky::token(&r.id, &s.name, i.addr))
                                .collect()
                        } else {
                            Vec::new()
                        },
                        instances,
                    }
                })
                .collect();
            let sticky = r.sticky.then(|| crate::routing::sticky::index(&sets));
            routes.push(CompiledRoute {
                id: r.id.clone(),
                prefix: normalize_prefix(&r.path_prefix),
                total_weight: sets.iter().map(|s| s.weight).sum(),
                sets,
                maintenance: r.maintenance.clone(),
                timeout: r.timeout_ms.map(Duration::from_millis),
                connect_timeout: r.connect_timeout_ms.map(Duration::from_millis),
                policy: RoutePolicy {
                    headers: r
                        .headers
                        .as_ref()
                        .map(|h| Arc::new(CompiledHeaders::compile(h))),
                    rate_limit: r.rate_limit,
                    max_body: r.max_body,
                    state: policies.route(&r.id),
                },
                compress: r.compress,
                sticky,
            });
            for h in &r.hosts {
                let Ok(h) = normalize_host_pattern(h) else {
                    continue;
                };
                if h == "*" {
                    any.push(i);
                } else if let Some(suffix) = h.strip_prefix("*.") {
                    wildcard.entry(suffix.to_string()).or_default().push(i);
                } else {
                    exact.entry(h).or_default().push(i);
                }
            }
        }
        let by_prefix_len = |v: &mut Vec<usize>| {
            v.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.len()));
        };
        exact.values_mut().for_each(by_prefix_len);
        wildcard.values_mut().for_each(by_prefix_len);
        by_prefix_len(&mut any);
        Router {
            table,
            routes,
            exact,
            wildcard,
            any,
        }
    }

    /// The route for a host (as sent: may carry a port) and a path.
    pub(crate) fn find(&self, host: &str, path: &str) -> Option<&CompiledRoute> {
        let host = normalize_request_host(host);
        let first = |cands: Option<&Vec<usize>>| {
            cands?
                .iter()
                .map(|&i| &self.routes[i])
                .find(|r| r.matches_path(path))
        };
        first(self.exact.get(host.as_ref()))
            .or_else(|| {
                let (_, suffix) = host.split_once('.')?;
                first(self.wildcard.get(suffix))
            })
            .or_else(|| first(Some(&self.any)))
    }

    /// The weight of a set in this table; None when absent.
    pub(crate) fn weight(&self, route: &str, set: &str) -> Option<u32> {
        self.routes
            .iter()
            .find(|r| r.id == route)?
            .sets
            .iter()
            .find(|s| s.name == set)
            .map(|s| s.weight)
    }
}

/// `Example.COM:8080` → `example.com`; `[::1]:80` → `[::1]`. Borrows when
/// the host is already in that form (the common case: no copy per request).
///
/// Not `gantry_common::split_host_port`: routing drops whatever follows the
/// last `:` of a name, port or not (`example.com:` has an empty port, which
/// RFC 3986 allows, and still routes to `example.com`), and keeps an IPv6
/// literal's brackets, so that no part of one can match a `*.suffix`
/// route (`[::ffff:1.2.3.4]` never matches `*.2.3.4`).
pub(crate) fn normalize_request_host(host: &str) -> std::borrow::Cow<'_, str> {
    let h = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let h = h.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

// === impl Routing ===

/// The current table and the state that outlives tables.
pub(crate) struct Routing {
    current: ArcSwap<Router>,
    pub(crate) registry: Registry,
    instances: Instances,
    pub(crate) policies: PolicyRegistry,
    /// How long a set's counters stay after it left the table and drained.
    retired_grace: Duration,
}

impl Routing {
    /// `retired_grace`: how long the counters of a set that left the table
    /// stay once it has drained (`ProxyConfig::retired_stats_grace`).
    pub(crate) fn new(table: Table, retired_grace: Duration) -> Routing {
        let registry = Registry::default();
        let instances = Instances::default();
        let policies = PolicyRegistry::default();
        let router = Router::compile(table, &registry, &instances, &policies);
        Routing {
            current: ArcSwap::from_pointee(router),
            registry,
            instances,
            policies,
            retired_grace,
        }
    }

    /// The snapshot a request uses for its whole life.
    pub(crate) fn load(&self) -> Arc<Router> {
        self.current.load_full()
    }

    /// `GET /stats`, against the current table.
    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.registry.prune(self.retired_grace);
        let router = self.load();
        self.registry
            .snapshot(|r, s| router.weight(r, s), self.instances.snapshot())
    }

    /// `GET /metrics`, against the current table.
    pub(crate) fn prometheus(&self) -> String {
        self.registry.prune(self.retired_grace);
        let router = self.load();
        let mut out = self
            .registry
            .render_prometheus(|r, s| router.weight(r, s), &self.instances.snapshot());
        self.policies.render_prometheus(&mut out);
        out
    }

    /// Swaps in a validated table at once, then marks the sets that left
    /// the table as retired (and the ones that came back as not).
    /// Callers serialize swaps.
    pub(crate) fn swap(&self, table: Table) {
        let router = Arc::new(Router::compile(
            table,
            &self.registry,
            &self.instances,
            &self.policies,
        ));
        self.current.store(router.clone());
        for s in self.registry.all() {
            s.set_retired(router.weight(&s.route, &s.set).is_none());
        }
        self.registry.prune(self.retired_grace);
        // Instances no table lists and no request holds.
        self.instances.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::table::{BackendSet, Route};

    fn route(id: &str, hosts: &[&str], prefix: &str) -> Route {
        Route {
            id: id.into(),
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            sets: vec![BackendSet {
                name: "stable".into(),
                weight: 100,
                instances: vec!["127.0.0.1:9".into()],
            }],
            maintenance: None,
            timeout_ms: None,
            compress: false,
            sticky: false,
            headers: None,
            rate_limit: None,
            max_body: None,
            connect_timeout_ms: None,
            tls: None,
            redirect_http: false,
        }
    }

    fn routing(routes: Vec<Route>) -> Routing {
        let t = Table { version: 1, routes };
        t.validate().unwrap();
        Routing::new(t, Duration::from_secs(300))
    }

    fn id(r: &Router, host: &str, path: &str) -> Option<String> {
        r.find(host, path).map(|r| r.id.clone())
    }

    #[test]
    fn exact_host_before_wildcard_before_any() {
        let rt = routing(vec![
            route("any", &["*"], "/"),
            route("wild", &["*.example.com"], "/"),
            route("exact", &["app.example.com"], "/"),
        ]);
        let r = rt.load();
        assert_eq!(id(&r, "app.example.com", "/").as_deref(), Some("exact"));
        assert_eq!(
            id(&r, "APP.Example.com:8080", "/x").as_deref(),
            Some("exact")
        );
        assert_eq!(id(&r, "other.example.com", "/").as_deref(), Some("wild"));
        // One label only.
        assert_eq!(id(&r, "a.b.example.com", "/").as_deref(), Some("any"));
        assert_eq!(id(&r, "example.com", "/").as_deref(), Some("any"));
        assert_eq!(id(&r, "[::1]:8080", "/").as_deref(), Some("any"));
        assert_eq!(id(&r, "app.example.com:", "/").as_deref(), Some("exact"));
        assert_eq!(
            id(&r, "app.example.com.:443", "/").as_deref(),
            Some("exact")
        );
    }

    #[test]
    fn ipv6_literals_route_with_and_without_a_port() {
        let rt = routing(vec![
            route("wild", &["*.2.3.4"], "/"),
            route("exact", &["1.2.3.4"], "/"),
        ]);
        let r = rt.load();
        // Only `*` routes an IPv6 literal; none here.
        for host in [
            "[::1]:8080",
            "[::1]",
            "[::ffff:1.2.3.4]:80",
            "[::ffff:1.2.3.4]",
        ] {
            assert_eq!(id(&r, host, "/"), None, "{host}");
        }
        assert_eq!(id(&r, "1.2.3.4:80", "/").as_deref(), Some("exact"));
        let rt = routing(vec![route("any", &["*"], "/")]);
        let r = rt.load();
        for host in ["[::1]:8080", "[::1]", "[fe80::1%25eth0]:80"] {
            assert_eq!(id(&r, host, "/").as_deref(), Some("any"), "{host}");
        }
        assert_eq!(normalize_request_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_request_host("[::1]"), "[::1]");
        assert_eq!(normalize_request_host("[::1"), "[::1");
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let rt = routing(vec![
            route("root", &["a.test"], "/"),
            route("api", &["a.test"], "/api"),
            route("v2", &["a.test"], "/api/v2/"),
            route("wild-static", &["*.test"], "/static"),
        ]);
        let r = rt.load();
        assert_eq!(id(&r, "a.test", "/").as_deref(), Some("root"));
        assert_eq!(id(&r, "a.test", "/api").as_deref(), Some("api"));
        assert_eq!(id(&r, "a.test", "/api/users").as_deref(), Some("api"));
        assert_eq!(id(&r, "a.test", "/apix").as_deref(), Some("root"));
        assert_eq!(id(&r, "a.test", "/api/v2").as_deref(), Some("v2"));
        assert_eq!(id(&r, "a.test", "/api/v2/x").as_deref(), Some("v2"));
        // The exact host's `/` wins over the wildcard's longer prefix.
        assert_eq!(id(&r, "a.test", "/static/x").as_deref(), Some("root"));
        assert_eq!(
            id(&r, "b.test", "/static/x").as_deref(),
            Some("wild-static")
        );
        assert_eq!(id(&r, "b.test", "/other"), None);
        assert_eq!(id(&r, "nothing.else", "/"), None);
    }

    #[test]
    fn fall_through_when_exact_host_has_no_matching_prefix() {
        let rt = routing(vec![
            route("api", &["a.test"], "/api"),
            route("wild", &["*.test"], "/"),
        ]);
        let r = rt.load();
        assert_eq!(id(&r, "a.test", "/api/x").as_deref(), Some("api"));
        assert_eq!(id(&r, "a.test", "/web").as_deref(), Some("wild"));
    }

    #[test]
    fn weighted_draw_and_retirement() {
        let mut r = route("r", &["*"], "/");
        r.sets = vec![
            BackendSet {
                name: "stable".into(),
                weight: 75,
                instances: vec!["127.0.0.1:9".into()],
            },
            BackendSet {
                name: "canary".into(),
                weight: 25,
                instances: vec!["127.0.0.1:10".into()],
            },
        ];
        let rt = routing(vec![r.clone()]);
        let router = rt.load();
        let route = router.find("x", "/").unwrap();
        let canary = (0..4000)
            .filter(|_| route.choose_set().unwrap().name == "canary")
            .count();
        assert!((800..1200).contains(&canary), "{canary}");

        r.sets.truncate(1);
        r.sets[0].weight = 100;
        rt.swap(Table {
            version: 2,
            routes: vec![r],
        });
        assert!(*rt.registry.get("r", "canary").unwrap().retired().borrow());
        assert!(!*rt.registry.get("r", "stable").unwrap().retired().borrow());
        // The old snapshot still routes to canary.
        assert_eq!(router.weight("r", "canary"), Some(25));
        assert_eq!(rt.load().weight("r", "canary"), None);
    }

    #[test]
    fn swaps_forget_retired_sets_and_unlisted_instances_after_the_grace() {
        let mut r = route("r", &["*"], "/");
        let t = Table {
            version: 1,
            routes: vec![r.clone()],
        };
        let rt = Routing::new(t, Duration::ZERO);
        let old = rt.load();
        r.sets[0].name = "next".into();
        r.sets[0].instances = vec!["127.0.0.1:10".into()];
        rt.swap(Table {
            version: 2,
            routes: vec![r],
        });
        // The old snapshot still lists the old instance: a request on it
        // keeps it.
        let addrs = |rt: &Routing| -> Vec<String> {
            rt.instances
                .snapshot()
                .iter()
                .map(|i| i.address.to_string())
                .collect()
        };
        assert!(
            rt.registry.get("r", "stable").is_none(),
            "drained, no grace"
        );
        assert_eq!(addrs(&rt), ["127.0.0.1:9", "127.0.0.1:10"]);
        drop(old);
        rt.swap(rt.load().table.clone());
        assert_eq!(addrs(&rt), ["127.0.0.1:10"]);
        assert_eq!(rt.stats().sets.len(), 1);
    }
}
