//! Conference state of one agent, driven by gateway events and by successful operations.
//! Pure functions, so every documented transition is unit-tested without a gateway.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::gateway::GatewayMethod;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ConfState {
    /// Known: the agent is in no conference.
    None,
    /// `requestagentconf` was accepted; RequestSuccess has not arrived, so the agent is not
    /// chair yet (the gateway refuses chair operations until then).
    Requested,
    /// The last conference request failed (`AgentConf_RequestFailed`).
    RequestFailed {
        cause: Option<i64>,
    },
    Chair {
        conf_id: u64,
    },
    Participant {
        conf_id: u64,
    },
    /// ccgate missed events (session taken over with forcelogin).
    Unknown,
}

impl ConfState {
    /// The state's name, as its JSON `state` field says it.
    pub fn label(self) -> &'static str {
        match self {
            ConfState::None => "none",
            ConfState::Requested => "requested",
            ConfState::RequestFailed { .. } => "request_failed",
            ConfState::Chair { .. } => "chair",
            ConfState::Participant { .. } => "participant",
            ConfState::Unknown => "unknown",
        }
    }

    pub fn conf_id(self) -> Option<u64> {
        match self {
            ConfState::Chair { conf_id } | ConfState::Participant { conf_id } => Some(conf_id),
            _ => None,
        }
    }
}

/// What an event means for the session as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEffect {
    Continue,
    /// The gateway ended the session (`AgentOther_ShutdownService`).
    SessionEnded,
}

fn conf_id(content: Option<&Value>) -> Option<u64> {
    let v = content?.get("confId")?;
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}

