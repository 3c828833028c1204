//! Threads and updates instead of new messages (`messageMode`).
//!
//! The notifications of one conversation — the successive notifications of a group, the
//! notifying moves of one state-machine event — can follow the first message the provider
//! delivered: replace it (`update`) or reply to it (`thread`). The reference of that first
//! message (Slack's channel and `ts`, a Discord message id, an email's `Message-ID`) is
//! kept in the state backend, so whichever replica sends the next notification finds it.
//!
//! Only the worker says which conversation a delivery belongs to, in a task-local scope
//! around the send ([`Conversation::scope`]); nothing a client sends can name one, so a
//! dispatch can never be steered into another tenant's thread. The backend key holds the
//! namespace, the provider and the conversation (whose own key holds namespace and
//! tenant).
//!
//! The reference is written with compare-and-swap: the first message of a conversation
//! wins (two replicas racing on a first message leave one root), a message the peer no
//! longer knows (`MESSAGE_GONE`) is replaced by the new message posted instead, and each
//! notification renews the reference's TTL ([`REF_TTL`]). A backend that cannot be
//! reached makes the delivery a new message rather than a failure.

use std::future::Future;
use std::time::Duration;

use acteon_api::crd::provider::MessageMode;

use super::rate_limit;
use crate::action::Action;
use crate::outcome::ProviderResponse;
use crate::pipeline::Gateway;
use crate::providers::{Follow, MESSAGE_GONE, MessageRef, ProviderError, ProviderHandle};
use crate::rules::key::state_key;
use crate::state::Versioned;

/// How long the reference of a conversation's first message is kept after its last
/// notification: a conversation quiet for longer starts a new message.
pub const REF_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Largest stored reference, in bytes (one id and a channel; anything larger is not ours).
const MAX_STORED: usize = 1024;

tokio::task_local! {
    static CONVERSATION: Conversation;
}

/// What a notification belongs to: deliveries of the same conversation to the same
/// provider follow one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation(String);

impl Conversation {
    /// The notifications of the group stored at `group_key` (namespace, tenant, rule and
    /// group labels).
    pub fn group(group_key: &str) -> Conversation {
        Conversation(state_key("group", &[group_key]))
    }

    /// The notifications of the state-machine event stored at `event_key` (namespace,
    /// tenant, machine and fingerprint).
    pub fn event(event_key: &str) -> Conversation {
        Conversation(state_key("event", &[event_key]))
    }

    /// Runs `f` with every provider call in it belonging to this conversation.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CONVERSATION.scope(self, f).await
    }

    /// The conversation of the running task, if the worker set one.
    fn current() -> Option<Conversation> {
        CONVERSATION.try_with(Conversation::clone).ok()
    }
}

/// The backend key of the reference of `conversation`'s first message at `provider_id`.
pub fn key(namespace: &str, provider_id: &str, conversation: &Conversation) -> String {
    state_key("msgref", &[namespace, provider_id, &conversation.0])
}

/// Delivers `action` through `handle`, following the conversation's first message when
/// the provider's `messageMode` and the running task ask for it.
pub(super) async fn deliver(
    gw: &Gateway,
    handle: &ProviderHandle,
    action: &Action,
) -> Result<ProviderResponse, ProviderError> {
    let conversation = match handle.message_mode {
        MessageMode::New => None,
        MessageMode::Update | MessageMode::Thread => Conversation::current(),
    };
    let Some(conversation) = conversation else {
        return handle.provider.execute(action).await;
    };
    let key = key(&action.namespace, &handle.id, &conversation);
    let stored = load(gw, &key).await;
    let follow = match (&stored, handle.message_mode) {
        (Some((r, _)), MessageMode::Update) => Follow::Update(r),
        (Some((r, _)), MessageMode::Thread) => Follow::Reply(r),
        _ => Follow::New,
    };
    let (response, posted) = match handle.provider.execute_with(action, follow).await {
        Err(e) if e.code == MESSAGE_GONE => {
            tracing::info!(provider = %handle.id, "the conversation's first message is gone at the peer: posting a new one");
            // Another request to the peer: it takes its own rate-limit slot.
            rate_limit::take_slot(gw, handle).await?;
            let (response, posted) = handle.provider.execute_with(action, Follow::New).await?;
            (response, posted.map(Posted::Replacing))
        }
        result => {
            let (response, posted) = result?;
            let posted = match follow {
                Follow::New => posted.map(Posted::Replacing),
                Follow::Update(_) | Follow::Reply(_) => Some(Posted::Followed),
            };
            (response, posted)
        }
    };
    if let Some(posted) = posted {
        remember(gw, &key, stored, posted).await;
    }
    Ok(response)
}

/// What the delivery leaves to remember.
enum Posted {
    /// A new message: the conversation's first one from now on.
    Replacing(MessageRef),
    /// The stored message was followed: it stays the first, for another `REF_TTL`.
    Followed,
}

/// The stored reference and its version; none when absent, unreadable or the backend
/// cannot be reached (the delivery then posts anew rather than failing).
async fn load(gw: &Gateway, key: &str) -> Option<(MessageRef, u64)> {
    let Versioned { value, version } = match gw.state_call(gw.state.get(key)).await {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!(error = %e, "message reference not read: delivering a new message");
            return None;
        }
    };
    if value.len() > MAX_STORED {
        return None;
    }
    serde_json::from_slice(&value).ok().map(|r| (r, version))
}

/// Writes what `posted` leaves, if the stored reference is still the one read: a racing
/// replica's first message or replacement wins over ours.
async fn remember(gw: &Gateway, key: &str, stored: Option<(MessageRef, u64)>, posted: Posted) {
    let (expected, reference) = match (stored, posted) {
        (stored, Posted::Replacing(new)) => (stored.map(|(_, v)| v), new),
        (Some((kept, version)), Posted::Followed) => (Some(version), kept),
        (None, Posted::Followed) => return,
    };
    let value = match serde_json::to_vec(&reference) {
        Ok(v) if v.len() <= MAX_STORED => v,
        _ => return,
    };
    let written = gw.state_call(
        gw.state
            .compare_and_swap(key, expected, value, Some(REF_TTL)),
    );
    match written.await {
        Ok(Some(_)) => {}
        Ok(None) => {
            tracing::debug!("message reference changed meanwhile: the other one is kept");
        }
        Err(e) => tracing::warn!(error = %e, "message reference not stored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_namespaces_providers_and_conversations_apart() {
        let group = Conversation::group("g:ns:t:ns/rule:disk");
        let base = key("ns", "ns/chat", &group);
        let others = [
            key("other", "ns/chat", &group),
            key("ns", "ns/mail", &group),
            key("ns", "chat", &group),
            key("ns", "ns/chat", &Conversation::event("g:ns:t:ns/rule:disk")),
            key("ns", "ns/chat", &Conversation::group("g:ns:t:ns/rule:cpu")),
        ];
        for other in others {
            assert_ne!(base, other);
        }
        // Separators inside a part are escaped: parts cannot run into each other.
        assert_ne!(
            key("a", "b:c", &Conversation::group("d")),
            key("a:b", "c", &Conversation::group("d"))
        );
    }
}
