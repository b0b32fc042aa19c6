//! Listeners: the app-facing proxy listener, the admin listener, and the shared accept loop.

pub mod body;
pub mod listener;

pub use listener::{spawn, ConnectionMetrics, Handler, ServeOptions, Served, Shutdown};
