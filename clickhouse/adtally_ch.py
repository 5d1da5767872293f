"""Installing adtally's WASM UDF module into ClickHouse (embedded chDB or a server).

Owns: putting the module into system.webassembly_modules under a versioned
name with its SHA-256, and declaring the functions of sql/functions.sql over
exactly that module. It never computes anything itself: the module does.
"""
import base64
import hashlib
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))


def open_session(path):
    """An embedded ClickHouse (chDB) session on `path`, with WASM UDFs enabled."""
    from chdb import session

    # The module travels as a base64 literal: allow queries of up to 64 MiB.
    return session.Session(f"{path}?allow_experimental_webassembly_udf=1&max_query_size=67108864")


def module_name(sha256):
    """Modules are named for their content, so an upgrade never overwrites a module in use."""
    return "adtally_" + sha256[:16]


def statements(path, **params):
    """The SQL statements of a file, with {name} parameters filled in."""
    text = open(path).read()
    # Drop `--` comments (adtally's SQL files have no `--` inside strings).
    text = "\n".join(l.split("--", 1)[0].rstrip() for l in text.splitlines())
    for k, v in params.items():
        text = text.replace("{" + k + "}", str(v))
    return [s.strip() for s in text.split(";") if s.strip()]


def install_module(query, wasm_bytes):
    """Inserts the module (idempotent for the same bytes); returns (name, sha256)."""
    sha = hashlib.sha256(wasm_bytes).hexdigest()
    name = module_name(sha)
    b64 = base64.b64encode(wasm_bytes).decode()
    query(
        f"INSERT INTO system.webassembly_modules (name, code, hash) "
        f"SELECT '{name}', base64Decode('{b64}'), reinterpretAsUInt256(unhex('{sha}'))"
    )
    return name, sha


def function_statement(function, module, sha, name=None):
    """sql/functions.sql's declaration of `function` over `module`, named
    `name` (default: `function`)."""
    head = f"CREATE OR REPLACE FUNCTION {function} "
    for stmt in statements(os.path.join(HERE, "sql", "functions.sql"), module=module, sha256=sha):
        if stmt.startswith(head):
            return f"CREATE OR REPLACE FUNCTION {name or function} " + stmt[len(head):]
    raise KeyError(function)


def create_functions(query, module, sha):
    """Declares (or re-points) every adtally function over `module`."""
    for stmt in statements(os.path.join(HERE, "sql", "functions.sql"), module=module, sha256=sha):
        query(stmt)


def install(query, wasm_path):
    """Module and functions; returns (module name, sha256)."""
    with open(wasm_path, "rb") as f:
        name, sha = install_module(query, f.read())
    create_functions(query, name, sha)
    return name, sha


def sql_string(s):
    """A ClickHouse string literal."""
    return "'" + re.sub(r"(['\\\\])", r"\\\1", s) + "'"
