//! Records the commit ccgate is built from, for `ccgate --version` and `ccgate_build_info`.
//! `CCGATE_COMMIT` in the build's environment wins (a container build has no `.git`); else
//! `git rev-parse`; else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=CCGATE_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("CCGATE_COMMIT").ok().filter(|c| !c.trim().is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!("cargo:rustc-env=CCGATE_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
