//! The admin listener's status page (`GET /`): health (this replica, the shared store), one
//! row per gateway, the agents, request rates and outcomes by method, token refusals by reason. Server-rendered HTML with its style inline, no script
//! and no external asset, refreshing itself every few seconds, so it works in any browser
//! (or `curl`) on the host or through `kubectl port-forward`. Everything shown comes from the
//! same sources as `/readyz`, `/agents` and `/metrics`; every dynamic text is escaped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::gateway_health::{GatewayHealth, GatewayState};
use super::html::{badge, esc};
use crate::shared::{ReplicaIdentity, StoreStatus};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECS: u32 = 5;

/// What the page shows, gathered by the admin listener.
pub struct Facts {
    pub ready: bool,
    pub keys_loaded: bool,
    /// Each gateway's probe verdict, in config order.
    pub gateways: Vec<GatewayHealth>,
    /// `memory`, `up` or `down`.
    pub store: &'static str,
    /// Redis's mode, address, role, latency and last failover; `None` with the memory store.
    pub store_status: Option<StoreStatus>,
    /// This replica.
    pub replica: ReplicaIdentity,
    /// The served certificate's `notAfter`, Unix seconds.
    pub certificate_expiry: Option<i64>,
    pub version: &'static str,
    /// `GET /agents`' array.
    pub agents: Vec<Value>,
    /// The shared store could not be read: the agents are this replica's alone.
    pub agents_partial: bool,
    /// (method, outcome, count) since start.
    pub requests: Vec<(String, String, u64)>,
    /// (reason, count) since start.
    pub refusals: Vec<(String, u64)>,
    /// The `GET /config` document (`config_view.rs` shows it).
    pub config: Option<Value>,
    /// Each webhook endpoint (`GET /webhooks`).
    pub webhooks: Vec<crate::webhooks::Status>,
}

/// The previous page's request counts, for a rate over the interval between two loads.
#[derive(Default)]
pub struct Rates(Mutex<Option<(Instant, HashMap<String, u64>)>>);

impl Rates {
    /// Requests per second per method since the previous call (`None` the first time).
    fn per_second(&self, totals: &BTreeMap<String, u64>) -> Option<HashMap<String, f64>> {
        let now = Instant::now();
        let mut last = crate::sync::lock(&self.0);
        let previous = last.replace((now, totals.iter().map(|(m, n)| (m.clone(), *n)).collect()));
        let (then, counts) = previous?;
        let secs = now.duration_since(then).as_secs_f64();
        (secs > 0.0).then(|| {
            totals
                .iter()
                .map(|(m, n)| (m.clone(), n.saturating_sub(*counts.get(m).unwrap_or(&0)) as f64 / secs))
                .collect()
        })
    }
}

