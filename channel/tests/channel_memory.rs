//! The conformance suite on the in-process channel, and `connect`'s URL handling.

use std::sync::Arc;
use std::time::Duration;

use acteon_channel::conformance::Fixture;
use acteon_channel::memory::MemoryChannel;
use acteon_channel::{ChannelError, ConfigChannel};
use async_trait::async_trait;

/// Every `open` is the same channel, as every process shares one in-process channel.
struct Memory(Arc<MemoryChannel>);

#[async_trait]
impl Fixture for Memory {
    async fn open(&self) -> Arc<dyn ConfigChannel> {
        self.0.clone()
    }
}

async fn fixture() -> Memory {
    Memory(Arc::new(MemoryChannel::new()))
}

acteon_channel::channel_conformance_tests!(fixture());

#[tokio::test]
async fn connect_rejects_other_schemes_without_echoing_the_url() {
    for url in [
        "memory",
        "memory://",
        "http://user:hunter2@host/",
        "hunter2",
        "",
    ] {
        let err = match acteon_channel::connect(url, "p", Duration::from_secs(1)).await {
            Err(err) => err,
            Ok(ch) => panic!("{url:?} connected a {} channel", ch.kind()),
        };
        let msg = err.to_string();
        assert!(matches!(err, ChannelError::Unavailable(_)), "{msg}");
        assert!(
            msg.contains("redis://, rediss://, postgres:// or postgresql://"),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
