//! Rollup sets' lifecycle in `rollup_sets`: building, ready, active,
//! dropped. Each change is one insert of the set's row at a higher
//! revision; readers take each window's newest active set.

use super::Options;
use anyhow::{Context, Result, bail};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// Where a set stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetState {
    /// Being written.
    Building,
    /// Written and checked.
    Ready,
    /// Readers see it for its range.
    Active,
    /// Its rows are deleted.
    Dropped,
}

impl SetState {
    fn name(self) -> &'static str {
        match self {
            SetState::Building => "building",
            SetState::Ready => "ready",
            SetState::Active => "active",
            SetState::Dropped => "dropped",
        }
    }
}

#[derive(Row, Serialize, Deserialize)]
struct SetRow {
    rollup_set: String,
    range_from: i64,
    range_to: i64,
    topic: String,
    module_sha256: String,
    config_json: String,
    state: String,
    revision: u32,
}

async fn current(client: &Client, set: &str) -> Result<Option<SetRow>> {
    client
        .query(
            "SELECT rollup_set, toUnixTimestamp64Milli(range_from) AS range_from, \
             toUnixTimestamp64Milli(range_to) AS range_to, topic, module_sha256, config_json, \
             toString(state) AS state, revision FROM rollup_sets FINAL WHERE rollup_set = {set:String}",
        )
        .param("set", set)
        .fetch_optional()
        .await
        .with_context(|| format!("reading rollup set {set}"))
}

async fn write(client: &Client, row: &SetRow) -> Result<()> {
    let mut insert = client.insert::<SetRow>("rollup_sets").await?;
    insert.write(row).await?;
    insert
        .end()
        .await
        .with_context(|| format!("recording rollup set {} as {}", row.rollup_set, row.state))
}

/// Records a new set, `building`; refuses a name in use.
pub(super) async fn create(
    client: &Client,
    set: &str,
    opts: &Options,
    module_sha256: &str,
    config_json: &str,
) -> Result<()> {
    if let Some(row) = current(client, set).await? {
        bail!(
            "rollup set {set} exists ({}): choose another --set",
            row.state
        );
    }
    write(
        client,
        &SetRow {
            rollup_set: set.into(),
            range_from: opts.range.from.0,
            range_to: opts.range.to.0,
            topic: opts.topic.clone(),
            module_sha256: module_sha256.into(),
            config_json: config_json.into(),
            state: SetState::Building.name().into(),
            revision: 1,
        },
    )
    .await
}

/// Moves `set` to `state` (one insert at the next revision).
pub(super) async fn change(client: &Client, set: &str, state: SetState) -> Result<()> {
    let Some(mut row) = current(client, set).await? else {
        bail!("no rollup set {set}");
    };
    row.state = state.name().into();
    row.revision += 1;
    write(client, &row).await
}

/// Drops rollup set `set`: readers stop seeing it at once (its windows go
/// back to the set in force before it), then its rows are deleted from the
/// rollups, rankings and side outputs. The live stream's set ('') cannot
/// be dropped.
pub async fn drop_set(client: &Client, set: &str) -> Result<()> {
    if set.is_empty() {
        bail!("the live stream's rollups ('') cannot be dropped");
    }
    change(client, set, SetState::Dropped).await?;
    for table in [
        "rollups",
        "most_clicked_ads",
        "late_events",
        "invalid_events",
    ] {
        client
            .query(&format!(
                "ALTER TABLE {table} DELETE WHERE rollup_set = {{set:String}} SETTINGS mutations_sync = 2"
            ))
            .param("set", set)
            .execute()
            .await
            .with_context(|| format!("deleting rollup set {set} from {table}"))?;
    }
    Ok(())
}
