//! A real `redis-server` per test, on a free loopback port, without persistence (so a
//! restart loses every key, as a Redis without AOF/RDB does).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use super::tools;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Arguments after the common ones (a replica's `--replicaof`, a cluster node's settings),
    /// or a config file first for a sentinel.
    extra: Vec<String>,
    /// The line that says it is ready.
    ready: &'static str,
}

impl RedisServer {
    pub async fn start() -> Self {
        Self::start_on(super::closed_port().await)
    }

    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, Vec::new(), "Ready to accept connections")
    }

    /// A server with more arguments, ready when it logs `ready`.
    pub fn start_with(port: u16, extra: Vec<String>, ready: &'static str) -> Self {
        let mut r = Self { port, child: None, extra, ready };
        r.launch();
        r
    }

    /// A replica of `primary`.
    pub async fn replica_of(primary: &RedisServer) -> Self {
        let port = super::closed_port().await;
        Self::start_with(
            port,
            vec!["--replicaof".into(), "127.0.0.1".into(), primary.port.to_string()],
            "Ready to accept connections",
        )
    }

    /// A sentinel watching `primary` as master `name`, quick to act (1 s to call it down),
    /// with its config file (which sentinels rewrite) in `dir`.
    pub async fn sentinel(dir: &std::path::Path, name: &str, primary: &RedisServer) -> Self {
        let port = super::closed_port().await;
        let conf = dir.join(format!("sentinel-{port}.conf"));
        let text = format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor {name} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 4000\n\
             sentinel parallel-syncs {name} 1\n",
            primary.port
        );
        std::fs::write(&conf, text).unwrap();
        Self::start_with(port, vec![conf.display().to_string(), "--sentinel".into()], "+monitor master")
    }

    /// A Redis Cluster node (not yet in a cluster), its state files in `dir`.
    pub async fn cluster_node(dir: &std::path::Path) -> Self {
        let port = super::closed_port().await;
        let extra = vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            dir.join(format!("nodes-{port}.conf")).display().to_string(),
            "--cluster-node-timeout".into(),
            "1000".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        Self::start_with(port, extra, "Ready to accept connections")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A connection of the test's own, to look at or steer this server.
    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// SIGKILL: gone at once, as a crashed node is.
    pub fn kill(&mut self) {
        self.stop();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server and returns once it logs that it accepts connections.
    fn launch(&mut self) {
        let sentinel = self.extra.iter().any(|a| a == "--sentinel");
        let mut cmd = tools::command("redis-server");
        if sentinel {
            // A sentinel: its config file, then `--sentinel`.
            cmd.args(&self.extra);
        } else {
            // A folder of its own: a replica writes the RDB of its full sync there, which a
            // server started later in the same folder would load.
            // Emptied first: a restart starts empty, as before.
            let dir = std::env::temp_dir().join(format!("ccgate-redis-{}", self.port));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--dir", dir.to_str().unwrap()])
                .args(&self.extra);
        }
        let mut child = cmd
            .args(["--loglevel", "notice"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server did not start");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        loop {
            let line = lines.next().expect("redis-server exited before it was ready").expect("redis-server output");
            if line.contains(self.ready) {
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
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("ccgate-redis-{}", self.port)));
    }
}
