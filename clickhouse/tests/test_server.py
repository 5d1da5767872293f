"""The embedded ClickHouse's HTTP interface (clickhouse/server.py) with real
clients: clickhouse-connect (the official Python client, default settings),
plain HTTP with every request encoding ClickHouse accepts, and hostile
requests (undecodable bodies, settings that could leak, huge bodies, slow
clients, SQL that reaches files or the network)."""
import base64
import gzip
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import pytest

from conftest import ROOT

SERVER = os.path.join(ROOT, "clickhouse", "server.py")
ROWS = 50_000


class Server:
    def __init__(self, *args, env=None):
        self.dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [sys.executable, SERVER, "--data", self.dir.name, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.port = int(line.split("http://")[1].split(" ")[0].rsplit(":", 1)[1])
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.dir.cleanup()


@pytest.fixture(scope="module")
def server():
    s = Server("--max-body-bytes", str(64 << 20), "--timeout", "2")
    yield s
    s.stop()


def post(server, query, body=b"", headers=None, params=""):
    """(status, headers, body) of a POST; errors are answers, not exceptions."""
    url = f"{server.url}/?query={urllib.parse.quote(query)}{params}" if query else f"{server.url}/?{params}"
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def scalar(server, sql):
    status, _, body = post(server, sql)
    assert status == 200, body
    return body.decode().strip()


def table(server, name):
    post(server, f"DROP TABLE IF EXISTS {name}")
    status, _, body = post(server, f"CREATE TABLE {name} (id UInt64, ad String) ENGINE = MergeTree ORDER BY id")
    assert status == 200, body


def codecs():
    """Each Content-Encoding's compressor."""
    import brotli
    import lz4.frame
    import zstandard

    return {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
            "zstd": lambda b: zstandard.ZstdCompressor().compress(b), "lz4": lz4.frame.compress}


def tsv(n, start=0):
    return "".join(f"{i}\tad{i % 97}\n" for i in range(start, start + n)).encode()


def test_clickhouse_connect_with_its_defaults_stores_every_row(server):
    import clickhouse_connect

    table(server, "cc")
    # Its defaults: lz4-compressed Native bodies (Content-Encoding: lz4).
    client = clickhouse_connect.get_client(host="127.0.0.1", port=server.port)
    rows = [[i, f"ad{i % 97}"] for i in range(ROWS)]
    summary = client.insert("cc", rows, column_names=["id", "ad"])
    assert summary.written_rows == ROWS
    assert client.command("SELECT count() FROM cc") == ROWS
    for compress in ("zstd", "gzip", "br"):
        other = clickhouse_connect.get_client(host="127.0.0.1", port=server.port, compress=compress)
        other.insert("cc", rows[:1000], column_names=["id", "ad"])
    assert client.command("SELECT count() FROM cc") == ROWS + 3000
    assert client.query("SELECT sum(id) FROM cc WHERE id < 1000").result_rows[0][0] == 4 * sum(range(1000))


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "lz4", "gzip, br"])
def test_every_content_encoding_is_decoded(server, encoding):
    name = "enc_" + encoding.replace(", ", "_")
    table(server, name)
    body = tsv(20_000)
    for enc in [e.strip() for e in encoding.split(",")]:
        body = codecs()[enc](body)
    status, headers, out = post(server, f"INSERT INTO {name} FORMAT TSV", body, {"Content-Encoding": encoding})
    assert status == 200, out
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "20000"
    assert scalar(server, f"SELECT count() FROM {name}") == "20000"


