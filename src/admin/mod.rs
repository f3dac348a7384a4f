//! The admin HTTP API under `/_mosaic/v1`: accounts (with invite-based provisioning),
//! link tokens, identity revocation, teams and their members, and conversations (list,
//! rename, archive, share).
//! Every request carries `Authorization: Bearer <admin token>`; without a configured
//! token the API is off.

mod jobs;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Config;
use crate::hub::lifecycle;
use crate::queue::Wakers;
use crate::secrets::constant_time_eq;
use crate::store::retention::Reach;
use crate::store::{self, Store, accounts, conversations, teams};

#[derive(Clone)]
pub struct AdminState {
    pub config: Arc<Config>,
    pub store: Store,
    pub wakers: Arc<Wakers>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/_mosaic/v1/accounts", post(create_account).get(list_accounts))
        .route("/_mosaic/v1/accounts/{name}", delete(delete_account))
        .route("/_mosaic/v1/link-tokens", post(create_link_token))
        .route("/_mosaic/v1/identities/{channel}/{channel_user_id}", delete(revoke_identity))
        .route("/_mosaic/v1/conversations", get(list_conversations))
        .route("/_mosaic/v1/conversations/{id}", patch(rename_conversation))
        .route("/_mosaic/v1/conversations/{id}/archive", post(archive_conversation))
        .route("/_mosaic/v1/conversations/{id}/share", post(share_conversation).delete(unshare_conversation))
        .route("/_mosaic/v1/retention", get(list_retention))
        .route("/_mosaic/v1/retention/{kind}", put(set_type_retention))
        .route("/_mosaic/v1/conversations/{id}/retention", put(set_conversation_retention))
        .route("/_mosaic/v1/teams", post(create_team).get(list_teams))
        .route("/_mosaic/v1/teams/{name}/members", post(add_team_member))
        .route("/_mosaic/v1/teams/{name}/members/{account}", delete(remove_team_member))
        .route("/_mosaic/v1/jobs", get(jobs::list))
        .route("/_mosaic/v1/jobs/{source}/{seq}", get(jobs::show))
        .route("/_mosaic/v1/jobs/{source}/{seq}/retry", post(jobs::retry))
        .route("/_mosaic/v1/jobs/{source}/{seq}/drop", post(jobs::drop))
        .with_state(state)
}

/// An error answer: `{"error": {"code", "message"}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(error: store::StoreError) -> Self {
        tracing::error!(%error, "admin API storage error");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the database is unavailable; retry later")
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        store::StoreError::from(error).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": { "code": self.code, "message": self.message } }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn authorize(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = config.admin.token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "admin_api_disabled",
            "the admin API is off: set admin.token in the config or MOSAIC_AS_ADMIN_TOKEN",
        ));
    };
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None => {
            Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing_token", "send Authorization: Bearer <admin token>"))
        }
        Some(token) if constant_time_eq(token, expected) => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "wrong admin token")),
    }
}

/// Parses a JSON body, naming what is wrong with it.
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

