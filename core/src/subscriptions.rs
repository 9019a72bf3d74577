//! Managing subscriptions: validation, ownership rules and cache invalidation in one place, for
//! the REST API and the Kubernetes operator alike; and the state changes Herald makes itself
//! (disabling a failing endpoint, secret rotation).
//!
//! No write reverts another: a client's change (PUT, PATCH, rotation, an owner's apply) is a
//! read-modify-replace under the version it read, redone on the latest record when another
//! client write came between (see [`Subscriptions::read_modify_replace`]); Herald's own writes
//! (disable, `failing_since`) change only their fields, in one atomic store step, and a
//! replace never writes health fields it read (it keeps the stored ones, or clears them to
//! re-enable). Failure point: a client write that loses the race [`REPLACE_TRIES`] times in a
//! row is answered 409 (nothing written).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::backend::{HealthChange, Intake, ReplaceHealth};
use crate::cache::SubscriptionCache;
use crate::error::{Error, ValidationError};
use crate::ids::SubscriptionId;
use crate::model::{Owner, Subscription};
use crate::spec::{SubscriptionPatch, SubscriptionSpec, ValidSpec};
use crate::ssrf::TargetGuard;
use crate::target::TargetUrl;

/// Who asks for a change: the REST API may not touch subscriptions another owner manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Api,
    Owner(Owner),
}

pub const MAX_PAGE: usize = 500;
/// The longest a previous secret may stay valid after a rotation.
pub const MAX_SECRET_OVERLAP: Duration = Duration::from_secs(7 * 24 * 3600);
const DEFAULT_SECRET_OVERLAP: Duration = Duration::from_secs(24 * 3600);

pub fn check_overlap(d: Duration) -> Result<Duration, String> {
    if d > MAX_SECRET_OVERLAP {
        Err("the overlap must be at most 7 days".into())
    } else {
        Ok(d)
    }
}

/// What the API shows instead of a custom header's value: headers often carry credentials
/// (`Authorization`, API keys of the receiver), and answers end up in logs and browsers.
pub const MASKED_HEADER_VALUE: &str = "********";

pub struct Subscriptions {
    cache: Arc<SubscriptionCache>,
    queue: Arc<dyn Intake>,
    guard: TargetGuard,
    secret_overlap: Duration,
}

/// A rotation's result: the subscription, and the new secret (shown this once).
pub struct Rotated {
    pub subscription: Subscription,
    pub secret: String,
}

pub struct Page {
    pub data: Vec<Subscription>,
    pub next_cursor: Option<String>,
}

impl Subscriptions {
    pub fn new(cache: Arc<SubscriptionCache>, queue: Arc<dyn Intake>, guard: TargetGuard) -> Self {
        Self {
            cache,
            queue,
            guard,
            secret_overlap: DEFAULT_SECRET_OVERLAP,
        }
    }

    /// How long a rotated-out secret stays valid when the rotation does not say.
    pub fn with_secret_overlap(mut self, overlap: Duration) -> Self {
        self.secret_overlap = overlap;
        self
    }

    pub fn cache(&self) -> &Arc<SubscriptionCache> {
        &self.cache
    }

    /// Validates a spec, also refusing targets whose literal address the SSRF guard would block
    /// (names are checked again after DNS resolution at delivery time).
    pub fn validate(&self, spec: &SubscriptionSpec) -> Result<ValidSpec, ValidationError> {
        let valid = spec.validate()?;
        let target = TargetUrl::parse(&valid.target_url)
            .map_err(|e| ValidationError::new("target_url", e.to_string()))?;
        self.guard
            .check_target(&target)
            .map_err(|blocked| ValidationError::new("target_url", blocked.to_string()))?;
        Ok(valid)
    }

    pub async fn create(
        &self,
        spec: &SubscriptionSpec,
        owner: Option<Owner>,
    ) -> Result<Subscription, Error> {
        if owner.is_none() {
            if let Some(name) = masked_names(spec).next() {
                return Err(ValidationError::new(
                    "headers",
                    format!("header {name:?} has the masked placeholder as its value; send the real value"),
                )
                .into());
            }
        }
        let v = self.validate(spec)?;
        let now = Utc::now();
        let sub = build(crate::ids::subscription_id(), v, owner, now, now);
        self.cache.store().insert(&sub).await?;
        self.cache.changed(&sub.id).await;
        Ok(sub)
    }

