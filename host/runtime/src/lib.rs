//! Runs the adtally core component (`udf/component`) inside wasmtime.
//!
//! This crate owns the sandbox: the component is compiled once per
//! [`Runtime`], instantiated on demand (one instance per partition, as
//! many as the host is assigned), capped in memory and interrupted when a call runs past its deadline (epoch interruption). A
//! trap or timeout comes back as an [`Error`](anyhow::Error) naming the
//! call; the instance is then discarded and the caller restores a new one
//! from its last snapshot. It never reads Kafka or writes ClickHouse.
//!
//! Every [`Module`] carries the SHA-256 of its bytes, so every number a
//! host writes can be traced to the module that produced it.
//!
//! ```no_run
//! use adtally_runtime::{Limits, Runtime};
//! let rt = Runtime::new(Limits::default())?;
//! let module = rt.load_file("target/wasm/adtally_component.wasm".as_ref())?;
//! let mut agg = module.create("{}")?;
//! let out = agg.push(&[], 0)?;
//! assert!(out.rollups.is_empty());
//! # anyhow::Ok(())
//! ```

use adtally_core::columns::{ClickColumns, RecordColumnsRef, RollupColumns};
use adtally_core::topn::RankedAd;
use adtally_core::{
    AdId, Click, Country, EventId, EventKey, EventTime, FilterId, InvalidEvent, InvalidReason,
    LateEvent, Offset, Outputs, Partition, RawRecord, Rollup, TopNRow, UserId, WindowStart,
};
use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{InstanceAllocationStrategy, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{ResourceTable, WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "aggregator-module",
});

use exports::adtally::core::aggregate as wit;

/// Sandbox limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest linear memory of one instance.
    pub max_memory_bytes: usize,
    /// How long one call may run: at least this, at most one epoch tick
    /// (10 ms) more; then it is interrupted and reported as a trap.
    pub call_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_memory_bytes: 2 << 30,
            call_deadline: Duration::from_secs(10),
        }
    }
}

const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A wasmtime engine configured for adtally modules, with its epoch ticker.
pub struct Runtime {
    engine: wasmtime::Engine,
    limits: Limits,
    stop: Arc<AtomicBool>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// A runtime with the given limits.
    pub fn new(limits: Limits) -> Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // adtally's component is built with it (see `.cargo/config.toml`).
        config.wasm_wide_arithmetic(true);
        // On demand, not pooled: a pool fixes how many instances may live
        // at once (a 32-partition topic on one host needs 32, and a
        // rebalance may hand over more), while an instance is made only
        // when a partition is opened, so pooling saves nothing that
        // matters. Each instance's memory is capped by its store's limits.
        config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
        // `ADTALLY_WASM_PERFMAP=1` names JIT code for `perf` (profiling only).
        if std::env::var_os("ADTALLY_WASM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = wasmtime::Engine::new(&config).ctx("configuring wasmtime")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("adtally-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .context("starting the epoch thread")?;
        Ok(Runtime {
            engine,
            limits,
            stop,
        })
    }

    /// The machine code this runtime compiles the component `bytes` to:
    /// wasmtime's precompiled artifact, an ELF file that `objdump -d`
    /// reads. It is for reading the code (`scripts/wasm-fn-counts.py
    /// --disasm`); the runtime itself compiles modules from their `.wasm`
    /// bytes and never loads an artifact.
    pub fn precompile(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.engine
            .precompile_component(bytes)
            .ctx("not a valid WebAssembly component")
    }

    /// Compiles a component from a file.
    pub fn load_file(&self, path: &Path) -> Result<Module> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
        self.load(&bytes)
            .with_context(|| format!("loading module {}", path.display()))
    }

    /// Compiles a component, checks its interface and runs its self-test.
    /// A module that fails any of this is refused.
    pub fn load(&self, bytes: &[u8]) -> Result<Module> {
        let sha256 = sha256_of(bytes);
        let component = Component::new(&self.engine, bytes).ctx("not a valid adtally component")?;
        let mut linker: Linker<State> = Linker::new(&self.engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).ctx("linking WASI")?;
        let pre = AggregatorModulePre::new(
            linker
                .instantiate_pre(&component)
                .ctx("the component does not fit the adtally world")?,
        )
        .ctx("the component does not export adtally:core/aggregate")?;
        let mut module = Module {
            runtime_engine: self.engine.clone(),
            limits: self.limits,
            pre,
            sha256,
            info: None,
        };
        let (mut store, bindings) = module.instantiate()?;
        let api = bindings.adtally_core_aggregate();
        let info = api.call_info(&mut store).ctx("calling info")?;
        api.call_self_test(&mut store)
            .ctx("calling self-test")?
            .map_err(|e| anyhow!("module {} refused: self-test failed: {e}", module.sha256))?;
        module.info = Some(ModuleInfo {
            name: info.name,
            version: info.version,
            semantics_version: info.semantics_version,
            default_config: info.default_config,
        });
        Ok(module)
    }
}

