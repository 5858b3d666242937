"""A ClickHouse HTTP interface on 127.0.0.1 in front of the chDB engine, for tests and demos.

No modern ClickHouse server can be installed on the machines this project is tested on, so the
``clickhouse`` store is exercised against this endpoint: a real HTTP server, the real ClickHouse
engine behind it (chDB), and the real clickhouse-connect HTTP client in front. It speaks the part of
ClickHouse's HTTP interface (https://clickhouse.com/docs/interfaces/http) that clickhouse-connect
uses:

* ``GET /ping`` -> ``Ok.``;
* the query in the ``query`` URL parameter and/or the request body (``GET`` or ``POST``); for an
  ``INSERT ... FORMAT X`` the data follows the statement in the body, or the whole body is data when
  the statement is in the URL; bodies may be ``Content-Encoding`` lz4, zstd, gzip or deflate, and
  chunked;
* ``param_<name>`` URL parameters bind ``{name:Type}`` placeholders; ``database`` selects the
  database; other URL parameters that are settings are applied with ``SET`` (transport parameters
  such as ``query_id``, ``session_id``, ``wait_end_of_query`` are accepted and ignored);
* output in whatever ``FORMAT`` the query names (Native, Arrow, JSON, TabSeparated...), default
  TabSeparated, uncompressed; headers ``X-ClickHouse-Query-Id``, ``-Format``, ``-Timezone``,
  ``-Summary``;
* errors as ClickHouse sends them: a non-2xx status, ``X-ClickHouse-Exception-Code`` and the
  ``Code: N. DB::Exception: ...`` text as the body;
* authentication by ``X-ClickHouse-User``/``X-ClickHouse-Key`` headers, HTTP Basic, or
  ``user``/``password`` URL parameters, checked against the one user it was started with
  (code 516 ``AUTHENTICATION_FAILED``, HTTP 401, when wrong).

Not served: sessions (every request shares one engine), multipart external data, progress headers,
response compression. Run it as a process (prints one JSON line ``{"url": ..., "port": ...}``)::

    python -m btc_quant.testing.clickhouse_http --path /tmp/ch --port 0 --user alice --password s3cret
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import re
import signal
import sys
import tempfile
import threading
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

#: URL parameters that steer the HTTP transport rather than the query.
TRANSPORT_PARAMS = {
    "query",
    "database",
    "user",
    "password",
    "quota_key",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "wait_end_of_query",
    "send_progress_in_http_headers",
    "http_headers_progress_interval_ms",
    "enable_http_compression",
    "http_zlib_compression_level",
    "default_format",
    "client_protocol_version",
    "buffer_size",
    "compress",
    "decompress",
    "cancel_http_readonly_queries_on_client_close",
    "role",
}
_INSERT_RE = re.compile(rb"^\s*INSERT\s+INTO\s+.*?\bFORMAT\s+([A-Za-z0-9_]+)[ \t]*(\r?\n)?", re.IGNORECASE | re.DOTALL)
_FORMAT_RE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)\s*;?\s*$", re.IGNORECASE)
_CODE_RE = re.compile(r"Code:\s*(\d+)")


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "zstd":
        from clickhouse_connect.driver.compression import _zstd_decompress  # the client's own codec

        return _zstd_decompress(data)
    raise ValueError(f"Code: 1. DB::Exception: unsupported Content-Encoding {encoding!r}. (UNSUPPORTED_METHOD)")


def _summary(result) -> dict[str, str]:
    out = {}
    for key in ("rows_read", "rows_written"):
        try:  # chdb's counters; some result kinds cannot report them
            out[key.replace("rows_", "") + "_rows"] = str(getattr(result, key))
        except Exception:
            pass
    return out


class ClickHouseError(Exception):
    def __init__(self, code: int, text: str, status: int = 500):
        super().__init__(text)
        self.code, self.status = code, status


class Engine:
    """The chDB engine behind the endpoint; one query at a time."""

    def __init__(self, path: str, user: str, password: str):
        import chdb

        self.conn = chdb.connect(path)
        self.user, self.password = user, password
        self.lock = threading.Lock()
        self.timezone = self.conn.query("SELECT timezone()", "TabSeparated").bytes().decode().strip() or "UTC"
        self.version = self.conn.query("SELECT version()", "TabSeparated").bytes().decode().strip()

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def check_user(self, user: str, password: str) -> None:
        if user != self.user or password != self.password:
            raise ClickHouseError(
                516,
                f"Code: 516. DB::Exception: {user}: Authentication failed: password is incorrect, "
                "or there is no user with such name. (AUTHENTICATION_FAILED)",
                status=401,
            )

    def execute(self, sql: bytes, data: bytes | None, params: dict[str, str]) -> tuple[bytes, str, dict]:
        """Run one request: returns (body, format, summary)."""
        bind = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")}
        default_format = params.get("default_format", "TabSeparated")
        tmp = None
        with self.lock:
            try:
                if params.get("database"):
                    self._run(f"USE `{params['database']}`", "TabSeparated", {})
                for key, value in settings.items():
                    if not re.fullmatch(r"[A-Za-z0-9_]+", key):
                        raise ClickHouseError(115, f"Code: 115. DB::Exception: Unknown setting {key}. (UNKNOWN_SETTING)", 400)
                    self._run(f"SET {key} = '{value.replace(chr(39), chr(92) + chr(39))}'", "TabSeparated", {})
                match = _INSERT_RE.match(sql)
                if match and data is not None:
                    fmt = match.group(1).decode()
                    head = sql[: match.start(1)].rstrip()
                    head = head[: len(head) - len(b"FORMAT")].rstrip().decode()
                    with tempfile.NamedTemporaryFile(suffix=".insert", delete=False) as handle:
                        handle.write(data)
                        tmp = handle.name
                    result = self._run(f"{head} FROM INFILE '{tmp}' FORMAT {fmt}", "TabSeparated", bind)
                    return b"", fmt, _summary(result)
                text = sql.decode()
                found = _FORMAT_RE.search(text)
                fmt = found.group(1) if found else default_format
                result = self._run(text, fmt, bind)
                return result.bytes() or b"", fmt, _summary(result)
            finally:
                if tmp:
                    os.unlink(tmp)

    def _run(self, sql: str, fmt: str, bind: dict[str, str]):
        try:
            return self.conn.query(sql, fmt, params=bind)
        except Exception as exc:  # chdb raises ChdbError with the server's text
            text = str(exc).strip()
            found = _CODE_RE.search(text)
            raise ClickHouseError(int(found.group(1)) if found else 1, text) from None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chdb-http"
    engine: Engine  # set on the subclass built by serve()

    def log_message(self, format, *args):  # noqa: A002 - quiet; the test reads stderr on failure only
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server naming
        self._handle(read_only=True)

    def do_POST(self):  # noqa: N802
        self._handle(read_only=False)

    def _credentials(self, params: dict[str, str]) -> tuple[str, str]:
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
            return user, password
        if self.headers.get("X-ClickHouse-User"):
            return self.headers["X-ClickHouse-User"], self.headers.get("X-ClickHouse-Key", "")
        return params.get("user", "default"), params.get("password", "")

    def _handle(self, read_only: bool) -> None:
        query_id = uuid.uuid4().hex
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        query_id = params.get("query_id", query_id)
        base = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Server-Display-Name": "chdb-http",
            "X-ClickHouse-Timezone": self.engine.timezone,
        }
        try:
            body = self._body()
            if parts.path in ("/ping", "/ping/"):
                self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
                return
            if parts.path not in ("", "/"):
                raise ClickHouseError(0, f"There is no handle {parts.path}", 404)
            self.engine.check_user(*self._credentials(params))
            try:
                body = _decompress(body, self.headers.get("Content-Encoding", ""))
            except ValueError as exc:
                raise ClickHouseError(1, str(exc), 400) from None
            if "query" in params:
                sql, data = params["query"].encode(), (body or None)
                if not _INSERT_RE.match(sql) and body:
                    sql, data = sql + b"\n" + body, None
            else:
                match = _INSERT_RE.match(body)
                if match:
                    sql, data = body[: match.end()], body[match.end() :]
                else:
                    sql, data = body, None
            if not sql.strip():
                raise ClickHouseError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)", 400)
            if read_only and data is not None:
                raise ClickHouseError(164, "Code: 164. DB::Exception: Cannot insert with a GET request. (READONLY)", 400)
            out, fmt, summary = self.engine.execute(sql, data, params)
            self._send(
                200,
                out,
                {
                    **base,
                    "X-ClickHouse-Format": fmt,
                    "X-ClickHouse-Summary": json.dumps(summary),
                    "Content-Type": "application/octet-stream",
                },
            )
        except ClickHouseError as exc:
            text = str(exc)
            if not text.startswith("Code:"):
                text = f"Code: {exc.code}. DB::Exception: {text}"
            self._send(
                exc.status,
                (text + "\n").encode(),
                {**base, "X-ClickHouse-Exception-Code": str(exc.code), "Content-Type": "text/plain; charset=UTF-8"},
            )
        except Exception as exc:  # a bug here must still answer like a server
            import traceback

            traceback.print_exc()
            self._send(
                500, f"Code: 1001. DB::Exception: {type(exc).__name__}: {exc}\n".encode(), {**base, "X-ClickHouse-Exception-Code": "1001"}
            )


def serve(
    path: str, host: str = "127.0.0.1", port: int = 0, user: str = "default", password: str = ""
) -> tuple[ThreadingHTTPServer, Engine]:
    """Build the server (not yet serving): ``server.serve_forever()`` in a thread, then ``shutdown()``."""
    engine = Engine(path, user, password)
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, engine


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m btc_quant.testing.clickhouse_http", description=__doc__.splitlines()[0])
    p.add_argument("--path", required=True, help="chDB data directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--user", default="default")
    p.add_argument(
        "--password",
        default=os.environ.get("CLICKHOUSE_HTTP_PASSWORD", ""),
        help="default: $CLICKHOUSE_HTTP_PASSWORD (keeps it out of the process list)",
    )
    args = p.parse_args(argv)
    server, engine = serve(args.path, args.host, args.port, args.user, args.password)
    port = server.server_address[1]

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"url": f"http://{args.host}:{port}", "port": port, "version": engine.version}), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
