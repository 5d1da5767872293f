//! The adtally core as a WebAssembly component: the shipped module.
//!
//! This crate owns only the choice of build: every record goes to the core
//! ([`adtally_component_glue::Shipped`]); the translation between the WIT
//! interface and `adtally-core` is `adtally-component-glue`'s. Build it with
//! `cargo build -p adtally-component --target wasm32-wasip2 --profile wasm`.
//! `.cargo/config.toml` builds it with the WebAssembly wide-arithmetic
//! proposal, which the runtime that loads it must enable (adtally's does).

type Shipped = adtally_component_glue::Module<adtally_component_glue::Shipped>;

adtally_component_glue::export!(Shipped with_types_in adtally_component_glue);
