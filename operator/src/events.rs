//! Kubernetes Events about ChatChannels (`events.k8s.io/v1`), what
//! `kubectl describe chch NAME` shows.
//!
//! kube-runtime's `Recorder` folds every event with the same type, action,
//! reason and object into one series and keeps the *first* note, so from a
//! channel's second move on `describe` named an old owner. Here an event
//! only joins a series when its note is the same too (the same warning
//! repeating, e.g. `RedisUnavailable` with the same error); a different
//! note (a new owner, a new epoch) is a new Event. The series cache is
//! swept once a minute instead of on every publish, so publishing stays
//! O(1) with 10,000 channels.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::EventType;
use serde_json::json;

/// An event repeating within this window joins the previous one's series
/// (the Kubernetes event recorder uses the same window).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);
/// How often the cache drops series older than the window.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// events.k8s.io limits `note` to 1 kB.
const MAX_NOTE: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    namespace: String,
    /// uid, else name, of the object the event is about.
    object: String,
    type_: &'static str,
    reason: String,
    note: String,
}

#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Instant,
}

#[derive(Debug)]
struct Cache {
    series: HashMap<SeriesKey, Series>,
    swept: Instant,
}

/// Publishes Events for one reporting controller instance.
pub struct Events {
    client: kube::Client,
    controller: String,
    instance: String,
    cache: Mutex<Cache>,
}

fn type_str(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// `note` cut to the API's limit on a character boundary.
fn bounded(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut cut = MAX_NOTE - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

impl Events {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Events {
        Events {
            client,
            controller: controller.to_string(),
            instance: instance.to_string(),
            cache: Mutex::new(Cache { series: HashMap::new(), swept: Instant::now() }),
        }
    }

    /// Publishes one event about `regarding`: a new Event, or the next
    /// count of the same event (same type, reason and note) seen within
    /// the last 6 minutes.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let note = bounded(note);
        let key = SeriesKey {
            namespace: namespace.clone(),
            object: regarding.uid.clone().or_else(|| regarding.name.clone()).unwrap_or_default(),
            type_: type_str(type_),
            reason: reason.to_string(),
            note: note.clone(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let repeat = {
            let mut cache = self.cache.lock().expect("event cache lock");
            let now = Instant::now();
            if now.duration_since(cache.swept) >= SWEEP_EVERY {
                cache.series.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
                cache.swept = now;
            }
            cache.series.get(&key).filter(|s| now.duration_since(s.last) < SERIES_WINDOW).cloned()
        };
        if let Some(series) = repeat {
            let count = series.count + 1;
            let patch = json!({"series": EventSeries {
                count,
                last_observed_time: MicroTime(Timestamp::now()),
            }});
            match api.patch(&series.name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    self.remember(key, series.name, count);
                    return Ok(());
                }
                // Gone (expired, or removed by hand): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let now = Timestamp::now();
        let name =
            format!("{}.{:x}", regarding.name.as_deref().unwrap_or(&self.controller), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..Default::default()
            },
            action: Some(action.to_string()),
            reason: Some(reason.to_string()),
            note: Some(note),
            type_: Some(type_str(type_).to_string()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.remember(key, name, 1);
        Ok(())
    }

    fn remember(&self, key: SeriesKey, name: String, count: i32) {
        let mut cache = self.cache.lock().expect("event cache lock");
        cache.series.insert(key, Series { name, count, last: Instant::now() });
    }

    /// Series currently remembered (for tests and metrics).
    pub fn cached(&self) -> usize {
        self.cache.lock().expect("event cache lock").series.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_bounded_on_a_char_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(700); // 1400 bytes
        let b = bounded(long);
        assert!(b.len() <= MAX_NOTE, "{}", b.len());
        assert!(b.ends_with("..."));
    }
}