/// Adds what the host was doing to a wasmtime error.
trait Ctx<T> {
    fn ctx(self, what: &'static str) -> Result<T>;
}

impl<T> Ctx<T> for std::result::Result<T, wasmtime::Error> {
    fn ctx(self, what: &'static str) -> Result<T> {
        self.map_err(|e| anyhow::Error::from(e).context(what))
    }
}

/// Why a call into a module failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The call ran past [`Limits::call_deadline`]: slow, not proof that
    /// its input is bad.
    Deadline,
    /// The instance's memory would have grown past
    /// [`Limits::max_memory_bytes`]: the state is too large, which is not
    /// proof that the input is bad either.
    OutOfMemory,
    /// Any other trap (a panic, an `unreachable`, a bad access): the
    /// module failed on what it was given.
    Trap,
}

impl Failure {
    /// What kind of failure `error`, from a call of this crate, is.
    pub fn of(error: &anyhow::Error) -> Failure {
        let deadline = error.chain().any(|e| {
            matches!(
                e.downcast_ref::<wasmtime::Trap>(),
                Some(wasmtime::Trap::Interrupt)
            )
        });
        if deadline {
            Failure::Deadline
        } else if error
            .chain()
            .any(|e| e.to_string().contains("forcing trap when growing memory"))
        {
            Failure::OutOfMemory
        } else {
            Failure::Trap
        }
    }
}

/// A module's SHA-256, lower-case hex, as [`Module::sha256`] gives it and
/// every row it computes carries.
pub fn sha256_of(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: Limiter,
}

/// The store's limits, and the size its memory has reached.
struct Limiter {
    limits: StoreLimits,
    memory_bytes: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grown = self.limits.memory_growing(current, desired, maximum)?;
        if grown {
            self.memory_bytes = self.memory_bytes.max(desired);
        }
        Ok(grown)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// What a module says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Its name.
    pub name: String,
    /// Semver of its core.
    pub version: String,
    /// Semantics version of its core.
    pub semantics_version: u32,
    /// Its default configuration, as JSON.
    pub default_config: String,
}

/// A compiled, self-tested component.
pub struct Module {
    runtime_engine: wasmtime::Engine,
    limits: Limits,
    pre: AggregatorModulePre<State>,
    sha256: String,
    info: Option<ModuleInfo>,
}

impl Module {
    /// SHA-256 of the module bytes, lower-case hex.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// What the module says about itself.
    pub fn info(&self) -> &ModuleInfo {
        self.info.as_ref().expect("set at load")
    }

    fn instantiate(&self) -> Result<(Store<State>, AggregatorModule)> {
        // No files, no network, no environment: the core needs none.
        let state = State {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits: Limiter {
                limits: StoreLimitsBuilder::new()
                    .memory_size(self.limits.max_memory_bytes)
                    .trap_on_grow_failure(true)
                    .build(),
                memory_bytes: 0,
            },
        };
        let mut store = Store::new(&self.runtime_engine, state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .ctx("instantiating the module")?;
        Ok((store, bindings))
    }

    /// Epoch ticks per call: the next tick may come at once, so one more
    /// than the deadline holds guarantees a call at least `call_deadline`
    /// (and at most one tick more).
    fn deadline_ticks(&self) -> u64 {
        self.limits
            .call_deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis()) as u64
            + 1
    }

