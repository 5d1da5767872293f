//! adtally's runnable examples live beside this file (`examples/*.rs`,
//! `examples/js/`); `examples/README.md` is their index. This crate holds
//! no code of its own.
