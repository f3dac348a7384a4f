//! People's display names, shown with their messages on other surfaces: remembered from
//! member events and profile look-ups, for a bounded number of people.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hashlink::LruCache;

/// People whose names are remembered; the least recently seen are forgotten first.
pub const CAPACITY: usize = 10_000;
/// How long a message waits for its sender's profile before the fallback stands in.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct DisplayNames {
    cache: Arc<Mutex<LruCache<String, String>>>,
    wait: Duration,
}

impl Default for DisplayNames {
    fn default() -> Self {
        Self::new(CAPACITY, LOOKUP_WAIT)
    }
}

impl DisplayNames {
    pub fn new(capacity: usize, wait: Duration) -> Self {
        Self { cache: Arc::new(Mutex::new(LruCache::new(capacity.max(1)))), wait }
    }

    pub fn remember(&self, user: &str, name: &str) {
        self.lock().insert(user.to_string(), name.to_string());
    }

    pub fn get(&self, user: &str) -> Option<String> {
        self.lock().get(user).cloned()
    }

    /// The remembered name of `user`, else what `lookup` finds (remembered for next
    /// time), else `fallback`. The look-up runs on a task of its own and is waited for
    /// only briefly: a slow homeserver must not hold up the message being handled; the
    /// name it sends later is there for the next message.
    pub async fn resolve<F>(&self, user: &str, fallback: String, lookup: F) -> String
    where
        F: Future<Output = Option<String>> + Send + 'static,
    {
        if let Some(name) = self.get(user) {
            return name;
        }
        let names = self.clone();
        let key = user.to_string();
        let stand_in = fallback.clone();
        let found = tokio::spawn(async move {
            let name = lookup.await.unwrap_or(stand_in);
            names.remember(&key, &name);
            name
        });
        match tokio::time::timeout(self.wait, found).await {
            Ok(Ok(name)) => name,
            _ => {
                tracing::debug!(user, "profile look-up too slow; using the fallback name");
                fallback
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<String, String>> {
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_the_most_recently_seen_names_only() {
        let names = DisplayNames::new(2, LOOKUP_WAIT);
        names.remember("@a:x", "Alice");
        names.remember("@b:x", "Bob");
        assert_eq!(names.get("@a:x").as_deref(), Some("Alice"), "reading refreshes Alice");
        names.remember("@c:x", "Carol");
        assert_eq!(names.len(), 2);
        assert_eq!(names.get("@b:x"), None, "Bob was seen least recently");
        assert_eq!(names.get("@a:x").as_deref(), Some("Alice"));
        assert_eq!(names.get("@c:x").as_deref(), Some("Carol"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_look_up_gives_way_to_the_fallback_and_is_kept_for_later() {
        let names = DisplayNames::new(10, Duration::from_secs(2));
        let slow = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Some("Alice".to_string())
        };
        assert_eq!(names.resolve("@a:x", "a".into(), slow).await, "a");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(names.get("@a:x").as_deref(), Some("Alice"), "the late answer is remembered");
        let other = async { Some("Someone else".to_string()) };
        assert_eq!(names.resolve("@a:x", "a".into(), other).await, "Alice", "a remembered name is not looked up");
        assert_eq!(names.resolve("@b:x", "b".into(), async { None }).await, "b");
    }
}
