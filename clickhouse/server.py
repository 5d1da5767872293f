"""The ClickHouse HTTP interface, served by the embedded engine (chDB).

usage: python clickhouse/server.py --data DIR [--host 127.0.0.1] [--port 8123]

Owns speaking ClickHouse's HTTP protocol in front of chDB, so that the
`clickhouse` Rust crate, curl and other HTTP clients work unchanged against a
local, persistent ClickHouse. It computes nothing itself: every statement runs
in the real engine (ClickHouse 26.9 from chdb-core). Production points at a
real ClickHouse server instead.

What it speaks:
- the query in the `query` URL parameter, in the body, or both (then the
  body is the INSERT's data); GET for read-only queries; `/ping` and `/`;
- settings as URL parameters (applied for that request only), `database`,
  `default_format`, query parameters `param_<name>`;
- INSERT bodies in any input format ClickHouse reads (RowBinary,
  RowBinaryWithNamesAndTypes, JSONEachRow, TSV, CSV, ...), and the LZ4
  native framing the `clickhouse` crate sends by default (`decompress=1`),
  with each block's CityHash128 checksum verified;
- SELECT results in the requested format (FORMAT clause or `default_format`);
  responses are not compressed, as with `enable_http_compression = 0`;
- errors in ClickHouse's form: status 400/403/404/500 by error code, the
  `X-ClickHouse-Exception-Code` header, and a body `Code: N. DB::Exception: ...`.

Requests run one at a time (one chDB session); each statement is durable
when its response is sent, so stopping the server loses nothing acknowledged.
"""
import argparse
import os
import re
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adtally_ch  # noqa: E402

VERSION = "26.9.0"

# URL parameters that are protocol, not settings.
PROTOCOL_PARAMS = {
    "query", "database", "default_format", "compress", "decompress", "user", "password",
    "query_id", "session_id", "session_timeout", "session_check", "wait_end_of_query",
    "buffer_size", "role", "quota_key",
}

# ClickHouse's HTTP status for an error code (src/Server/HTTPHandler.cpp).
STATUS_BY_CODE = {}
for code in (6, 25, 26, 27, 32, 38, 41, 53, 62, 72, 117, 130, 167, 168, 169, 36, 43, 44, 57):
    STATUS_BY_CODE[code] = 400
for code in (46, 47, 50, 60, 63, 73, 81, 115, 56, 112, 1002):
    STATUS_BY_CODE[code] = 404
for code in (164, 192, 193, 194, 497, 516):
    STATUS_BY_CODE[code] = 403

INSERT_RE = re.compile(
    r"^\s*INSERT\s+INTO\s+(?:TABLE\s+)?(?P<table>[\w.`\"]+)\s*(?:\((?P<cols>[^)]*)\))?\s*"
    r"(?:SETTINGS\s+(?P<settings>.*?)\s+)?FORMAT\s+(?P<fmt>\w+)\s*",
    re.IGNORECASE | re.DOTALL,
)
FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
CODE_RE = re.compile(r"Code:\s*(\d+)")

# Formats whose data names (and types) its columns.
SELF_DESCRIBING = {"rowbinarywithnamesandtypes", "native", "parquet", "arrow", "arrowstream", "orc", "avro",
                   "tabseparatedwithnamesandtypes", "tsvwithnamesandtypes", "csvwithnamesandtypes",
                   "jsoncompacteachrowwithnamesandtypes"}


