//! The AWS call budget of one provider: two token buckets — describe calls and mutating calls —
//! set below EC2's published request-rate buckets, that every HTTP attempt of every client of
//! the provider waits on (SDK retries included, so a retry storm is paced too). Whatever
//! throttling still happens is retried by the SDK and then requeued with jitter by the
//! controller.
//!
//! An interceptor names the class of each call (from its operation name) on the HTTP request;
//! a wrapper around the provider's HTTP client waits for that class's bucket before sending, and
//! times the attempt from then on (`CallClass::attempt_timeout`), so a call queued behind the budget never
//! fails as a timeout. A describe that got no answer in time is not sent again by the SDK: the
//! service is most likely still building that answer, and the same call at once only adds to
//! its load (against a struggling region or an emulator, each abandoned describe keeps it busy,
//! and three at a time for every one the operator needs turn slowness into a standstill). Its
//! caller tries again — the poller at its next cycle, in smaller lists (`id_lists`). A
//! mutating call's attempt is retried: its client token makes that safe, and an unknown
//! outcome costs more than a repeat. At most `MUTATING_IN_FLIGHT` mutating calls are out at
//! once, however many reconciles run.
//! The buckets are `governor`'s, read through the tokio clock so tests can pause time.

use super::call_metrics::CallMetrics;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, Metadata};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use governor::{Quota, RateLimiter, clock, middleware::NoOpMiddleware, state};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

/// Longest one HTTP attempt of a describe call may take once it is sent (the SDK's own attempt
/// timeout is off: it would also count the wait for the budget).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one HTTP attempt of a mutating call may take once it is sent. Longer than a
/// describe's: a create whose answer is given up on has an unknown outcome, so its attempt is
/// replayed (same client token) — a mutating call and, where tokens are not honoured (an
/// emulator), a second launch. EC2 can take several seconds to answer a large RunInstances or
/// CreateFleet under load; a slow answer is waited for rather than turned into a replay.
pub const MUTATE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Mutating calls of one provider in flight at once. EC2 takes many at once, but an endpoint
/// that answers one call after another (a struggling region, an emulator) answers the last of
/// a burst late — and each mutating answer given up on is an unknown outcome, which costs a
/// replay and a listing to find what it made. Sixteen at a time still sends the budget's burst
/// of 40 within a second where a call takes a fifth of one.
pub const MUTATING_IN_FLIGHT: usize = 16;

/// The longest the SDK's standard retry mode waits between two attempts of a call.
const SDK_MOST_BACKOFF: Duration = Duration::from_secs(20);

/// Longest the SDK lets one call take, its waits in this budget and its retries included (its
/// operation timeout): a backstop, as each attempt is bounded once sent. It outlasts the
/// longest a mutating call can queue here before it is sent — behind every reconcile's call,
/// `MUTATING_IN_FLIGHT` at a time, each waiting for its token and then out for at most an
/// attempt's time — and then its own `attempts`: a call given up on while still queued would
/// look like one whose answer was lost (an unknown outcome: a listing and a replay for a call
/// AWS never received). 278 s with the defaults.
pub fn operation_timeout(attempts: u32, rates: Rates) -> Duration {
    let tokens = Duration::from_secs(MUTATING_IN_FLIGHT as u64).div_f64(f64::from(rates.mutate_rate.max(1)));
    let round = MUTATE_ATTEMPT_TIMEOUT + tokens;
    let rounds_ahead = u32::from(crate::controller::WORKERS).div_ceil(MUTATING_IN_FLIGHT as u32);
    round * (rounds_ahead + attempts) + SDK_MOST_BACKOFF * attempts.saturating_sub(1)
}

/// A describe that got no answer within its attempt's time (`errors::classify` names it
/// `Timeout`). A connector error of no kind, which the SDK's retry classifiers leave alone.
#[derive(Debug)]
pub struct NoAnswer(pub Duration);

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer within {:?}", self.0)
    }
}

impl std::error::Error for NoAnswer {}

/// The two kinds of AWS calls EC2 budgets separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallClass {
    /// Describe*, Get*, List*: EC2's non-mutating bucket (100 burst, 20/s refill).
    Describe,
    /// Everything else: EC2's mutating bucket (50 burst, 5/s refill).
    Mutate,
}

