//! The control plane's vocabularies: how a key-set fetch and a reload ended.

use super::label_enum;

label_enum! {
    /// How a fetch of an identity provider's keys ended; the `result` label of
    /// `ccgate_jwks_fetches_total`: `unreachable` (no connection, TLS refused, no answer in
    /// time), `http_error` (a status other than 200), `invalid` (not a JWK Set, no usable key,
    /// a discovery document for another issuer).
    JwksFetchResult {
        Ok => "ok",
        Unreachable => "unreachable",
        HttpError => "http_error",
        Invalid => "invalid",
    }
}

label_enum! {
    /// How a reload ended; the `result` label of `ccgate_config_reloads_total` and
    /// `ccgate_tls_certificate_reloads_total`.
    ReloadResult {
        Ok => "ok",
        Failed => "failed",
    }
}
