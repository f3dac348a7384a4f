//! Synthetic homeserver traffic that needs no answer, shared by the benches that push
//! it (`#[path = "support/traffic.rs"] mod traffic;`): people join rooms and talk where
//! no agent listens, pushed straight to a service as appservice transactions, and the
//! wait until the service has processed all of it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::support::{event_id, now_ms};

/// The shape of the traffic.
pub struct Traffic {
    pub rooms: usize,
    pub members_per_room: usize,
    pub messages_per_room: usize,
}

impl Traffic {
    pub fn events(&self) -> usize {
        self.rooms * (self.members_per_room + self.messages_per_room)
    }

    pub fn users(&self) -> usize {
        self.rooms * self.members_per_room
    }

    /// Per room: its members join (alternately a ghost `@<ghost_prefix>N` of the
    /// service's namespace and a person on a remote server), then some of them talk.
    pub fn synthetic_events(&self, server_name: &str, ghost_prefix: &str) -> Vec<Value> {
        let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let now = now_ms();
        let mut events = Vec::with_capacity(self.events());
        for room in 0..self.rooms {
            let room_id = format!("!mem{room}-{run}:{server_name}");
            let members: Vec<String> = (0..self.members_per_room)
                .map(|m| {
                    let n = room * self.members_per_room + m;
                    if n.is_multiple_of(2) {
                        format!("@{ghost_prefix}{n}:{server_name}")
                    } else {
                        format!("@person{n}:remote.example")
                    }
                })
                .collect();
            for (m, member) in members.iter().enumerate() {
                events.push(json!({
                    "type": "m.room.member",
                    "room_id": room_id,
                    "sender": member,
                    "state_key": member,
                    "event_id": event_id(),
                    "origin_server_ts": now,
                    "content": {"membership": "join", "displayname": format!("Member {m} of room {room}")},
                    "unsigned": {"age": 1},
                }));
            }
            for message in 0..self.messages_per_room {
                events.push(json!({
                    "type": "m.room.message",
                    "room_id": room_id,
                    "sender": members[(message * 3) % self.members_per_room],
                    "event_id": event_id(),
                    "origin_server_ts": now,
                    "content": {"msgtype": "m.text", "body": format!("Message {message} in room {room}: see you at ten?")},
                    "unsigned": {"age": 1},
                }));
            }
        }
        events
    }
}

/// Pushes `events` in transactions of `per_txn`, one at a time, as a homeserver does.
pub async fn push_all(
    client: &reqwest::Client,
    base_url: &str,
    hs_token: &str,
    events: &[Value],
    per_txn: usize,
) -> anyhow::Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    for (n, chunk) in events.chunks(per_txn).enumerate() {
        let txn_id = format!("bench-traffic-{run}-{n}");
        let response = client
            .put(format!("{base_url}/_matrix/app/v1/transactions/{txn_id}"))
            .bearer_auth(hs_token)
            .json(&json!({ "events": chunk }))
            .send()
            .await
            .with_context(|| format!("transaction {txn_id} to {base_url}"))?;
        if !response.status().is_success() {
            bail!("transaction {txn_id} to {base_url} answered {}", response.status());
        }
    }
    Ok(())
}

/// Waits until mosaic-as's `/metrics` shows an empty inbox.
pub async fn wait_for_mosaic_inbox(client: &reqwest::Client, base_url: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let metrics = client.get(format!("{base_url}/metrics")).send().await?.text().await?;
        let pending: Option<u64> =
            metrics.lines().find_map(|line| line.strip_prefix("mosaic_inbox_pending ")?.trim().parse().ok());
        match pending {
            Some(0) => return Ok(()),
            Some(_) => {}
            None => bail!("/metrics has no mosaic_inbox_pending"),
        }
        if Instant::now() > deadline {
            bail!("mosaic-as still had {pending:?} events pending after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many events the reference has handled so far (its `/bench/stats`).
pub async fn reference_events(client: &reqwest::Client, base_url: &str) -> anyhow::Result<u64> {
    let stats: Value = client.get(format!("{base_url}/bench/stats")).send().await?.json().await?;
    stats["events"].as_u64().context("/bench/stats has no event count")
}

/// Waits until the reference has handled `events` more events than `before`.
pub async fn wait_for_reference(
    client: &reqwest::Client,
    base_url: &str,
    before: u64,
    events: usize,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let handled = reference_events(client, base_url).await?.saturating_sub(before);
        if handled >= events as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the reference had handled only {handled} of {events} events after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
