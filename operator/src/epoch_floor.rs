//! The ring epoch floor: the highest epoch the operator ever published,
//! kept outside Redis so that a Redis that restarted empty *and* an
//! operator restart together still never reuse an epoch (nodes ignore a
//! ring whose epoch is lower than the one they hold).
//!
//! It lives in an annotation, [`ANNOTATION`], on the operator's own
//! leader-election Lease: only the operator writes that object (the chart's
//! Role lets the operator get and patch that one Lease by name, and users
//! of ChatChannels get no rights on Leases), unlike `status.ringEpoch` of a
//! ChatChannel, which anyone allowed to write the status subresource can
//! set. The floor is recorded *before* a new epoch is written to Redis, so
//! it is never behind what nodes may have seen.
//!
//! A value that is not a number, or above [`MAX_EPOCH`], is ignored with a
//! warning: a forged huge floor cannot push the ring to an epoch from which
//! it could not move on.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::warn;

/// Annotation of the Lease that holds the floor.
pub const ANNOTATION: &str = "chat.shardchat.io/ring-epoch";

/// The highest epoch the operator writes: 2^53 − 1, exact in every JSON
/// reader (and in the int64 `status.ringEpoch`). At one membership change
/// per second it lasts 285 million years.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// Field manager of the annotation.
const MANAGER: &str = "chat-operator-ring";

/// Where the floor is kept.
#[derive(Clone)]
pub struct FloorStore {
    pub client: Client,
    pub namespace: String,
    /// Name of the Lease (`--lease-name`).
    pub lease: String,
}

/// The floor an annotation value stands for (0 when absent or unusable).
pub fn parse(value: Option<&str>) -> u64 {
    let Some(v) = value else { return 0 };
    match v.trim().parse::<u64>() {
        Ok(e) if e <= MAX_EPOCH => e,
        Ok(e) => {
            warn!(
                annotation = ANNOTATION,
                value = e,
                max = MAX_EPOCH,
                "ring epoch floor out of range; ignored"
            );
            0
        }
        Err(_) => {
            warn!(annotation = ANNOTATION, value = %v, "ring epoch floor is not a number; ignored");
            0
        }
    }
}

impl FloorStore {
    /// Reads the floor (0 when the Lease or the annotation is missing).
    pub async fn read(&self) -> Result<u64, kube::Error> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        Ok(api
            .get_opt(&self.lease)
            .await?
            .map_or(0, |l| parse(l.annotations().get(ANNOTATION).map(String::as_str))))
    }

    /// Records `epoch` as the floor.
    pub async fn record(&self, epoch: u64) -> Result<(), kube::Error> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let patch = json!({"metadata": {"annotations": {ANNOTATION: epoch.to_string()}}});
        let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
        api.patch(&self.lease, &params, &Patch::Merge(&patch)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plausible_floors_count() {
        assert_eq!(parse(None), 0);
        assert_eq!(parse(Some("42")), 42);
        assert_eq!(parse(Some(" 7 ")), 7);
        assert_eq!(parse(Some("-1")), 0);
        assert_eq!(parse(Some("lots")), 0);
        assert_eq!(parse(Some(&MAX_EPOCH.to_string())), MAX_EPOCH);
        assert_eq!(parse(Some(&(MAX_EPOCH + 1).to_string())), 0);
        assert_eq!(parse(Some(&u64::MAX.to_string())), 0);
    }
}
