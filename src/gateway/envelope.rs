//! The gateway's response envelope and its retcodes (docs/gateway.md, "Envelope" and
//! "Retcodes"). The one type both ccgate and its simulator read and write envelopes with.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `{"message": string, "retcode": string, "result": ..., "event": ...}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Envelope {
    #[serde(default)]
    pub message: String,
    /// Kept as the gateway sent it (a code ccgate does not know passes through unchanged);
    /// [`Envelope::code`] classifies it.
    pub retcode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Event-poll answers only; `Some(Value::Null)` writes the empty poll's `"event": null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
}

impl Envelope {
    /// A success carrying `result`.
    pub fn ok(message: &str, result: Value) -> Self {
        Self {
            message: message.to_owned(),
            retcode: Retcode::Success.as_str().to_owned(),
            result: Some(result),
            event: None,
        }
    }

    /// A refusal with `code` (a gateway `NNN-NNN` code, or ccgate's own `CCG-nnn`).
    pub fn error(code: &str, message: impl Into<String>, result: Option<Value>) -> Self {
        Self { message: message.into(), retcode: code.to_owned(), result, event: None }
    }

    /// An event-poll answer: one event, or none (`"event": null`).
    pub fn event(event: Option<Value>) -> Self {
        Self {
            message: String::new(),
            retcode: Retcode::Success.as_str().to_owned(),
            result: None,
            event: Some(event.unwrap_or(Value::Null)),
        }
    }

    pub fn code(&self) -> Retcode {
        Retcode::parse(&self.retcode)
    }

    pub fn is_success(&self) -> bool {
        self.retcode == Retcode::Success.as_str()
    }

    /// `result.errorReason`, the routing layer's cause code passed through on failure.
    pub fn error_reason(&self) -> Option<i64> {
        self.result.as_ref()?.get("errorReason")?.as_i64()
    }

    /// The event of a poll answer, if one came (`null` and absent both mean none).
    pub fn poll_event(&self) -> Option<&Value> {
        self.event.as_ref().filter(|e| !e.is_null())
    }

    pub fn to_bytes(&self) -> Bytes {
        // Serializing strings and JSON values cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

macro_rules! retcodes {
    ($( $(#[$doc:meta])* $variant:ident => $code:literal ),+ $(,)?) => {
        /// Every documented retcode (docs/gateway.md, "Retcodes"), and `Other` for the rest,
        /// so a misbehaving gateway cannot blow up metric cardinality.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Retcode { $( $(#[$doc])* $variant, )+ Other }

        impl Retcode {
            pub fn parse(code: &str) -> Self {
                match code { $( $code => Self::$variant, )+ _ => Self::Other }
            }
            /// The code as the gateway writes it; `other` for an unknown one (the metric label).
            pub const fn as_str(self) -> &'static str {
                match self { $( Self::$variant => $code, )+ Self::Other => "other" }
            }
        }
    };
}

retcodes! {
    Success => "0",
    WrongEventFetch => "000-001",
    BadParameter => "000-002",
    /// No permission; the Guid may have expired.
    NoPermission => "000-003",
    SwitchingOver => "000-004",
    RepeatedCall => "000-007",
    SignInParameter => "100-001",
    AlreadySignedIn => "100-002",
    ResourceUnavailable => "100-003",
    WrongPassword => "100-004",
    SignOutParameter => "100-005",
    /// Not signed in, or the Guid does not match.
    NotSignedIn => "100-006",
    Internal => "100-007",
    AlreadySignedOut => "100-008",
    PasswordExpired => "100-020",
    SignInInProgress => "100-021",
    NoConference => "101-001",
    NotChairperson => "101-002",
    AlreadyInConference => "101-003",
    ChairToSelf => "101-005",
    ChairCannotLeave => "101-007",
    DisasterRecovery5 => "105-005",
    DisasterRecovery6 => "105-006",
    DisasterRecovery7 => "105-007",
}

impl Retcode {
    /// The operation conflicts with the agent's own state or repeats itself (already in a
    /// conference, the chair passing the chair to itself, already signed out, a call
    /// repeated): the app's doing, not a fault of the gateway or ccgate.
    pub const fn is_conflict(self) -> bool {
        matches!(
            self,
            Self::AlreadyInConference
                | Self::ChairToSelf
                | Self::ChairCannotLeave
                | Self::AlreadySignedOut
                | Self::RepeatedCall
                | Self::SignInInProgress
        )
    }

    /// The gateway refused the request's parameters (the app's body or path).
    pub const fn is_invalid_request(self) -> bool {
        matches!(self, Self::BadParameter | Self::SignInParameter | Self::SignOutParameter)
    }

    /// The gateway no longer accepts the session's Guid: sign in again.
    pub const fn session_gone(self) -> bool {
        matches!(
            self,
            Self::NotSignedIn
                | Self::NoPermission
                | Self::DisasterRecovery5
                | Self::DisasterRecovery6
                | Self::DisasterRecovery7
        )
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
        assert_eq!(e.code(), Retcode::Internal);
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
    fn writes_what_it_reads() {
        assert_eq!(Envelope::event(None).to_bytes(), &br#"{"message":"","retcode":"0","event":null}"#[..]);
        assert_eq!(
            Envelope::error("101-002", "not chair", None).to_bytes(),
            &br#"{"message":"not chair","retcode":"101-002"}"#[..]
        );
        let ok = Envelope::ok("success", serde_json::json!({}));
        assert_eq!(serde_json::from_slice::<Envelope>(&ok.to_bytes()).unwrap(), ok);
        assert!(Envelope::event(None).poll_event().is_none());
    }

    #[test]
    fn codes_are_bounded_and_classified() {
        assert_eq!(Retcode::parse("101-002").as_str(), "101-002");
        assert_eq!(Retcode::parse("999-999").as_str(), "other");
        assert_eq!(Retcode::parse("<script>"), Retcode::Other);
        for gone in ["100-006", "000-003", "105-005", "105-006", "105-007"] {
            assert!(Retcode::parse(gone).session_gone(), "{gone}");
        }
        assert!(!Retcode::parse("100-007").session_gone());
    }
}
