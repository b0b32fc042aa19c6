//! File descriptors as a budget (issue 37). Every agent's poller owns a connection to its
//! gateway, so a replica's descriptors grow with its agents; when they ran out, pollers failed
//! one by one with "Too many open files", the listeners' `accept` failed and the admin listener
//! stopped answering, so a liveness probe restarted a pod full of healthy agents.
//!
//! So, at start: the soft open-file limit is raised to the hard one (what Go's runtime and
//! nginx's `worker_rlimit_nofile` do: many shells and systemd leave the soft limit at 1,024),
//! what the configuration can need is counted ([`Need`]), and when the limit cannot hold it
//! ccgate says so (at start and in `check-config`) and takes fewer agents: a sign-in past
//! what the limit leaves room for is refused with 503 `file-limit`, like `max_agents`, instead
//! of failing later in a poller. The listeners, the admin reserve and the pools keep theirs.

use crate::config::{Config, StoreBackend, StoreMode};

/// Descriptors nothing else counts: the listeners, epoll and its eventfds, stdio, the config,
/// credential and key files a reload reads, JWKS and OTLP fetches, DNS. Generous: a shortfall
/// here is exactly the failure this module exists to prevent.
pub const BASE_RESERVE: u64 = 64;
/// The admin listener's connections: Prometheus, the kubelet's probes and an operator
/// (`app.rs: ADMIN_MAX_CONNECTIONS`), always kept, so probes answer at the limit.
pub const ADMIN_RESERVE: u64 = 64;
/// Redis: the command connection, the change channel's and a sentinel's.
const STORE_CONNECTIONS: u64 = 3;

/// What a configuration can hold open at once, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// One gateway connection per agent's poller (`sessions.max_agents`).
    pub agents: u64,
    /// App connections (`server.max_connections`), and as many gateway connections for the
    /// requests they carry (one in flight per connection, the usual case).
    pub app: u64,
    pub admin: u64,
    /// Each gateway's sign-ins in flight (`sessions.signin_concurrency`). Its idle pool is not
    /// counted apart: idle connections are what concurrent requests left, and those are
    /// counted with the app connections.
    pub gateways: u64,
    /// Redis connections (a cluster: one per node it may name, `store.nodes` at least).
    pub store: u64,
    pub base: u64,
}

impl Need {
    pub fn of(c: &Config) -> Self {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        let store = match (c.store.backend, c.store.mode) {
            (StoreBackend::Memory, _) => 0,
            (StoreBackend::Redis, StoreMode::Cluster) => {
                STORE_CONNECTIONS.saturating_add(2 * n(c.store.nodes.len().max(3)))
            }
            (StoreBackend::Redis, _) => STORE_CONNECTIONS,
        };
        Self {
            agents: n(c.sessions.max_agents),
            app: n(c.server.max_connections).saturating_mul(2),
            admin: ADMIN_RESERVE,
            gateways: n(c.gateway_list().len()).saturating_mul(n(c.sessions.signin_concurrency)),
            store,
            base: BASE_RESERVE,
        }
    }

    pub fn total(&self) -> u64 {
        self.agents.saturating_add(self.fixed())
    }

    /// Everything but the agents.
    fn fixed(&self) -> u64 {
        [self.app, self.admin, self.gateways, self.store, self.base].into_iter().fold(0, u64::saturating_add)
    }
}

/// The process's open-file limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
    /// The soft limit before [`raise`] raised it.
    pub raised_from: Option<u64>,
}

// `rlim_t` is `u64` on 64-bit Linux but not on every target: the casts stay.
/// The open-file limit now, unchanged (`None` where the platform has none to read).
#[allow(clippy::unnecessary_cast)]
pub fn current() -> Option<Limit> {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    Some(Limit { soft: r.rlim_cur as u64, hard: r.rlim_max as u64, raised_from: None })
}

/// What to raise an unlimited hard limit's soft limit to, tried in turn: Linux refuses
/// `RLIM_INFINITY` as a soft limit (and anything past `fs.nr_open`, 1,048,576 by default), and
/// macOS anything past `OPEN_MAX` (10,240), whose hard limit reads unlimited.
const UNLIMITED_TARGETS: [u64; 3] = [1_048_576, 65_536, 10_240];

