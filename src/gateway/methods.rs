//! The CC-Gateway agent methods ccgate knows (docs/gateway.md, "Method names in logs"): HTTP
//! method, path under `/agentgateway/resource/`, log name (the metrics vocabulary) and
//! whether only the conference chairperson may call it.

use http::Method;

/// Which resource tree a method lives in; the path is `{tree}/{agentid}[/{action}]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tree {
    OnlineAgent,
    AgentEvent,
    AgentConf,
}

impl Tree {
    pub const fn segment(self) -> &'static str {
        match self {
            Tree::OnlineAgent => "onlineagent",
            Tree::AgentEvent => "agentevent",
            Tree::AgentConf => "agentconf",
        }
    }
}

macro_rules! methods {
    ($( $variant:ident => ($http:ident, $tree:ident, $action:expr, $log:literal, $chair:literal) ),+ $(,)?) => {
        /// A gateway method; the discriminant indexes per-method metric tables.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum GatewayMethod { $($variant),+ }

        impl GatewayMethod {
            pub const ALL: &'static [GatewayMethod] = &[$(GatewayMethod::$variant),+];

            /// The "method name in logs" from Huawei's documentation.
            pub const fn log_name(self) -> &'static str {
                match self { $(GatewayMethod::$variant => $log),+ }
            }
            pub fn http_method(self) -> Method {
                match self { $(GatewayMethod::$variant => Method::$http),+ }
            }
            pub const fn tree(self) -> Tree {
                match self { $(GatewayMethod::$variant => Tree::$tree),+ }
            }
            /// The path segment after `{agentid}`, if any.
            pub const fn action(self) -> Option<&'static str> {
                match self { $(GatewayMethod::$variant => $action),+ }
            }
            /// Only the conference chairperson may call it.
            pub const fn chair_only(self) -> bool {
                match self { $(GatewayMethod::$variant => $chair),+ }
            }
        }
    };
}

methods! {
    Login => (PUT, OnlineAgent, None, "login", false),
    ForceLogin => (PUT, OnlineAgent, Some("forcelogin"), "forceLogin", false),
    UpdateGuid => (PUT, OnlineAgent, Some("updateGuid"), "updateGuid", false),
    HandShake => (POST, OnlineAgent, Some("handshake"), "handShake", false),
    GetAgentEvent => (GET, AgentEvent, None, "getAgentEvent", false),
    Logout => (DELETE, OnlineAgent, Some("logout"), "logout", false),
    ForceLogout => (DELETE, OnlineAgent, Some("forcelogout"), "forceLogout", false),
    RequestAgentConf => (POST, AgentConf, Some("requestagentconf"), "requestAgentConf", false),
    AnswerAgentConf => (POST, AgentConf, Some("answeragentconf"), "answerAgentConf", false),
    RejectAgentConf => (POST, AgentConf, Some("rejectagentconf"), "rejectAgentConf", false),
    RequestLeaveAgentConf => (POST, AgentConf, Some("requestleaveagentconf"), "requestLeaveAgentConf", false),
    ReleaseAgentConf => (POST, AgentConf, Some("releaseagentconf"), "releaseAgentConf", true),
    HoldParticipant => (POST, AgentConf, Some("holdparticipant"), "holdParticipant", true),
    UnholdParticipant => (POST, AgentConf, Some("unholdparticipant"), "unholdParticipant", true),
    ProlongTime => (POST, AgentConf, Some("prolongtime"), "prolongTime", true),
    ApplyToShiftPresident => (POST, AgentConf, Some("applytoshiftpresident"), "applyToShiftPresident", true),
    BatchAddParticipant => (POST, AgentConf, Some("batchaddparticipant"), "batchAddParticipant", true),
    BatchRemoveParticipant => (POST, AgentConf, Some("batchremoveparticipant"), "batchRemoveParticipant", true),
    ChangeParticipantMode => (POST, AgentConf, Some("changeparticipantmode"), "changeParticipantMode", true),
    PlayVoiceToConf => (POST, AgentConf, Some("playvoicetoconf"), "playVoiceToConf", true),
    StopVoiceToConf => (POST, AgentConf, Some("stopvoicetoconf"), "stopVoiceToConf", true),
    PlayVoiceToParticipant => (POST, AgentConf, Some("playvoicetoparticipant"), "playVoiceToParticipant", true),
    StopVoiceToParticipant => (POST, AgentConf, Some("stopvoicetoparticipant"), "stopVoiceToParticipant", true),
    ModifyConfResource => (POST, AgentConf, Some("modifyconfresource"), "modifyConfResource", true),
    QueryConfInfos => (POST, AgentConf, Some("queryconfinfos"), "queryConfInfos", false),
}

impl GatewayMethod {
    pub const COUNT: usize = Self::ALL.len();

