"""The ClickHouse HTTP interface, served by the embedded engine (chDB).

usage: python clickhouse/server.py --data DIR [--host 127.0.0.1] [--port 8123]
                                  [--password-env VAR] [--max-body-bytes N]

Owns speaking ClickHouse's HTTP protocol in front of chDB, so that the
`clickhouse` Rust crate, curl and other HTTP clients work unchanged against a
local, persistent ClickHouse. It computes nothing itself: every statement runs
in the real engine (ClickHouse 26.9 from chdb-core). Production points at a
real ClickHouse server instead.

What it speaks:
- the query in the `query` URL parameter, in the body, or both (then the
  body is the INSERT's data); GET for read-only queries; `/ping` and `/`;
- settings as URL parameters (applied for that request only), `database`,
  `default_format`, query parameters `param_<name>` (in the URL, or with the
  query as multipart/form-data fields, as the `clickhouse` crate sends them);
- INSERT bodies in any input format ClickHouse reads (RowBinary,
  RowBinaryWithNamesAndTypes, Native, JSONEachRow, TSV, CSV, ...), sent
  plainly, with chunked transfer, with an HTTP `Content-Encoding` (gzip,
  deflate, br, zstd, lz4, as clickhouse-connect sends by default), or in
  ClickHouse's own LZ4 framing (`decompress=1`, the `clickhouse` crate's
  default) with each block's CityHash128 checksum verified; a body that
  does not decode is an error (CANNOT_DECOMPRESS), never an empty insert;
  `X-ClickHouse-Summary` reports the rows written;
- SELECT results in the requested format (FORMAT clause or `default_format`);
  responses are not compressed, as with `enable_http_compression = 0`;
- errors in ClickHouse's form: status 400/403/404/500 by error code, the
  `X-ClickHouse-Exception-Code` header, and a body `Code: N. DB::Exception: ...`.

Safe to leave running: it binds to loopback unless told otherwise, and
then requires a password (`--password-env VAR` names the environment
variable holding it; clients send ClickHouse's `user`/`password` URL
parameters, `X-ClickHouse-User`/`X-ClickHouse-Key` headers or HTTP basic
auth); a request's settings (`readonly` included) never outlive it; sockets
time out (`--timeout`, 30 s) and bodies are limited (`--max-body-bytes`,
256 MiB: 413); table functions and engines that reach local files or the
network (`file`, `url`, `s3`, `hdfs`, `executable`, `INTO OUTFILE`, `FROM
INFILE`, ...) are refused (code 497, ACCESS_DENIED).

Requests run one at a time (one chDB session). Durability: a statement's
data is written to the data directory's files before its response is sent,
so a killed or stopped server loses nothing acknowledged; the files are not
fsynced, so a power loss or an operating system crash may lose the last
seconds of acknowledged inserts (a production ClickHouse server is where
that matters; its `fsync_after_insert` MergeTree setting closes the gap).
"""
import argparse
import base64
import email.parser
import email.policy
import gzip
import ipaddress
import json
import os
import zlib
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
    "buffer_size", "role", "quota_key", "readonly", "enable_http_compression",
}

# What user SQL may not reach: local files and the network. ClickHouse's own
# server confines these with user_files_path and access rights; the embedded
# engine has the machine's file system, so they are refused outright.
FORBIDDEN_RE = re.compile(
    r"[`\"]?\b(?:file|fileCluster|url|urlCluster|s3|s3Cluster|gcs|azureBlobStorage|azureBlobStorageCluster|"
    r"hdfs|hdfsCluster|executable|remote|remoteSecure|cluster|clusterAllReplicas|mysql|postgresql|mongodb|"
    r"redis|sqlite|jdbc|odbc|iceberg\w*|deltaLake\w*|hudi\w*|input)\b[`\"]?\s*\(|"
    r"\bINTO\s+OUTFILE\b|\bFROM\s+INFILE\b|\bSOURCE\s*\(|"
    r"\bENGINE\s*=\s*[`\"]?(?:File|URL|S3|S3Queue|HDFS|Executable|ExecutablePool|Kafka|RabbitMQ|NATS|"
    r"MySQL|PostgreSQL|MongoDB|Redis|SQLite|JDBC|ODBC|Distributed|Dictionary|AzureBlobStorage|AzureQueue)\b",
    re.IGNORECASE,
)

