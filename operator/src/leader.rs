//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! `kube-lease-manager` acquires and renews the lease. Because it only
//! reports a lost lease when a renewal is answered (not while the API server
//! is unreachable), a watchdog also re-reads the lease and steps down as
//! soon as it can no longer prove that this replica still holds it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tracing::warn;

pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub duration: Duration,
    pub grace: Duration,
}

/// Builds the lease manager (creating the Lease if it does not exist).
pub async fn manager(
    client: Client,
    cfg: &LeaseConfig,
) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
    LeaseManagerBuilder::new(client, &cfg.name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(cfg.duration.as_secs().max(2))
        .with_grace(cfg.grace.as_secs().max(1))
        .with_field_manager(format!("chat-operator-{}", cfg.identity))
        .build()
        .await
}

/// Whether `lease` is held by `identity` and not expired at `now`.
pub fn holds(lease: &Lease, identity: &str, now: SystemTime) -> bool {
    let Some(spec) = &lease.spec else { return false };
    if spec.holder_identity.as_deref() != Some(identity) {
        return false;
    }
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renew), Some(secs)) => {
            SystemTime::from(renew.0) + Duration::from_secs(secs.max(0) as u64) > now
        }
        _ => false,
    }
}

/// Whether the Lease, read now, names `cfg.identity` as an unexpired holder.
pub async fn confirm(client: Client, cfg: &LeaseConfig) -> bool {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    api.get(&cfg.name).await.is_ok_and(|l| holds(&l, &cfg.identity, SystemTime::now()))
}

/// Returns once leadership can no longer be confirmed: the lease names
/// another holder or expired, or it could not be read for longer than the
/// lease duration minus the grace period.
pub async fn watchdog(client: Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let budget = cfg.duration.saturating_sub(cfg.grace).max(Duration::from_secs(1));
    let period = (budget / 3).max(Duration::from_millis(200));
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(period).await;
        match api.get(&cfg.name).await {
            Ok(lease) if holds(&lease, &cfg.identity, SystemTime::now()) => {
                last_ok = tokio::time::Instant::now()
            }
            Ok(_) => {
                warn!("lease is held by someone else or expired");
                return;
            }
            Err(e) => {
                if last_ok.elapsed() > budget {
                    warn!(error = %e, "cannot confirm the lease");
                    return;
                }
            }
        }
    }
}

/// Waits until `rx` says we lead.
pub async fn until_leader(rx: &mut watch::Receiver<bool>) -> bool {
    rx.wait_for(|l| *l).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    #[test]
    fn holds_checks_holder_and_expiry() {
        let now = SystemTime::now();
        let renew = k8s_openapi::jiff::Timestamp::now();
        let lease = Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("op-0".into()),
                renew_time: Some(MicroTime(renew)),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(holds(&lease, "op-0", now));
        assert!(!holds(&lease, "op-1", now));
        assert!(!holds(&lease, "op-0", now + Duration::from_secs(16)));
        assert!(!holds(&Lease::default(), "op-0", now));
    }
}
