//! The simulated gateway's state: agents and their sessions, Guids (static or rotating),
//! per-agent event queues, and conferences with chair semantics (docs/gateway.md).
//!
//! All of it sits behind one `std::sync::Mutex` in `Sim`; no method here awaits.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{SimConfig, EVENT_QUEUE_CAP};
use crate::gateway::{Envelope, Retcode};

pub(super) struct Agent {
    pub guid: String,
    /// Previous Guids still accepted, with the instant they stop being accepted.
    pub old_guids: Vec<(String, Instant)>,
    pub guid_issued: Instant,
    pub cookie: String,
    pub events: VecDeque<Value>,
    pub notify: Arc<Notify>,
    pub last_seen: Instant,
    /// When the latest poll for this agent arrived (Unix ms): who polls an agent, and since
    /// when, as the gateway sees it (`GET /ccgate-sim/agents`).
    pub last_poll_ms: u64,
    pub conf: Option<u64>,
    pub login_time: u64,
}

pub(super) struct Conference {
    pub chair: String,
    pub members: Vec<String>,
    /// RequestSuccess has been delivered to the chair; chair operations fail before.
    pub ready: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub agents: HashMap<String, Agent>,
    /// Every accepted Guid (current and overlapping old ones) → agent.
    pub guids: HashMap<String, String>,
    /// Guids of sessions taken over by forcelogin → agent: the next poll with one gets
    /// `AgentOther_ShutdownService` (with the old session's loginTime), any other call 100-006.
    pub ghosts: HashMap<String, u64>,
    pub confs: HashMap<u64, Conference>,
    pub next_conf: u64,
    pub rotations: u64,
}

/// A gateway answer: the envelope and an optional `Set-GUID`/`Set-Cookie`.
pub(super) struct Answer {
    pub envelope: Envelope,
    pub set_guid: Option<String>,
    pub set_cookie: Option<String>,
}

impl Answer {
    pub fn ok(result: Value) -> Self {
        Self { envelope: Envelope::ok("success", result), set_guid: None, set_cookie: None }
    }
    pub fn err(code: &str, message: &str) -> Self {
        Self { envelope: Envelope::error(code, message, None), set_guid: None, set_cookie: None }
    }
}

pub(super) fn new_guid(node: u32) -> String {
    format!("{}.AgentGateway{node}", uuid::Uuid::new_v4())
}

pub(super) fn event(agent: &str, kind: &str, content: Value) -> Value {
    let gen = crate::clock::unix_ms();
    json!({"eventType": kind, "workNo": agent, "content": content, "eventGenTime": gen})
}

/// Result of checking a request's Guid.
pub(super) enum GuidCheck {
    Ok,
    Refused(Answer),
}

impl State {
    pub fn push_event(&mut self, agent: &str, ev: Value) {
        if let Some(a) = self.agents.get_mut(agent) {
            if a.events.len() >= EVENT_QUEUE_CAP {
                a.events.pop_front();
            }
            a.events.push_back(ev);
            a.notify.notify_one();
        }
    }

    /// Removes an agent's session (sign-out, inactivity, takeover). Its conference is
    /// released if it was chair, else it leaves.
    pub fn remove_agent(&mut self, agent: &str) -> Option<Agent> {
        let a = self.agents.remove(agent)?;
        self.guids.retain(|_, v| v != agent);
        if let Some(conf_id) = a.conf {
            self.leave_conf(agent, conf_id);
        }
        a.notify.notify_waiters();
        Some(a)
    }

    fn leave_conf(&mut self, agent: &str, conf_id: u64) {
        let Some(conf) = self.confs.get_mut(&conf_id) else { return };
        conf.members.retain(|m| m != agent);
        if conf.chair == agent || conf.members.is_empty() {
            if let Some(c) = self.confs.remove(&conf_id) {
                for m in c.members {
                    self.clear_conf(&m);
                    self.push_event(&m, event(&m, "AgentConf_SelfLeaveResult", json!({"confId": conf_id})));
                }
            }
        } else {
            let chair = conf.chair.clone();
            self.push_event(
                &chair,
                event(&chair, "AgentConf_ParticipantChanged", json!({"result": 0, "changeType": 1, "changeReason": 0, "confId": conf_id, "participant": agent, "participantType": 9})),
            );
        }
    }