/// Applies one gateway event for agent `me`.
pub fn apply_event(state: ConfState, me: &str, event: &Value) -> (ConfState, EventEffect) {
    let Some(kind) = event.get("eventType").and_then(Value::as_str) else {
        return (state, EventEffect::Continue);
    };
    let content = event.get("content").filter(|c| !c.is_null());
    let next = match kind {
        "AgentOther_ShutdownService" => return (ConfState::None, EventEffect::SessionEnded),
        "AgentConf_RequestSuccess" | "AgentConf_PresidentChanged" => match conf_id(content) {
            Some(conf_id) => ConfState::Chair { conf_id },
            None => ConfState::Unknown,
        },
        "AgentConf_RequestFailed" => {
            ConfState::RequestFailed { cause: content.and_then(|c| c.get("cause")).and_then(Value::as_i64) }
        }
        // Joining our own requested conference: still waiting for RequestSuccess. Joining
        // someone else's (answeragentconf): participant.
        "AgentConf_SelfJoinResult" => match (state, conf_id(content)) {
            (ConfState::Requested, _) => ConfState::Requested,
            (ConfState::Chair { .. }, _) => state,
            (_, Some(conf_id)) => ConfState::Participant { conf_id },
            (_, None) => ConfState::Unknown,
        },
        "AgentConf_ParticipantChanged" => {
            let c = content.cloned().unwrap_or(Value::Null);
            let change = c.get("changeType").and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
            let who = c.get("participant").map(|p| match p {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            match (change, who) {
                (Some(2), Some(who)) if who == me => match conf_id(content).or(state.conf_id()) {
                    Some(conf_id) => ConfState::Chair { conf_id },
                    None => ConfState::Unknown,
                },
                (Some(2), Some(_)) => match conf_id(content).or(state.conf_id()) {
                    Some(conf_id) => ConfState::Participant { conf_id },
                    None => ConfState::Unknown,
                },
                _ => state,
            }
        }
        "AgentConf_SelfLeaveResult" => ConfState::None,
        _ => state,
    };
    (next, EventEffect::Continue)
}

/// Applies a successful (`retcode` "0") operation.
pub fn apply_success(state: ConfState, method: GatewayMethod) -> ConfState {
    match method {
        GatewayMethod::ApplyToShiftPresident => match state.conf_id() {
            Some(conf_id) => ConfState::Participant { conf_id },
            None => ConfState::Unknown,
        },
        GatewayMethod::ReleaseAgentConf | GatewayMethod::RequestLeaveAgentConf => ConfState::None,
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: &str, content: Value) -> Value {
        json!({"eventType": kind, "workNo": "153", "content": content})
    }

    #[test]
    fn each_label_is_the_state_json_names() {
        for s in [
            ConfState::None,
            ConfState::Requested,
            ConfState::RequestFailed { cause: None },
            ConfState::Chair { conf_id: 1 },
            ConfState::Participant { conf_id: 1 },
            ConfState::Unknown,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap()["state"], s.label(), "{s:?}");
        }
    }

    #[test]
    fn request_then_success_makes_chair() {
        let s = ConfState::Requested;
        let (s, _) = apply_event(s, "153", &ev("AgentConf_SelfJoinResult", json!({"confId": 7})));
        assert_eq!(s, ConfState::Requested, "not chair before RequestSuccess");
        let (s, _) = apply_event(s, "153", &ev("AgentConf_RequestSuccess", json!({"confId": 7})));
        assert_eq!(s, ConfState::Chair { conf_id: 7 });
    }

    #[test]
    fn request_failed() {
        let (s, _) = apply_event(ConfState::Requested, "153", &ev("AgentConf_RequestFailed", json!({"cause": 21})));
        assert_eq!(s, ConfState::RequestFailed { cause: Some(21) });
    }

    #[test]
    fn president_changed_to_me_and_to_other() {
        let (s, _) = apply_event(
            ConfState::Participant { conf_id: 7 },
            "153",
            &ev("AgentConf_PresidentChanged", json!({"confId": 7})),
        );
        assert_eq!(s, ConfState::Chair { conf_id: 7 });
        let pc = ev("AgentConf_ParticipantChanged", json!({"changeType": 2, "participant": "154", "confId": 7}));
        let (s, _) = apply_event(ConfState::Chair { conf_id: 7 }, "153", &pc);
        assert_eq!(s, ConfState::Participant { conf_id: 7 });
        let pc_me = ev("AgentConf_ParticipantChanged", json!({"changeType": 2, "participant": 153, "confId": 7}));
        let (s, _) = apply_event(ConfState::Participant { conf_id: 7 }, "153", &pc_me);
        assert_eq!(s, ConfState::Chair { conf_id: 7 });
        let muted = ev("AgentConf_ParticipantChanged", json!({"changeType": 3, "participant": "154", "confId": 7}));
        assert_eq!(apply_event(ConfState::Chair { conf_id: 7 }, "153", &muted).0, ConfState::Chair { conf_id: 7 });
    }

    #[test]
    fn leave_and_shutdown() {
        let (s, e) = apply_event(ConfState::Chair { conf_id: 7 }, "153", &ev("AgentConf_SelfLeaveResult", Value::Null));
        assert_eq!((s, e), (ConfState::None, EventEffect::Continue));
        let (_, e) = apply_event(
            ConfState::Chair { conf_id: 7 },
            "153",
            &ev("AgentOther_ShutdownService", json!({"loginTime": 1})),
        );
        assert_eq!(e, EventEffect::SessionEnded);
    }

    #[test]
    fn successful_operations() {
        let chair = ConfState::Chair { conf_id: 7 };
        assert_eq!(apply_success(chair, GatewayMethod::ApplyToShiftPresident), ConfState::Participant { conf_id: 7 });
        assert_eq!(apply_success(chair, GatewayMethod::ReleaseAgentConf), ConfState::None);
        assert_eq!(
            apply_success(ConfState::Participant { conf_id: 7 }, GatewayMethod::RequestLeaveAgentConf),
            ConfState::None
        );
        assert_eq!(apply_success(chair, GatewayMethod::StopVoiceToConf), chair);
    }

    #[test]
    fn garbage_events_change_nothing() {
        for e in
            [json!(null), json!({"eventType": 5}), json!({"eventType": "AgentConf_RequestSuccess", "content": null})]
        {
            let (s, eff) = apply_event(ConfState::Chair { conf_id: 1 }, "153", &e);
            assert_eq!(eff, EventEffect::Continue);
            assert!(matches!(s, ConfState::Chair { .. } | ConfState::Unknown));
        }
    }
}
