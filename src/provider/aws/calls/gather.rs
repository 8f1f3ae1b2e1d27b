//! Removals gathered across requests: calls made within `GATHER` of each other share one AWS
//! call per batch of ids — TerminateInstances (1000 ids), DeleteFleets and
//! CancelSpotFleetRequests (100) — so deleting a hundred requests at once costs a call or two,
//! not a hundred. The first caller opens a batch and a task that sends it once nobody joined
//! for `GATHER` (at most `GATHER_AT_MOST` after it opened); every caller waits for the answer. When a shared call fails, each caller sends its own ids
//! again on their own: one request's resource the operator may not remove (an IAM condition,
//! say) never holds back the others' releases.

use crate::provider::ProviderError;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a batch waits for others to join it after the last one did...
const GATHER: Duration = Duration::from_millis(50);
/// ...but no longer than this after it opened.
const GATHER_AT_MOST: Duration = Duration::from_millis(500);

/// The call that removes a batch of ids (in as many AWS calls as its limit needs).
pub type Send<C> = fn(C, Vec<String>) -> BoxFuture<'static, Result<(), ProviderError>>;

/// What a batch's call came to, for its callers.
#[derive(Clone, Debug)]
enum Outcome {
    Done,
    Failed(ProviderError),
    /// The shared call failed: each caller tries its own ids alone.
    Alone,
}

struct Batch {
    /// Each caller's ids.
    parts: Vec<Vec<String>>,
    outcome: watch::Sender<Option<Outcome>>,
}

/// One kind of removal, and the batch of it being gathered, if any.
pub struct Gathered<C> {
    send: Send<C>,
    open: Mutex<Option<Batch>>,
}

impl<C: Clone + std::marker::Send + Sync + 'static> Gathered<C> {
    pub fn new(send: Send<C>) -> Arc<Self> {
        Arc::new(Self { send, open: Mutex::default() })
    }

    /// Removes `ids` together with whatever other callers ask meanwhile.
    pub async fn call(self: &Arc<Self>, ops: &C, ids: &[String]) -> Result<(), ProviderError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut outcome = {
            let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match open.as_mut() {
                Some(batch) => {
                    batch.parts.push(ids.to_vec());
                    batch.outcome.subscribe()
                }
                None => {
                    let (outcome, waiting) = watch::channel(None);
                    *open = Some(Batch { parts: vec![ids.to_vec()], outcome });
                    // Its own task: a caller that goes away (a cancelled reconcile) never
                    // strands the others.
                    tokio::spawn(send_batch(self.clone(), ops.clone()));
                    waiting
                }
            }
        };
        let settled = outcome.wait_for(Option::is_some).await.ok().and_then(|o| o.clone());
        match settled {
            Some(Outcome::Done) => Ok(()),
            Some(Outcome::Failed(error)) => Err(error),
            Some(Outcome::Alone) | None => (self.send)(ops.clone(), ids.to_vec()).await,
        }
    }
}

/// Waits until nobody joined the open batch for `GATHER` (at most `GATHER_AT_MOST`), then
/// sends it and tells its callers how it went.
async fn send_batch<C: Clone + std::marker::Send + Sync + 'static>(gathered: Arc<Gathered<C>>, ops: C) {
    let opened = tokio::time::Instant::now();
    let joined =
        || gathered.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|b| b.parts.len());
    loop {
        let before = joined();
        tokio::time::sleep(GATHER).await;
        if joined() == before || opened.elapsed() >= GATHER_AT_MOST {
            break;
        }
    }
    let batch = gathered.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let Some(Batch { parts, outcome }) = batch else { return };
    let mut all: Vec<String> = parts.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let settled = match (gathered.send)(ops, all).await {
        Ok(()) => Outcome::Done,
        Err(error) if parts.len() == 1 => Outcome::Failed(error),
        Err(error) => {
            tracing::debug!(callers = parts.len(), %error, "a shared removal failed; each caller's ids go alone");
            Outcome::Alone
        }
    };
    outcome.send_replace(Some(settled));
}
