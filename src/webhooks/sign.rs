//! Standard Webhooks 1.0 signatures: `webhook-signature` is `v1,` and the base64 of
//! HMAC-SHA-256 over `{webhook-id}.{webhook-timestamp}.{body}`, once per secret, separated by
//! spaces. A receiver checks with its one secret and accepts any match, which is how a
//! secret is rotated without a moment of refusals.

use std::path::Path;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The prefix the standard gives secrets.
const SECRET_PREFIX: &str = "whsec_";
/// The standard asks for secrets of 24 to 64 random bytes.
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;
/// Secrets one endpoint signs with at once: an old and a new one during a rotation, a few
/// more for a slow one.
const MAX_SECRETS: usize = 8;

/// An endpoint's signing keys, from its `secret_file`. Debug prints how many, never a key.
pub struct Signer {
    keys: Vec<hmac::Key>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} secrets)", self.keys.len())
    }
}

impl Signer {
    /// Reads `path` with the secret-file rules (`secret_file.rs`) and parses it.
    pub fn load(path: &Path) -> Result<Self, String> {
        let raw = crate::secret_file::read(path, "webhook secret file")?;
        Self::parse(&raw).map_err(|why| format!("webhook secret file {}: {why}", path.display()))
    }

    /// One `whsec_<base64>` per line; blank lines and `#` comments are skipped. The errors
    /// name the line, never its content.
    pub fn parse(raw: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8 text".to_owned())?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some(b64) = line.strip_prefix(SECRET_PREFIX) else {
                return Err(format!("line {n}: a secret starts with {SECRET_PREFIX}"));
            };
            let bytes = STANDARD
                .decode(b64)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64))
                .map_err(|_| format!("line {n}: not base64 after {SECRET_PREFIX}"))?;
            if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&bytes.len()) {
                return Err(format!(
                    "line {n}: a secret is {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} random bytes, this one {}",
                    bytes.len()
                ));
            }
            keys.push(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        match keys.len() {
            0 => Err("no secret in it (one whsec_ line at least)".into()),
            n if n > MAX_SECRETS => Err(format!("{n} secrets; at most {MAX_SECRETS}")),
            _ => Ok(Self { keys }),
        }
    }

    /// The `webhook-signature` value for this message at this attempt.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut out = String::with_capacity(self.keys.len() * 48);
        for key in &self.keys {
            let mut ctx = hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(timestamp.to_string().as_bytes());
            ctx.update(b".");
            ctx.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            STANDARD.encode_string(ctx.sign().as_ref(), &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn signs_as_the_reference_libraries_do() {
        let s = Signer::parse(SECRET.as_bytes()).unwrap();
        let sig = s.signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs_and_bad_lines_are_named_without_their_content() {
        let two = format!("# old, then new\n{SECRET}\n\n  whsec_{}  \n", STANDARD.encode([7u8; 32]));
        let s = Signer::parse(two.as_bytes()).unwrap();
        let sig = s.signature("msg_1", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2, "{sig}");
        assert!(sig.split(' ').all(|v| v.starts_with("v1,")));
        for (raw, why) in [
            ("", "no secret"),
            ("secret123secret123secret123secret123", "line 1: a secret starts with whsec_"),
            ("whsec_!!!notbase64!!!", "line 1: not base64"),
            ("whsec_c2hvcnQ=", "line 1: a secret is 24 to 64 random bytes, this one 5"),
        ] {
            let err = Signer::parse(raw.as_bytes()).unwrap_err();
            assert!(err.starts_with(why), "{raw:?}: {err}");
            assert!(!err.contains("notbase64") && !err.contains("c2hvcnQ"), "{err}");
        }
        let many: String = (0..9).map(|i| format!("whsec_{}\n", STANDARD.encode([i as u8; 24]))).collect();
        assert!(Signer::parse(many.as_bytes()).unwrap_err().contains("at most 8"));
        assert_eq!(format!("{s:?}"), "Signer(2 secrets)");
    }
}
