//! Optional export of the request spans over OTLP/HTTP (`log.otlp_endpoint`, off by
//! default), with the OpenTelemetry project's crates: the batch exporter runs on its own
//! thread, so a slow or absent collector costs requests nothing but a queue slot (full
//! queues drop spans, never block). Only ccgate's request spans are exported, whatever the
//! log level; the app's W3C trace is the parent, and the gateway calls' `traceparent` names
//! the exported span, so a trace reads app → ccgate → gateway.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::gateway::trace::TraceContext;

/// Set once the exporter is installed; `link` is a no-op otherwise.
static ON: AtomicBool = AtomicBool::new(false);

/// Flushes what is queued when ccgate stops.
pub struct Exporter(SdkTracerProvider);

impl Exporter {
    pub fn shutdown(self) {
        if let Err(e) = self.0.shutdown() {
            tracing::warn!(error = %e, "OTLP exporter did not flush");
        }
    }
}

/// The subscriber layer that exports request spans to `endpoint`, and the exporter to
/// flush at exit.
pub fn layer<S>(endpoint: &str, service: &str) -> Result<(impl Layer<S>, Exporter), String>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .map_err(|e| crate::config::mask_url_secrets(&format!("log.otlp_endpoint: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("ccgate");
    ON.store(true, Ordering::Release);
    let only_requests = Targets::new().with_target("ccgate", tracing::Level::INFO);
    Ok((tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_requests), Exporter(provider)))
}

/// Makes the request's exported span a child of the app's trace (if it sent one), and the
/// request's trace context name that span, so the gateway call's `traceparent` points at it.
pub fn link(span: &tracing::Span, trace: &mut TraceContext) {
    if !ON.load(Ordering::Acquire) {
        return;
    }
    if let Some(parent) = trace.parent {
        let remote = SpanContext::new(
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
            TraceFlags::new(trace.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let cx = span.context();
    let exported = cx.span().span_context().clone();
    if exported.is_valid() {
        trace.trace_id = exported.trace_id().to_bytes();
        trace.span_id = exported.span_id().to_bytes();
        trace.flags = exported.trace_flags().to_u8();
    }
}