    pub async fn get(&self, id: &SubscriptionId) -> Result<Subscription, Error> {
        self.cache
            .store()
            .get(id)
            .await?
            .ok_or(Error::NotFound("subscription"))
    }

    pub async fn list(&self, limit: usize, cursor: Option<&str>) -> Result<Page, Error> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut data = self.cache.store().list(limit + 1, cursor).await?;
        let next_cursor = if data.len() > limit {
            data.truncate(limit);
            data.last().map(|s| s.id.to_string())
        } else {
            None
        };
        Ok(Page { data, next_cursor })
    }

    /// Replaces the writable fields of a subscription. This re-enables a disabled subscription
    /// (the change is taken as the fix) and starts its failure period afresh; a previous
    /// secret survives only while the secret stays the same.
    pub async fn update(
        &self,
        id: &SubscriptionId,
        spec: &SubscriptionSpec,
        caller: &Caller,
    ) -> Result<Subscription, Error> {
        let sub = self
            .read_modify_replace(id, ReplaceHealth::Write, |current| {
                self.updated(current, spec, caller)
            })
            .await?;
        if !sub.paused {
            // Deliveries deferred while paused go out now.
            self.queue.expedite(id).await?;
        }
        Ok(sub)
    }

    /// Applies `patch` to the latest stored record: when another write lands between the read
    /// and the write, the patch is applied again on top of it (what a client sending a partial
    /// update expects: the fields it names change, the others stay as they are now).
    pub async fn patch(
        &self,
        id: &SubscriptionId,
        patch: SubscriptionPatch,
        caller: &Caller,
    ) -> Result<Subscription, Error> {
        let sub = self
            .read_modify_replace(id, ReplaceHealth::Write, |current| {
                check_owner(current, caller)?;
                let spec = SubscriptionSpec::of(current).apply(patch.clone());
                self.updated(current, &spec, caller)
            })
            .await?;
        if !sub.paused {
            self.queue.expedite(id).await?;
        }
        Ok(sub)
    }

    /// The record a PUT of `spec` makes of `current`.
    fn updated(
        &self,
        current: &Subscription,
        spec: &SubscriptionSpec,
        caller: &Caller,
    ) -> Result<Subscription, Error> {
        check_owner(current, caller)?;
        let unmasked;
        let spec = if *caller == Caller::Api && masked_names(spec).next().is_some() {
            unmasked = keep_masked_values(spec, current)?;
            &unmasked
        } else {
            spec
        };
        let v = self.validate(spec)?;
        let mut sub = build(
            current.id.clone(),
            v,
            current.owner.clone(),
            current.created_at,
            Utc::now(),
        );
        if sub.secret == current.secret {
            sub.previous_secret = current.previous_secret.clone();
            sub.previous_secret_expires_at = current.previous_secret_expires_at;
        }
        Ok(sub)
    }

    /// Deletes a subscription; its queued deliveries end as `Failure` promptly.
    pub async fn delete(&self, id: &SubscriptionId, caller: &Caller) -> Result<(), Error> {
        let current = self.get(id).await?;
        check_owner(&current, caller)?;
        if !self.cache.store().remove(id).await? {
            return Err(Error::NotFound("subscription"));
        }
        self.cache.changed(id).await;
        self.queue.expedite(id).await?;
        Ok(())
    }
}

