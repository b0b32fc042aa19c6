//! `[policy]`: what ccgate decides itself about the chairperson rule.

use serde::{Deserialize, Serialize};

/// What to do with a chair-only request when ccgate does not know whether the agent is chair
/// (the session was taken over with forcelogin, so conference events were missed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownChair {
    /// Let the gateway judge: it answers 101-002 itself if the agent is not chair.
    #[default]
    Forward,
    /// Refuse locally.
    Deny,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub on_unknown_chair: UnknownChair,
}
