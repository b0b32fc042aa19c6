//! The wall clock, in one place: Unix time for people (log and view times), for JWT `exp` and
//! `iat`, and for the in-memory store. Nothing compares one replica's reading with another's:
//! Redis's own clock (`TIME` in the scripts) decides every age that replicas share.

/// Unix time in milliseconds; 0 on a clock set before 1970 rather than a panic.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Unix time in whole seconds (JWT claims).
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}