impl CallClass {
    /// How long one attempt of a call of this class may take once sent.
    pub fn attempt_timeout(self) -> Duration {
        match self {
            CallClass::Describe => ATTEMPT_TIMEOUT,
            CallClass::Mutate => MUTATE_ATTEMPT_TIMEOUT,
        }
    }

    pub fn of(operation: &str) -> Self {
        if ["Describe", "Get", "List"].iter().any(|p| operation.starts_with(p)) { Self::Describe } else { Self::Mutate }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Describe => "describe",
            Self::Mutate => "mutate",
        }
    }
}

/// Rates (calls per second) and bursts of the two buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rates {
    pub describe_rate: u32,
    pub describe_burst: u32,
    pub mutate_rate: u32,
    pub mutate_burst: u32,
}

impl Default for Rates {
    /// 80% of EC2's published buckets: the account's other tools keep a share.
    fn default() -> Self {
        Self { describe_rate: 16, describe_burst: 80, mutate_rate: 4, mutate_burst: 40 }
    }
}

/// `std::time::Instant` read from tokio's clock, which tests can pause and advance.
#[derive(Clone, Debug, Default)]
pub struct TokioClock;

impl clock::Clock for TokioClock {
    type Instant = std::time::Instant;
    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

type Bucket = RateLimiter<state::NotKeyed, state::InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>;

fn bucket(rate: u32, burst: u32) -> Bucket {
    let one = NonZeroU32::MIN;
    let quota =
        Quota::per_second(NonZeroU32::new(rate).unwrap_or(one)).allow_burst(NonZeroU32::new(burst).unwrap_or(one));
    RateLimiter::direct_with_clock(quota, TokioClock)
}

/// The provider's two buckets; waits are counted in the provider's metrics.
pub struct Budget {
    describe: Bucket,
    mutate: Bucket,
    /// `MUTATING_IN_FLIGHT` permits, one held by each mutating call while it is out.
    mutating: tokio::sync::Semaphore,
    calls: CallMetrics,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget").field("provider", &self.calls.provider).finish_non_exhaustive()
    }
}

impl Budget {
    pub fn new(rates: Rates, calls: CallMetrics) -> Self {
        Self {
            describe: bucket(rates.describe_rate, rates.describe_burst),
            mutate: bucket(rates.mutate_rate, rates.mutate_burst),
            mutating: tokio::sync::Semaphore::new(MUTATING_IN_FLIGHT),
            calls,
        }
    }

    /// Waits until a call of `class` may go out; a mutating call holds the permit returned
    /// while it is out. (The permit first: a call waiting for one spends no token meanwhile.)
    pub async fn acquire(&self, class: CallClass) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let (bucket, permit) = match class {
            CallClass::Describe => (&self.describe, None),
            // Never closed: `acquire` fails only on a closed semaphore.
            CallClass::Mutate => (&self.mutate, self.mutating.acquire().await.ok()),
        };
        let started = tokio::time::Instant::now();
        let mut waited = false;
        while let Err(not_until) = bucket.check() {
            waited = true;
            tokio::time::sleep(not_until.wait_time_from(clock::Clock::now(&TokioClock))).await;
        }
        if waited {
            self.calls.metrics.budget_wait(&self.calls.provider, class.as_str(), started.elapsed());
        }
        permit
    }
}

/// Names each call's class on its HTTP request (from the operation's name).
#[derive(Clone, Debug)]
pub struct ClassifyCalls;

impl Intercept for ClassifyCalls {
    fn name(&self) -> &'static str {
        "orb-classify-calls"
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let class = cfg.load::<Metadata>().map_or(CallClass::Mutate, |m| CallClass::of(m.name()));
        context.request_mut().add_extension(class);
        Ok(())
    }
}

/// The provider's HTTP client, waiting on the budget before each request.
#[derive(Clone, Debug)]
pub struct Paced {
    inner: SharedHttpClient,
    budget: Arc<Budget>,
}

impl Paced {
    pub fn new(inner: SharedHttpClient, budget: Arc<Budget>) -> Self {
        Self { inner, budget }
    }
}

impl HttpClient for Paced {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(PacedConnector {
            inner: self.inner.http_connector(settings, components),
            budget: self.budget.clone(),
        })
    }
}