READ_ONLY_RE = re.compile(r"^\s*(SELECT|WITH|SHOW|DESCRIBE|DESC|EXISTS|EXPLAIN)\b", re.IGNORECASE)

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
    r"(?:SETTINGS\s+(?P<settings>.*?)\s+)?FORMAT\s+(?P<fmt>\w+)[ \t]*(?:\r?\n)?",
    re.IGNORECASE | re.DOTALL,
)
FORMAT_RE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
CODE_RE = re.compile(r"Code:\s*(\d+)")

# Formats whose data names (and types) its columns.
SELF_DESCRIBING = {"rowbinarywithnamesandtypes", "native", "parquet", "arrow", "arrowstream", "orc", "avro",
                   "tabseparatedwithnamesandtypes", "tsvwithnamesandtypes", "csvwithnamesandtypes",
                   "jsoncompacteachrowwithnamesandtypes"}


def quote_name(name):
    """`name` as a quoted identifier."""
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def strip_comments_and_strings(sql):
    """The query with its comments removed and its string literals emptied,
    so that checks of its words see only SQL."""
    out, i, n = [], 0, len(sql)
    while i < n:
        c = sql[i]
        if sql.startswith("--", i) or c == "#":
            j = sql.find("\n", i)
            i = n if j < 0 else j
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
            out.append(" ")
        elif c == "'":
            j = i + 1
            while j < n and sql[j] != "'":
                j += 2 if sql[j] == "\\" else 1
            out.append("''")
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


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
            try:
                out += lz4.block.decompress(bytes(block[9:]), uncompressed_size=size)
            except Exception as e:  # lz4's own error type: a bad block
                raise QueryError(271, f"Cannot decompress LZ4 block: {e} (CANNOT_DECOMPRESS)")
        elif method == 0x02:
            out += block[9:]
        else:
            raise QueryError(271, f"Unknown compression method 0x{method:02x} (CANNOT_DECOMPRESS)")
        pos += 16 + compressed
    return bytes(out)


def every_frame(data, decompressor):
    """Decodes every frame of `data`, one after the other: clients such as
    clickhouse-connect compress each block of an insert as a frame of its
    own. Bytes after the last whole frame are an error."""
    out = bytearray()
    while data:
        d = decompressor()
        out += d.decompress(data)
        if not d.eof:
            raise ValueError("the body ends inside a frame")
        data = d.unused_data
    return bytes(out)


