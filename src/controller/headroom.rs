//! `maxMachines` enforced, not estimated: the requests of a template with a cap take turns
//! (one pass at a time per template), and each counts the machines of the others as this
//! process last wrote them — the controller's cache can lag a write by a moment, and two
//! requests planning from it at once could both take the last headroom. Templates without a
//! cap never wait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Turns and held machines, per template (`namespace/name`).
#[derive(Default)]
pub struct Headroom {
    turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Request uid -> (template key, machines it held after its last pass in this process).
    held: Mutex<HashMap<String, (String, u32)>>,
}

/// The key of a template.
pub fn template_key(namespace: &str, template: &str) -> String {
    format!("{namespace}/{template}")
}

impl Headroom {
    /// Waits for the template's turn; the turn lasts as long as the guard.
    pub async fn turn(&self, template: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = self
            .turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(template.to_string())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// Machines the template's requests other than `except` hold: per request the cache has
    /// (`cached`: uid and live machines), the larger of what it shows and what this process
    /// last recorded for it.
    pub fn elsewhere(&self, template: &str, except: &str, cached: &[(String, u32)]) -> u32 {
        let held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut per_request: HashMap<&str, u32> = HashMap::new();
        for (uid, n) in cached.iter().filter(|(uid, _)| uid != except) {
            per_request.insert(uid, *n);
        }
        // Only requests the cache still has: a request deleted elsewhere holds nothing.
        for (uid, (_, n)) in held.iter().filter(|(uid, (key, _))| *uid != except && key == template) {
            if let Some(entry) = per_request.get_mut(uid.as_str()) {
                *entry = (*entry).max(*n);
            }
        }
        per_request.values().fold(0u32, |sum, n| sum.saturating_add(*n))
    }

    /// Records the machines `uid` holds after a pass.
    pub fn hold(&self, template: &str, uid: &str, machines: u32) {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(uid.into(), (template.into(), machines));
    }

    /// Forgets a request that is gone.
    pub fn forget(&self, uid: &str) {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_others_count_at_their_freshest() {
        let h = Headroom::default();
        h.hold("grid/w", "a", 3);
        h.hold("grid/w", "me", 9);
        h.hold("grid/other", "c", 7);
        // The cache has not seen a's launch yet (1), but knows b (2).
        let cached = [("a".to_string(), 1), ("b".to_string(), 2), ("me".to_string(), 9)];
        assert_eq!(h.elsewhere("grid/w", "me", &cached), 3 + 2, "a as recorded, b from the cache, never me or c");
        h.forget("a");
        assert_eq!(h.elsewhere("grid/w", "me", &cached), 1 + 2);
        // A request gone from the cache (deleted, orphaned) holds nothing any more.
        h.hold("grid/w", "gone", 4);
        assert_eq!(h.elsewhere("grid/w", "me", &cached), 1 + 2);
    }

    #[tokio::test]
    async fn passes_of_one_template_take_turns_and_other_templates_do_not_wait() {
        let h = Arc::new(Headroom::default());
        let first = h.turn("grid/w").await;
        let waiting = tokio::spawn({
            let h = h.clone();
            async move {
                let _turn = h.turn("grid/w").await;
            }
        });
        // Another template's turn is free at once.
        drop(h.turn("grid/other").await);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second pass waits for the first");
        drop(first);
        waiting.await.unwrap();
    }
}
