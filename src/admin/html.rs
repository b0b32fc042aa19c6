//! HTML for the admin listener's pages: escaping, and a verdict as a coloured word. Shared
//! by the status page and its sections (`config_view.rs`).

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `label` in green when `ok`, else in red.
pub fn badge(ok: bool, label: &str) -> String {
    format!(r#"<span class="{}">{}</span>"#, if ok { "ok" } else { "bad" }, esc(label))
}
