//! The translation between the WIT interface (`wit/adtally.wit`) and
//! `adtally-core`, for every build of the component: the shipped module
//! (`udf/component`) and the variants that tests replay with or trap on
//! (`tests/modules/*`), each a crate of its own that picks a [`Variant`]
//! and calls [`export!`].
//!
//! This crate holds no semantics of its own and does no I/O; a variant's
//! only power is to refuse records before the core sees them.

use adtally_core::columns::{ClickColumnsRef, RecordColumnsRef, RollupColumns};
use adtally_core::{
    AdId, Click, ClickRef, Config, Engine, InvalidEvent, InvalidReason, Offset, Outputs, Partition,
    Rollup,
    topn::{self, RankedAd},
};
use core::cell::RefCell;
use core::marker::PhantomData;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "aggregator-module",
    pub_export_macro: true,
    default_bindings_module: "adtally_component_glue",
});

use exports::adtally::core::aggregate as wit;

/// What distinguishes one build of the component from another: a rule
/// each record of `push` passes before the core sees it.
pub trait Variant: 'static {
    /// The module's name in its `info()`.
    const NAME: &'static str;
    /// Why the record `payload` is refused before the core (it is then an
    /// invalid event with that reason), or `None` to hand it to the core.
    fn refuse(payload: &[u8]) -> Option<InvalidReason>;
}

/// The shipped module: every record goes to the core.
pub struct Shipped;

impl Variant for Shipped {
    const NAME: &'static str = "adtally-core";
    fn refuse(_: &[u8]) -> Option<InvalidReason> {
        None
    }
}

/// The component of variant `V`: give `Module<V>`, through a type alias,
/// to [`export!`].
pub struct Module<V>(PhantomData<V>);

/// The aggregator resource: an engine and a reusable output buffer.
pub struct Aggregator<V> {
    engine: RefCell<Engine>,
    out: RefCell<Outputs>,
    variant: PhantomData<V>,
}

impl<V: Variant> Aggregator<V> {
    fn wrap(engine: Engine) -> wit::Aggregator {
        wit::Aggregator::new(Aggregator::<V> {
            engine: RefCell::new(engine),
            out: RefCell::new(Outputs::default()),
            variant: PhantomData,
        })
    }

    fn take_outputs(&self) -> wit::Outputs {
        let mut out = self.out.borrow_mut();
        let o = to_wit(&out);
        out.clear();
        o
    }
}

impl<V: Variant> wit::Guest for Module<V> {
    type Aggregator = Aggregator<V>;

    fn info() -> wit::ModuleInfo {
        wit::ModuleInfo {
            name: V::NAME.into(),
            version: adtally_core::VERSION.into(),
            semantics_version: adtally_core::SEMANTICS_VERSION,
            default_config: Config::default().to_json(),
        }
    }

    fn self_test() -> Result<(), String> {
        adtally_core::self_test()
    }