    /// A new aggregator with this configuration (JSON; defaults fill gaps).
    pub fn create(&self, config_json: &str) -> Result<Aggregator<'_>> {
        let (mut store, bindings) = self.instantiate()?;
        let handle = create_in(&mut store, &bindings, config_json)?;
        Ok(Aggregator {
            module: self,
            store,
            bindings,
            handle,
        })
    }

    /// An aggregator continuing from a snapshot.
    pub fn restore(&self, snapshot: &[u8]) -> Result<Aggregator<'_>> {
        let (mut store, bindings) = self.instantiate()?;
        let handle = bindings
            .adtally_core_aggregate()
            .aggregator()
            .call_restore(&mut store, snapshot)
            .ctx("calling restore")?
            .map_err(|e| anyhow!("restoring a snapshot: {e}"))?;
        Ok(Aggregator {
            module: self,
            store,
            bindings,
            handle,
        })
    }

    /// Merges top-N lists over disjoint ad sets with the module's merge.
    pub fn merge_top_n(
        &self,
        lists: &[Vec<RankedAd>],
        n: u32,
    ) -> Result<Result<Vec<RankedAd>, String>> {
        let (mut store, bindings) = self.instantiate()?;
        let lists: Vec<Vec<wit::RankedAd>> = lists
            .iter()
            .map(|l| {
                l.iter()
                    .map(|r| wit::RankedAd {
                        ad_id: r.ad_id.as_str().into(),
                        clicks: r.clicks,
                    })
                    .collect()
            })
            .collect();
        let r = bindings
            .adtally_core_aggregate()
            .call_merge_top_n(&mut store, &lists, n)
            .ctx("calling merge-top-n")?;
        Ok(match r {
            Ok(l) => Ok(l.into_iter().map(ranked).collect::<Result<_>>()?),
            Err(e) => Err(e),
        })
    }
}

/// A new aggregator resource with `config_json` in an instance.
fn create_in(
    store: &mut Store<State>,
    bindings: &AggregatorModule,
    config_json: &str,
) -> Result<ResourceAny> {
    bindings
        .adtally_core_aggregate()
        .aggregator()
        .call_create(store, config_json)
        .ctx("calling create")?
        .map_err(|e| anyhow!("{e}"))
}

/// One aggregator instance. After an error (trap, timeout, out of memory)
/// it must be dropped; restore a new one from the last snapshot.
pub struct Aggregator<'m> {
    module: &'m Module,
    store: Store<State>,
    bindings: AggregatorModule,
    handle: ResourceAny,
}

impl Aggregator<'_> {
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.module.deadline_ticks());
    }

    /// The way into the aggregator resource's functions (dropping the
    /// resource itself is [`Aggregator::start_over`]'s): arms the call deadline,
    /// then calls `f` with the resource's functions, the store and the
    /// handle; a trap comes back as an error that says `trapped` (the
    /// message, e.g. "module trapped in tick").
    fn call<T>(
        &mut self,
        trapped: &'static str,
        f: impl FnOnce(wit::GuestAggregator<'_>, &mut Store<State>, ResourceAny) -> wasmtime::Result<T>,
    ) -> Result<T> {
        self.arm();
        let api = self.bindings.adtally_core_aggregate().aggregator();
        f(api, &mut self.store, self.handle).ctx(trapped)
    }

    /// Drops this aggregator's state and starts an empty one with
    /// `config_json` in the same instance. The instance keeps the memory it
    /// has grown, so the new aggregator runs on warm pages, as a long-lived
    /// instance does, where a fresh instance would fault its pages in again.
    pub fn start_over(&mut self, config_json: &str) -> Result<()> {
        self.arm();
        self.handle
            .resource_drop(&mut self.store)
            .ctx("module trapped dropping its aggregator")?;
        self.handle = create_in(&mut self.store, &self.bindings, config_json)?;
        Ok(())
    }

    /// Pushes a batch of records (packed into one buffer on the way).
    pub fn push(&mut self, records: &[RawRecord<'_>], now_ms: i64) -> Result<Outputs> {
        let mut batch = RecordBatch::with_capacity(
            records.len(),
            records.iter().map(|r| r.payload.len()).sum(),
        );
        for r in records {
            batch.push(r.partition, r.offset, r.payload, r.record_time_ms)?;
        }
        self.push_batch(&batch, now_ms)
    }

    /// Pushes records packed beforehand (no copy on the host side).
    pub fn push_batch(&mut self, batch: &RecordBatch, now_ms: i64) -> Result<Outputs> {
        let out = self
            .call("module trapped in push", |api, store, h| {
                api.call_push(store, h, &batch.0, now_ms)
            })?
            .map_err(|e| anyhow!("module refused the batch: {e}"))?;
        from_wit(out)
    }

    /// Pushes parsed clicks of one partition at consecutive offsets.
    pub fn push_clicks(
        &mut self,
        partition: Partition,
        first_offset: Offset,
        clicks: &[Click],
        now_ms: i64,
    ) -> Result<Outputs> {
        let batch = ClickBatch::new(clicks)?;
        self.push_click_batch(partition, first_offset, &batch, now_ms)
    }

    /// [`Aggregator::push_clicks`] for clicks packed beforehand.
    pub fn push_click_batch(
        &mut self,
        partition: Partition,
        first_offset: Offset,
        clicks: &ClickBatch,
        now_ms: i64,
    ) -> Result<Outputs> {
        let out = self
            .call("module trapped in push-clicks", |api, store, h| {
                api.call_push_clicks(store, h, partition.0, first_offset.0, &clicks.0, now_ms)
            })?
            .map_err(|e| anyhow!("module refused the clicks: {e}"))?;
        from_wit(out)
    }

    /// Processing time passes.
    pub fn tick(&mut self, now_ms: i64) -> Result<Outputs> {
        let out = self.call("module trapped in tick", |api, store, h| {
            api.call_tick(store, h, now_ms)
        })?;
        from_wit(out)
    }

    /// The whole state.
    pub fn snapshot(&mut self) -> Result<Vec<u8>> {
        self.call("module trapped in snapshot", |api, store, h| {
            api.call_snapshot(store, h)
        })
    }

    /// The configuration in force (as JSON, every field).
    pub fn config(&mut self) -> Result<String> {
        self.call("module trapped in config", |api, store, h| {
            api.call_config(store, h)
        })
    }

    /// Position and watermark of every partition with state.
    pub fn positions(&mut self) -> Result<Vec<Position>> {
        let v = self.call("module trapped in positions", |api, store, h| {
            api.call_positions(store, h)
        })?;
        Ok(v.into_iter()
            .map(|p| Position {
                partition: Partition(p.partition),
                next_offset: p.next_offset.map(Offset),
                watermark: p.watermark,
            })
            .collect())
    }

    /// Forgets a revoked partition.
    pub fn drop_partition(&mut self, partition: Partition) -> Result<()> {
        self.call("module trapped in drop-partition", |api, store, h| {
            api.call_drop_partition(store, h, partition.0)
        })
    }

    /// What the aggregator's state takes, and the memory its instance has.
    pub fn state_usage(&mut self) -> Result<StateUsage> {
        let u = self.call("module trapped in state-usage", |api, store, h| {
            api.call_state_usage(store, h)
        })?;
        Ok(StateUsage {
            keys: u.keys,
            key_bytes: u.key_bytes,
            cells: u.cells,
            ads: u.ads,
            memory_bytes: self.store.data().limits.memory_bytes as u64,
        })
    }

    /// The module this aggregator runs.
    pub fn module(&self) -> &Module {
        self.module
    }
}

/// What an aggregator's state takes ([`Aggregator::state_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateUsage {
    /// Keys remembered for deduplication.
    pub keys: u64,
    /// Heap bytes the remembered keys take.
    pub key_bytes: u64,
    /// (window, ad, filter) counts in open windows.
    pub cells: u64,
    /// Distinct ad ids held.
    pub ads: u64,
    /// The size the instance's linear memory has grown to.
    pub memory_bytes: u64,
}

