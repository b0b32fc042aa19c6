//! `ccgate serve` as a separate process (JSON logs), for what only a process shows: signals,
//! a kill, its log lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ccgate::config::Config;

pub struct Process {
    child: std::process::Child,
    pub base: String,
    pub admin: String,
    pub config_path: PathBuf,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Process {
    /// Writes `config` (JSON logs) into `dir` and starts `ccgate serve` on it; returns once it
    /// logs that it serves.
    pub fn start(config: &Config, dir: &Path) -> Self {
        Self::start_wrapped(config, dir, &[], &[])
    }

    /// As [`Process::start`], run through `wrapper` (e.g. `faketime -f +300s`) with `env`.
    pub fn start_wrapped(config: &Config, dir: &Path, wrapper: &[&str], env: &[(&str, &str)]) -> Self {
        let mut config = config.clone();
        config.log.format = ccgate::config::LogFormat::Json;
        let path = dir.join(format!("ccgate-{}.toml", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, toml::to_string(&config).unwrap()).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = super::tools::command(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_ccgate"));
                c
            }
            None => std::process::Command::new(env!("CARGO_BIN_EXE_ccgate")),
        };
        let mut child = cmd
            .envs(env.iter().copied())
            .args(["serve", "--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ccgate serve did not start");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        // The lines before "serving" are kept too: start-up warnings are among them.
        let mut early = Vec::new();
        let serving = loop {
            let line = lines.next().expect("ccgate exited before serving").unwrap();
            let parsed = serde_json::from_str::<serde_json::Value>(&line).ok();
            if line.contains("ccgate serving") {
                break parsed.unwrap();
            }
            early.extend(parsed);
        };
        let logs = Arc::new(Mutex::new(early));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        let base = format!("https://{}", serving["proxy"].as_str().unwrap());
        let admin = format!("http://{}", serving["admin"].as_str().unwrap());
        Self { child, base, admin, config_path: path, logs }
    }

    pub fn signal(&self, sig: &str) {
        let ok = super::tools::command("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// Log lines logged so far whose message is `message`.
    pub fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().iter().filter(|l| l["message"] == message).cloned().collect()
    }

    /// Every log line so far, as text (to check nothing secret is in them).
    pub fn all_logs(&self) -> String {
        self.logs.lock().unwrap().iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Its exit status, once it has exited (within the suite's `WAIT`).
    pub async fn exit_status(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + super::WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "ccgate did not exit");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