/// Raises the soft open-file limit to the hard one (an unlimited hard one: as far as the
/// kernel takes, see [`UNLIMITED_TARGETS`]); the limit after. A refusal leaves it as it was.
#[allow(clippy::unnecessary_cast)]
pub fn raise() -> Option<Limit> {
    let before = current()?;
    let targets: &[u64] =
        if before.hard == libc::RLIM_INFINITY as u64 { &UNLIMITED_TARGETS } else { std::slice::from_ref(&before.hard) };
    for &target in targets.iter().filter(|t| **t > before.soft) {
        // The targets are small enough for any `rlim_t`.
        let r = libc::rlimit { rlim_cur: target as libc::rlim_t, rlim_max: before.hard as libc::rlim_t };
        // SAFETY: setrlimit reads the struct it is given and nothing else.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) } == 0 {
            // What the kernel kept (macOS may clamp it).
            let after = current()?;
            return Some(Limit { raised_from: Some(before.soft), ..after });
        }
    }
    Some(before)
}

/// An unlimited limit reads as more than any configuration needs.
#[allow(clippy::unnecessary_cast)]
fn usable(limit: u64) -> u64 {
    if limit == libc::RLIM_INFINITY as u64 {
        u64::MAX
    } else {
        limit
    }
}

/// What a limit leaves of a configuration's need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u64,
    pub need: Need,
    /// Agents the limit leaves room for, when fewer than `sessions.max_agents`.
    pub agents: Option<usize>,
}

/// However short the limit, agents get at least this share of it: a limit that cannot hold
/// the listeners' worst case (a laptop's 256, a small container's 1,024) still runs a demo or
/// a small contact centre, and the listeners' `accept` backs off when it runs out.
const AGENT_SHARE_FLOOR: u64 = 4;

impl Budget {
    pub fn plan(limit: u64, need: Need) -> Self {
        let room = limit.saturating_sub(need.fixed()).max(limit / AGENT_SHARE_FLOOR);
        let agents = (room < need.agents).then(|| usize::try_from(room).unwrap_or(usize::MAX));
        Self { limit, need, agents }
    }

    /// The budget of `config` under this process's soft limit, raised to the hard one first
    /// (`serve`); the limit with it.
    pub fn at_start(config: &Config) -> Option<(Self, Limit)> {
        let limit = raise()?;
        Some((Self::plan(usable(limit.soft), Need::of(config)), limit))
    }

    /// The budget of `config` under this process's hard limit, which `serve` started from here
    /// would raise its soft limit to (`check-config`).
    pub fn at_hard_limit(config: &Config) -> Option<Self> {
        Some(Self::plan(usable(current()?.hard), Need::of(config)))
    }

    /// What to tell the operator when the limit cannot hold the need; `None` when it can.
    /// `limit_word` names the limit ("the open-file limit" or "the hard open-file limit").
    pub fn shortfall(&self, limit_word: &str) -> Option<String> {
        let agents = self.agents?;
        let n = &self.need;
        Some(format!(
            "{limit_word} ({}) cannot hold what this configuration can need ({}: {} agents' gateway \
             connections, {} for app connections and their gateway requests, {} admin, {} gateway \
             sign-ins, {} Redis, {} other); sign-ins past {agents} agents will be refused (503 \
             file-limit). Raise the limit (systemd LimitNOFILE=, ulimit -n, the container runtime's \
             nofile) or lower sessions.max_agents or server.max_connections",
            self.limit,
            n.total(),
            n.agents,
            n.app,
            n.admin,
            n.gateways,
            n.store,
            n.base,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_a_raised_limit_and_a_low_limit_leaves_fewer_agents() {
        let mut c = Config::default();
        let need = Need::of(&c);
        assert_eq!(need.agents, 10_000);
        assert_eq!(need.app, 1_024);
        assert_eq!(need.gateways, 32);
        assert_eq!(need.total(), 10_000 + 1_024 + 64 + 32 + 64);
        assert_eq!(Budget::plan(65_536, need).agents, None, "the systemd unit's limit holds it");
        assert!(Budget::plan(65_536, need).shortfall("x").is_none());
        let short = Budget::plan(4_096, need);
        assert_eq!(short.agents, Some(4_096 - 1_184));
        let msg = short.shortfall("the open-file limit").unwrap();
        assert!(msg.contains("(4096)") && msg.contains("past 2912 agents"), "{msg}");
        assert_eq!(Budget::plan(256, need).agents, Some(64), "a quarter of a limit the listeners overfill");
        assert_eq!(Budget::plan(u64::MAX, need).agents, None);
        // No overflow whatever the configuration.
        c.sessions.max_agents = usize::MAX;
        c.server.max_connections = usize::MAX;
        let huge = Need::of(&c);
        assert_eq!(huge.total(), u64::MAX);
        assert!(Budget::plan(1_024, huge).agents.is_some());
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let before = current().expect("Linux has RLIMIT_NOFILE");
        let after = raise().expect("readable");
        assert!(after.soft >= before.soft);
        assert!(after.soft == after.hard || (usable(after.hard) == u64::MAX && after.soft >= before.soft));
        assert_eq!(current().unwrap().soft, after.soft);
    }
}
