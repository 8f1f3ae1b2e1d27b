//! Terminations gathered across requests: calls to terminate made within `GATHER` of each
//! other share one TerminateInstances per 1000 ids, so deleting a hundred requests at once
//! costs a call or two, not a hundred. The first call opens a batch and a task that sends it
//! after `GATHER`; every caller waits for the answer. When a shared call fails, each caller
//! sends its own ids again on their own: one request's instance the operator may not
//! terminate (an IAM condition, say) never holds back the others' releases.

use super::ops::Ops;
use crate::provider::ProviderError;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How long a batch waits for others to join it.
const GATHER: Duration = Duration::from_millis(50);

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

/// The batch being gathered, if any.
#[derive(Default)]
pub struct Terminations {
    open: Mutex<Option<Batch>>,
}

impl Terminations {
    /// Terminates `ids` together with whatever other callers ask meanwhile.
    pub async fn terminate(self: &Arc<Self>, ops: &Ops, ids: &[String]) -> Result<(), ProviderError> {
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
            Some(Outcome::Alone) | None => ops.terminate_now(ids).await,
        }
    }
}

/// Waits `GATHER`, then sends the open batch and tells its callers how it went.
async fn send_batch(terminations: Arc<Terminations>, ops: Ops) {
    tokio::time::sleep(GATHER).await;
    let batch = terminations.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    let Some(Batch { parts, outcome }) = batch else { return };
    let mut all: Vec<String> = parts.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    let result = ops.terminate_now(&all).await;
    let settled = match result {
        Ok(()) => Outcome::Done,
        Err(error) if parts.len() == 1 => Outcome::Failed(error),
        Err(error) => {
            tracing::debug!(callers = parts.len(), %error, "a shared termination failed; each caller's ids go alone");
            Outcome::Alone
        }
    };
    outcome.send_replace(Some(settled));
}
