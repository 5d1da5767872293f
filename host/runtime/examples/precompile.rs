//! Writes the machine code that adtally's runtime compiles a component to
//! (with the runtime's own wasmtime configuration), for `objdump -d`:
//!
//! ```sh
//! cargo run --release -p adtally-runtime --example precompile -- \
//!     target/wasm/adtally_component.wasm /tmp/component.cwasm
//! objdump -d --no-show-raw-insn /tmp/component.cwasm > /tmp/component.s
//! ```

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: precompile COMPONENT.wasm OUTPUT.cwasm");
    };
    let bytes = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let runtime = adtally_runtime::Runtime::new(Default::default())?;
    let code = runtime
        .precompile(&bytes)
        .with_context(|| format!("compiling {}", input.display()))?;
    std::fs::write(output, code).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}