class QueryError(Exception):
    """A ClickHouse error to return: its code and message."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def decompress_native(data):
    """Undoes ClickHouse's native compression framing (what `decompress=1` announces)."""
    import lz4.block
    from clickhouse_cityhash.cityhash import CityHash128

    out = bytearray()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 25:
            raise QueryError(271, "Cannot decompress: truncated block header (CANNOT_DECOMPRESS)")
        checksum = data[pos:pos + 16]
        method = data[pos + 16]
        compressed = int.from_bytes(data[pos + 17:pos + 21], "little")
        size = int.from_bytes(data[pos + 21:pos + 25], "little")
        block = data[pos + 16:pos + 16 + compressed]
        if len(block) != compressed:
            raise QueryError(271, "Cannot decompress: block is shorter than its header says (CANNOT_DECOMPRESS)")
        h = CityHash128(bytes(block))
        # ClickHouse stores CityHash128 v1.0.2 as two little-endian 64-bit
        # words, high word first (as the Rust crate's `rotate_right(64)` does).
        expected = (h >> 64).to_bytes(8, "little") + (h & ((1 << 64) - 1)).to_bytes(8, "little")
        if checksum != expected:
            raise QueryError(40, "Checksum doesn't match: corrupted data (CHECKSUM_DOESNT_MATCH)")
        if method == 0x82:
            out += lz4.block.decompress(bytes(block[9:]), uncompressed_size=size)
        elif method == 0x02:
            out += block[9:]
        else:
            raise QueryError(271, f"Unknown compression method 0x{method:02x} (CANNOT_DECOMPRESS)")
        pos += 16 + compressed
    return bytes(out)


class Engine:
    """The chDB session and what it takes to run one HTTP request in it."""

    def __init__(self, data_dir):
        os.makedirs(data_dir, exist_ok=True)
        self.session = adtally_ch.open_session(data_dir)
        self.lock = threading.Lock()
        self.tmp = tempfile.mkdtemp(prefix="adtally-http-")
        # What the session's state is, so that a request changes it only
        # when it must: the current database, and table structures for
        # INSERTs (forgotten on any statement that may change a table).
        self.current_db = self._query("SELECT currentDatabase()", "TSV", None).decode().strip()
        self.structures = {}

    def run(self, sql, fmt, params, settings, database):
        with self.lock:
            saved = self._apply(settings, database)
            try:
                if not re.match(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN|INSERT)\b", sql, re.I):
                    self.structures.clear()
                    if re.match(r"^\s*USE\b", sql, re.I):
                        out = self._query(sql, fmt, params)
                        self.current_db = self._query("SELECT currentDatabase()", "TSV", None).decode().strip()
                        return out
                return self._query(sql, fmt, params)
            finally:
                self._restore(saved)

    def insert(self, query, data, params, settings, database):
        m = INSERT_RE.match(query)
        if not m:
            raise QueryError(62, f"Syntax error: cannot read the INSERT in {query[:200]!r} (SYNTAX_ERROR)")
        table, cols, fmt = m.group("table"), m.group("cols"), m.group("fmt")
        with self.lock:
            saved = self._apply(settings, database)
            try:
                if not data:
                    return b""
                path = os.path.join(self.tmp, "insert.data")
                with open(path, "wb") as f:
                    f.write(data)
                col_list = f"({cols})" if cols else ""
                if fmt.lower() in SELF_DESCRIBING:
                    source = f"file('{path}', '{fmt}')"
                else:
                    structure = self._structure(table, cols)
                    source = f"file('{path}', '{fmt}', {adtally_ch.sql_string(structure)})"
                settings_clause = f" SETTINGS {m.group('settings')}" if m.group("settings") else ""
                self._query(f"INSERT INTO {table} {col_list} SELECT * FROM {source}{settings_clause}", "TSV", params)
                return b""
            finally:
                self._restore(saved)

    def _structure(self, table, cols):
        key = (self.current_db, table)
        if key not in self.structures:
            self.structures[key] = self._query(f"DESCRIBE TABLE {table}", "TSV", None).decode().splitlines()
        rows = self.structures[key]
        types = {}
        order = []
        for line in rows:
            name, typ = line.split("\t")[:2]
            types[name] = typ
            order.append(name)
        wanted = [c.strip().strip("`\"") for c in cols.split(",")] if cols else order
        missing = [c for c in wanted if c not in types]
        if missing:
            raise QueryError(16, f"No such column {missing[0]} in table {table} (NO_SUCH_COLUMN_IN_TABLE)")
        return ", ".join(f"`{c}` {types[c]}" for c in wanted)

    def _query(self, sql, fmt, params):
        try:
            r = self.session.query(sql, fmt, params=params or None)
        except Exception as e:  # chDB raises its own error type with ClickHouse's text
            text = str(e).strip()
            m = CODE_RE.search(text)
            code = int(m.group(1)) if m else 1000
            message = text[text.find("Code:"):] if "Code:" in text else f"Code: {code}. DB::Exception: {text}"
            raise QueryError(code, message)
        return r.bytes() if r is not None else b""

    def _apply(self, settings, database):
        saved = {}
        if settings:
            names = ",".join(adtally_ch.sql_string(k) for k in settings)
            rows = self._query(f"SELECT name, value FROM system.settings WHERE name IN ({names})", "TSV", None)
            for line in rows.decode().splitlines():
                k, v = line.split("\t", 1)
                saved[k] = v
            for k in settings:
                if k not in saved:
                    raise QueryError(115, f"Code: 115. DB::Exception: Unknown setting '{k}'. (UNKNOWN_SETTING)")
            for k, v in settings.items():
                self._query(f"SET {k} = {adtally_ch.sql_string(v)}", "TSV", None)
        db_saved = None
        if database and database != self.current_db:
            db_saved = self.current_db
            self._query(f"USE {database}", "TSV", None)
            self.current_db = database
        return saved, db_saved

    def _restore(self, saved):
        settings, db = saved
        for k, v in settings.items():
            try:
                self._query(f"SET {k} = {adtally_ch.sql_string(v)}", "TSV", None)
            except QueryError:
                pass
        if db:
            self._query(f"USE {db}", "TSV", None)
            self.current_db = db


