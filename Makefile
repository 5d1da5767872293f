# adtally: `make demo` and `make test` are all a new user needs.
ADTALLY_HOME ?= $(HOME)/.cache/adtally
export ADTALLY_HOME
export ADTALLY_PYTHON ?= $(ADTALLY_HOME)/venv/bin/python
WASM_DIR := target/wasm
# Where cargo builds (CARGO_TARGET_DIR, when set, moves it).
CARGO_TARGET := $(or $(CARGO_TARGET_DIR),target)

.PHONY: setup wasm test examples conformance bench demo lint clean

setup:
	@scripts/setup.sh

# The three WebAssembly builds of the core, under target/wasm/.
wasm:
	@echo "make wasm: the core's WebAssembly builds into $(WASM_DIR) (the first time about 5 minutes on 2 cores)"
	@mkdir -p $(WASM_DIR)
	cargo build -p adtally-component -p adtally-module-trap-marker -p adtally-module-strict-users --target wasm32-wasip2 --profile wasm
	cp $(CARGO_TARGET)/wasm32-wasip2/wasm/adtally_module_trap_marker.wasm $(WASM_DIR)/adtally_component_trap_marker.wasm
	cp $(CARGO_TARGET)/wasm32-wasip2/wasm/adtally_module_strict_users.wasm $(WASM_DIR)/
	cargo build -p adtally-clickhouse --target wasm32-unknown-unknown --profile wasm --features upgrade-test-marker
	cp $(CARGO_TARGET)/wasm32-unknown-unknown/wasm/adtally_clickhouse.wasm $(WASM_DIR)/adtally_clickhouse_marker.wasm
	cargo build -p adtally-clickhouse --target wasm32-unknown-unknown --profile wasm
	cargo build -p adtally-js --target wasm32-unknown-unknown --profile wasm
	cp $(CARGO_TARGET)/wasm32-wasip2/wasm/adtally_component.wasm $(WASM_DIR)/
	cp $(CARGO_TARGET)/wasm32-unknown-unknown/wasm/adtally_clickhouse.wasm $(WASM_DIR)/
	wasm-bindgen --target nodejs --out-dir $(WASM_DIR)/js $(CARGO_TARGET)/wasm32-unknown-unknown/wasm/adtally_js.wasm
	wasm-bindgen --target web --out-dir $(WASM_DIR)/web $(CARGO_TARGET)/wasm32-unknown-unknown/wasm/adtally_js.wasm

# Every vector against every build: a table of vector x build.
conformance: wasm
	cargo run --release -q -p adtally-conformance -- --builds native,component,clickhouse,js

test: setup wasm
	@echo "make test: the Rust tests (the first build takes about 15 minutes on 2 cores; the Kafka fault tests then about 5), the ClickHouse tests, conformance on all four builds, the examples"
	cargo test --workspace --exclude adtally-component --exclude adtally-component-glue --exclude adtally-module-strict-users --exclude adtally-module-trap-marker --exclude adtally-clickhouse --exclude adtally-js
	$(ADTALLY_PYTHON) -m pytest -q clickhouse/tests
	$(MAKE) --no-print-directory conformance
	$(MAKE) --no-print-directory examples

# Every example of examples/README.md, run.
examples: setup wasm
	cargo run -q -p adtally-examples --example core
	cargo run -q -p adtally-examples --example component
	$(ADTALLY_PYTHON) examples/clickhouse/udfs.py
	node examples/js/clicks.mjs

# Figures and how to read them: docs/benchmarks.md.
bench: setup wasm
	cargo bench -p adtally-benches --bench core

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --exclude adtally-component --exclude adtally-component-glue --exclude adtally-module-trap-marker --exclude adtally-module-strict-users --exclude adtally-clickhouse --exclude adtally-js --all-targets -- -D warnings
	cargo clippy -p adtally-component -p adtally-component-glue -p adtally-module-trap-marker -p adtally-module-strict-users --target wasm32-wasip2 -- -D warnings
	cargo clippy -p adtally-clickhouse -p adtally-js --target wasm32-unknown-unknown -- -D warnings

# A generated stream through Kafka (Tansu), the core component and an embedded
# ClickHouse, checked against the generator's own totals; then the top ads.
demo: setup wasm
	@echo "make demo: building the demo (release; the first build takes about 10 minutes on 2 cores, later ones seconds)"
	cargo build --release -p adtally-demo
	$(CARGO_TARGET)/release/adtally-demo

clean:
	cargo clean
