"""What ``quant serve`` costs per bot: the time to build the bots' views (``GET /api/bots``, also
what each SSE message and each watchdog pass reads) and one watchdog pass, for N bot journals.

    python bench/bench_serve.py [--bots 50] [--rounds 50]

The journals are written the way the live driver writes them (a state snapshot with 2 open
orders, 200 fills, 50 notes each) in a scratch QUANT_HOME; the app runs in-process behind its
token check (starlette's TestClient, no network)."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import write_bot  # noqa: E402

from btc_quant.plugins.exchanges.journal import Journal, journal_path  # noqa: E402
from btc_quant.plugins.serve.alerts import AlertsConfig, Watchdog  # noqa: E402
from btc_quant.plugins.serve.app import ServeSettings, create_app  # noqa: E402
from btc_quant.sdk import Fill, Order, OrderType, Side  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bots", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    for b in range(args.bots):
        name = f"bot{b}"
        write_bot(home, name, pid=os.getpid())
        journal = Journal(journal_path(home, name))
        for k in range(200):
            fill = Fill(
                trade_id=f"t{k}",
                client_id=f"c{k}",
                symbol="BTC/USDT:USDT",
                side=Side.BUY,
                price=40_000.0,
                quantity=0.002,
                fee=0.01,
                ts_ms=k,
                is_maker=True,
            )
            journal.record_fill(
                fill, Order(client_id=f"c{k}", symbol="BTC/USDT:USDT", side=Side.BUY, type=OrderType.LIMIT, quantity=0.002, price=40_000.0)
            )
        for k in range(50):
            journal.note("position", f"note {k}")
        journal.close()
    token = "b" * 40
    app = create_app(ServeSettings(home=home, token=token, studies_dir=home / "optimize"))
    with TestClient(app) as client:
        headers = {"Authorization": f"Bearer {token}"}
        assert len(client.get("/api/bots", headers=headers).json()) == args.bots
        t = time.perf_counter()
        for _ in range(args.rounds):
            client.get("/api/bots", headers=headers)
        api_s = (time.perf_counter() - t) / args.rounds
    dog = Watchdog(home, AlertsConfig(), lambda alert: None)
    dog.check()
    t = time.perf_counter()
    for _ in range(args.rounds):
        dog.check()
    dog_s = (time.perf_counter() - t) / args.rounds
    print(
        f"bots {args.bots}: GET /api/bots {api_s * 1000:.1f} ms ({api_s / args.bots * 1000:.2f} ms a bot); "
        f"watchdog pass {dog_s * 1000:.1f} ms ({dog_s / args.bots * 1000:.2f} ms a bot)"
    )


if __name__ == "__main__":
    main()
