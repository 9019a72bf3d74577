//! What a worker has in flight: deliveries per subscription and payload bytes. Both are held
//! by guards that give them back in `Drop`, so an attempt that panics or is cancelled can never
//! leak a slot and wedge its subscription, nor leak budget and starve the worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_core::ids::SubscriptionId;
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::Notify;

#[derive(Default)]
struct State {
    per_subscription: HashMap<SubscriptionId, usize>,
    bytes: usize,
}

/// The counters, shared by the dispatcher (which reads them for each claim) and the guards.
#[derive(Default)]
pub struct InFlight {
    state: Mutex<State>,
    released: Notify,
    /// Slots given back since the start: the dispatcher compares two readings to know how
    /// much a claim could take now.
    freed: AtomicU64,
}

impl InFlight {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Deliveries in flight per subscription (subscriptions with none are absent).
    pub fn per_subscription(&self) -> HashMap<SubscriptionId, usize> {
        self.lock().per_subscription.clone()
    }

    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    pub fn is_empty(&self) -> bool {
        self.lock().per_subscription.is_empty()
    }

    /// Counts one delivery of `subscription` until the slot is dropped.
    pub fn enter(self: &Arc<Self>, subscription: &SubscriptionId) -> Slot {
        *self
            .lock()
            .per_subscription
            .entry(subscription.clone())
            .or_default() += 1;
        Slot {
            owner: self.clone(),
            subscription: subscription.clone(),
        }
    }

    /// Counts `bytes` of payload until the charge is dropped (jobs sharing a payload share the
    /// charge through an `Arc`).
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        self.lock().bytes += bytes;
        Charge {
            owner: self.clone(),
            bytes,
        }
    }

    /// How many slots have been given back since the start.
    pub fn slots_freed(&self) -> u64 {
        self.freed.load(Ordering::Acquire)
    }

    /// Resolves once a slot or a charge has been given back since the last call.
    pub async fn released(&self) {
        self.released.notified().await
    }
}

/// One delivery counted against its subscription's concurrency.
pub struct Slot {
    owner: Arc<InFlight>,
    subscription: SubscriptionId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut st = self.owner.lock();
            if let Some(n) = st.per_subscription.get_mut(&self.subscription) {
                *n -= 1;
                if *n == 0 {
                    st.per_subscription.remove(&self.subscription);
                }
            }
        }
        self.owner.freed.fetch_add(1, Ordering::AcqRel);
        self.owner.released.notify_one();
    }
}

/// Payload bytes counted against the worker's budget.
pub struct Charge {
    owner: Arc<InFlight>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        {
            let mut st = self.owner.lock();
            st.bytes = st.bytes.saturating_sub(self.bytes);
        }
        self.owner.released.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_charges_are_given_back_on_drop() {
        let f = Arc::new(InFlight::default());
        let a1 = f.enter(&"sub_a".into());
        let a2 = f.enter(&"sub_a".into());
        let b = f.enter(&"sub_b".into());
        let c = Arc::new(f.charge(1000));
        let shared = c.clone();
        assert_eq!(f.per_subscription()["sub_a"], 2);
        assert_eq!(f.bytes(), 1000);
        drop((a1, b, c));
        assert_eq!(f.per_subscription(), HashMap::from([("sub_a".into(), 1)]));
        assert_eq!(f.bytes(), 1000, "still shared by another job");
        assert_eq!(f.slots_freed(), 2, "charges are not slots");
        drop((a2, shared));
        assert_eq!(f.slots_freed(), 3);
        assert!(f.is_empty());
        assert_eq!(f.bytes(), 0);
    }

    #[tokio::test]
    async fn a_panicking_attempt_gives_its_slot_back() {
        let f = Arc::new(InFlight::default());
        let held = (f.enter(&"sub_p".into()), Arc::new(f.charge(64)));
        let task = tokio::spawn(async move {
            let _held = held;
            tokio::task::yield_now().await;
            panic!("attempt panicked");
        });
        assert!(task.await.unwrap_err().is_panic());
        assert!(f.is_empty(), "{:?}", f.per_subscription());
        assert_eq!(f.bytes(), 0);
        // And the dispatcher hears of it.
        tokio::time::timeout(std::time::Duration::from_secs(5), f.released())
            .await
            .expect("release notified");
    }
}