    /// The path template, for logs: never the raw path a client sent.
    pub const fn route(self) -> &'static str {
        match self {
            GatewayMethod::Login => "/agentgateway/resource/onlineagent/{agentid}",
            GatewayMethod::ForceLogin => "/agentgateway/resource/onlineagent/{agentid}/forcelogin",
            GatewayMethod::UpdateGuid => "/agentgateway/resource/onlineagent/{agentid}/updateGuid",
            GatewayMethod::HandShake => "/agentgateway/resource/onlineagent/{agentid}/handshake",
            GatewayMethod::GetAgentEvent => "/agentgateway/resource/agentevent/{agentid}",
            GatewayMethod::Logout => "/agentgateway/resource/onlineagent/{agentid}/logout",
            GatewayMethod::ForceLogout => "/agentgateway/resource/onlineagent/{agentid}/forcelogout",
            GatewayMethod::RequestAgentConf => "/agentgateway/resource/agentconf/{agentid}/requestagentconf",
            GatewayMethod::AnswerAgentConf => "/agentgateway/resource/agentconf/{agentid}/answeragentconf",
            GatewayMethod::RejectAgentConf => "/agentgateway/resource/agentconf/{agentid}/rejectagentconf",
            GatewayMethod::RequestLeaveAgentConf => "/agentgateway/resource/agentconf/{agentid}/requestleaveagentconf",
            GatewayMethod::ReleaseAgentConf => "/agentgateway/resource/agentconf/{agentid}/releaseagentconf",
            GatewayMethod::HoldParticipant => "/agentgateway/resource/agentconf/{agentid}/holdparticipant",
            GatewayMethod::UnholdParticipant => "/agentgateway/resource/agentconf/{agentid}/unholdparticipant",
            GatewayMethod::ProlongTime => "/agentgateway/resource/agentconf/{agentid}/prolongtime",
            GatewayMethod::ApplyToShiftPresident => "/agentgateway/resource/agentconf/{agentid}/applytoshiftpresident",
            GatewayMethod::BatchAddParticipant => "/agentgateway/resource/agentconf/{agentid}/batchaddparticipant",
            GatewayMethod::BatchRemoveParticipant => {
                "/agentgateway/resource/agentconf/{agentid}/batchremoveparticipant"
            }
            GatewayMethod::ChangeParticipantMode => "/agentgateway/resource/agentconf/{agentid}/changeparticipantmode",
            GatewayMethod::PlayVoiceToConf => "/agentgateway/resource/agentconf/{agentid}/playvoicetoconf",
            GatewayMethod::StopVoiceToConf => "/agentgateway/resource/agentconf/{agentid}/stopvoicetoconf",
            GatewayMethod::PlayVoiceToParticipant => {
                "/agentgateway/resource/agentconf/{agentid}/playvoicetoparticipant"
            }
            GatewayMethod::StopVoiceToParticipant => {
                "/agentgateway/resource/agentconf/{agentid}/stopvoicetoparticipant"
            }
            GatewayMethod::ModifyConfResource => "/agentgateway/resource/agentconf/{agentid}/modifyconfresource",
            GatewayMethod::QueryConfInfos => "/agentgateway/resource/agentconf/{agentid}/queryconfinfos",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The path for `agent`, e.g. `/agentgateway/resource/agentconf/153/stopvoicetoconf`.
    pub fn path(self, agent: &str) -> String {
        let mut p = String::with_capacity(64);
        p.push_str(super::BASE_PATH);
        p.push_str(self.tree().segment());
        p.push('/');
        p.push_str(agent);
        if let Some(a) = self.action() {
            p.push('/');
            p.push_str(a);
        }
        p
    }

    /// Finds the method for a tree and action segment (exact, case-sensitive match as the
    /// gateway's servlet mapping is), regardless of HTTP method.
    pub fn lookup(tree: &str, action: Option<&str>) -> Option<GatewayMethod> {
        Self::ALL.iter().copied().find(|m| m.tree().segment() == tree && m.action() == action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_consistent() {
        assert_eq!(GatewayMethod::COUNT, 25);
        for (i, m) in GatewayMethod::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert_eq!(GatewayMethod::lookup(m.tree().segment(), m.action()), Some(*m));
        }
    }

    #[test]
    fn stop_voice_to_conf_is_chair_only_post() {
        let m = GatewayMethod::StopVoiceToConf;
        assert_eq!(m.log_name(), "stopVoiceToConf");
        assert_eq!(m.http_method(), Method::POST);
        assert!(m.chair_only());
        assert_eq!(m.path("153"), "/agentgateway/resource/agentconf/153/stopvoicetoconf");
        assert_eq!(GatewayMethod::Login.path("153"), "/agentgateway/resource/onlineagent/153");
    }
}
