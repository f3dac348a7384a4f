//! Wiring of the running service: store, adapters, hub, agents, workers and the HTTP
//! server, with a clean shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::agents::{Agents, TurnControl};
use crate::config::Config;
use crate::error_ref::ErrorRef;
use crate::hub::bridging::{OpenBridgeJob, SurfaceAdapter};
use crate::hub::jobs::Job;
use crate::hub::room_ops::{HomeRooms, RoomOpError};
use crate::hub::{Hub, SendJob};
use crate::matrix::{self, MatrixAdapter, server};
use crate::protocol::{BridgeError, ChannelAdapter, ChannelRegistry, ChannelSendError};
use crate::queue::{self, DeadReason, JobHandler, JobOutcome, Wakers};
use crate::store::{Store, outbox};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Agents(#[from] crate::agents::AgentSetupError),
    #[error("cannot listen on {addr}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("cannot set up the {0}")]
    Bridge(String),
    #[error("cannot make the service non-dumpable (agent programs could read its memory): {0}")]
    NonDumpable(std::io::Error),
}

/// Runs the jobs of the surfaces' queues: sends, bridge set-up, room work.
struct Dispatcher {
    /// Key of the tokens derived for outgoing messages (see `hub::reveal_secrets`).
    secret_key: String,
    registry: Arc<ChannelRegistry>,
    rooms: Arc<dyn HomeRooms>,
    store: Store,
}

#[async_trait]
impl JobHandler for Dispatcher {
    async fn run(&self, row: &outbox::Job, job: &Job) -> JobOutcome {
        match job {
            Job::Send(send) => self.send(row, send).await,
            Job::OpenBridge(open) => self.open_bridge(open).await,
            Job::CloseBridge(close) => {
                if let Some(adapter) = self.registry.get(&close.channel) {
                    adapter.close_bridge(&close.channel_id).await;
                }
                JobOutcome::Done
            }
            Job::Room(op) => match self.rooms.carry_out(op).await {
                Ok(()) => JobOutcome::Done,
                Err(RoomOpError::Transient(error)) => JobOutcome::Retry { error, after: None },
                Err(RoomOpError::Permanent(error)) => JobOutcome::Failed(error),
            },
            // Turns run in the agents' lanes.
            Job::Turn(_) => JobOutcome::Failed(format!("an agent turn cannot run in the queue {}", row.queue)),
        }
    }

    async fn on_dead_letter(
        &self,
        conn: &mut crate::store::AnyConnection,
        row: &outbox::Job,
        job: &Job,
        reason: DeadReason,
    ) -> crate::store::Result<()> {
        match job {
            Job::Send(send) => crate::hub::bridging::report_undelivered(conn, send, row.seq, reason).await,
            Job::OpenBridge(open) => crate::hub::bridging::report_bridge_given_up(conn, open).await,
            Job::Turn(_) | Job::CloseBridge(_) | Job::Room(_) => Ok(()),
        }
    }
}

/// The handler of the surfaces' queues: sends to the surfaces of `registry`, bridge
/// set-up, and room work carried out by `rooms`.
pub fn surface_dispatcher(
    config: &Config,
    registry: Arc<ChannelRegistry>,
    rooms: Arc<dyn HomeRooms>,
    store: Store,
) -> Arc<dyn JobHandler> {
    Arc::new(Dispatcher { secret_key: config.appservice.as_token.clone(), registry, rooms, store })
}

impl Dispatcher {
    async fn send(&self, row: &outbox::Job, send: &SendJob) -> JobOutcome {
        let Some(adapter) = self.registry.get(&send.channel) else {
            return JobOutcome::Retry { error: format!("no adapter {:?} registered", send.channel), after: None };
        };
        let message = crate::hub::reveal_secrets(&send.message, &self.secret_key);
        let sent = match row.may_have_run(self.store.opened_at()) {
            true => adapter.resend_message(&send.channel_id, &message).await,
            false => adapter.send_message(&send.channel_id, &message).await,
        };
        match sent {
            Ok(()) => JobOutcome::Done,
            Err(ChannelSendError::Terminal(error)) => JobOutcome::Failed(error),
            Err(ChannelSendError::Unconfirmed(error)) => JobOutcome::Unconfirmed(error),
            Err(ChannelSendError::Transient { message, retry_after }) => {
                JobOutcome::Retry { error: message, after: retry_after }
            }
        }
    }
}