def form_fields(content_type, body):
    """The fields of a multipart/form-data body (how the `clickhouse` crate
    sends a query with server-side parameters: `query` and `param_<name>`
    fields), as ClickHouse's HTTP interface reads them."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise QueryError(27, "Code: 27. DB::Exception: Cannot parse the multipart/form-data body. "
                             "(CANNOT_PARSE_INPUT_ASSERTION_FAILED)")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True).decode("utf-8", "replace")
    return fields


def decode_content(encoding, data):
    """Undoes an HTTP `Content-Encoding` ClickHouse accepts (gzip, deflate,
    br, zstd, lz4, xz, bz2; several, comma-separated, are undone last
    first)."""
    for enc in reversed([e.strip().lower() for e in encoding.split(",") if e.strip()]):
        try:
            if enc in ("gzip", "x-gzip"):
                data = gzip.decompress(data)  # reads every member
            elif enc == "deflate":
                data = every_frame(data, lambda: zlib.decompressobj())
            elif enc == "br":
                import brotli
                # One stream, the whole body: brotli reports no bytes after it.
                data = brotli.decompress(data)
            elif enc == "zstd":
                import zstandard
                data = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(data)
            elif enc == "lz4":
                import lz4.frame
                data = every_frame(data, lambda: lz4.frame.LZ4FrameDecompressor())
            elif enc == "xz":
                import lzma
                data = lzma.decompress(data)
            elif enc == "bz2":
                import bz2
                data = bz2.decompress(data)
            elif enc == "identity":
                pass
            else:
                raise QueryError(
                    89, f"Unknown Content-Encoding {enc!r} (UNKNOWN_COMPRESSION_METHOD)")
        except QueryError:
            raise
        except Exception as e:  # each codec raises its own error type
            raise QueryError(271, f"Cannot decompress the {enc} request body: {e} (CANNOT_DECOMPRESS)")
    return data


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
                    return b"", 0
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
                # The rows are counted first: the summary reports them, and
                # data that parses to no row is refused, never acknowledged
                # as an empty insert.
                rows = int(self._query(f"SELECT count() FROM {source}{settings_clause}", "TSV", params)
                           .decode().strip() or 0)
                if rows == 0:
                    raise QueryError(
                        27, "Code: 27. DB::Exception: The INSERT's data holds no row in format "
                        f"{fmt} ({len(data)} bytes). (CANNOT_PARSE_INPUT_ASSERTION_FAILED)")
                self._query(f"INSERT INTO {table} {col_list} SELECT * FROM {source}{settings_clause}", "TSV", params)
                return b"", rows
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
        """Applies a request's database and settings, returning what to put
        back. On any failure it puts back what it changed before raising,
        so nothing of a request outlives it."""
        saved = {"settings": {}, "database": None}
        try:
            if database and database != self.current_db:
                self._query(f"USE {quote_name(database)}", "TSV", None)
                saved["database"] = self.current_db
                self.current_db = database
            if settings:
                names = ",".join(adtally_ch.sql_string(k) for k in settings)
                rows = self._query(f"SELECT name, value, changed FROM system.settings WHERE name IN ({names})",
                                   "JSONEachRow", None)
                # JSON, not TSV: TSV escapes a value's backslashes and tabs.
                old = {}
                for line in rows.decode().splitlines():
                    r = json.loads(line)
                    old[r["name"]] = r["value"] if int(r["changed"]) else None
                for k in settings:
                    if k not in old:
                        raise QueryError(115, f"Code: 115. DB::Exception: Unknown setting '{k}'. (UNKNOWN_SETTING)")
                for k, v in settings.items():
                    saved["settings"][k] = old[k]
                    self._query(f"SET {k} = {adtally_ch.sql_string(v)}", "TSV", None)
        except BaseException:
            self._restore(saved)
            raise
        return saved

    def _restore(self, saved):
        for k, v in saved["settings"].items():
            value = "DEFAULT" if v is None else adtally_ch.sql_string(v)
            try:
                self._query(f"SET {k} = {value}", "TSV", None)
            except QueryError as e:
                # A setting that cannot be put back would outlive its
                # request: better no server than a wrong one.
                sys.stderr.write(f"adtally embedded ClickHouse: cannot restore setting {k}: {e.message}\n")
                os._exit(70)
        if saved["database"]:
            self._query(f"USE {quote_name(saved['database'])}", "TSV", None)
            self.current_db = saved["database"]


class Policy:
    """What every request must satisfy: a password (when one is set), a
    body size limit, and a socket timeout."""

    def __init__(self, password=None, max_body_bytes=256 << 20, timeout_s=30.0):
        self.password = password
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s


def make_handler(engine, policy=None):
    policy = policy or Policy()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "adtally-embedded-clickhouse"
        # The socket's timeout: a client that stops sending mid-request is
        # dropped instead of holding a thread forever.
        timeout = policy.timeout_s

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

        def _error(self, e, status=None):
            body = e.message
            if not body.startswith("Code:"):
                body = f"Code: {e.code}. DB::Exception: {body}"
            if "(version" not in body:
                body = f"{body} (version {VERSION})"
            self._send(status or STATUS_BY_CODE.get(e.code, 500), (body + "\n").encode(), {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(e.code),
            })

        def do_GET(self):
            self._handle(b"", readonly=True)

        def do_POST(self):
            try:
                body = self._read_body()
            except QueryError as e:
                # The rest of the body is not read: the connection closes.
                self.close_connection = True
                return self._error(e, 413 if e.code == 307 else 400)
            self._handle(body, readonly=False)

        def _read_body(self):
            limit = policy.max_body_bytes
            too_big = QueryError(307, f"The request body is larger than {limit} bytes, this server's limit "
                                      "(--max-body-bytes). (TOO_MANY_BYTES)")
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    line = self.rfile.readline(1024)
                    try:
                        size = int(line.strip().split(b";")[0], 16)
                    except ValueError:
                        raise QueryError(27, f"Malformed chunk size line {line[:40]!r}")
                    if size == 0:
                        self.rfile.readline(1024)
                        return bytes(out)
                    if len(out) + size > limit:
                        raise too_big
                    out += self.rfile.read(size)
                    self.rfile.readline(1024)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise QueryError(27, "Content-Length is not a number")
            if length > limit:
                raise too_big
            return self.rfile.read(length) if length > 0 else b""

        def _authorized(self, q):
            if policy.password is None:
                return True
            password = q.get("password") or self.headers.get("X-ClickHouse-Key")
            auth = self.headers.get("Authorization", "")
            if password is None and auth.lower().startswith("basic "):
                try:
                    password = base64.b64decode(auth[6:]).decode().split(":", 1)[1]
                except Exception:
                    password = None
            return password == policy.password

        def _handle(self, body, readonly):
            url = urllib.parse.urlsplit(self.path)
            if url.path in ("/ping", "/") and not url.query and not body:
                return self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            if not self._authorized(q):
                return self._error(QueryError(
                    516, "default: Authentication failed: password is incorrect, or there is no user "
                         "with such name. (AUTHENTICATION_FAILED)"))
            params = {k[6:]: v for k, v in q.items() if k.startswith("param_")}
            settings = {k: v for k, v in q.items() if k not in PROTOCOL_PARAMS and not k.startswith("param_")}
            database = q.get("database")
            # `readonly` is enforced here, for this request only: set in the
            # session, readonly=1 would forbid putting any setting back.
            readonly = readonly or q.get("readonly", "0") not in ("", "0")
            try:
                encoding = self.headers.get("Content-Encoding")
                if encoding and body:
                    body = decode_content(encoding, body)
                if q.get("decompress") == "1" and body:
                    body = decompress_native(body)
                content_type = self.headers.get("Content-Type", "")
                if content_type.lower().startswith("multipart/form-data") and "query" not in q:
                    fields = form_fields(content_type, body)
                    params.update({k[6:]: v for k, v in fields.items() if k.startswith("param_")})
                    q["query"], body = fields.get("query", ""), b""
                if "query" in q:
                    query, data = q["query"], body
                else:
                    query, data = body.decode("utf-8", "replace"), b""
                    m = INSERT_RE.match(query)
                    if m and m.end() < len(query):  # inline data after FORMAT
                        raw = body[len(query[:m.end()].encode()):]
                        query, data = query[:m.end()], raw
                if not query.strip():
                    raise QueryError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
                sql = strip_comments_and_strings(query)
                if ";" in sql.strip().rstrip(";"):
                    raise QueryError(62, "Code: 62. DB::Exception: Multi-statements are not allowed. (SYNTAX_ERROR)")
                if readonly and not READ_ONLY_RE.match(sql):
                    raise QueryError(164, "Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)")
                forbidden = FORBIDDEN_RE.search(sql)
                if forbidden:
                    raise QueryError(497, f"Code: 497. DB::Exception: {forbidden.group(0).strip()!r}: this server "
                                          "reaches no local file and no network from SQL. (ACCESS_DENIED)")
                summary = {"read_rows": "0", "read_bytes": "0", "written_rows": "0", "written_bytes": "0"}
                if INSERT_RE.match(query):
                    out, rows = engine.insert(query, data, params, settings, database)
                    summary.update(written_rows=str(rows), written_bytes=str(len(data)))
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
                "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
            })

    return Handler


class Server(ThreadingHTTPServer):
    """Says in one line, not a traceback, that a client went away or timed
    out mid-request (a consumer killed while it writes, an idle socket)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            sys.stderr.write(f"http: {client_address[0]}:{client_address[1]}: {type(e).__name__}: {e}\n")
        else:
            super().handle_error(request, client_address)


def is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="data directory (persists across restarts)")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind; other than loopback needs a password")
    ap.add_argument("--port", type=int, default=8123, help="0 picks a free port")
    ap.add_argument("--password-env", metavar="VAR",
                    help="environment variable holding the password every request must carry")
    ap.add_argument("--max-body-bytes", type=int, default=256 << 20, help="largest request body (413 past it)")
    ap.add_argument("--timeout", type=float, default=30.0, help="socket timeout of a request, in seconds")
    args = ap.parse_args()
    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if not password:
            ap.error(f"--password-env {args.password_env}: the variable is not set or empty")
    if not is_loopback(args.host) and password is None:
        ap.error(f"--host {args.host} is reachable from other machines: give it a password with --password-env")
    engine = Engine(args.data)
    policy = Policy(password=password, max_body_bytes=args.max_body_bytes, timeout_s=args.timeout)
    server = Server((args.host, args.port), make_handler(engine, policy))
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
