//! `[log]`: log format and level, and the OTLP export of request spans.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directives; `RUST_LOG` wins when set.
    pub level: String,
    /// OTLP/HTTP endpoint for the request spans (`http://127.0.0.1:4318/v1/traces`, an
    /// OpenTelemetry Collector beside ccgate); none, the default, exports nothing.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub otlp_service_name: String,
}

/// What traces show ccgate as unless told otherwise.
pub const DEFAULT_OTLP_SERVICE_NAME: &str = "ccgate";

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
            otlp_endpoint: None,
            otlp_service_name: DEFAULT_OTLP_SERVICE_NAME.into(),
        }
    }
}
