//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! The algorithm of client-go's leader election: a candidate takes the Lease when it is
//! free or when its record has not changed for a whole lease duration *as observed by
//! this process's own clock* (so clock skew between nodes does not matter); the holder
//! renews it every `duration / 3`. A holder that cannot renew for `renew_deadline`
//! steps down on its own before anybody else may take over, so two operators never
//! both believe they lead. On shutdown the holder releases the Lease, so the standby
//! takes over at once instead of after the lease duration.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

/// Settings of one election.
#[derive(Clone, Debug)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a record stays valid without renewal.
    pub duration: Duration,
}

impl Election {
    fn renew_period(&self) -> Duration {
        self.duration / 3
    }

    /// A holder that has not renewed for this long stops acting as leader; shorter than
    /// `duration`, so it has stepped down before a standby may take over.
    fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }
}

/// The lease record as last seen, and when this process first saw it.
struct Observed {
    record: (Option<String>, Option<MicroTime>, Option<String>),
    at: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    election: Election,
    observed: Option<Observed>,
    leading: watch::Sender<bool>,
    last_renewal: Option<Instant>,
}

enum Attempt {
    Leading,
    HeldByOther,
}

impl Elector {
    pub fn new(client: kube::Client, election: Election) -> Elector {
        Elector {
            api: Api::namespaced(client, &election.namespace),
            election,
            observed: None,
            leading: watch::channel(false).0,
            last_renewal: None,
        }
    }

    /// `true` while this process leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Campaigns and renews until `stop` fires, then releases the Lease if held.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            let result = self.attempt().await;
            let leading = match result {
                Ok(Attempt::Leading) => {
                    self.last_renewal = Some(Instant::now());
                    true
                }
                Ok(Attempt::HeldByOther) => false,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.election.name, "lease update failed");
                    self.last_renewal
                        .is_some_and(|t| t.elapsed() < self.election.renew_deadline())
                }
            };
            if *self.leading.borrow() != leading {
                tracing::info!(identity = %self.election.identity, leading, "leadership changed");
            }
            self.leading.send_replace(leading);
            let wait = if leading {
                self.election.renew_period()
            } else {
                // Candidates poll faster than the holder renews, to take over promptly.
                (self.election.duration / 5).max(Duration::from_millis(200))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        if *self.leading.borrow() {
            self.leading.send_replace(false);
            if let Err(e) = self.release().await {
                tracing::warn!(error = %e, "could not release the lease");
            }
        }
    }

    async fn attempt(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.election.name).await? else {
            return self.create(now).await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            lease.metadata.resource_version.clone(),
        );
        if self.observed.as_ref().is_none_or(|o| o.record != record) {
            self.observed = Some(Observed {
                record,
                at: Instant::now(),
            });
        }
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(self.election.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.election.duration);
        let expired = self
            .observed
            .as_ref()
            .is_some_and(|o| o.at.elapsed() > duration);
        if holder.is_some() && !mine && !expired {
            return Ok(Attempt::HeldByOther);
        }
        let mut next = lease;
        let transitions = spec.lease_transitions.unwrap_or(0);
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.election.identity.clone()),
            lease_duration_seconds: Some(self.election.duration.as_secs().max(1) as i32),
            acquire_time: if mine {
                spec.acquire_time
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        });
        // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.election.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
            Err(e) => Err(e),
        }
    }

    /// A new Lease held by this process.
    fn lease(&self, now: Timestamp) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.election.name.clone()),
                namespace: Some(self.election.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.election.identity.clone()),
                lease_duration_seconds: Some(self.election.duration.as_secs().max(1) as i32),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        }
    }

    async fn create(&mut self, now: Timestamp) -> Result<Attempt, kube::Error> {
        let lease = self.lease(now);
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldByOther),
            Err(e) => Err(e),
        }
    }

    /// Checks once, at start, that the Lease can be used at all, so a wrong namespace or
    /// missing RBAC fails the start with what to do instead of a warning every few seconds.
    /// Errors that may pass (the API server unreachable, a timeout) are left to the
    /// election loop, which retries them.
    pub async fn preflight(&self) -> Result<(), String> {
        let ns = &self.election.namespace;
        let name = &self.election.name;
        // The chart grants Leases only in the operator's own namespace, so a namespace that
        // does not exist answers 403 (no access there) rather than 404.
        let forbidden = |verb: &str| {
            format!(
                "the operator may not {verb} Leases in namespace {ns:?} (lease {name:?}): either \
                 namespace {ns:?} does not exist or it grants the operator no access to Leases; pass \
                 --lease-namespace (ACTEON_LEASE_NAMESPACE) with the operator's own namespace \
                 (where the chart's Role grants it), or create the namespace (kubectl create \
                 namespace {ns}) and grant Leases there"
            )
        };
        match self.api.get_opt(name).await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(kube::Error::Api(s)) if s.code == 403 => return Err(forbidden("read")),
            Err(e) => {
                tracing::warn!(error = %e, "lease check at start failed; retrying in the election loop");
                return Ok(());
            }
        }
        // A server-side dry run tells "no Lease yet" (fine: the election creates it) from
        // "no such namespace" (a GET answers 404 for both).
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        match self
            .api
            .create(&dry_run, &self.lease(Timestamp::now()))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Err(format!(
                "the lease namespace {ns:?} does not exist: create it (kubectl create namespace \
                 {ns}) or pass --lease-namespace (ACTEON_LEASE_NAMESPACE) with the operator's \
                 own namespace"
            )),
            Err(kube::Error::Api(s)) if s.code == 403 => Err(forbidden("create")),
            Err(e) => {
                tracing::warn!(error = %e, "lease check at start failed; retrying in the election loop");
                Ok(())
            }
        }
    }

    /// Empties the holder so a standby takes over without waiting for expiry.
    async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.election.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.election.name, &PostParams::default(), &lease)
            .await?;
        tracing::info!(lease = %self.election.name, "lease released");
        Ok(())
    }
}