def make_handler(engine):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "adtally-embedded-clickhouse"

        def log_message(self, fmt, *args):  # quiet by default
            if os.environ.get("ADTALLY_HTTP_LOG"):
                sys.stderr.write("http: " + fmt % args + "\n")

        def _send(self, status, body, headers=None):
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, e):
            body = e.message
            if "(version" not in body:
                body = f"{body} (version {VERSION})"
            self._send(STATUS_BY_CODE.get(e.code, 500), (body + "\n").encode(), {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(e.code),
            })

        def do_GET(self):
            self._handle(b"", readonly=True)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = self._read_chunked()
            self._handle(body, readonly=False)

        def _read_chunked(self):
            out = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()

        def _handle(self, body, readonly):
            url = urllib.parse.urlsplit(self.path)
            if url.path in ("/ping", "/") and not url.query and not body:
                return self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            params = {k[6:]: v for k, v in q.items() if k.startswith("param_")}
            settings = {k: v for k, v in q.items() if k not in PROTOCOL_PARAMS and not k.startswith("param_")}
            database = q.get("database")
            try:
                if q.get("decompress") == "1" and body:
                    body = decompress_native(body)
                if "query" in q:
                    query, data = q["query"], body
                else:
                    query, data = body.decode("utf-8", "replace"), b""
                    m = INSERT_RE.match(query)
                    if m and m.end() < len(query):  # inline data after FORMAT
                        raw = body[len(query[:m.end()].encode()):]
                        query, data = query[:m.end()], raw.lstrip(b"\r\n")
                if not query.strip():
                    raise QueryError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
                if readonly and not re.match(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", query, re.I):
                    raise QueryError(164, "Code: 164. DB::Exception: Cannot execute query in readonly mode: use POST. (READONLY)")
                if INSERT_RE.match(query):
                    out = engine.insert(query, data, params, settings, database)
                    fmt = "TabSeparated"
                else:
                    m = FORMAT_RE.search(query)
                    fmt = m.group(1) if m else q.get("default_format", "TabSeparated")
                    out = engine.run(query, fmt, params, settings, database)
            except QueryError as e:
                return self._error(e)
            binary = fmt.lower().startswith(("rowbinary", "native", "parquet", "arrow", "orc", "avro"))
            self._send(200, out, {
                "Content-Type": "application/octet-stream" if binary else "text/plain; charset=UTF-8",
                "X-ClickHouse-Format": fmt,
                "X-ClickHouse-Server-Display-Name": "adtally-embedded",
            })

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data directory (persists across restarts)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    args = ap.parse_args()
    engine = Engine(args.data)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(engine))
    print(f"adtally embedded ClickHouse {VERSION} listening on http://{args.host}:{server.server_port} "
          f"(data: {os.path.abspath(args.data)})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        engine.session.close()


if __name__ == "__main__":
    main()