impl Dispatcher {
    /// Prepares a newly bridged chat and tells the conversation's room how it went; a
    /// chat that cannot be bridged is unbridged again, with the reason.
    async fn open_bridge(&self, open: &OpenBridgeJob) -> JobOutcome {
        let Some(adapter) = self.registry.get(&open.channel) else {
            return JobOutcome::Retry { error: format!("no adapter {:?} registered", open.channel), after: None };
        };
        let (text, failed) = match adapter.open_bridge(&open.channel_id).await {
            Ok(line) if line.is_empty() => (format!("Bridged {} chat `{}`.", open.channel, open.channel_id), false),
            Ok(line) => (line, false),
            Err(BridgeError::Refused(fix)) => {
                (format!("Could not bridge {} chat `{}`: {fix}", open.channel, open.channel_id), true)
            }
            Err(BridgeError::Send(ChannelSendError::Terminal(error))) => {
                let reference = ErrorRef::new();
                tracing::warn!(
                    channel = open.channel,
                    chat = open.channel_id,
                    r#ref = %reference,
                    %error,
                    "cannot bridge the chat"
                );
                (reference.notice(&format!("Could not bridge {} chat `{}`", open.channel, open.channel_id)), true)
            }
            // Opening a bridge only reads: asking again is harmless.
            Err(BridgeError::Send(ChannelSendError::Transient { message, retry_after })) => {
                return JobOutcome::Retry { error: message, after: retry_after };
            }
            Err(BridgeError::Send(ChannelSendError::Unconfirmed(message))) => {
                return JobOutcome::Retry { error: message, after: None };
            }
        };
        match crate::hub::bridging::report_bridge(&self.store, open, &text, failed).await {
            Ok(()) => JobOutcome::Done,
            Err(error) => JobOutcome::Retry { error: error.to_string(), after: None },
        }
    }
}

/// The surfaces of this build the config sets up ([`crate::surfaces::BUILT_IN`]):
/// their adapters (files they receive go to the homeserver's media repository) and the
/// routes they serve (Telegram's webhook).
fn bridge_adapters(
    config: &Config,
    store: &Store,
    matrix: &Arc<MatrixAdapter>,
) -> Result<(Vec<Arc<dyn ChannelAdapter>>, axum::Router), ServeError> {
    let media: Arc<dyn crate::protocol::MediaRepository> = matrix.clone();
    let mut adapters: Vec<Arc<dyn ChannelAdapter>> = Vec::new();
    let mut routes = axum::Router::new();
    for surface in &crate::surfaces::BUILT_IN {
        let Some(start) = surface.start else { continue };
        let started =
            start(config, store, &media).map_err(|e| ServeError::Bridge(format!("{}: {e}", surface.info.name)))?;
        if let Some(started) = started {
            routes = started.routes.into_iter().fold(routes, axum::Router::merge);
            adapters.push(started.adapter);
        }
    }
    Ok((adapters, routes))
}

/// Makes `adapter` a surface of the running service: what it receives goes to the hub,
/// and what the hub sends it is first put into its terms ([`SurfaceAdapter`]).
pub fn register_surface(
    registry: &ChannelRegistry,
    hub: &Arc<Hub>,
    adapter: Arc<dyn ChannelAdapter>,
    store: &Store,
    config: &Arc<Config>,
) {
    adapter.on_message(hub.handler_for(adapter.name()));
    registry.register(SurfaceAdapter::wrap(adapter, store.clone(), config.clone()));
}