/// Where an aggregator stands in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The partition.
    pub partition: Partition,
    /// The offset after the last record processed.
    pub next_offset: Option<Offset>,
    /// `W_p`, once the partition has event time.
    pub watermark: Option<i64>,
}

fn ranked(r: wit::RankedAd) -> Result<RankedAd> {
    Ok(RankedAd {
        ad_id: AdId::new(&r.ad_id)
            .map_err(|e| anyhow!("module returned ad_id {:?}: {e}", r.ad_id))?,
        clicks: r.clicks,
    })
}

fn end_offset(len: usize) -> Result<u32> {
    u32::try_from(len)
        .map_err(|_| anyhow!("a batch's text must stay under 4 GiB, this one has {len} bytes"))
}

/// Records packed the way the component takes them: one buffer for every
/// payload, one list per field. Build it as records arrive, then push it
/// with [`Aggregator::push_batch`].
#[derive(Clone, Debug)]
pub struct RecordBatch(wit::RecordBatch);

impl Default for RecordBatch {
    fn default() -> RecordBatch {
        RecordBatch::with_capacity(0, 0)
    }
}

impl RecordBatch {
    /// An empty batch with room for `records` records of `bytes` payload bytes.
    pub fn with_capacity(records: usize, bytes: usize) -> RecordBatch {
        RecordBatch(wit::RecordBatch {
            partitions: Vec::with_capacity(records),
            offsets: Vec::with_capacity(records),
            record_times_ms: Vec::with_capacity(records),
            payload_ends: Vec::with_capacity(records),
            payloads: Vec::with_capacity(bytes),
        })
    }

