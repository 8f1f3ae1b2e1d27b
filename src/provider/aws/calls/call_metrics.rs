//! Counts every AWS call of a provider — by service, operation and outcome — and times it, SDK
//! retries included: one interceptor attached to each of the provider's clients.

use crate::metrics::Metrics;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use std::sync::Arc;
use std::time::Instant;

/// The interceptor; clone it into each client of the provider.
#[derive(Clone, Debug)]
pub struct CallMetrics {
    pub provider: String,
    pub metrics: Arc<Metrics>,
}

#[derive(Clone, Debug)]
struct Started(Instant);

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

/// What became of a call: from the HTTP status of its last answer, when there was one.
pub fn outcome(succeeded: bool, status: Option<u16>) -> &'static str {
    match (succeeded, status) {
        (true, _) => "ok",
        (false, Some(429 | 503)) => "throttled",
        (false, Some(s)) if s >= 500 => "server_error",
        (false, Some(_)) => "client_error",
        (false, None) => "no_response",
    }
}

impl Intercept for CallMetrics {
    fn name(&self) -> &'static str {
        "orb-call-metrics"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        cfg.interceptor_state().store_put(Started(Instant::now()));
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let took = cfg.load::<Started>().map(|s| s.0.elapsed()).unwrap_or_default();
        let (service, operation) = cfg.load::<Metadata>().map_or(("unknown", "unknown"), |m| (m.service(), m.name()));
        let succeeded = matches!(context.output_or_error(), Some(Ok(_)));
        let status = context.response().map(|r| r.status().as_u16());
        self.metrics.aws_call(&self.provider, service, operation, outcome(succeeded, status), took);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_from_the_last_answer() {
        assert_eq!(outcome(true, Some(200)), "ok");
        assert_eq!(outcome(false, Some(400)), "client_error");
        assert_eq!(outcome(false, Some(503)), "throttled");
        assert_eq!(outcome(false, Some(500)), "server_error");
        assert_eq!(outcome(false, None), "no_response");
    }
}
