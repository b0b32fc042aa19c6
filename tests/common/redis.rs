//! A real `redis-server` per test, on a free loopback port, without persistence (so a
//! restart loses every key, as a Redis without AOF/RDB does).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use super::tools;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(super::closed_port().await)
    }

    pub fn start_on(port: u16) -> Self {
        let mut r = Self { port, child: None };
        r.launch();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server and returns once it logs that it accepts connections.
    fn launch(&mut self) {
        let mut child = tools::command("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server did not start");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        loop {
            let line = lines.next().expect("redis-server exited before it was ready").expect("redis-server output");
            if line.contains("Ready to accept connections") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    /// Kills the server (its data is gone).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers; a hung Redis.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT); its data is intact.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = tools::command("kill").args([sig, &pid]).status().expect("kill did not run").success();
        assert!(ok, "kill {sig} {pid}");
    }

    /// A new, empty server on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
