import os
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clickhouse"))

import adtally_ch  # noqa: E402
import install as installer  # noqa: E402

WASM = os.path.join(ROOT, "target", "wasm", "adtally_clickhouse.wasm")
WASM_MARKER = os.path.join(ROOT, "target", "wasm", "adtally_clickhouse_marker.wasm")
VECTORS = os.path.join(ROOT, "tests", "vectors")


@pytest.fixture
def ch():
    """A fresh embedded ClickHouse session and its query function."""
    with tempfile.TemporaryDirectory() as d:
        s = adtally_ch.open_session(d)
        yield installer.session_query(s)
        s.close()
