//! Bounded vocabularies: enums whose every value has a fixed label, for metric labels, log
//! fields and the shared store's fields. Each enum lives with the layer whose concept it names
//! (why a session ended lives in `session`); this module only makes them.

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
