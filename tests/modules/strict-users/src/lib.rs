//! A test module: the core, with a validation rule of its own. A click
//! whose user id ends in `7` is invalid (`bad_user_id`); everything else is
//! the shipped module's. Replay tests run it to recalculate with a changed
//! rule. Never shipped: `make wasm` builds it as
//! `target/wasm/adtally_module_strict_users.wasm`.

use adtally_core::{InvalidReason, Record, parse_record};

/// The variant's rule.
pub struct StrictUsers;

impl adtally_component_glue::Variant for StrictUsers {
    const NAME: &'static str = "adtally-core-strict-users";
    fn refuse(payload: &[u8]) -> Option<InvalidReason> {
        match parse_record(payload, None, 0) {
            Ok(Record::Click(c)) if c.user_id.as_str().ends_with('7') => {
                Some(InvalidReason::BadUserId)
            }
            _ => None,
        }
    }
}

type Module = adtally_component_glue::Module<StrictUsers>;

adtally_component_glue::export!(Module with_types_in adtally_component_glue);
