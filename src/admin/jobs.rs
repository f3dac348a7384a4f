//! `/_mosaic/v1/jobs`: the dead letters (work given up after its retries), to list,
//! inspect, retry or drop — the admin API side of `mosaic-as jobs`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

use super::{AdminState, ApiError, ApiResult, authorize};
use crate::store::dead_letters::{self, DeadLetterId};

fn id_of(source: &str, seq: &str) -> Result<DeadLetterId, ApiError> {
    format!("{source}/{seq}").parse().map_err(ApiError::bad_request)
}

fn missing(id: DeadLetterId) -> ApiError {
    ApiError::not_found(format!("no dead letter {id}"))
}

pub(super) async fn list(State(state): State<AdminState>, headers: HeaderMap) -> ApiResult {
    authorize(&state.config, &headers)?;
    let mut conn = state.store.conn().await?;
    let letters = dead_letters::list(&mut conn).await?;
    Ok(axum::Json(json!({ "deadLetters": letters })).into_response())
}

pub(super) async fn show(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((source, seq)): Path<(String, String)>,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let id = id_of(&source, &seq)?;
    let mut conn = state.store.conn().await?;
    let letter = dead_letters::get(&mut conn, id).await?.ok_or_else(|| missing(id))?;
    Ok(axum::Json(letter).into_response())
}

/// What an operator does with a dead letter.
#[derive(Clone, Copy)]
enum Action {
    Retry,
    Drop,
}

pub(super) async fn retry(state: State<AdminState>, headers: HeaderMap, path: Path<(String, String)>) -> ApiResult {
    act(state, headers, path, Action::Retry).await
}

pub(super) async fn drop(state: State<AdminState>, headers: HeaderMap, path: Path<(String, String)>) -> ApiResult {
    act(state, headers, path, Action::Drop).await
}

async fn act(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path((source, seq)): Path<(String, String)>,
    action: Action,
) -> ApiResult {
    authorize(&state.config, &headers)?;
    let id = id_of(&source, &seq)?;
    let found = state
        .store
        .write(async |conn| match action {
            Action::Retry => dead_letters::retry(conn, id).await,
            Action::Drop => dead_letters::drop(conn, id).await,
        })
        .await?;
    if !found {
        return Err(missing(id));
    }
    Ok(match action {
        Action::Retry => {
            state.wakers.wake();
            axum::Json(json!({ "id": id.to_string(), "status": "queued" })).into_response()
        }
        Action::Drop => StatusCode::NO_CONTENT.into_response(),
    })
}
