//! The running configuration on the status page: a red banner while the last reload failed (the
//! page is not all green then: the running config is not the file's), and a section with
//! when and where from the config in force was loaded, its hash, and the last reload's
//! outcome with each key's old → new value. Everything comes from the `GET /config`
//! document ([`crate::reload::Reloader::config_document`] with the limits), so the page and
//! `/config` cannot disagree; secrets arrive masked.

use std::fmt::Write;

use serde_json::Value;

use super::html::{badge, esc};

/// Changed keys listed on the page per reload; `/config` has them all.
pub const PAGE_CHANGES: usize = 20;

/// The last reload failed: why, as one line for the red banner at the top of the page.
pub fn failed_reload(doc: Option<&Value>) -> Option<String> {
    let last = doc?.get("last_reload")?;
    if last.get("ok")?.as_bool()? {
        return None;
    }
    let at = last["at"].as_str().unwrap_or("-");
    let error = last["error"].as_str().unwrap_or("(no reason given)");
    Some(format!("the config reload at {at} was refused: {error}; the previous config stays in force"))
}

/// The banner at the top of the page while the last reload failed; empty otherwise.
pub fn attention(doc: Option<&Value>) -> String {
    match failed_reload(doc) {
        Some(why) => format!(
            r#"<p id="attention" class="bad">Attention: {}. Fix the file and reload again (<a href="/config">/config</a>).</p>
"#,
            esc(&why)
        ),
        None => String::new(),
    }
}

/// The "Configuration" section.
pub fn section(doc: Option<&Value>) -> String {
    let Some(doc) = doc else { return String::new() };
    let mut h = String::with_capacity(2048);
    let text = |v: &Value| v.as_str().map_or_else(|| "-".to_owned(), str::to_owned);
    let hash = text(&doc["hash"]);
    let _ = write!(
        h,
        r#"<h2>Configuration</h2><table id="config">
<tr><th>loaded</th><td>{}</td></tr>
<tr><th>from</th><td>{}</td></tr>
<tr><th>hash</th><td><code title="{}">{}</code> <span class="muted">masked: <code>{}</code></span></td></tr>
"#,
        esc(&text(&doc["loaded_at"])),
        esc(&doc["source"].as_str().map_or_else(|| "(built in memory)".to_owned(), str::to_owned)),
        esc(&hash),
        esc(short(&hash)),
        esc(short(&text(&doc["masked_hash"]))),
    );
    let last = &doc["last_reload"];
    if last.is_null() {
        h.push_str(r#"<tr><th>last reload</th><td class="muted">none since start</td></tr>"#);
    } else {
        let ok = last["ok"].as_bool().unwrap_or(false);
        let _ = write!(
            h,
            r#"<tr><th>last reload</th><td id="last-reload">{} at {} <span class="muted">({})</span>"#,
            badge(ok, if ok { "applied" } else { "refused" }),
            esc(&text(&last["at"])),
            esc(&text(&last["trigger"])),
        );
        if let Some(e) = last["error"].as_str() {
            let _ = write!(h, r#"<br><span class="bad">{}</span>"#, esc(e));
        }
        h.push_str("</td></tr>\n");
        for (field, title) in [("changed", "changed"), ("restart_required", "waits for a restart")] {
            let changes = last[field].as_array().map(Vec::as_slice).unwrap_or_default();
            if changes.is_empty() {
                continue;
            }
            let _ = write!(h, "<tr><th>{title}</th><td><ul class=\"changes\">");
            for c in changes.iter().take(PAGE_CHANGES) {
                let _ = write!(h, "<li>{}</li>", esc(&change_line(c)));
            }
            if changes.len() > PAGE_CHANGES {
                let _ = write!(h, r#"<li class="muted">and {} more on /config</li>"#, changes.len() - PAGE_CHANGES);
            }
            h.push_str("</ul></td></tr>\n");
        }
    }
    h.push_str(
        r#"</table>
<p class="muted">The effective config (secrets masked): <a href="/config">/config</a>; the rate limits and their buckets: <a href="/limits">/limits</a>.</p>
"#,
    );
    h
}

/// `key: old -> new`, as `ccgate reload` prints it.
pub fn change_line(c: &Value) -> String {
    let v = |x: &Value| x.as_str().map_or_else(|| "(unset)".to_owned(), str::to_owned);
    let mut line = format!("{}: {} -> {}", v(&c["key"]), v(&c["old"]), v(&c["new"]));
    if c["secret"].as_bool() == Some(true) {
        line.push_str(" (a secret: values masked)");
    }
    line
}

/// `sha256:0123456789ab`: enough of a hash to tell two apart at a glance.
fn short(hash: &str) -> &str {
    hash.get(..19).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_reload_raises_the_banner_and_a_good_one_lists_old_and_new() {
        let failed = json!({"loaded_at": "2026-01-01T00:00:00Z", "source": "/etc/ccgate.toml", "hash": "sha256:ab",
            "masked_hash": "sha256:cd", "last_reload": {"at": "2026-01-01T01:00:00Z", "trigger": "sighup", "ok": false,
            "error": "auth.issuer: <empty>", "changed": [], "restart_required": []}});
        let banner = attention(Some(&failed));
        assert!(banner.contains(r#"class="bad""#) && banner.contains("auth.issuer: &lt;empty&gt;"), "{banner}");
        assert!(section(Some(&failed)).contains(r#"<span class="bad">refused</span>"#));
        let good = json!({"hash": "sha256:ab", "last_reload": {"at": "t", "trigger": "admin", "ok": true,
            "changed": [{"key": "policy.on_unknown_chair", "old": "\"forward\"", "new": "\"deny\"", "secret": false}],
            "restart_required": [{"key": "store.url", "old": "\"redis://***@r:6379/0\"", "new": "\"redis://***@r:6379/0\"", "secret": true}]}});
        assert_eq!(attention(Some(&good)), "");
        let s = section(Some(&good));
        assert!(s.contains("<li>policy.on_unknown_chair: &quot;forward&quot; -&gt; &quot;deny&quot;</li>"), "{s}");
        assert!(s.contains("(a secret: values masked)") && s.contains("waits for a restart"), "{s}");
        assert_eq!(section(None), "");
    }
}
