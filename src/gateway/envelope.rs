//! The gateway's response envelope and its retcodes.

use serde::Deserialize;
use serde_json::Value;

/// `{"message": string, "retcode": string, "result": ..., "event": ...}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Envelope {
    #[serde(default)]
    pub message: String,
    pub retcode: String,
    #[serde(default)]
    pub result: Option<Value>,
    /// Present on event-poll responses only.
    #[serde(default)]
    pub event: Option<Value>,
}

impl Envelope {
    pub fn is_success(&self) -> bool {
        self.retcode == retcode::SUCCESS
    }

    /// `result.errorReason`, the routing layer's cause code passed through on failure.
    pub fn error_reason(&self) -> Option<i64> {
        self.result.as_ref()?.get("errorReason")?.as_i64()
    }
}

/// Retcodes ccgate acts on, and the bounded set used as a metric label.
pub mod retcode {
    pub const SUCCESS: &str = "0";
    pub const BAD_PARAMETER: &str = "000-002";
    pub const NO_PERMISSION: &str = "000-003";
    pub const REPEATED_CALL: &str = "000-007";
    pub const ALREADY_SIGNED_IN: &str = "100-002";
    pub const WRONG_PASSWORD: &str = "100-004";
    pub const NOT_SIGNED_IN: &str = "100-006";
    pub const INTERNAL: &str = "100-007";
    pub const SIGNIN_IN_PROGRESS: &str = "100-021";
    pub const NO_CONFERENCE: &str = "101-001";
    pub const NOT_CHAIRPERSON: &str = "101-002";
    pub const ALREADY_IN_CONFERENCE: &str = "101-003";
    pub const CHAIR_TO_SELF: &str = "101-005";
    pub const CHAIR_CANNOT_LEAVE: &str = "101-007";

    /// Every documented code (API-NOTES section 6). Anything else is labelled `other` so a
    /// misbehaving gateway cannot blow up metric cardinality.
    pub const KNOWN: &[&str] = &[
        "0", "000-001", "000-002", "000-003", "000-004", "000-007", "100-001", "100-002", "100-003", "100-004",
        "100-005", "100-006", "100-007", "100-008", "100-020", "100-021", "101-001", "101-002", "101-003", "101-005",
        "101-007", "105-005", "105-006", "105-007",
    ];

    /// The label value for a retcode: itself when documented, else `other`.
    pub fn label(code: &str) -> &'static str {
        KNOWN.iter().copied().find(|k| *k == code).unwrap_or("other")
    }

    /// Codes that mean the gateway no longer accepts the session's Guid.
    pub fn session_gone(code: &str) -> bool {
        matches!(code, NOT_SIGNED_IN | NO_PERMISSION | "105-005" | "105-006" | "105-007")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_failure_with_error_reason() {
        let e: Envelope =
            serde_json::from_str(r#"{"result":{"errorReason":22},"message":"Unknown ERROR._22","retcode":"100-007"}"#)
                .unwrap();
        assert!(!e.is_success());
        assert_eq!(e.error_reason(), Some(22));
    }

    #[test]
    fn result_may_be_absent_array_or_empty() {
        for body in [
            r#"{"message":"success","retcode":"0"}"#,
            r#"{"message":"","retcode":"0","result":[]}"#,
            r#"{"message":"","retcode":"0","result":{}}"#,
        ] {
            let e: Envelope = serde_json::from_str(body).unwrap();
            assert!(e.is_success());
            assert_eq!(e.error_reason(), None);
        }
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(retcode::label("101-002"), "101-002");
        assert_eq!(retcode::label("999-999"), "other");
        assert_eq!(retcode::label("<script>"), "other");
    }
}