def test_a_chunked_body_is_read_whole(server):
    table(server, "chunked")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = tsv(30_000)
    chunks = (body[i:i + 7_777] for i in range(0, len(body), 7_777))
    conn.request("POST", "/?query=" + urllib.parse.quote("INSERT INTO chunked FORMAT TSV"), body=chunks,
                 encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 200, r.read()
    assert scalar(server, "SELECT count() FROM chunked") == "30000"


def test_a_body_that_does_not_decode_is_an_error_never_an_empty_insert(server):
    table(server, "bad")
    for headers, params in [({"Content-Encoding": "gzip"}, ""), ({"Content-Encoding": "lz4"}, ""),
                            ({"Content-Encoding": "zstd"}, ""), ({"Content-Encoding": "snappy-ish"}, ""),
                            ({}, "&decompress=1")]:
        status, h, out = post(server, "INSERT INTO bad FORMAT TSV", b"\x00" * 40 + tsv(10), headers, params)
        assert status >= 400, (headers, params, out)
        assert out.startswith(b"Code: "), out
        assert "X-ClickHouse-Exception-Code" in h
    # A native LZ4 block with a valid header and checksum but garbage inside.
    from clickhouse_cityhash.cityhash import CityHash128
    payload = b"\xff" * 64
    block = bytes([0x82]) + (9 + len(payload)).to_bytes(4, "little") + (1000).to_bytes(4, "little") + payload
    h = CityHash128(block)
    checksum = (h >> 64).to_bytes(8, "little") + (h & ((1 << 64) - 1)).to_bytes(8, "little")
    status, _, out = post(server, "INSERT INTO bad FORMAT TSV", checksum + block, params="&decompress=1")
    assert status >= 400 and b"CANNOT_DECOMPRESS" in out, out
    # Data that parses to no row is not acknowledged either.
    status, _, out = post(server, "INSERT INTO bad FORMAT RowBinary", b"\x01")
    assert status >= 400, out
    assert scalar(server, "SELECT count() FROM bad") == "0"


def test_a_request_s_settings_never_outlive_it(server):
    table(server, "leak")
    status, _, out = post(server, "SELECT 1", params="&readonly=1&database=nope")
    assert status >= 400, out
    status, _, out = post(server, "INSERT INTO leak FORMAT TSV", tsv(5), params="&max_insert_block_size=2&database=nope")
    assert status >= 400, out
    status, _, out = post(server, "SELECT 1", params="&max_result_rows=1&result_overflow_mode=throw")
    assert status == 200, out
    # None of that stays: writes work, results are not capped, the database is the default.
    status, _, out = post(server, "INSERT INTO leak FORMAT TSV", tsv(5))
    assert status == 200, out
    assert scalar(server, "SELECT count() FROM numbers(10)") == "10"
    assert scalar(server, "SELECT currentDatabase()") == "default"
    status, _, out = post(server, "INSERT INTO leak FORMAT TSV", tsv(5), params="&readonly=1")
    assert status == 403 and b"READONLY" in out, out
    assert scalar(server, "SELECT count() FROM leak") == "5"


def test_a_huge_body_is_refused_and_a_silent_client_dropped(server):
    # Refused on its Content-Length, before any of the body is read.
    big = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    big.sendall(b"POST /?query=INSERT+INTO+leak+FORMAT+TSV HTTP/1.1\r\nHost: x\r\n"
                + f"Content-Length: {65 << 20}\r\n\r\n".encode())
    answer = b""
    while chunk := big.recv(4096):  # until the server closes it
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"TOO_MANY_BYTES" in answer, answer
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    s.sendall(b"POST /?query=SELECT%201 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    start = time.time()
    assert s.recv(4096) == b"", "the server closes a connection that stops sending"
    assert time.time() - start < 8
    assert scalar(server, "SELECT 2") == "2", "and goes on serving"


@pytest.mark.parametrize("sql", [
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM url('http://127.0.0.1:1/', 'LineAsString')",
    "SELECT 1 INTO OUTFILE '/tmp/adtally-outfile'",
    "CREATE TABLE f (x String) ENGINE = File(TSV)",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV')",
])
def test_sql_that_reaches_files_or_the_network_is_refused(server, sql):
    status, _, out = post(server, sql)
    assert status == 403 and b"ACCESS_DENIED" in out, out
    assert not os.path.exists("/tmp/adtally-outfile")


def test_a_password_is_required_when_set_and_beyond_loopback():
    s = Server("--password-env", "ADTALLY_TEST_PW", env={"ADTALLY_TEST_PW": "s3cret"})
    try:
        status, _, out = post(s, "SELECT 1")
        assert status == 403 and b"AUTHENTICATION_FAILED" in out, out
        assert post(s, "SELECT 1", params="&user=default&password=s3cret")[0] == 200
        assert post(s, "SELECT 1", headers={"X-ClickHouse-User": "default", "X-ClickHouse-Key": "s3cret"})[0] == 200
        basic = base64.b64encode(b"default:s3cret").decode()
        assert post(s, "SELECT 1", headers={"Authorization": f"Basic {basic}"})[0] == 200
        assert urllib.request.urlopen(f"{s.url}/ping", timeout=10).status == 200
    finally:
        s.stop()
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([sys.executable, SERVER, "--data", d, "--host", "0.0.0.0", "--port", "0"],
                           capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "password" in p.stderr, p.stderr


@pytest.mark.parametrize("encoding", ["lz4", "zstd", "deflate", "gzip"])
def test_a_body_of_several_frames_is_decoded_whole(server, encoding):
    name = "frames_" + encoding
    table(server, name)
    # One frame per block, as clickhouse-connect sends a large insert.
    body = b"".join(codecs()[encoding](tsv(10_000, start)) for start in range(0, 30_000, 10_000))
    status, headers, out = post(server, f"INSERT INTO {name} FORMAT TSV", body, {"Content-Encoding": encoding})
    assert status == 200, out
    assert scalar(server, f"SELECT count() FROM {name}") == "30000"
    status, _, out = post(server, f"INSERT INTO {name} FORMAT TSV", body + b"\x00\x01", {"Content-Encoding": encoding})
    assert status >= 400, "bytes after the last frame are an error"


def test_clickhouse_connect_inserts_a_table_too_large_for_one_block(server):
    import clickhouse_connect

    table(server, "cc_big")
    client = clickhouse_connect.get_client(host="127.0.0.1", port=server.port)
    rows = [[i, f"ad{i % 97}"] for i in range(300_000)]
    summary = client.insert("cc_big", rows, column_names=["id", "ad"])
    assert summary.written_rows == 300_000
    assert client.command("SELECT count() FROM cc_big") == 300_000


@pytest.mark.parametrize("sql", [
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file/**/('/etc/passwd', 'LineAsString')",
    "SELECT * FROM file -- a comment\n ('/etc/passwd', 'LineAsString')",
    "SELECT 1; SELECT * FROM numbers(1)",
])
def test_no_quoting_comment_or_second_statement_gets_around_the_checks(server, sql):
    status, _, out = post(server, sql)
    assert status >= 400, out


def test_readonly_and_the_database_parameter_run_no_other_statement(server):
    table(server, "keep")
    status, _, out = post(server, "SELECT 1; DROP TABLE keep", params="&readonly=1")
    assert status >= 400, out
    db = urllib.parse.quote("default; DROP TABLE keep")
    status, _, out = post(server, "SELECT 1", params=f"&database={db}")
    assert status >= 400, out
    assert scalar(server, "EXISTS TABLE keep") == "1"
    # A string holding a ';' or '--' is fine.
    assert scalar(server, "SELECT 'a;b -- c'") == "a;b -- c"


def test_a_setting_whose_value_has_a_backslash_is_put_back_exactly(server):
    before = scalar(server, "SELECT value FROM system.settings WHERE name = 'format_tsv_null_representation' FORMAT JSONEachRow")
    status, _, out = post(server, "SELECT 1", params="&format_tsv_null_representation=NULL")
    assert status == 200, out
    after = scalar(server, "SELECT value FROM system.settings WHERE name = 'format_tsv_null_representation' FORMAT JSONEachRow")
    assert after == before
    assert scalar(server, "SELECT changed FROM system.settings WHERE name = 'format_tsv_null_representation'") == "0"