/// Runs the service until Ctrl-C or SIGTERM.
pub async fn serve(mut config: Config) -> Result<(), ServeError> {
    // Before any agent program starts: programs running as this user must not read our
    // memory or /proc/<pid>/environ, which hold the tokens (see agents::confine).
    crate::agents::confine::make_non_dumpable().map_err(ServeError::NonDumpable)?;
    crate::metrics::install();
    let store = Store::open(&config.database.url).await?;
    // Bridge tokens sealed in the database stand in for those missing from the config.
    crate::secrets::load_sealed_into_config(&store, &mut config)
        .await
        .map_err(|e| ServeError::Bridge(format!("bridges: the sealed tokens cannot be read: {e}")))?;
    let config = Arc::new(config);
    let listener = bind(config.appservice.listen).await?;
    let admin_listener = match config.admin.listen {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    tracing::info!(
        listen = %config.appservice.listen,
        admin_listen = config.admin.listen.map(|addr| addr.to_string()),
        homeserver = config.homeserver.url,
        "mosaic-as starting"
    );
    if !config.admin.matrix_users.is_empty() {
        tracing::warn!(
            users = ?config.admin.matrix_users,
            "admin.matrix_users is deprecated: these users are read as \"admin\" in [permissions]; move them there"
        );
    }

    let wakers = Arc::new(Wakers::default());
    let registry = Arc::new(ChannelRegistry::new());
    let matrix = Arc::new(MatrixAdapter::new(config.clone(), store.clone()));
    let control = Arc::new(TurnControl::default());
    let hub = Arc::new(
        Hub::new(config.clone(), store.clone(), wakers.clone(), control.clone()).with_surfaces(registry.clone()),
    );
    let agents =
        Arc::new(Agents::from_config(&config, store.clone(), wakers.clone(), registry.clone(), control.clone())?);
    let mut surfaces: Vec<Arc<dyn ChannelAdapter>> = vec![matrix.clone()];
    let (bridges, bridge_routes) = bridge_adapters(&config, &store, &matrix)?;
    surfaces.extend(bridges);
    for adapter in surfaces {
        register_surface(&registry, &hub, adapter, &store, &config);
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let inbox_wake = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let dispatcher = surface_dispatcher(&config, registry.clone(), matrix.clone(), store.clone());
    let limits = queue::RetryLimits::from(&config.delivery);
    let handlers = queue::Handlers { agents: Some(agents as Arc<dyn JobHandler>), surfaces: Some(dispatcher) };
    tasks.spawn(queue::run_scheduler(store.clone(), handlers, limits, wakers.clone(), shutdown_rx.clone()));
    tasks.spawn(crate::hub::retention::run(store.clone(), config.clone(), shutdown_rx.clone()));
    tasks.spawn(matrix::catch_up::run(matrix.clone(), shutdown_rx.clone()));
    tasks.spawn(matrix::inbox::run(store.clone(), matrix.clone(), limits, inbox_wake.clone(), shutdown_rx.clone()));

    let state = server::ServerState {
        config: config.clone(),
        store: store.clone(),
        adapter: matrix.clone(),
        registry: registry.clone(),
        inbox_wake,
    };
    let operator = operator_router(&config, &store, &wakers, &registry);
    let push = server::router(state).merge(bridge_routes);
    let mut servers = Vec::new();
    match admin_listener {
        // The push address answers the homeserver (and Telegram's webhook) only.
        Some(admin_listener) => {
            servers.push(serve_http(listener, push, shutdown_rx.clone()));
            let operator = operator.route("/health", axum::routing::get(server::health)).fallback(operator_unknown);
            servers.push(serve_http(admin_listener, operator, shutdown_rx.clone()));
        }
        None => servers.push(serve_http(listener, push.merge(operator), shutdown_rx.clone())),
    }

    // The homeserver may still be starting: connecting is retried in the background while
    // transactions are already accepted into the inbox.
    let connect_registry = registry.clone();
    let background = tokio::spawn(async move {
        let mut attempt = 0;
        loop {
            let failures = connect_registry.connect_all().await;
            if failures.is_empty() {
                tracing::info!("all adapters connected");
                break;
            }
            tokio::time::sleep(queue::backoff(attempt)).await;
            attempt += 1;
        }
        connect_registry.poll_health(crate::protocol::DEFAULT_HEALTH_INTERVAL).await;
    });

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    background.abort();
    while tasks.join_next().await.is_some() {}
    registry.disconnect_all().await;
    let mut served = Ok(());
    for server in servers {
        let result = server.await.map_err(std::io::Error::other).and_then(|result| result);
        served = served.and(result);
    }
    store.close().await;
    served.map_err(ServeError::Http)
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// What operators use: the admin API and the metrics.
fn operator_router(
    config: &Arc<Config>,
    store: &Store,
    wakers: &Arc<Wakers>,
    registry: &Arc<ChannelRegistry>,
) -> axum::Router {
    let admin = crate::admin::router(crate::admin::AdminState {
        config: config.clone(),
        store: store.clone(),
        wakers: wakers.clone(),
    });
    let metrics = crate::metrics::router(crate::metrics::MetricsState {
        store: store.clone(),
        registry: registry.clone(),
        token: config.metrics.token.clone(),
    });
    admin.merge(metrics)
}

async fn operator_unknown() -> axum::response::Response {
    use axum::response::IntoResponse;
    let error = serde_json::json!({"error": {"code": "not_found", "message": "no such route on the admin listener"}});
    (axum::http::StatusCode::NOT_FOUND, axum::Json(error)).into_response()
}

/// Serves `app` on `listener` until shutdown.
fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    // Spans carry the path only: a query string may hold the hs_token.
    let trace = tower_http::trace::TraceLayer::new_for_http().make_span_with(|request: &axum::http::Request<_>| {
        tracing::debug_span!("request", method = %request.method(), path = request.uri().path())
    });
    tokio::spawn(async move {
        axum::serve(listener, app.layer(trace))
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
