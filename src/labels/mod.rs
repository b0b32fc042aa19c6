//! Bounded vocabularies: enums whose every value has a fixed label, for metric labels, log
//! fields and the shared store's fields. They live here, below every layer that names them
//! (the session layer, the core, the edge and the metrics all say why a session ended), so
//! the metrics can zero and label their series without reaching up into those layers
//! (issue 38). Only `request.rs` sits above anything: a `method` is a gateway method or a
//! route, so it knows the gateway's method registry.

mod control;
mod request;
mod session;
mod store;
mod webhook;

pub use control::{JwksFetchResult, ReloadResult};
pub use request::{AuthFailureReason, ChairVerdict, MethodLabel, Outcome, UpstreamErrorKind};
pub use session::{LossReason, SessionState, SigninResult, SignoutTrigger};
pub use store::{Discarded, StoreOp, StoreReconnect};
pub use webhook::{WebhookDrop, WebhookOutcome};

/// An enum with a `&'static str` label per variant, `ALL` of them and their `COUNT`.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
            /// The value with this label (state read back from the shared store).
            pub fn from_label(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }
    };
}
pub(crate) use label_enum;
