//! The admin listener's status page (`GET /`): health, the agents, request rates and outcomes
//! by method, token refusals by reason. Server-rendered HTML with its style inline, no script
//! and no external asset, refreshing itself every few seconds, so it works in any browser
//! (or `curl`) on the host or through `kubectl port-forward`. Everything shown comes from the
//! same sources as `/readyz`, `/agents` and `/metrics`; every dynamic text is escaped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::html::{badge, esc};

/// Seconds between the page's own refreshes.
pub const REFRESH_SECS: u32 = 5;

/// What the page shows, gathered by the admin listener.
pub struct Facts {
    pub ready: bool,
    pub keys_loaded: bool,
    pub gateway: &'static str,
    /// `memory`, `up` or `down`.
    pub store: &'static str,
    /// Redis's mode, primary and last failover, as one line.
    pub store_detail: Option<String>,
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
.muted{{color:#777}}
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
<tr><th>gateway</th><td>{}</td></tr>
<tr><th>shared store</th><td>{}</td></tr>
<tr><th>certificate</th><td>{cert}</td></tr>
</table>
"#,
        badge(f.ready, if f.ready { "ready" } else { "not ready" }),
        badge(f.keys_loaded, if f.keys_loaded { "loaded" } else { "missing" }),
        badge(f.gateway == "up", f.gateway),
        badge(f.store != "down", f.store)
            + &f.store_detail
                .as_deref()
                .map(|d| format!(r#" <span class="muted">{}</span>"#, esc(d)))
                .unwrap_or_default(),
    );
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
            gateway: "up",
            store: "memory",
            store_detail: None,
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
        }
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
}
