use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::timeout;

use super::{AdapterHealth, ChannelAdapter, ChannelConnectError};

/// How long `connect` may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default interval of the health poll.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// Holds every adapter, connects them at start and keeps their last known health.
#[derive(Default)]
pub struct ChannelRegistry {
    adapters: RwLock<Vec<Arc<dyn ChannelAdapter>>>,
    last_health: RwLock<BTreeMap<&'static str, AdapterHealth>>,
}

impl ChannelRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(&self, adapter: Arc<dyn ChannelAdapter>) {
        let mut adapters = self.adapters.write().expect("registry lock");
        adapters.retain(|a| a.name() != adapter.name());
        adapters.push(adapter);
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn ChannelAdapter>> {
        self.adapters.read().expect("registry lock").iter().find(|a| a.name() == name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<dyn ChannelAdapter>> {
        self.adapters.read().expect("registry lock").clone()
    }

    /// Connects every adapter, each within [`CONNECT_TIMEOUT`]. Returns the failures;
    /// adapters that failed stay registered and report `Disconnected` until they recover.
    pub async fn connect_all(&self) -> Vec<ChannelConnectError> {
        let mut failures = Vec::new();
        for adapter in self.list() {
            let result = match timeout(CONNECT_TIMEOUT, adapter.connect()).await {
                Ok(result) => result,
                Err(_) => Err(ChannelConnectError {
                    channel: adapter.name().into(),
                    message: format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
                }),
            };
            if let Err(error) = result {
                tracing::warn!(channel = adapter.name(), %error, "adapter did not connect");
                failures.push(error);
            }
        }
        self.refresh_health().await;
        failures
    }

    pub async fn disconnect_all(&self) {
        for adapter in self.list() {
            adapter.disconnect().await;
        }
    }

    /// Asks every adapter for its health now and remembers the answers.
    pub async fn refresh_health(&self) -> BTreeMap<&'static str, AdapterHealth> {
        let mut all = BTreeMap::new();
        for adapter in self.list() {
            all.insert(adapter.name(), adapter.health().await);
        }
        *self.last_health.write().expect("registry lock") = all.clone();
        all
    }

    /// The health seen at the last poll.
    pub fn health_all(&self) -> BTreeMap<&'static str, AdapterHealth> {
        self.last_health.read().expect("registry lock").clone()
    }

    /// Polls health every `interval` until the task is dropped.
    pub async fn poll_health(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            for (channel, health) in self.refresh_health().await {
                if health != AdapterHealth::Connected {
                    tracing::warn!(channel, ?health, "adapter is not healthy");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChannelMessage, ChannelSendError, InboundHandler};
    use async_trait::async_trait;

    struct Fake {
        name: &'static str,
        connects: bool,
    }

    #[async_trait]
    impl ChannelAdapter for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        async fn connect(&self) -> Result<(), ChannelConnectError> {
            if self.connects {
                Ok(())
            } else {
                Err(ChannelConnectError { channel: self.name.into(), message: "refused".into() })
            }
        }
        async fn disconnect(&self) {}
        async fn health(&self) -> AdapterHealth {
            if self.connects { AdapterHealth::Connected } else { AdapterHealth::Disconnected }
        }
        fn on_message(&self, _handler: Arc<dyn InboundHandler>) {}
        async fn send_message(&self, _channel_id: &str, _msg: &ChannelMessage) -> Result<(), ChannelSendError> {
            Ok(())
        }
        async fn map_identity(&self, _channel_user_id: &str) -> Option<String> {
            None
        }
    }

    #[tokio::test]
    async fn connects_all_and_reports_each_health() {
        let registry = ChannelRegistry::new();
        registry.register(Arc::new(Fake { name: "good", connects: true }));
        registry.register(Arc::new(Fake { name: "bad", connects: false }));
        let failures = registry.connect_all().await;
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].channel, "bad");
        let health = registry.health_all();
        assert_eq!(health["good"], AdapterHealth::Connected);
        assert_eq!(health["bad"], AdapterHealth::Disconnected);
        assert!(registry.get("good").is_some() && registry.get("nope").is_none());
    }

    #[tokio::test]
    async fn registering_the_same_name_replaces_it() {
        let registry = ChannelRegistry::new();
        registry.register(Arc::new(Fake { name: "a", connects: false }));
        registry.register(Arc::new(Fake { name: "a", connects: true }));
        assert_eq!(registry.list().len(), 1);
        registry.connect_all().await;
        assert_eq!(registry.health_all()["a"], AdapterHealth::Connected);
    }
}