    fn clear_conf(&mut self, agent: &str) {
        if let Some(a) = self.agents.get_mut(agent) {
            a.conf = None;
        }
    }

    /// Validates the Guid (and sticky cookie) presented for `agent` and refreshes its
    /// activity. Signs the agent out first if it has been silent longer than MAXTIME.
    pub fn check_guid(
        &mut self,
        cfg: &SimConfig,
        agent: &str,
        guid: Option<&str>,
        cookie: Option<&str>,
        now: Instant,
    ) -> GuidCheck {
        let Some(guid) = guid else {
            return GuidCheck::Refused(Answer::err(Retcode::NoPermission.as_str(), "no permission"));
        };
        let idle = self.agents.get(agent).map(|a| now.saturating_duration_since(a.last_seen));
        if idle.is_some_and(|d| d > Duration::from_millis(cfg.max_idle_ms)) {
            self.remove_agent(agent);
        }
        let Some(owner) = self.guids.get(guid) else {
            return GuidCheck::Refused(Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in"));
        };
        if owner != agent {
            return GuidCheck::Refused(Answer::err(Retcode::NoPermission.as_str(), "no permission"));
        }
        let Some(a) = self.agents.get_mut(agent) else {
            return GuidCheck::Refused(Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in"));
        };
        if a.guid != guid {
            let valid = a.old_guids.iter().any(|(g, until)| g == guid && *until > now);
            if !valid {
                return GuidCheck::Refused(Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in"));
            }
        }
        if cfg.require_cookie {
            let has = cookie.is_some_and(|c| c.split(';').any(|p| p.trim() == a.cookie));
            if !has {
                // Without the sticky cookie the NSLB would route elsewhere, where the session
                // does not exist.
                return GuidCheck::Refused(Answer::err(Retcode::NotSignedIn.as_str(), "agent not signed in"));
            }
        }
        a.last_seen = now;
        GuidCheck::Ok
    }

    /// Issues a new Guid for `agent`, keeping the old one valid for the overlap.
    pub fn rotate(&mut self, cfg: &SimConfig, agent: &str, now: Instant) -> Option<String> {
        let a = self.agents.get_mut(agent)?;
        let new = new_guid(cfg.node);
        let old = std::mem::replace(&mut a.guid, new.clone());
        a.guid_issued = now;
        let until = now + Duration::from_millis(cfg.guid_overlap_ms);
        a.old_guids.retain(|(g, t)| {
            let keep = *t > now;
            if !keep {
                self.guids.remove(g);
            }
            keep
        });
        if cfg.guid_overlap_ms > 0 {
            a.old_guids.push((old, until));
        } else {
            self.guids.remove(&old);
        }
        self.guids.insert(new.clone(), agent.to_owned());
        self.rotations += 1;
        Some(new)
    }

    /// Chair check for chair-only operations: returns the conference id.
    // The refusal is the gateway's answer itself; the simulator is not a hot path.
    #[allow(clippy::result_large_err)]
    pub fn chair_conf(&self, agent: &str) -> Result<u64, Answer> {
        let conf_id = self
            .agents
            .get(agent)
            .and_then(|a| a.conf)
            .ok_or_else(|| Answer::err(Retcode::NoConference.as_str(), "the agent has no conference"))?;
        let conf = self
            .confs
            .get(&conf_id)
            .ok_or_else(|| Answer::err(Retcode::NoConference.as_str(), "the agent has no conference"))?;
        if conf.chair != agent {
            return Err(Answer::err(Retcode::NotChairperson.as_str(), "the agent is not the chairperson"));
        }
        if !conf.ready {
            return Err(Answer::err(Retcode::NoConference.as_str(), "the conference is not ready"));
        }
        Ok(conf_id)
    }

    pub fn request_conf(&mut self, agent: &str) -> Answer {
        if self.agents.get(agent).and_then(|a| a.conf).is_some() {
            return Answer::err(Retcode::AlreadyInConference.as_str(), "already in a conference");
        }
        self.next_conf += 1;
        let conf_id = 1_030_400 + self.next_conf;
        self.confs
            .insert(conf_id, Conference { chair: agent.to_owned(), members: vec![agent.to_owned()], ready: false });
        if let Some(a) = self.agents.get_mut(agent) {
            a.conf = Some(conf_id);
        }
        self.push_event(agent, event(agent, "AgentConf_SelfJoinResult", json!({"confId": conf_id})));
        self.push_event(agent, event(agent, "AgentConf_RequestSuccess", json!({"confId": conf_id})));
        Answer::ok(json!({}))
    }

    /// Called when an event is handed to the agent: RequestSuccess makes the conference ready.
    pub fn delivered(&mut self, ev: &Value) {
        if ev.get("eventType").and_then(Value::as_str) == Some("AgentConf_RequestSuccess") {
            if let Some(id) = ev.pointer("/content/confId").and_then(Value::as_u64) {
                if let Some(c) = self.confs.get_mut(&id) {
                    c.ready = true;
                }
            }
        }
    }

    pub fn shift_president(&mut self, agent: &str, conf_id: u64, dest: &str) -> Answer {
        if dest == agent {
            return Answer::err(Retcode::ChairToSelf.as_str(), "the chair cannot pass the chair to itself");
        }
        match self.agents.get(dest).map(|a| a.conf) {
            None => return Answer::err(Retcode::BadParameter.as_str(), "destAgentNo is not signed in"),
            Some(Some(c)) if c != conf_id => {
                return Answer::err(Retcode::AlreadyInConference.as_str(), "destAgentNo is in another conference")
            }
            Some(_) => {}
        }
        let Some(conf) = self.confs.get_mut(&conf_id) else {
            return Answer::err(Retcode::NoConference.as_str(), "the agent has no conference");
        };
        // The simulator joins a signed-in target on the fly (a real conference would have
        // invited it first with batchaddparticipant).
        if !conf.members.iter().any(|m| m == dest) {
            conf.members.push(dest.to_owned());
        }
        conf.chair = dest.to_owned();
        let members = conf.members.clone();
        if let Some(a) = self.agents.get_mut(dest) {
            a.conf = Some(conf_id);
        }
        self.push_event(dest, event(dest, "AgentConf_PresidentChanged", json!({"confId": conf_id})));
        for m in members.iter().filter(|m| *m != dest) {
            self.push_event(
                m,
                event(m, "AgentConf_ParticipantChanged", json!({"result": 0, "changeType": 2, "changeReason": 0, "confId": conf_id, "participant": dest, "participantType": 9})),
            );
        }
        Answer::ok(json!({}))
    }

    pub fn release_conf(&mut self, conf_id: u64) -> Answer {
        if let Some(c) = self.confs.remove(&conf_id) {
            for m in c.members {
                self.clear_conf(&m);
                self.push_event(&m, event(&m, "AgentConf_SelfLeaveResult", json!({"confId": conf_id})));
            }
        }
        Answer::ok(json!({}))
    }

    pub fn leave(&mut self, agent: &str) -> Answer {
        let Some(conf_id) = self.agents.get(agent).and_then(|a| a.conf) else {
            return Answer::err(Retcode::NoConference.as_str(), "the agent has no conference");
        };
        if self.confs.get(&conf_id).is_some_and(|c| c.chair == agent) {
            return Answer::err(Retcode::ChairCannotLeave.as_str(), "the chair cannot leave; release the conference");
        }
        self.clear_conf(agent);
        self.leave_conf(agent, conf_id);
        self.push_event(agent, event(agent, "AgentConf_SelfLeaveResult", json!({"confId": conf_id})));
        Answer::ok(json!({}))
    }

    pub fn query_confs(&self, ids: &[u64]) -> Answer {
        let out: Vec<Value> = ids
            .iter()
            .filter_map(|id| self.confs.get(id).map(|c| (id, c)))
            .map(|(id, c)| {
                json!({
                    "confId": id,
                    "addresses": c.members.iter().map(|m| json!({
                        "addressType": "9", "address": m, "role": if *m == c.chair { 1 } else { 0 },
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        Answer::ok(Value::Array(out))
    }
}
