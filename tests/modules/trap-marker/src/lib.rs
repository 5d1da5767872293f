//! A test module: the core, except that it traps (panics) on any record
//! containing `adtally-trap-test`, so that the host's trap recovery and
//! quarantine are tested with a real trapping module. Never shipped: `make
//! wasm` builds it as `target/wasm/adtally_component_trap_marker.wasm`.

use adtally_core::InvalidReason;

/// The variant's rule: no refusal, a trap.
pub struct TrapMarker;

impl adtally_component_glue::Variant for TrapMarker {
    const NAME: &'static str = "adtally-core";
    fn refuse(payload: &[u8]) -> Option<InvalidReason> {
        if payload.windows(17).any(|w| w == b"adtally-trap-test") {
            panic!("trap-test-marker: a record with the marker");
        }
        None
    }
}

type Module = adtally_component_glue::Module<TrapMarker>;

adtally_component_glue::export!(Module with_types_in adtally_component_glue);