/// The Health table's one word on the gateways: how many are up, linking to their rows.
fn gateways_summary(all: &[GatewayHealth]) -> String {
    let up = all.iter().filter(|g| g.state == GatewayState::Up).count();
    let label = if all.len() == 1 { all[0].state.as_str().to_owned() } else { format!("{up} of {} up", all.len()) };
    format!(r##"{} <a class="muted" href="#gateways">below</a>"##, badge(up == all.len(), &label))
}

/// Whether a gateway's row is marked down (red): its probe failed. Unchecked is not down yet.
fn is_down(state: GatewayState) -> bool {
    !matches!(state, GatewayState::Up | GatewayState::Unchecked)
}

/// One row per gateway: name, URL (scheme, host and port only), the probe's verdict, since
/// when, and why it failed. A gateway that is down has its row marked (`class="down"`), so
/// the one contact centre that is cut off stands out among several.
fn gateway_rows(h: &mut String, all: &[GatewayHealth]) {
    h.push_str(
        r#"<h2>Gateways</h2><table id="gateways"><tr><th>gateway</th><th>URL</th><th>state</th><th>since</th><th>last error</th></tr>
"#,
    );
    for g in all {
        let class = if is_down(g.state) { "down" } else { g.state.as_str() };
        let state = match g.state {
            GatewayState::Unchecked => format!(r#"<span class="muted">{}</span>"#, g.state.as_str()),
            s => badge(s == GatewayState::Up, s.as_str()),
        };
        let _ = writeln!(
            h,
            r#"<tr data-gateway="{name}" class="{class}"><td>{name}</td><td>{url}</td><td class="state">{state}</td><td class="since">{since}</td><td class="error">{error}</td></tr>"#,
            name = esc(&g.name),
            url = esc(&g.url),
            since = crate::session::view::rfc3339(g.since_ms),
            error = g.error.as_deref().map_or("-".into(), esc),
        );
    }
    h.push_str("</table>\n");
}

/// One row per webhook endpoint: its state, queue, last success and failure, next retry;
/// marked down while failing or disabled. Nothing when none is configured.
fn webhook_rows(h: &mut String, all: &[crate::webhooks::Status]) {
    if all.is_empty() {
        return;
    }
    h.push_str(
        r#"<h2>Webhooks</h2><table id="webhooks"><tr><th>endpoint</th><th>URL</th><th>state</th><th>pending</th><th>oldest</th><th>last success</th><th>last failure</th><th>next retry</th><th>given up</th></tr>
"#,
    );
    let or_dash = |v: &Option<String>| v.as_deref().map_or("-".into(), esc);
    for w in all {
        let failure = w.last_failure.as_ref().map(|f| format!("{} ({})", f.at, f.why));
        let _ = writeln!(
            h,
            r#"<tr data-endpoint="{name}" class="{class}"><td>{name}</td><td>{url}</td><td class="state">{state}</td><td class="pending">{pending}</td><td>{oldest}</td><td>{success}</td><td class="error">{failure}</td><td>{next}</td><td>{failed}</td></tr>"#,
            name = esc(&w.name),
            class = if w.state == "ok" { "ok" } else { "down" },
            url = esc(&w.url),
            state = badge(w.state == "ok", w.state),
            pending = w.pending,
            oldest = w.oldest_pending_age_seconds.map_or("-".into(), |s| format!("{s:.0} s")),
            success = or_dash(&w.last_success),
            failure = or_dash(&failure),
            next = or_dash(&w.next_retry),
            failed = w.failed,
        );
    }
    h.push_str("</table>\n");
}

/// The shared store's Health row: up or down, then mode, address, role as last seen, the
/// readiness probe's last round trip and the last failover; the memory store is this
/// replica's alone.
fn store_row(state: &str, s: Option<&StoreStatus>) -> String {
    let Some(s) = s else {
        return format!(
            r#"<tr id="store"><th>shared store</th><td>{} <span class="muted">this replica's agents only</span></td></tr>"#,
            badge(true, "memory")
        );
    };
    // Plain text, as `ccgate agents` prints its store line: `sentinel, 10.0.0.5:6379, role
    // primary, ping 0.4 ms`.
    let address = match (&s.primary, s.mode) {
        (Some(seeds), "cluster") => format!("seeds {}", esc(seeds)),
        (Some(primary), _) => esc(primary),
        (None, _) => "not connected".into(),
    };
    let mut parts = vec![esc(s.mode), address];
    if let Some(role) = s.role {
        parts.push(format!("role {}", esc(role)));
    }
    if let Some(us) = s.latency_us {
        parts.push(format!("ping {:.1} ms", us as f64 / 1000.0));
    }
    let failover = s.last_failover.as_ref().map_or(String::new(), |f| {
        let to = f.to.as_deref().unwrap_or("(connecting)");
        let took = f.took_ms.map(|t| format!(" in {t} ms")).unwrap_or_default();
        format!(
            r#" <span class="muted">last failover {} ({}): {} -&gt; {}{took}</span>"#,
            crate::session::view::rfc3339(f.at_ms),
            esc(f.reason),
            esc(f.from.as_deref().unwrap_or("-")),
            esc(to),
        )
    });
    format!(
        r#"<tr id="store"><th>shared store</th><td>{} {}{failover}</td></tr>"#,
        badge(state != "down", state),
        parts.join(", ")
    )
}

/// Who this replica is: what "polled by" on other replicas' pages resolves to.
fn replica_row(me: &ReplicaIdentity) -> String {
    format!(
        r#"<tr id="replica"><th>this replica</th><td><span class="host">{}</span> ({}) <span class="muted">{}</span></td></tr>"#,
        esc(&me.host),
        esc(&me.admin),
        esc(&me.id)
    )
}

/// The page.
pub fn render(f: &Facts, rates: &Rates) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ccgate status</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{font-size:1.3em}} h2{{font-size:1.1em;margin-top:1.5em}}
table{{border-collapse:collapse}} th,td{{padding:.25em .7em;border-bottom:1px solid #ddd;text-align:left}}
th{{background:#f4f4f4}} .ok{{color:#176f2c;font-weight:600}} .bad{{color:#b00020;font-weight:600}}
.muted{{color:#777}} tr.down td{{background:#fde7ea}} tr.down td:first-child{{border-left:4px solid #b00020}}
</style></head><body>
<h1>ccgate {version}</h1>
<p class="muted">Refreshes every {REFRESH_SECS} s. The same facts: <a href="/readyz">/readyz</a>, <a href="/agents">/agents</a>, <a href="/metrics">/metrics</a>.</p>
"#,
        version = esc(f.version)
    );
    h.push_str(&super::config_view::attention(f.config.as_ref()));
    let cert = match f.certificate_expiry {
        Some(at) => {
            let days = (at - crate::clock::unix_ms() as i64 / 1000) / 86_400;
            badge(days >= 14, &format!("expires in {days} days ({})", crate::session::view::rfc3339(at as u64 * 1000)))
        }
        None => r#"<span class="muted">plain HTTP (no certificate)</span>"#.into(),
    };
    let _ = write!(
        h,
        r#"<h2>Health</h2><table id="health">
<tr><th>ready</th><td>{}</td></tr>
<tr><th>identity provider keys</th><td>{}</td></tr>
<tr><th>gateways</th><td>{}</td></tr>
{}
{}
<tr><th>certificate</th><td>{cert}</td></tr>
</table>
"#,
        badge(f.ready, if f.ready { "ready" } else { "not ready" }),
        badge(f.keys_loaded, if f.keys_loaded { "loaded" } else { "missing" }),
        gateways_summary(&f.gateways),
        store_row(f.store, f.store_status.as_ref()),
        replica_row(&f.replica),
    );
    gateway_rows(&mut h, &f.gateways);
    webhook_rows(&mut h, &f.webhooks);
    h.push_str(&super::config_view::section(f.config.as_ref()));
    let heads: String = crate::session::view::COLUMNS.iter().map(|c| format!("<th>{c}</th>")).collect();
    let _ = writeln!(h, r#"<h2>Agents ({})</h2>"#, f.agents.len());
    if f.agents_partial {
        h.push_str(
            r#"<p class="bad" id="agents-partial">Partial view: the shared store could not be read, so these are this replica's agents only.</p>"#,
        );
    }
    let _ = writeln!(h, r#"<table id="agents"><tr>{heads}</tr>"#);
    for a in &f.agents {
        let cells = crate::session::view::row(a).map(|c| esc(&c));
        let _ = write!(h, r#"<tr data-agent="{}">"#, cells[0]);
        for (i, c) in cells.iter().enumerate() {
            // The conference cell is marked, for readers of the page's DOM.
            let class = if crate::session::view::COLUMNS[i] == "conference" { r#" class="conference""# } else { "" };
            let _ = write!(h, "<td{class}>{c}</td>");
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
    // Requests by method: totals, a rate since the previous load, outcomes.
    let mut by_method: BTreeMap<String, u64> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (method, outcome, n) in f.requests.iter().filter(|(_, _, n)| *n > 0) {
        *by_method.entry(method.clone()).or_default() += n;
        outcomes.entry(method.clone()).or_default().push((outcome.clone(), *n));
    }
    let rates = rates.per_second(&by_method);
    h.push_str(
        r#"<h2>Requests by method</h2><table id="requests"><tr><th>method</th><th>since start</th><th>per second</th><th>outcomes</th></tr>
"#,
    );
    for (method, total) in &by_method {
        let rate = rates.as_ref().and_then(|r| r.get(method)).map_or("–".into(), |r| format!("{r:.1}"));
        let mut os = outcomes.remove(method).unwrap_or_default();
        os.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let os: Vec<String> = os.iter().map(|(o, n)| format!("{} {n}", esc(o))).collect();
        let _ =
            writeln!(h, "<tr><td>{}</td><td>{total}</td><td>{rate}</td><td>{}</td></tr>", esc(method), os.join(", "));
    }
    if by_method.is_empty() {
        h.push_str(r#"<tr><td colspan="4" class="muted">no requests yet</td></tr>"#);
    }
    h.push_str("</table>\n<h2>Refused tokens by reason</h2><table id=\"refusals\"><tr><th>reason</th><th>since start</th></tr>\n");
    let refused: Vec<_> = f.refusals.iter().filter(|(_, n)| *n > 0).collect();
    for (reason, n) in &refused {
        let _ = writeln!(h, "<tr><td>{}</td><td>{n}</td></tr>", esc(reason));
    }
    if refused.is_empty() {
        h.push_str(r#"<tr><td colspan="2" class="muted">none</td></tr>"#);
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(agents: Vec<Value>) -> Facts {
        Facts {
            ready: true,
            keys_loaded: true,
            gateways: vec![GatewayHealth {
                name: "default".into(),
                url: "https://127.0.0.1:8043".into(),
                state: GatewayState::Up,
                since_ms: 1_796_526_487_600,
                error: None,
            }],
            store: "memory",
            store_status: None,
            replica: ReplicaIdentity { id: "782d6587".into(), host: "ccgate-0".into(), admin: "127.0.0.1:9464".into() },
            certificate_expiry: None,
            version: "0.2.0",
            agents,
            agents_partial: false,
            requests: vec![
                ("stopVoiceToConf".into(), "ok".into(), 3),
                ("stopVoiceToConf".into(), "rejected".into(), 1),
            ],
            refusals: vec![("expired".into(), 2), ("malformed".into(), 0)],
            config: None,
            webhooks: Vec::new(),
        }
    }

    #[test]
    fn a_failing_webhook_endpoint_is_a_red_row_with_its_reason_escaped() {
        let mut f = facts(Vec::new());
        assert!(!render(&f, &Rates::default()).contains(r#"id="webhooks""#), "no section without endpoints");
        f.webhooks = vec![crate::webhooks::Status {
            name: "crm".into(),
            url: "https://crm.example/hook?token=***".into(),
            state: "failing",
            events: vec!["*".into()],
            gateways: Vec::new(),
            pending: 12,
            in_flight: 1,
            oldest_pending_age_seconds: Some(61.4),
            failed: 2,
            last_success: None,
            last_failure: Some(crate::webhooks::FailureView {
                at: "2026-12-07T08:00:00Z".into(),
                why: "HTTP <500>".into(),
            }),
            failing_since: Some("2026-12-07T07:50:00Z".into()),
            disabled: None,
            next_retry: Some("2026-12-07T08:05:00Z".into()),
            recent_failed: Vec::new(),
        }];
        let page = render(&f, &Rates::default());
        let row = page.lines().find(|l| l.contains(r#"data-endpoint="crm""#)).unwrap();
        assert!(row.contains(r#"class="down""#) && row.contains("failing"), "{row}");
        assert!(row.contains("HTTP &lt;500&gt;") && row.contains("61 s") && row.contains(">12<"), "{row}");
    }

    #[test]
    fn the_page_shows_agents_requests_and_refusals_and_escapes_what_it_shows() {
        let agent = serde_json::json!({"agent": "153", "gateway": "<b>x</b>", "state": "active",
            "conference": {"state": "chair", "confId": 7}, "chairperson": true, "polled_here": true});
        let page = render(&facts(vec![agent]), &Rates::default());
        assert!(page.contains(r#"<tr data-agent="153">"#), "{page}");
        assert!(page.contains("chair 7") && page.contains("&lt;b&gt;x&lt;/b&gt;") && !page.contains("<b>x</b>"));
        assert!(page.contains("<td>stopVoiceToConf</td><td>4</td><td>–</td><td>ok 3, rejected 1</td>"), "{page}");
        assert!(page.contains("<td>expired</td><td>2</td>") && !page.contains("malformed"));
        assert!(!page.contains("<script"), "no script");
        // A second load has a rate.
        let rates = Rates::default();
        render(&facts(vec![]), &rates);
        let second = render(&facts(vec![]), &rates);
        assert!(!second.contains("<td>4</td><td>–</td>"), "{second}");
    }

    #[test]
    fn each_gateway_has_a_row_and_the_one_down_is_marked_with_its_error_escaped() {
        let mut f = facts(vec![]);
        f.gateways.push(GatewayHealth {
            name: "globex".into(),
            url: "https://10.0.0.9:8043".into(),
            state: GatewayState::ConnectFailed,
            since_ms: 1_796_526_500_000,
            error: Some("Connection refused <os error 111>".into()),
        });
        let page = render(&f, &Rates::default());
        assert!(
            page.contains(r#"<tr data-gateway="default" class="up"><td>default</td><td>https://127.0.0.1:8043</td>"#),
            "{page}"
        );
        let down = page.lines().find(|l| l.contains(r#"data-gateway="globex""#)).expect("globex's row");
        assert!(
            down.contains(r#"class="down""#) && down.contains(r#"<span class="bad">connect_failed</span>"#),
            "{down}"
        );
        assert!(down.contains(r#"<td class="since">2026-12-06T03:08:20Z</td>"#), "{down}");
        assert!(down.contains("Connection refused &lt;os error 111&gt;"), "{down}");
        assert!(page.contains(r#"<span class="bad">1 of 2 up</span>"#), "{page}");
        assert!(page.contains(r#"<span class="host">ccgate-0</span> (127.0.0.1:9464)"#), "{page}");
        assert!(page.contains("this replica's agents only"), "the memory store: {page}");
    }

    #[test]
    fn the_store_row_shows_mode_address_role_and_latency() {
        let mut f = facts(vec![]);
        f.store = "up";
        f.store_status = Some(StoreStatus {
            mode: "sentinel",
            primary: Some("10.0.0.5:6379".into()),
            connected: true,
            role: Some("primary"),
            latency_us: Some(420),
            last_failover: Some(crate::shared::Failover {
                at_ms: 1_796_526_487_600,
                reason: "readonly",
                from: Some("10.0.0.4:6379".into()),
                to: Some("10.0.0.5:6379".into()),
                took_ms: Some(900),
            }),
            ..StoreStatus::default()
        });
        let page = render(&f, &Rates::default());
        let row = page.lines().find(|l| l.contains(r#"<tr id="store">"#)).expect("the store's row");
        for part in [
            r#"<span class="ok">up</span> sentinel, 10.0.0.5:6379, role primary, ping 0.4 ms"#,
            "last failover 2026-12-06T03:08:07Z (readonly): 10.0.0.4:6379 -&gt; 10.0.0.5:6379 in 900 ms",
        ] {
            assert!(row.contains(part), "{part} not in {row}");
        }
    }
}
