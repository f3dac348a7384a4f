//! The gateway connection: serenity's client in a task, READY / RESUMED bookkeeping, and
//! one ordered queue of work that a single worker hands to the hub.
//!
//! serenity dispatches every event to `EventHandler` methods in its own task, so their
//! order is not the gateway's. Messages must reach the hub in order (an edit after its
//! message, a reply after what it answers), so they are taken from a collector callback,
//! which serenity runs inline in the shard loop in arrival order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serenity::all::{
    ClientBuilder, CollectorCallback, ConnectionStage, Context, Event, EventHandler, GatewayIntents, Ready,
    ResumedEvent, ShardManager, ShardStageUpdateEvent,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{CHANNEL, GatewayStatus, Identity, Inner};
use crate::protocol::{CONNECT_TIMEOUT, ChannelConnectError};

/// One unit of inbound work, handled in order.
pub(super) enum Work {
    Event(Box<Event>),
    /// Fetch what was missed while the gateway was away.
    CatchUp,
    Stop,
}

pub(super) struct Running {
    shard_manager: Arc<ShardManager>,
    client_task: JoinHandle<()>,
    worker: JoinHandle<()>,
    /// Ends the worker once the work queued before it is done.
    stop: mpsc::UnboundedSender<Work>,
}

/// How long `disconnect` lets the worker finish the work already queued.
const DRAIN: Duration = Duration::from_secs(5);

fn intents() -> GatewayIntents {
    GatewayIntents::GUILDS
        | GatewayIntents::GUILD_MESSAGES
        | GatewayIntents::DIRECT_MESSAGES
        | GatewayIntents::MESSAGE_CONTENT
        | GatewayIntents::GUILD_MESSAGE_REACTIONS
        | GatewayIntents::DIRECT_MESSAGE_REACTIONS
        | GatewayIntents::GUILD_MESSAGE_TYPING
        | GatewayIntents::DIRECT_MESSAGE_TYPING
}

pub(super) async fn connect(inner: &Arc<Inner>) -> Result<(), ChannelConnectError> {
    let mut running = inner.gateway.lock().await;
    if running.is_none() {
        *running = Some(start(inner).await?);
    }
    drop(running);
    let mut status = inner.status.subscribe();
    let wait = async { status.wait_for(|s| *s == GatewayStatus::Connected).await.is_ok() };
    if tokio::time::timeout(CONNECT_TIMEOUT, wait).await == Ok(true) {
        return Ok(());
    }
    disconnect(inner).await;
    Err(connect_error("no READY from the Discord gateway within 10 s (check the token and the network)"))
}

fn connect_error(message: &str) -> ChannelConnectError {
    ChannelConnectError { channel: CHANNEL.into(), message: message.into() }
}

async fn start(inner: &Arc<Inner>) -> Result<Running, ChannelConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = tx.clone();
    let handler = Handler { inner: inner.clone(), tx, generation: Arc::new(AtomicU64::new(0)) };
    // The gateway URL comes from `GET /gateway` through this client, so it must point at
    // the configured API base URL too.
    let http = super::rest::http_client(&inner.token, inner.rest.base_url(), inner.rest.cdn_client().clone());
    let mut client = ClientBuilder::new_with_http(http, intents())
        .event_handler(handler)
        .await
        .map_err(|e| connect_error(&format!("cannot build the gateway client: {e}")))?;
    let shard_manager = client.shard_manager.clone();
    let client_task = tokio::spawn(async move {
        if let Err(error) = client.start().await {
            tracing::error!(channel = CHANNEL, event = "gateway_stopped", %error);
        }
    });
    let worker = tokio::spawn(run_worker(inner.clone(), rx));
    Ok(Running { shard_manager, client_task, worker, stop })
}

pub(super) async fn disconnect(inner: &Arc<Inner>) {
    let Some(running) = inner.gateway.lock().await.take() else { return };
    running.shard_manager.shutdown_all().await;
    running.client_task.abort();
    let _ = running.stop.send(Work::Stop);
    let mut worker = running.worker;
    if tokio::time::timeout(DRAIN, &mut worker).await.is_err() {
        worker.abort();
    }
    inner.status.send_replace(GatewayStatus::Down);
    tracing::info!(channel = CHANNEL, event = "disconnected");
}

async fn run_worker(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Work>) {
    while let Some(work) = rx.recv().await {
        match work {
            Work::CatchUp => inner.catch_up().await,
            Work::Event(event) => inner.on_event(*event).await,
            Work::Stop => break,
        }
    }
}

struct Handler {
    inner: Arc<Inner>,
    tx: mpsc::UnboundedSender<Work>,
    /// Bumped on every READY; the collector of an older session retires itself.
    generation: Arc<AtomicU64>,
}

impl Handler {
    /// Registers the in-order event tap on this session's shard.
    fn collect(&self, ctx: &Context) {
        let mine = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let generation = self.generation.clone();
        let tx = self.tx.clone();
        ctx.shard.add_collector(CollectorCallback(Box::new(move |event| {
            if generation.load(Ordering::SeqCst) != mine {
                return false;
            }
            let work = match event {
                Event::Resumed(_) => Work::CatchUp,
                Event::MessageCreate(_)
                | Event::MessageUpdate(_)
                | Event::MessageDelete(_)
                | Event::MessageDeleteBulk(_)
                | Event::ThreadCreate(_)
                | Event::ReactionAdd(_)
                | Event::ReactionRemove(_)
                | Event::ReactionRemoveAll(_)
                | Event::ReactionRemoveEmoji(_)
                // Typing in order too: a start handled after the message it preceded
                // would show the person typing after their words.
                | Event::TypingStart(_)
                | Event::InteractionCreate(_) => Work::Event(Box::new(event.clone())),
                _ => return !tx.is_closed(),
            };
            tx.send(work).is_ok()
        })));
    }
}

#[serenity::async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        let identity = Identity { bot_user: ready.user.id.get(), application: ready.application.id.get() };
        *self.inner.identity.write().unwrap() = Some(identity);
        // Events between READY and this point were not collected; the catch-up that
        // follows fetches them from the channels' history.
        self.collect(&ctx);
        let _ = self.tx.send(Work::CatchUp);
        self.inner.status.send_replace(GatewayStatus::Connected);
        tracing::info!(channel = CHANNEL, event = "ready", bot_user = identity.bot_user, guilds = ready.guilds.len());
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.register_commands(identity.application).await });
    }

    async fn resume(&self, _ctx: Context, _event: ResumedEvent) {
        self.inner.status.send_replace(GatewayStatus::Connected);
        tracing::info!(channel = CHANNEL, event = "resumed");
    }

    async fn shard_stage_update(&self, _ctx: Context, event: ShardStageUpdateEvent) {
        // Only the way down is taken from here: these calls run in their own tasks and may
        // come late, while "connected" is set by READY / RESUMED themselves.
        let status = match event.new {
            ConnectionStage::Resuming => GatewayStatus::Resuming,
            ConnectionStage::Disconnected | ConnectionStage::Connecting => GatewayStatus::Down,
            _ => return,
        };
        self.inner.status.send_replace(status);
        tracing::debug!(channel = CHANNEL, event = "gateway_stage", stage = ?event.new);
    }
}

/// Pause between attempts to hand a message to the hub.
pub(super) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((200u64 << attempt.min(8)).min(30_000))
}