#[derive(Debug)]
struct PacedConnector {
    inner: SharedHttpConnector,
    budget: Arc<Budget>,
}

impl HttpConnector for PacedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        // A request no interceptor classified (none should exist) is paced as mutating, the
        // scarcer budget.
        let class = request.extension::<CallClass>().copied().unwrap_or(CallClass::Mutate);
        let (inner, budget) = (self.inner.clone(), self.budget.clone());
        HttpConnectorFuture::new(async move {
            let _out = budget.acquire(class).await;
            // The attempt's own time starts once it may go out: a call queued behind the
            // budget is not a timed-out call (which would look like an unknown outcome).
            let limit = class.attempt_timeout();
            use aws_smithy_runtime_api::client::result::ConnectorError;
            match (tokio::time::timeout(limit, inner.call(request)).await, class) {
                (Ok(answer), _) => answer,
                (Err(_), CallClass::Describe) => Err(ConnectorError::other(NoAnswer(limit).into(), None)),
                (Err(_), CallClass::Mutate) => Err(ConnectorError::timeout(NoAnswer(limit).into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(rates: Rates) -> (Budget, Arc<crate::metrics::Metrics>) {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        (Budget::new(rates, CallMetrics { provider: "p".into(), metrics: metrics.clone() }), metrics)
    }

    #[test]
    fn reads_are_describes_and_the_rest_mutates() {
        for op in ["DescribeInstances", "DescribeFleetHistory", "GetParameter", "GetRole", "ListRoles"] {
            assert_eq!(CallClass::of(op), CallClass::Describe, "{op}");
        }
        for op in ["RunInstances", "CreateFleet", "TerminateInstances", "ModifyFleet", "DeleteLaunchTemplate"] {
            assert_eq!(CallClass::of(op), CallClass::Mutate, "{op}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_burst_go_out_at_the_refill_rate() {
        let rates = Rates { describe_rate: 2, describe_burst: 4, mutate_rate: 1, mutate_burst: 1 };
        let (budget, metrics) = budget(rates);
        let start = tokio::time::Instant::now();
        let mut sent_at = vec![];
        for _ in 0..10 {
            budget.acquire(CallClass::Describe).await;
            sent_at.push(start.elapsed().as_millis());
        }
        // Four at once (the burst), then one every 500 ms.
        assert_eq!(sent_at, [0, 0, 0, 0, 500, 1000, 1500, 2000, 2500, 3000]);
        // The mutating bucket is separate: its one token is still there.
        let before = start.elapsed();
        budget.acquire(CallClass::Mutate).await;
        assert_eq!(start.elapsed(), before, "describes never spend the mutating budget");
        budget.acquire(CallClass::Mutate).await;
        assert_eq!((start.elapsed() - before).as_millis(), 1000);
        let text = metrics.render([]);
        assert!(text.contains(r#"orb_aws_rate_limit_waits_total{provider="p",class="describe"} 6"#), "{text}");
        assert!(text.contains(r#"orb_aws_rate_limit_waits_total{provider="p",class="mutate"} 1"#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_is_timed_from_when_it_may_go_out() {
        /// A server that never answers.
        #[derive(Debug)]
        struct Silent;
        impl HttpConnector for Silent {
            fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
                HttpConnectorFuture::new(futures::future::pending())
            }
        }
        let (budget, _) = budget(Rates { mutate_rate: 1, mutate_burst: 1, ..Rates::default() });
        let budget = Arc::new(budget);
        // The burst is spent: the next call first waits a second for the budget.
        budget.acquire(CallClass::Mutate).await;
        let connector = PacedConnector { inner: SharedHttpConnector::new(Silent), budget };
        let mut request = HttpRequest::new(aws_smithy_types::body::SdkBody::empty());
        request.add_extension(CallClass::Mutate);
        let start = tokio::time::Instant::now();
        let error = connector.call(request).await.expect_err("no answer");
        assert!(error.is_timeout(), "{error:?}");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1) + MUTATE_ATTEMPT_TIMEOUT,
            "the wait is not part of the attempt"
        );
    }

    /// Every reconcile sends a mutating call at once to an endpoint that takes an attempt's
    /// whole time to answer each: the last is sent, and has its own attempts' time, well
    /// within the operation timeout — else the SDK would give it up while still queued, and a
    /// call never sent would look like a lost answer.
    #[tokio::test(start_paused = true)]
    async fn a_mutating_call_queued_behind_every_worker_is_sent_within_the_operation_timeout() {
        const ATTEMPTS: u32 = 3;
        for rates in [Rates::default(), Rates { mutate_rate: 1, mutate_burst: 1, ..Rates::default() }] {
            let budget = Arc::new(budget(rates).0);
            let start = tokio::time::Instant::now();
            let calls = (0..crate::controller::WORKERS).map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    let _out = budget.acquire(CallClass::Mutate).await;
                    let sent = start.elapsed();
                    tokio::time::sleep(MUTATE_ATTEMPT_TIMEOUT).await;
                    sent
                })
            });
            let last_sent = futures::future::join_all(calls).await.into_iter().map(Result::unwrap).max().unwrap();
            let timeout = operation_timeout(ATTEMPTS, rates);
            assert!(
                timeout >= last_sent + (MUTATE_ATTEMPT_TIMEOUT + SDK_MOST_BACKOFF) * ATTEMPTS,
                "{rates:?}: the last call was sent after {last_sent:?}; the operation timeout is {timeout:?}"
            );
        }
        assert_eq!(operation_timeout(ATTEMPTS, Rates::default()), Duration::from_secs(278));
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_sixteen_mutating_calls_are_out_at_once_and_describes_are_not_held() {
        /// A server that answers each call after a second, counting the calls it holds.
        #[derive(Debug, Default)]
        struct Slow {
            out: std::sync::atomic::AtomicUsize,
            most: std::sync::atomic::AtomicUsize,
        }
        #[derive(Debug)]
        struct SlowConnector(Arc<Slow>);
        impl HttpConnector for SlowConnector {
            fn call(&self, _request: HttpRequest) -> HttpConnectorFuture {
                use std::sync::atomic::Ordering::SeqCst;
                let slow = self.0.clone();
                HttpConnectorFuture::new(async move {
                    let now = slow.out.fetch_add(1, SeqCst) + 1;
                    slow.most.fetch_max(now, SeqCst);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    slow.out.fetch_sub(1, SeqCst);
                    Ok(aws_smithy_runtime_api::http::Response::new(
                        200.try_into().unwrap(),
                        aws_smithy_types::body::SdkBody::empty(),
                    ))
                })
            }
        }
        let lifted = Rates { describe_rate: 1000, describe_burst: 1000, mutate_rate: 1000, mutate_burst: 1000 };
        for (class, most, took) in [(CallClass::Mutate, MUTATING_IN_FLIGHT, 3), (CallClass::Describe, 40, 1)] {
            let slow = Arc::new(Slow::default());
            let connector = Arc::new(PacedConnector {
                inner: SharedHttpConnector::new(SlowConnector(slow.clone())),
                budget: Arc::new(budget(lifted).0),
            });
            let start = tokio::time::Instant::now();
            let calls = (0..40).map(|_| {
                let mut request = HttpRequest::new(aws_smithy_types::body::SdkBody::empty());
                request.add_extension(class);
                connector.call(request)
            });
            for answer in futures::future::join_all(calls).await {
                answer.expect("answered");
            }
            let most_out = slow.most.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(most_out, most, "{class:?}: most calls out at once");
            assert_eq!(start.elapsed(), Duration::from_secs(took), "{class:?}: 40 calls of 1 s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_bucket() {
        let (budget, _) = budget(Rates { describe_rate: 10, describe_burst: 5, ..Rates::default() });
        let budget = Arc::new(budget);
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = (0..25)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    budget.acquire(CallClass::Describe).await;
                    start.elapsed()
                })
            })
            .collect();
        let mut done = vec![];
        for t in tasks {
            done.push(t.await.unwrap());
        }
        done.sort();
        // 5 at once, then 20 more at 10/s: the last one 2 s in, never earlier.
        assert_eq!(done.iter().filter(|d| d.is_zero()).count(), 5);
        assert_eq!(done.last().unwrap().as_millis(), 2000);
        for (i, d) in done.iter().enumerate().skip(5) {
            assert!(d.as_millis() >= ((i - 4) * 100) as u128, "call {i} went out at {d:?}");
        }
    }
}
