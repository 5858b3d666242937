"""Trades benchmark: ingest into chDB, and the compiled queue replay.

    python bench/bench_trades.py                    # 10,000,000 trades
    python bench/bench_trades.py --trades 2000000

The real tapes (``shared/data/trades``, the three Binance USD-M BTCUSDT windows, 44,948 trades and
162,554 best bid/offer updates) are far too short to time, so the benchmark tape is **the real
tapes repeated end to end** (each copy shifted in time and trade id to continue the last; prices
as recorded): not market data, only a size test. What is timed (wall clock, best of ``--repeat``):

* ingest: ``ChdbStore.write_trades`` of the whole tape (chunks of 1,000,000, as ``quant data
  import`` writes; and in one write), into a fresh database; peers in the same run: chDB's
  ``Python()`` table function reading the Arrow tables in place, and ``pandas.to_parquet``;
* run: ``broker.fill_model=queue`` as a backtest (``--run-trades`` prints of the stored tape, bars
  built from it, a grid 2 bp apart on the event path), with trades only and then with the best
  bid/offer updates stored too, and the same run with ``touch``: end to end (store reads
  included), the marginal rate over touch, and the compiled tape walk alone;
* parse: ``read_trade_file`` of one month-sized Binance ``trades`` CSV zip written from the tape;
* replay: :func:`btc_quant.plugins.brokers.sim_queue.replay_orders` over the tape, with and
  without the best bid/offer updates, of a grid re-placed every minute: ``--orders`` post-only
  orders 0.02 % apart around the minute's first price (half buys below, half sells above), each
  cancelled a minute later, so orders are always resting (as a maker grid's are).

Targets (issue 15): >= 1M trades/s into chDB; >= 5M trades/s replayed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from btc_quant.core.trade_files import read_trade_file
from btc_quant.core.trades import QuoteArrays, TradeArrays
from btc_quant.plugins.brokers.sim_queue import QueueParams, replay_orders
from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore

HERE = Path(__file__).resolve().parent
TAPES = ("binance_btcusdt_perp_2023-04-04_2358", "binance_btcusdt_perp_2024-07-18_2357", "binance_btcusdt_perp_2024-08-08_2354")


def shared() -> Path:
    for parent in HERE.parents:
        if (parent / "shared" / "data" / "trades").is_dir():
            return parent / "shared" / "data" / "trades"
    raise SystemExit("needs shared/data/trades next to the checkout")


def repeated(n_trades: int) -> tuple[TradeArrays, QuoteArrays]:
    """The real perpetual tapes end to end, repeated until ``n_trades`` prints (see module doc)."""
    folder = shared()
    t = [pd.read_parquet(folder / f"{name}_trades.parquet") for name in TAPES]
    q = [pd.read_parquet(folder / f"{name}_bookticker.parquet") for name in TAPES]
    trades, quotes = [], []
    ts_shift, id_shift, total = 0, 0, 0
    while total < n_trades:
        for tf, qf in zip(t, q):
            base = int(min(tf.ts.min(), qf.ts.min()))
            piece = tf.assign(ts=tf.ts - base + ts_shift, trade_id=tf.trade_id - int(tf.trade_id.min()) + id_shift)
            trades.append(piece)
            quotes.append(qf.assign(ts=qf.ts - base + ts_shift))
            ts_shift = int(max(piece.ts.max(), quotes[-1].ts.max())) + 1
            id_shift = int(piece.trade_id.max()) + 1
            total += len(piece)
    tr = TradeArrays.from_frame(pd.concat(trades, ignore_index=True))[:n_trades]
    qu = QuoteArrays.from_frame(pd.concat(quotes, ignore_index=True))
    return tr, qu[qu.ts <= tr.ts[-1]]


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ingest_in_place(store: ChdbStore, trades: TradeArrays, chunk: int = 1_000_000) -> None:
    """The tape into a fresh database through chDB's ``Python()`` table function, which reads each
    Arrow table where it lies (a second connection to the engine the store opened)."""
    import chdb
    import pyarrow as pa

    from btc_quant.core.trades import TRADE_COLUMNS
    from btc_quant.plugins.storage.clickhouse_trades import _tag

    store.db = f"b_{uuid.uuid4().hex[:8]}"
    store.migrate()
    connection = chdb.connect(os.path.realpath(store.path))
    columns = ", ".join(("exchange", "symbol", *TRADE_COLUMNS))
    try:
        for lo in range(0, len(trades), chunk):
            part = trades[lo : lo + chunk]
            data = pa.table(  # noqa: F841 - read by Python(data)
                {
                    "exchange": _tag("binanceusdm", len(part)),
                    "symbol": _tag("BTC/USDT:USDT", len(part)),
                    **{c: getattr(part, c) for c in TRADE_COLUMNS},
                }
            )
            connection.query(f"INSERT INTO {store.db}.trades ({columns}) SELECT {columns} FROM Python(data)")
    finally:
        connection.close()


def run_mode(store: ChdbStore, trades: TradeArrays, quotes: QuoteArrays, n_run: int) -> None:
    """``broker.fill_model=queue`` as a run (the event-path sim walking the tape, bars built from
    it): a grid 2 bp apart on the first ``n_run`` prints of the stored tape, first with trades only
    in the store, then with the best bid/offer updates of the same span stored too; against the
    same run with ``touch`` on the same bars. Best of two (the first also compiles), store reads
    included. Also timed: the compiled tape walk alone (the time inside ``advance_tape`` calls:
    the prints and quotes walked, the venue core's fills, no store read), and the marginal rate
    (prints / (queue run - touch run): what replaying the tape adds to a bar run, reads included)."""
    from btc_quant.core.data import ms_to_iso
    from btc_quant.core.plugins import load_plugins
    from btc_quant.core.run import backtest
    from btc_quant.plugins.brokers.sim import broker as sim_broker

    end = int(trades.ts[min(n_run, len(trades)) - 1]) // 60_000 * 60_000  # whole minutes only
    start = int(trades.ts[0]) // 60_000 * 60_000
    settings = [
        "strategy=grid",
        "strategy.levels=8",
        "strategy.step_pct=0.0002",
        "strategy.quantity=0.01",
        "exchange=binanceusdm",
        "symbol=BTC/USDT:USDT",
        f"store.path={store.path}",
        f"store.database={store.db}",
        f"data.start={ms_to_iso(start)}",
        f"data.end={ms_to_iso(end)}",
        "data.max_gap=1d",
    ]
    plugins = load_plugins(env={})
    n = int(((trades.ts >= start) & (trades.ts < end)).sum())
    walk = {"s": 0.0}
    compiled = sim_broker.advance_tape

    def timed_walk(*args):  # the bench's own timer around the compiled walk (the run is unchanged)
        begin = time.perf_counter()
        try:
            return compiled(*args)
        finally:
            walk["s"] += time.perf_counter() - begin

    def run(model: str) -> tuple[float, float, object]:
        out: dict = {}

        def once():
            walk["s"] = 0.0
            out["r"] = backtest([*settings, f"broker.fill_model={model}"], plugins=plugins)
            out.setdefault("walks", []).append(walk["s"])

        secs = best(once, 2)
        return secs, min(out["walks"]), out["r"]

    sim_broker.advance_tape = timed_walk
    try:
        touch, _, result = run("touch")
        print(
            f"run, broker.fill_model=touch: {result.bars:,} bars, {len(result.fills):,} fills in {touch:.2f} s (bars built from the stored prints)"
        )
        for label in ("trades only stored", "trades + best bid/offer stored"):
            if label.startswith("trades +"):
                store.write_quotes("binanceusdm", "BTC/USDT:USDT", quotes[(quotes.ts >= start) & (quotes.ts < end)])
                store.close()
            secs, walked, result = run("queue")
            n_q = int(((quotes.ts >= start) & (quotes.ts < end)).sum()) if label.startswith("trades +") else 0
            print(
                f"run, broker.fill_model=queue, {label}: {result.bars:,} bars, {len(result.fills):,} fills, {n:,} prints"
                f"{f', {n_q:,} quotes' if n_q else ''}: {secs:.2f} s = {n / secs:,.0f} trades/s end to end; "
                f"marginal over touch {n / max(secs - touch, 1e-9):,.0f} trades/s; "
                f"compiled walk {walked:.3f} s = {n / walked:,.0f} trades/s"
            )
    finally:
        sim_broker.advance_tape = compiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--run-trades", type=int, default=1_000_000, help="prints of the queue run mode's backtest (0: skip)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    trades, quotes = repeated(args.trades)
    n = len(trades)
    print(f"tape: {n:,} trades, {len(quotes):,} quotes (the real perpetual tapes repeated; not market data)")

    scratch = Path(tempfile.mkdtemp(prefix="bench_trades_"))
    try:
        store = ChdbStore(ChdbConfig(path=scratch / "chdb"))

        def ingest(chunk: int = 1_000_000):
            store.db = f"b_{uuid.uuid4().hex[:8]}"
            store.migrate()
            for lo in range(0, n, chunk):
                store.write_trades("binanceusdm", "BTC/USDT:USDT", trades[lo : lo + chunk])

        secs = best(ingest, args.repeat)
        stored = store.trade_span("binanceusdm", "BTC/USDT:USDT")[2]
        assert stored == n, (stored, n)
        tape_db = store.db
        whole = best(lambda: ingest(n), args.repeat)
        # an alternative in the same run: chDB reading each Arrow table in place through its Python()
        # table function (write_trades goes through clickhouse-connect's insert_arrow: the Arrow
        # stream to a temporary file, INSERT ... FROM INFILE)
        in_place = best(lambda: ingest_in_place(store, trades), args.repeat)
        store.close()
        frame = trades.to_frame()
        peer = best(lambda: frame.to_parquet(scratch / "peer.parquet", compression="zstd"), args.repeat)
        print(f"ingest into chDB: {secs:.2f} s = {n / secs:,.0f} trades/s (1M-row writes); one write: {whole:.2f} s = {n / whole:,.0f}/s")
        print(
            f"  peers: chDB Python() table function, 1M-row inserts {in_place:.2f} s = {n / in_place:,.0f}/s; "
            f"pandas.to_parquet {peer:.2f} s = {n / peer:,.0f}/s"
        )
        if args.run_trades:
            store.db = tape_db
            run_mode(store, trades, quotes, args.run_trades)

        month = frame.head(min(n, 2_000_000))
        csv = scratch / "BTCUSDT-trades-2024-08.csv"
        pd.DataFrame(
            {
                "id": month.trade_id,
                "price": month.price,
                "qty": month.qty,
                "quote_qty": month.price * month.qty,
                "time": month.ts,
                "is_buyer_maker": np.where(month.side < 0, "true", "false"),
            }
        ).to_csv(csv, index=False)
        with zipfile.ZipFile(csv.with_suffix(".zip"), "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(csv, csv.name)
        parse = best(lambda: read_trade_file(csv.with_suffix(".zip")), 1)
        print(f"parse a Binance trades zip ({len(month):,} rows): {parse:.2f} s = {len(month) / parse:,.0f} rows/s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    minutes = np.unique(trades.ts // 60_000) * 60_000
    first = np.searchsorted(trades.ts, minutes)
    k = np.arange(args.orders) - args.orders // 2
    step = np.where(k < 0, k, k + 1) * 0.0002
    orders = pd.DataFrame(
        {
            "side": np.tile(np.where(k < 0, 1, -1), len(minutes)),
            "price": np.round((trades.price[first][:, None] * (1 + step[None, :])).ravel(), 1),
            "qty": 0.01,
            "place_ts": np.repeat(minutes, args.orders),
            "cancel_ts": np.repeat(minutes + 60_000, args.orders),
        }
    )
    print(f"orders: {len(orders):,} ({args.orders} a minute over {len(minutes):,} minutes)")
    params = QueueParams(tick=0.1)
    replay_orders(trades[:1000], orders, params, quotes[:1000])  # compile
    for label, q in (("trades only", None), ("trades + best bid/offer", quotes)):
        result = {}
        secs = best(lambda result=result, q=q: result.setdefault("r", replay_orders(trades, orders, params, q)), args.repeat)
        filled = int((result["r"].orders.status == "filled").sum())
        events = n + (0 if q is None else len(q))
        print(
            f"queue replay, {args.orders} orders, {label}: {secs:.3f} s = {n / secs:,.0f} trades/s "
            f"({events / secs:,.0f} events/s); {filled} orders filled"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
