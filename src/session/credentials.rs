//! Agents' gateway credentials (CTI password, softphone number), from a TOML file that must
//! be private to the ccgate user. The contents are never logged or rendered.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::Secret;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentCredentials {
    pub password: Secret,
    pub phonenum: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    agents: HashMap<String, AgentCredentials>,
}

#[derive(Debug, Default, Clone)]
pub struct CredentialStore {
    agents: HashMap<String, AgentCredentials>,
}

impl CredentialStore {
    /// A store holding `agents` (the file's `[agents."153"]` tables).
    pub fn new(agents: HashMap<String, AgentCredentials>) -> Self {
        Self { agents }
    }

    /// Loads the file under the secret-file rules (`secret_file`): it holds every agent's
    /// CTI password.
    pub fn load(path: &Path) -> Result<Self, String> {
        let raw = crate::secret_file::read(path, "credentials file")?;
        let text = String::from_utf8(raw).map_err(|_| format!("{}: not UTF-8", path.display()))?;
        // toml's error would quote the offending line, which may hold a password: say where,
        // not what.
        let file: File = toml::from_str(&text).map_err(|e| {
            let at = e.span().map(|s| format!(" at byte {}", s.start)).unwrap_or_default();
            format!("{}: not a valid credentials file{at}", path.display())
        })?;
        for id in file.agents.keys() {
            if crate::gateway::parse_agent_id(id).is_none() {
                return Err(format!("{}: agent id {id:?} is not a work number in 101..999999", path.display()));
            }
        }
        Ok(Self { agents: file.agents })
    }

    pub fn get(&self, agent: &str) -> Option<&AgentCredentials> {
        self.agents.get(agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(mode: u32, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!("ccgate-creds-{}.toml", uuid::Uuid::new_v4()));
        std::fs::File::create(&p).unwrap().write_all(body.as_bytes()).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn refuses_a_world_readable_file_and_accepts_its_own_groups() {
        let body = "[agents.\"153\"]\npassword = \"pw\"\nphonenum = \"1\"\n";
        let p = write(0o644, body);
        let err = CredentialStore::load(&p).unwrap_err();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_file(p).unwrap();
        // A file we create has our group: group-readable is what a Kubernetes fsGroup gives.
        let p = write(0o640, body);
        assert!(CredentialStore::load(&p).is_ok());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn parse_error_does_not_echo_secrets() {
        let p = write(0o600, "[agents.\"153\"]\npassword = \"hunter2\" junk\n");
        let err = CredentialStore::load(&p).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn loads_private_file() {
        let p = write(0o600, "[agents.\"153\"]\npassword = \"pw\"\nphonenum = \"88880153\"\n");
        let s = CredentialStore::load(&p).unwrap();
        assert_eq!(s.get("153").unwrap().phonenum, "88880153");
        assert!(!format!("{s:?}").contains("pw\""));
        std::fs::remove_file(p).unwrap();
    }
}