async fn account_json(conn: &mut store::AnyConnection, account: &accounts::Account) -> Result<Value, ApiError> {
    let identities = accounts::identities_of(conn, &account.id).await?;
    let identities: Vec<Value> =
        identities.iter().map(|i| json!({"channel": i.channel_name, "channelUserId": i.channel_user_id})).collect();
    Ok(json!({
        "id": account.id, "name": account.name, "displayName": account.display_name,
        "createdAt": account.created_at, "identities": identities,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewAccount {
    name: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    matrix_id: Option<String>,
}

async fn create_account(State(state): State<AdminState>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult {
    authorize(&state.config, &headers)?;
    let new: NewAccount = parse(&body)?;
    if new.name.trim().is_empty() {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    if let Some(matrix_id) = &new.matrix_id
        && ruma::UserId::parse(matrix_id.as_str()).is_err()
    {
        return Err(ApiError::bad_request(format!(
            "matrixId {matrix_id:?} is not a Matrix user id like @alice:example.org"
        )));
    }
    let mut tx = state.store.begin_write().await?;
    if accounts::account_by_name(&mut tx, &new.name).await?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "exists", format!("an account named {:?} exists", new.name)));
    }
    if let Some(matrix_id) = &new.matrix_id
        && let Some(owner) = accounts::account_for_identity(&mut tx, crate::matrix::CHANNEL, matrix_id).await?
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "linked",
            format!("{matrix_id} is linked to account {:?}", owner.name),
        ));
    }
    let account =
        lifecycle::provision_account(&mut tx, &new.name, new.display_name.as_deref(), new.matrix_id.as_deref()).await?;
    let body = account_json(&mut tx, &account).await?;
    tx.commit().await?;
    state.wakers.wake();
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

async fn list_accounts(State(state): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut conn = state.store.conn().await?;
    let mut list = Vec::new();
    for account in accounts::list_accounts(&mut conn).await? {
        list.push(account_json(&mut conn, &account).await?);
    }
    Ok(axum::Json(json!({ "accounts": list })).into_response())
}

async fn delete_account(State(state): State<AdminState>, headers: HeaderMap, Path(name): Path<String>) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut tx = state.store.begin_write().await?;
    if !accounts::delete_account(&mut tx, &name).await? {
        return Err(ApiError::not_found(format!("no account named {name:?}")));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewLinkToken {
    account: String,
}

async fn create_link_token(State(state): State<AdminState>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult {
    authorize(&state.config, &headers)?;
    let request: NewLinkToken = parse(&body)?;
    let mut tx = state.store.begin_write().await?;
    let Some(account) = accounts::account_by_name(&mut tx, &request.account).await? else {
        return Err(ApiError::not_found(format!("no account named {:?}", request.account)));
    };
    let ttl = state.config.linking.token_ttl_secs;
    let token = accounts::issue_link_token(&mut tx, &account.id, ttl).await?;
    tx.commit().await?;
    let expires_at = store::now_ms() + (ttl as i64) * 1000;
    Ok((StatusCode::CREATED, axum::Json(json!({ "token": token, "account": account.name, "expiresAt": expires_at })))
        .into_response())
}

async fn revoke_identity(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((channel, channel_user_id)): Path<(String, String)>,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut tx = state.store.begin_write().await?;
    let kick = state.config.linking.kick_on_revoke;
    if !lifecycle::revoke_identity(&mut tx, &channel, &channel_user_id, kick).await? {
        return Err(ApiError::not_found(format!("{channel} identity {channel_user_id} is not linked")));
    }
    tx.commit().await?;
    state.wakers.wake();
    tracing::info!(channel, channel_user_id, kick, "identity revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_conversations(State(state): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut conn = state.store.conn().await?;
    let list: Vec<Value> = conversations::list_conversations(&mut conn)
        .await?
        .into_iter()
        .map(|c| {
            json!({
                "id": c.id, "title": c.title, "ownerAccountId": c.owner_account_id, "roomId": c.room_id,
                "createdAt": c.created_at, "archivedAt": c.archived_at,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "conversations": list })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Rename {
    title: String,
}

async fn rename_conversation(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let rename: Rename = parse(&body)?;
    if rename.title.trim().is_empty() {
        return Err(ApiError::bad_request("title must not be empty"));
    }
    let mut tx = state.store.begin_write().await?;
    if !lifecycle::rename_conversation(&mut tx, &id, rename.title.trim()).await? {
        return Err(ApiError::not_found(format!("no conversation {id}")));
    }
    tx.commit().await?;
    state.wakers.wake();
    Ok(axum::Json(json!({ "id": id, "title": rename.title.trim() })).into_response())
}

async fn archive_conversation(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut tx = state.store.begin_write().await?;
    if conversations::conversation(&mut tx, &id).await?.is_none() {
        return Err(ApiError::not_found(format!("no conversation {id}")));
    }
    let archived = lifecycle::archive_conversation(&mut tx, &id).await?;
    tx.commit().await?;
    state.wakers.wake();
    Ok(axum::Json(json!({ "id": id, "archived": true, "alreadyArchived": !archived })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewTeam {
    name: String,
}

async fn create_team(State(state): State<AdminState>, headers: HeaderMap, body: axum::body::Bytes) -> ApiResult {
    authorize(&state.config, &headers)?;
    let new: NewTeam = parse(&body)?;
    if new.name.trim().is_empty() {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    let mut tx = state.store.begin_write().await?;
    if teams::by_name(&mut tx, &new.name).await?.is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, "exists", format!("a team named {:?} exists", new.name)));
    }
    let team = lifecycle::create_team(&mut tx, &new.name, None).await?;
    tx.commit().await?;
    state.wakers.wake();
    Ok((StatusCode::CREATED, axum::Json(json!({ "id": team.id, "name": team.name, "members": [] }))).into_response())
}

async fn list_teams(State(state): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut conn = state.store.conn().await?;
    let mut list = Vec::new();
    for team in teams::list(&mut conn).await? {
        let members = teams::member_names(&mut conn, &team.id).await?;
        let space = teams::space(&mut conn, &team.id).await?;
        list.push(json!({ "id": team.id, "name": team.name, "members": members, "spaceId": space }));
    }
    Ok(axum::Json(json!({ "teams": list })).into_response())
}

/// The team and account a membership request names.
async fn team_and_account(
    conn: &mut store::AnyConnection,
    team: &str,
    account: &str,
) -> Result<(teams::Team, accounts::Account), ApiError> {
    let Some(team) = teams::by_name(conn, team).await? else {
        return Err(ApiError::not_found(format!("no team named {team:?}")));
    };
    let Some(account) = accounts::account_by_name(conn, account).await? else {
        return Err(ApiError::not_found(format!("no account named {account:?}")));
    };
    Ok((team, account))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewMember {
    account: String,
}

async fn add_team_member(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let member: NewMember = parse(&body)?;
    let mut tx = state.store.begin_write().await?;
    let (team, account) = team_and_account(&mut tx, &name, &member.account).await?;
    let added = lifecycle::add_team_member(&mut tx, &team, &account).await?;
    tx.commit().await?;
    state.wakers.wake();
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(json!({ "team": team.name, "account": account.name }))).into_response())
}

async fn remove_team_member(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((name, account)): Path<(String, String)>,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut tx = state.store.begin_write().await?;
    let (team, account) = team_and_account(&mut tx, &name, &account).await?;
    if !teams::remove_member(&mut tx, &team.id, &account.id).await? {
        return Err(ApiError::not_found(format!("{} is not in team {}", account.name, team.name)));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ShareWith {
    team: String,
}

async fn share_conversation(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let share: ShareWith = parse(&body)?;
    let mut tx = state.store.begin_write().await?;
    let Some(team) = teams::by_name(&mut tx, &share.team).await? else {
        return Err(ApiError::not_found(format!("no team named {:?}", share.team)));
    };
    if conversations::conversation(&mut tx, &id).await?.is_none() {
        return Err(ApiError::not_found(format!("no conversation {id}")));
    }
    let outcome = lifecycle::share_conversation(&mut tx, &id, &team).await?;
    tx.commit().await?;
    state.wakers.wake();
    match outcome {
        lifecycle::ShareOutcome::NoRoom => {
            Err(ApiError::new(StatusCode::CONFLICT, "no_room", "the conversation has no room yet"))
        }
        outcome => Ok(axum::Json(json!({
            "id": id, "team": team.name, "alreadyShared": matches!(outcome, lifecycle::ShareOutcome::AlreadyShared),
        }))
        .into_response()),
    }
}

async fn unshare_conversation(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut tx = state.store.begin_write().await?;
    let Some(team) = lifecycle::unshare_conversation(&mut tx, &id).await? else {
        return Err(ApiError::not_found(format!("conversation {id} is not shared")));
    };
    tx.commit().await?;
    state.wakers.wake();
    Ok(axum::Json(json!({ "id": id, "unsharedFrom": team })).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetentionDays {
    /// Days to keep messages; null keeps them forever.
    days: Option<i64>,
}

fn parse_days(body: &[u8]) -> Result<Option<i64>, ApiError> {
    let retention: RetentionDays = parse(body)?;
    match retention.days {
        Some(days) if days < 0 => Err(ApiError::bad_request("days must be 0 or more (or null to keep forever)")),
        days => Ok(days),
    }
}

async fn list_retention(State(state): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut conn = state.store.conn().await?;
    let defaults = &state.config.retention;
    let policies: Vec<Value> = store::retention::policies(&mut conn)
        .await?
        .into_iter()
        .map(|p| json!({ "roomId": p.room_id, "appliesTo": p.applies_to, "days": p.retention_days }))
        .collect();
    Ok(axum::Json(json!({
        "defaults": {
            "personal": defaults.personal_days, "team": defaults.team_days,
            "agent": defaults.agent_days, "system": defaults.system_days,
        },
        "policies": policies,
    }))
    .into_response())
}

async fn set_type_retention(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(kind): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    if !crate::hub::retention::TYPES.contains(&kind.as_str()) {
        return Err(ApiError::not_found(format!("no room type {kind:?}; expected personal, team, agent or system")));
    }
    let days = parse_days(&body)?;
    state
        .store
        .write(async |conn| store::retention::set_policy(conn, "*", &kind, days, Reach::AlsoHomeserver).await)
        .await?;
    Ok(axum::Json(json!({ "appliesTo": kind, "days": days })).into_response())
}

async fn set_conversation_retention(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let days = parse_days(&body)?;
    let mut tx = state.store.begin_write().await?;
    let Some(room) = conversations::room_for_conversation(&mut tx, &id).await? else {
        return Err(ApiError::not_found(format!("no conversation {id} with a room")));
    };
    store::retention::set_policy(&mut tx, &room, "all", days, Reach::AlsoHomeserver).await?;
    tx.commit().await?;
    Ok(axum::Json(json!({ "id": id, "roomId": room, "days": days })).into_response())
}