    /// Appends a record (its payload is copied into the batch).
    pub fn push(
        &mut self,
        partition: Partition,
        offset: Offset,
        payload: &[u8],
        record_time_ms: Option<i64>,
    ) -> Result<()> {
        let b = &mut self.0;
        b.payloads.extend_from_slice(payload);
        b.payload_ends.push(end_offset(b.payloads.len())?);
        b.partitions.push(partition.0);
        b.offsets.push(offset.0);
        b.record_times_ms.push(record_time_ms);
        Ok(())
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.0.offsets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.offsets.is_empty()
    }

    /// The records, borrowed.
    pub fn records(&self) -> Vec<RawRecord<'_>> {
        let b = &self.0;
        RecordColumnsRef {
            partitions: &b.partitions,
            offsets: &b.offsets,
            payloads: &b.payloads,
            payload_ends: &b.payload_ends,
            record_times_ms: &b.record_times_ms,
        }
        .records()
        .expect("columns written by push")
    }
}

/// Parsed clicks packed column by column, the way the component takes them:
/// one copy per column, not one allocation per click.
#[derive(Clone, Debug)]
pub struct ClickBatch(wit::ClickBatch);

impl ClickBatch {
    /// Packs `clicks`.
    pub fn new(clicks: &[Click]) -> Result<ClickBatch> {
        let mut c = ClickColumns::default();
        for click in clicks {
            c.push(click.as_click_ref())?;
        }
        Ok(ClickBatch(wit::ClickBatch {
            text: c.text,
            text_ends: c.text_ends,
            timestamps_ms: c.timestamps_ms,
            ips: c.ips,
            countries: c.countries,
        }))
    }

    /// How many clicks.
    pub fn len(&self) -> usize {
        self.0.timestamps_ms.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn from_wit_click(c: wit::Click) -> Result<Click> {
    let bad = |f: &str, v: &str| anyhow!("module returned an invalid {f}: {v:?}");
    Ok(Click {
        ad_id: AdId::new(&c.ad_id).map_err(|_| bad("ad_id", &c.ad_id))?,
        timestamp: EventTime(c.timestamp_ms),
        user_id: UserId::new(&c.user_id).map_err(|_| bad("user_id", &c.user_id))?,
        ip: c.ip.parse().map_err(|_| bad("ip", &c.ip))?,
        country: Country::new(&c.country).map_err(|_| bad("country", &c.country))?,
        event_id: match c.event_id {
            Some(e) => Some(EventId::new(&e).map_err(|_| bad("event_id", &e))?),
            None => None,
        },
    })
}

/// Rollup columns as rows, checked (see [`RollupColumns::rows`]).
fn rollups(r: wit::Rollups) -> Result<Vec<Rollup>> {
    RollupColumns {
        window_starts: r.window_starts,
        ad_ids: r.ad_ids,
        ad_id_ends: r.ad_id_ends,
        filter_ids: r.filter_ids,
        partitions: r.partitions,
        clicks: r.clicks,
        versions: r.versions,
    }
    .rows()
    .map_err(|e| anyhow!("module returned invalid rollup columns: {e}"))
}

/// Converts a module's outputs into the core's types, checking them.
fn from_wit(o: wit::Outputs) -> Result<Outputs> {
    Ok(Outputs {
        rollups: rollups(o.rollups)?,
        late: o
            .late
            .into_iter()
            .map(|l| {
                Ok(LateEvent {
                    partition: Partition(l.partition),
                    offset: Offset(l.offset),
                    key: EventKey::from_hex(&l.key)
                        .ok_or_else(|| anyhow!("module returned an invalid key: {:?}", l.key))?,
                    window_start: WindowStart(l.window_start),
                    watermark: l.watermark,
                    click: from_wit_click(l.click)?,
                })
            })
            .collect::<Result<_>>()?,
        invalid: o
            .invalid
            .into_iter()
            .map(|i| {
                let Some(reason) = InvalidReason::from_code(&i.reason) else {
                    bail!("module returned an unknown invalid reason: {:?}", i.reason);
                };
                Ok(InvalidEvent {
                    partition: Partition(i.partition),
                    offset: Offset(i.offset),
                    reason,
                    payload: i.payload,
                })
            })
            .collect::<Result<_>>()?,
        top_n: o
            .top_n
            .into_iter()
            .map(|t| {
                Ok(TopNRow {
                    minute: WindowStart(t.minute),
                    windows: t.windows,
                    filter_id: FilterId(t.filter_id),
                    version: t.version,
                    ads: t.ads.into_iter().map(ranked).collect::<Result<_>>()?,
                })
            })
            .collect::<Result<_>>()?,
        duplicates: o.duplicates,
        replayed: o.replayed,
    })
}