/// Writes made on behalf of an owner (the Kubernetes operator), which keeps its resources and
/// their subscriptions one to one. Both are idempotent: a reconcile that is retried or repeated
/// finds the subscription by its owner, so it never makes a second one.
///
/// Two appliers at once (two operator leaders for a moment, each with its own cache) both find
/// no subscription and both insert. The owner lookup is not unique in every store (MongoDB's
/// owner index is not), so the insert's id is derived from the owner's unique key
/// ([`crate::ids::owned_subscription_id`]): both insert the same id, the store's unique id
/// refuses the second, and that applier updates the first one's record instead.
/// `delete_owned` removes every record of the owner, so one left by an older version (random
/// ids) goes too.
impl Subscriptions {
    /// Makes the owner's subscription match `spec`: creates it when the owner has none, else
    /// replaces its writable fields, keeping its id, creation time and (when `spec` names no
    /// secret) its secret, so that deliveries a receiver verifies never turn unsigned by
    /// accident. When the secret changes, the old one stays valid for the secret overlap, as
    /// after a rotation, so deliveries in flight still verify. A spec equal to what is stored
    /// writes nothing (and so does not re-enable a disabled endpoint); a changed one re-enables
    /// it, as a REST update does.
    ///
    /// `new_id` is the id a new subscription gets: the same for every applier of this owner
    /// (see above), a canonical subscription id.
    pub async fn apply_owned(
        &self,
        owner: &Owner,
        new_id: &str,
        spec: &SubscriptionSpec,
    ) -> Result<Subscription, Error> {
        crate::ids::parse_subscription_id(new_id)
            .map_err(|e| ValidationError::new("id", e.to_string()))?;
        let v = self.validate(spec)?;
        let store = self.cache.store();
        let current = match store.find_by_owner(owner).await? {
            Some(current) => current,
            None => {
                let now = Utc::now();
                let sub = build(new_id.into(), v.clone(), Some(owner.clone()), now, now);
                match store.insert(&sub).await {
                    Ok(()) => {
                        self.cache.changed(&sub.id).await;
                        return Ok(sub);
                    }
                    // Another apply for this owner won the insert: update its record instead.
                    Err(crate::StoreError::Conflict(_)) => store
                        .find_by_owner(owner)
                        .await?
                        .ok_or(Error::NotFound("subscription"))?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let mut v = v;
        if v.secret.is_none() {
            v.secret = current.secret.clone();
        }
        let now = Utc::now();
        let mut sub = build(
            current.id.clone(),
            v,
            Some(owner.clone()),
            current.created_at,
            now,
        );
        if same_spec(&sub, &current) {
            return Ok(current);
        }
        if sub.secret == current.secret {
            sub.previous_secret = current.previous_secret.clone();
            sub.previous_secret_expires_at = current.previous_secret_expires_at;
        } else if let (Some(old), false) = (&current.secret, self.secret_overlap.is_zero()) {
            sub.previous_secret = Some(old.clone());
            sub.previous_secret_expires_at = Some(
                now + chrono::Duration::from_std(self.secret_overlap).expect("bounded to 7 days"),
            );
        }
        // Versioned write: a concurrent write makes this one fail with `Conflict`, and the
        // reconcile that called it runs again on the latest record.
        sub.version = current.version;
        store.replace(&sub, ReplaceHealth::Write).await?;
        sub.version += 1;
        self.cache.changed(&sub.id).await;
        if !sub.paused {
            // Deliveries deferred while paused go out now.
            self.queue.expedite(&sub.id).await?;
        }
        Ok(sub)
    }

    /// Deletes every subscription of the owner (`false` when it had none: a repeated delete is
    /// not an error). Their queued deliveries end as `Failure` promptly.
    pub async fn delete_owned(&self, owner: &Owner) -> Result<bool, Error> {
        /// More records for one owner than any race can make: the loop ends even if a store
        /// kept answering with a record it does not remove.
        const MAX_RECORDS: usize = 64;
        let store = self.cache.store();
        let mut removed = false;
        for _ in 0..MAX_RECORDS {
            let Some(current) = store.find_by_owner(owner).await? else {
                break;
            };
            // `false`: another deleter removed it first; look again either way.
            if store.remove(&current.id).await? {
                removed = true;
            }
            self.cache.changed(&current.id).await;
            self.queue.expedite(&current.id).await?;
        }
        Ok(removed)
    }
}

/// Whether two subscriptions have the same writable fields (what an owner's spec sets).
fn same_spec(a: &Subscription, b: &Subscription) -> bool {
    a.target_url == b.target_url
        && a.event_types == b.event_types
        && a.secret == b.secret
        && a.headers == b.headers
        && a.max_attempts == b.max_attempts
        && a.timeout_ms == b.timeout_ms
        && a.retry_schedule_ms == b.retry_schedule_ms
        && a.paused == b.paused
        && a.owner == b.owner
}

fn masked_names(spec: &SubscriptionSpec) -> impl Iterator<Item = &String> {
    spec.headers
        .iter()
        .filter(|(_, v)| v.as_str() == MASKED_HEADER_VALUE)
        .map(|(k, _)| k)
}

/// An edit sends back what the API showed, so a header whose value is the placeholder keeps
/// its stored value (the name matched case-insensitively); without a stored value to keep it
/// is refused rather than stored as eight asterisks.
fn keep_masked_values(
    spec: &SubscriptionSpec,
    current: &Subscription,
) -> Result<SubscriptionSpec, ValidationError> {
    let mut spec = spec.clone();
    for (name, value) in spec.headers.iter_mut() {
        if value != MASKED_HEADER_VALUE {
            continue;
        }
        let stored = current
            .headers
            .get(name)
            .or_else(|| {
                current
                    .headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            })
            .ok_or_else(|| {
                ValidationError::new(
                    "headers",
                    format!("header {name:?} has no stored value to keep; send its value"),
                )
            })?;
        *value = stored.clone();
    }
    Ok(spec)
}

impl Subscriptions {
    /// Replaces the secret with `secret` (or a generated one); the current secret stays valid
    /// for `overlap` (default `HERALD_SECRET_OVERLAP`, zero: not at all). An earlier previous
    /// secret is dropped: at most two secrets are active.
    pub async fn rotate_secret(
        &self,
        id: &SubscriptionId,
        secret: Option<String>,
        overlap: Option<Duration>,
        caller: &Caller,
    ) -> Result<Rotated, Error> {
        let overlap = check_overlap(overlap.unwrap_or(self.secret_overlap))
            .map_err(|m| ValidationError::new("overlap", m))?;
        // Chosen once: a rotation redone after a concurrent write answers the secret it stored.
        let secret = secret.unwrap_or_else(crate::signing::generate_secret);
        let sub = self
            .read_modify_replace(id, ReplaceHealth::Keep, |current| {
                check_owner(current, caller)?;
                if current.secret.as_deref() == Some(secret.as_str()) {
                    return Err(ValidationError::new(
                        "secret",
                        "must differ from the current secret",
                    )
                    .into());
                }
                let mut spec = SubscriptionSpec::of(current);
                spec.secret = Some(secret.clone());
                self.validate(&spec)?;
                let now = Utc::now();
                let mut sub = current.clone();
                sub.secret = Some(secret.clone());
                sub.updated_at = now;
                match &current.secret {
                    Some(old) if !overlap.is_zero() => {
                        sub.previous_secret = Some(old.clone());
                        sub.previous_secret_expires_at = Some(
                            now + chrono::Duration::from_std(overlap).expect("bounded to 7 days"),
                        );
                    }
                    _ => {
                        sub.previous_secret = None;
                        sub.previous_secret_expires_at = None;
                    }
                }
                Ok(sub)
            })
            .await?;
        Ok(Rotated {
            subscription: sub,
            secret,
        })
    }

    /// Stops deliveries to a subscription: its queued deliveries are made due now so workers
    /// end them as `Failure` with `reason`. Returns false when it was already disabled (or is
    /// gone), so one disable event is counted once. A field-level write (see
    /// [`crate::backend::SubscriptionStore::record_health`]): it never reverts a concurrent
    /// PUT, PATCH or rotation.
    pub async fn disable(
        &self,
        id: &SubscriptionId,
        reason: &str,
        kind: &'static str,
    ) -> Result<bool, Error> {
        let store = self.cache.store();
        match store.get(id).await? {
            Some(sub) if !sub.is_disabled() => {}
            _ => return Ok(false),
        }
        let change = HealthChange::Disable {
            at: Utc::now(),
            reason: reason.to_string(),
        };
        if !store.record_health(id, &change).await? {
            return Ok(false);
        }
        self.cache.changed(id).await;
        metrics::counter!(crate::telemetry::SUBSCRIPTIONS_DISABLED, "reason" => kind).increment(1);
        tracing::warn!(subscription = %id, reason, "subscription disabled");
        self.queue.expedite(id).await?;
        Ok(true)
    }

    /// Records the start (`Some`) or the end (`None`) of a run of failed attempts, as a
    /// field-level write like [`Self::disable`].
    pub async fn set_failing_since(
        &self,
        id: &SubscriptionId,
        since: Option<DateTime<Utc>>,
    ) -> Result<(), Error> {
        let store = self.cache.store();
        match store.get(id).await? {
            Some(sub) if sub.failing_since != since => {}
            _ => return Ok(()),
        }
        if store
            .record_health(id, &HealthChange::FailingSince(since))
            .await?
        {
            // Fan-out does not look at `failing_since`: no process reloads its snapshot.
            self.cache.changed_health(id).await;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The write path: every change a client asks for (PUT, PATCH, rotation) is a read-modify-replace
// under the version it read, redone when another client write came between. Herald's own
// health writes are field-level updates (`record_health`) outside the version: a replace keeps
// the stored health (a rotation) or writes its own (a PUT or PATCH re-enables), so it never
// carries health read before over a newer health write, and a stream of health writes from a
// flapping endpoint never makes a client write lose its race.
// ---------------------------------------------------------------------------------------------

/// How often a client's change is redone after losing the race to another client write before
/// the client is answered 409. Each lost round means another write succeeded meanwhile, so only
/// a record written without pause by other clients gets there.
const REPLACE_TRIES: u32 = 16;

/// The longest random pause before a lost race is redone. Two writers that lost to each other
/// and retried at once would meet again in the same place (on SQLite, the same group commit);
/// a random pause of up to 2^round ms (capped here) lets one of them through.
const REPLACE_BACKOFF_MAX_MS: u64 = 64;

/// A pause of 0 to `min(2^round, REPLACE_BACKOFF_MAX_MS)` ms, random enough to part two writers.
fn replace_backoff(round: u32) -> std::time::Duration {
    let cap = (1u64 << round.min(6)).min(REPLACE_BACKOFF_MAX_MS);
    let noise = u64::from(ulid::Ulid::new().random() as u32);
    std::time::Duration::from_millis(noise % (cap + 1))
}

impl Subscriptions {
    /// Reads the subscription, lets `change` make the new record of it, and replaces it under
    /// the version read. When another write came between (`Conflict` from the store), reads
    /// the latest record and runs `change` again. Returns the stored record (its new version).
    async fn read_modify_replace(
        &self,
        id: &SubscriptionId,
        health: ReplaceHealth,
        mut change: impl FnMut(&Subscription) -> Result<Subscription, Error>,
    ) -> Result<Subscription, Error> {
        for round in 0..REPLACE_TRIES {
            if round > 0 {
                tokio::time::sleep(replace_backoff(round)).await;
            }
            let current = self.get(id).await?;
            let mut sub = change(&current)?;
            sub.version = current.version;
            match self.cache.store().replace(&sub, health).await {
                Ok(()) => {
                    sub.version += 1;
                    self.cache.changed(id).await;
                    return Ok(sub);
                }
                Err(crate::StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict(format!(
            "subscription {id} kept changing while this change was written; try again"
        )))
    }
}

fn check_owner(sub: &Subscription, caller: &Caller) -> Result<(), Error> {
    match (&sub.owner, caller) {
        (None, _) => Ok(()),
        (Some(o), Caller::Owner(c)) if o == c => Ok(()),
        (Some(o), _) => Err(Error::Conflict(format!(
            "subscription is managed by {} resource {}/{}; change it there",
            o.kind, o.namespace, o.name
        ))),
    }
}

fn build(
    id: crate::ids::SubscriptionId,
    v: ValidSpec,
    owner: Option<Owner>,
    created_at: chrono::DateTime<Utc>,
    updated_at: chrono::DateTime<Utc>,
) -> Subscription {
    Subscription {
        id,
        target_url: v.target_url,
        event_types: v.event_types,
        secret: v.secret,
        headers: v.headers,
        max_attempts: v.max_attempts,
        timeout_ms: v.timeout_ms,
        retry_schedule_ms: v.retry_schedule_ms,
        paused: v.paused,
        owner,
        created_at,
        updated_at,
        disabled_at: None,
        disabled_reason: None,
        failing_since: None,
        previous_secret: None,
        previous_secret_expires_at: None,
        version: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_header_values_keep_the_stored_ones() {
        let mut current = crate::testkit::subscription("sub_m");
        current
            .headers
            .insert("Authorization".into(), "Bearer real".into());
        let mut spec = SubscriptionSpec::of(&current);
        spec.headers.clear();
        spec.headers
            .insert("authorization".into(), MASKED_HEADER_VALUE.into());
        spec.headers.insert("X-New".into(), "v".into());
        let kept = keep_masked_values(&spec, &current).unwrap();
        assert_eq!(kept.headers["authorization"], "Bearer real");
        assert_eq!(kept.headers["X-New"], "v");
        spec.headers
            .insert("X-Unknown".into(), MASKED_HEADER_VALUE.into());
        assert_eq!(
            keep_masked_values(&spec, &current).unwrap_err().field,
            "headers"
        );
    }
}
