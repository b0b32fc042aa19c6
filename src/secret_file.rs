//! Reading a file that holds a secret (the credentials file, the HS256 secret, the TLS key).
//!
//! The file is opened once and everything is checked on the open handle, so it cannot be
//! swapped between the check and the read. Symlinks are followed: a Kubernetes Secret volume
//! is a chain of them (`key -> ..data/key -> ..2026_11_24/key`). The rules:
//! - never readable or writable by others (`o` bits): refused;
//! - group-readable is accepted when the file's group is one of ccgate's own groups: that is
//!   how a Secret mounted with `fsGroup` reaches a non-root container (mode 0440 or 0640);
//!   group-writable is refused;
//! - owned by ccgate's user or by root (Secret volumes are root-owned).

use std::io::Read;
use std::path::Path;

/// Reads the secret at `path`; `what` names it in errors ("credentials file").
pub fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let mut file = std::fs::File::open(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    #[cfg(unix)]
    {
        let meta = file.metadata().map_err(|e| format!("{what} {shown}: {e}"))?;
        check(&meta, &Identity::current()).map_err(|why| format!("{what} {shown}: {why}"))?;
    }
    let mut data = Vec::new();
    file.read_to_end(&mut data).map_err(|e| format!("{what} {shown}: {e}"))?;
    Ok(data)
}

/// Who ccgate runs as: effective user, and every group it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    /// From `/proc/self/status` (effective uid; effective gid and the supplementary groups).
    /// Where that is missing, an identity that accepts only owner-only files.
    pub fn current() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()).collect())
                .unwrap_or_default()
        };
        // "Uid:" and "Gid:" list real, effective, saved and filesystem ids.
        let uid = field("Uid:").get(1).copied().unwrap_or(u32::MAX);
        let mut groups = field("Groups:");
        groups.extend(field("Gid:").get(1));
        Self { uid, groups }
    }
}

#[cfg(unix)]
fn check(meta: &std::fs::Metadata, me: &Identity) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o777;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if mode & 0o007 != 0 {
        return Err(format!("others may read or write it (mode {mode:o}); chmod 600 (or 640 for a group)"));
    }
    if mode & 0o020 != 0 {
        return Err(format!("its group may write it (mode {mode:o}); chmod 600 or 640"));
    }
    if mode & 0o040 != 0 && !me.groups.contains(&meta.gid()) {
        return Err(format!(
            "readable by group {}, which ccgate's user is not in (mode {mode:o}); chmod 600, or run ccgate with that group (Kubernetes: fsGroup)",
            meta.gid()
        ));
    }
    if meta.uid() != me.uid && meta.uid() != 0 {
        return Err(format!("owned by uid {}, neither ccgate's user ({}) nor root", meta.uid(), me.uid));
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn file(mode: u32) -> (std::path::PathBuf, std::fs::Metadata) {
        let dir = std::env::temp_dir().join(format!("ccgate-secret-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("secret");
        std::fs::write(&p, b"s3cret").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let meta = std::fs::metadata(&p).unwrap();
        (p, meta)
    }

    #[test]
    fn modes_and_groups() {
        let (_, m) = file(0o600);
        let me = Identity { uid: m.uid(), groups: vec![] };
        assert!(check(&m, &me).is_ok());
        for bad in [0o644, 0o604, 0o606, 0o660, 0o620] {
            let (_, m) = file(bad);
            assert!(check(&m, &Identity { uid: m.uid(), groups: vec![m.gid()] }).is_err(), "{bad:o}");
        }
        // Group-readable: only for a group ccgate is in (Kubernetes fsGroup).
        for mode in [0o440, 0o640] {
            let (_, m) = file(mode);
            assert!(check(&m, &Identity { uid: m.uid(), groups: vec![m.gid()] }).is_ok(), "{mode:o}");
            let err = check(&m, &Identity { uid: m.uid(), groups: vec![m.gid().wrapping_add(1)] }).unwrap_err();
            assert!(err.contains("fsGroup"), "{err}");
        }
        // Someone else's file.
        let (_, m) = file(0o600);
        if m.uid() != 0 {
            assert!(check(&m, &Identity { uid: m.uid() + 1, groups: vec![] }).unwrap_err().contains("owned by"));
        }
    }

    #[test]
    fn follows_symlinks_like_a_secret_volume_and_reads_from_the_checked_handle() {
        let (p, _) = file(0o600);
        let dir = p.parent().unwrap();
        std::os::unix::fs::symlink(&p, dir.join("..data")).unwrap();
        std::os::unix::fs::symlink(dir.join("..data"), dir.join("key")).unwrap();
        assert_eq!(read(&dir.join("key"), "secret").unwrap(), b"s3cret");
        let (p, _) = file(0o644);
        let err = read(&p, "credentials file").unwrap_err();
        assert!(err.starts_with("credentials file ") && err.contains("others may read"), "{err}");
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn identity_of_this_process() {
        let me = Identity::current();
        assert_ne!(me.uid, u32::MAX, "read from /proc/self/status");
        assert!(!me.groups.is_empty());
    }
}