    fn merge_top_n(lists: Vec<Vec<wit::RankedAd>>, n: u32) -> Result<Vec<wit::RankedAd>, String> {
        let lists = lists
            .into_iter()
            .map(|l| {
                l.into_iter()
                    .map(|r| {
                        Ok(RankedAd {
                            ad_id: AdId::new(&r.ad_id)
                                .map_err(|e| format!("ad_id {:?}: {e}", r.ad_id))?,
                            clicks: r.clicks,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()
            })
            .collect::<Result<Vec<_>, String>>()?;
        let merged = topn::merge(&lists, n as usize).map_err(|e| e.to_string())?;
        Ok(merged.iter().map(ranked).collect())
    }
}

impl<V: Variant> wit::GuestAggregator for Aggregator<V> {
    fn create(config_json: String) -> Result<wit::Aggregator, String> {
        let config = Config::from_json(&config_json).map_err(|e| e.to_string())?;
        Engine::new(config)
            .map(Aggregator::<V>::wrap)
            .map_err(|e| e.to_string())
    }

    fn restore(snapshot: Vec<u8>) -> Result<wit::Aggregator, String> {
        Engine::restore(&snapshot)
            .map(Aggregator::<V>::wrap)
            .map_err(|e| e.to_string())
    }

    fn push(&self, records: wit::RecordBatch, now_ms: i64) -> Result<wit::Outputs, String> {
        let raw = RecordColumnsRef {
            partitions: &records.partitions,
            offsets: &records.offsets,
            payloads: &records.payloads,
            payload_ends: &records.payload_ends,
            record_times_ms: &records.record_times_ms,
        }
        .records()
        .map_err(|e| e.to_string())?;
        {
            let mut engine = self.engine.borrow_mut();
            let mut out = self.out.borrow_mut();
            let mut refused = Vec::new();
            let mut admitted = raw;
            admitted.retain(|r| match V::refuse(r.payload) {
                Some(reason) => {
                    refused.push(InvalidEvent {
                        partition: r.partition,
                        offset: r.offset,
                        reason,
                        payload: r.payload.to_vec(),
                    });
                    false
                }
                None => true,
            });
            engine.push_records(&admitted, now_ms, &mut out);
            out.invalid.append(&mut refused);
        }
        Ok(self.take_outputs())
    }

    fn push_clicks(
        &self,
        partition: u32,
        first_offset: i64,
        clicks: wit::ClickBatch,
        now_ms: i64,
    ) -> Result<wit::Outputs, String> {
        let checked = click_refs(&clicks)?;
        {
            let mut engine = self.engine.borrow_mut();
            let mut out = self.out.borrow_mut();
            engine.push_click_refs(
                Partition(partition),
                Offset(first_offset),
                &checked,
                now_ms,
                &mut out,
            );
        }
        Ok(self.take_outputs())
    }

    fn tick(&self, now_ms: i64) -> wit::Outputs {
        self.engine
            .borrow_mut()
            .tick(now_ms, &mut self.out.borrow_mut());
        self.take_outputs()
    }

    fn snapshot(&self) -> Vec<u8> {
        self.engine.borrow().snapshot()
    }

    fn config(&self) -> String {
        self.engine.borrow().config().to_json()
    }

    fn positions(&self) -> Vec<wit::PartitionPosition> {
        let engine = self.engine.borrow();
        engine
            .watermarks()
            .map(|(p, wm)| wit::PartitionPosition {
                partition: p.0,
                next_offset: engine.position(p).map(|o| o.0),
                watermark: wm,
            })
            .collect()
    }

    fn drop_partition(&self, partition: u32) {
        self.engine
            .borrow_mut()
            .drop_partition(Partition(partition));
    }

    fn state_usage(&self) -> wit::StateUsage {
        let u = self.engine.borrow().state_usage();
        wit::StateUsage {
            keys: u.keys as u64,
            key_bytes: u.key_bytes as u64,
            cells: u.cells as u64,
            ads: u.ads as u64,
        }
    }
}

/// Every click of a batch, checked like a parsed record.
fn click_refs(b: &wit::ClickBatch) -> Result<Vec<ClickRef<'_>>, String> {
    let columns = ClickColumnsRef {
        text: &b.text,
        text_ends: &b.text_ends,
        timestamps_ms: &b.timestamps_ms,
        ips: &b.ips,
        countries: &b.countries,
    };
    columns.clicks().map_err(|e| e.to_string())
}

fn ranked(r: &RankedAd) -> wit::RankedAd {
    wit::RankedAd {
        ad_id: r.ad_id.as_str().into(),
        clicks: r.clicks,
    }
}

fn click(c: &Click) -> wit::Click {
    wit::Click {
        ad_id: c.ad_id.as_str().into(),
        timestamp_ms: c.timestamp.0,
        user_id: c.user_id.as_str().into(),
        ip: c.ip.to_string(),
        country: c.country.as_str().into(),
        event_id: c.event_id.as_ref().map(|e| e.as_str().into()),
    }
}

fn rollups(rows: &[Rollup]) -> wit::Rollups {
    // Refused only past 4 GiB of ad ids in one call's rollups; the trap is
    // then reported as this call's error, as any trap is, instead of ends
    // that wrap around.
    let c = RollupColumns::pack(rows).expect("the rollups' ad ids fit 32-bit ends");
    wit::Rollups {
        window_starts: c.window_starts,
        ad_ids: c.ad_ids,
        ad_id_ends: c.ad_id_ends,
        filter_ids: c.filter_ids,
        partitions: c.partitions,
        clicks: c.clicks,
        versions: c.versions,
    }
}

fn to_wit(o: &Outputs) -> wit::Outputs {
    wit::Outputs {
        rollups: rollups(&o.rollups),
        late: o
            .late
            .iter()
            .map(|l| wit::LateEvent {
                partition: l.partition.0,
                offset: l.offset.0,
                key: l.key.to_string(),
                window_start: l.window_start.0,
                watermark: l.watermark,
                click: click(&l.click),
            })
            .collect(),
        invalid: o
            .invalid
            .iter()
            .map(|i| wit::InvalidEvent {
                partition: i.partition.0,
                offset: i.offset.0,
                reason: i.reason.code().to_string(),
                payload: i.payload.clone(),
            })
            .collect(),
        top_n: o
            .top_n
            .iter()
            .map(|t| wit::TopNRow {
                minute: t.minute.0,
                windows: t.windows,
                filter_id: t.filter_id.0,
                version: t.version,
                ads: t.ads.iter().map(ranked).collect(),
            })
            .collect(),
        duplicates: o.duplicates,
        replayed: o.replayed,
    }
}
