//! Listeners: the app-facing proxy listener, the admin listener, and the shared accept loop.

pub mod admin;
pub mod body;
pub mod listener;
pub mod status_page;

pub use listener::{spawn, ConnectionMetrics, Handler, ServeOptions, Served, Shutdown};
