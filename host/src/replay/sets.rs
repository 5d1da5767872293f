//! Rollup sets' lifecycle in `rollup_sets`: building, then ready (written,
//! read back and verified against the batch truth) or failed, active,
//! dropped. Each change is one insert of the set's row at a higher
//! revision; readers take each (topic, window)'s newest active set.

use super::Options;
use crate::reconcile::{self, Range, Summary};
use adtally_core::{FilterId, WindowStart};
use anyhow::{Context, Result, bail};
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};

/// Where a set stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetState {
    /// Being written.
    Building,
    /// Written, read back and verified: it may be switched in.
    Ready,
    /// Written, but its read-back or its verification failed.
    Failed,
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
            SetState::Failed => "failed",
            SetState::Active => "active",
            SetState::Dropped => "dropped",
        }
    }
}

/// A set as `rollup_sets` records it.
#[derive(Clone, Debug, Row, Serialize, Deserialize)]
pub struct SetRow {
    /// Its name.
    pub rollup_set: String,
    /// The first window it holds, ms.
    pub range_from: i64,
    /// The first window it does not.
    pub range_to: i64,
    /// The topic it holds.
    pub topic: String,
    /// The module that computed it.
    pub module_sha256: String,
    /// The configuration it ran with (resolved by the module).
    pub config_json: String,
    /// building, ready, failed, active or dropped.
    pub state: String,
    /// The highest is the set's state.
    pub revision: u32,
}

const SET_COLUMNS: &str = "rollup_set, toUnixTimestamp64Milli(range_from) AS range_from, \
     toUnixTimestamp64Milli(range_to) AS range_to, topic, module_sha256, config_json, \
     toString(state) AS state, revision";

async fn current(client: &Client, set: &str) -> Result<Option<SetRow>> {
    client
        .query(&format!(
            "SELECT {SET_COLUMNS} FROM rollup_sets FINAL WHERE rollup_set = {{set:String}}"
        ))
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

/// Every set, oldest range first.
pub async fn list(client: &Client) -> Result<Vec<SetRow>> {
    client
        .query(&format!(
            "SELECT {SET_COLUMNS} FROM rollup_sets FINAL ORDER BY range_from, rollup_set"
        ))
        .fetch_all()
        .await
        .context("listing the rollup sets")
}

/// A set's verification.
pub struct Verified {
    /// The set reconciled against the batch truth, on the filters both count.
    pub summary: Summary,
    /// The set's filters the batch truth does not count, so not verified.
    pub unverified: Vec<FilterId>,
}

/// The filters a configuration counts, as the core reads it: 0 (every
/// valid click) and its own.
pub(super) fn counted_filters(config_json: &str) -> Result<Vec<u32>> {
    let config = adtally_core::Config::from_json(config_json)
        .map_err(|e| anyhow::anyhow!("a rollup set's configuration: {e}"))?;
    Ok(std::iter::once(0)
        .chain(config.filters.iter().map(|f| f.id))
        .collect())
}

/// Reconciles set `set` against the batch truth for its range, on the
/// filters both count: every difference must be one of the set's own side
/// outputs (its late clicks, the records its module refused). A set that
/// fails is marked failed, and the error says how to look at it.
pub async fn verify(client: &Client, db: &str, set: &str) -> Result<Verified> {
    let Some(row) = current(client, set).await? else {
        bail!("no rollup set {set}");
    };
    let ours = counted_filters(&row.config_json)?;
    let batch: Vec<u32> = client
        .query(
            "SELECT DISTINCT filter_id FROM batch_minute_counts \
             WHERE window_start >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') \
             AND window_start < fromUnixTimestamp64Milli({to:Int64}, 'UTC') ORDER BY filter_id",
        )
        .param("from", row.range_from)
        .param("to", row.range_to)
        .fetch_all()
        .await
        .context("reading the batch truth's filters")?;
    let (common, unverified): (Vec<u32>, Vec<u32>) =
        ours.into_iter().partition(|f| batch.contains(f));
    let check = reconcile::Options {
        range: Range::new(WindowStart(row.range_from), WindowStart(row.range_to))?,
        filters: common.into_iter().map(FilterId).collect(),
        chunk_minutes: 60,
        set: Some(set.into()),
    };
    let summary = reconcile::reconcile(client, db, &check, |_| Ok(()), |_, _| {}).await?;
    if summary.unexplained > 0 {
        change(client, set, SetState::Failed).await?;
        bail!(
            "rollup set {set} differs from the batch truth in {} cells its side outputs do not explain: \
             not switched (see `adtally reconcile --set {set} --from {} --to {}`; drop it with \
             `adtally replay drop {set}`)",
            summary.unexplained,
            row.range_from,
            row.range_to
        );
    }
    Ok(Verified {
        summary,
        unverified: unverified.into_iter().map(FilterId).collect(),
    })
}

/// Refuses a set counting only the filters `ours` for `topic` and `range`
/// when readers see others there now: switched in, it would make them lose
/// those.
pub async fn refuse_dropped_filters(
    client: &Client,
    topic: &str,
    range: Range,
    ours: &[u32],
) -> Result<()> {
    let seen: Vec<u32> = client
        .query(
            "WITH (SELECT sets FROM active_rollup_sets) AS active \
             SELECT DISTINCT filter_id FROM rollup_cells WHERE topic = {topic:String} \
             AND window_start >= fromUnixTimestamp64Milli({from:Int64}, 'UTC') \
             AND window_start < fromUnixTimestamp64Milli({to:Int64}, 'UTC') \
             AND rollup_set = arrayFirst(s -> s.2 = topic AND window_start >= s.3 AND window_start < s.4, active).1 \
             ORDER BY filter_id",
        )
        .param("topic", topic)
        .param("from", range.from.0)
        .param("to", range.to.0)
        .fetch_all()
        .await
        .context("reading the filters readers see now")?;
    let dropped: Vec<String> = seen
        .iter()
        .filter(|f| !ours.contains(f))
        .map(u32::to_string)
        .collect();
    if !dropped.is_empty() {
        bail!(
            "the rollups readers see now for this range count filters {} that this configuration does not: \
             give --config with them, or --drop-filters to let readers lose them",
            dropped.join(", ")
        );
    }
    Ok(())
}

/// Switches readers to set `set` for its range (one insert), once it is
/// verified again: only a ready set (written with `--no-switch`), and,
/// unless `drop_filters`, only one that counts every filter readers see
/// there now.
pub async fn switch(client: &Client, db: &str, set: &str, drop_filters: bool) -> Result<Verified> {
    let Some(row) = current(client, set).await? else {
        bail!("no rollup set {set}");
    };
    if row.state != SetState::Ready.name() {
        bail!(
            "rollup set {set} is {}: only a ready set is switched in",
            row.state
        );
    }
    let range = Range::new(WindowStart(row.range_from), WindowStart(row.range_to))?;
    if !drop_filters {
        refuse_dropped_filters(
            client,
            &row.topic,
            range,
            &counted_filters(&row.config_json)?,
        )
        .await?;
    }
    let verified = verify(client, db, set).await?;
    change(client, set, SetState::Active).await?;
    Ok(verified)
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
