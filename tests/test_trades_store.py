"""Trades and best bid/offer in the store (chDB and the ClickHouse HTTP path), and their files.

Data is real: the Binance tapes in ``../shared/data/trades`` (README there), and Binance's spot
1-minute klines of the same minutes.
"""

from __future__ import annotations

import zipfile

import numpy as np
import pandas as pd
import pytest
from test_store import chdb_dir, http_server, make_store, shared_file, store  # noqa: F401  (the two store legs)

from btc_quant.core.errors import DataError
from btc_quant.core.trade_files import read_trade_file
from btc_quant.core.trades import QuoteArrays, TradeArrays

PERP = "binance_btcusdt_perp_2024-08-08_2354"
EX, SYM = "binanceusdm", "BTC/USDT:USDT"


def tape(name: str) -> pd.DataFrame:
    return pd.read_parquet(shared_file(f"trades/{name}.parquet"))


def test_trades_round_trip_and_reimport_never_duplicates(store):
    frame = tape(f"{PERP}_trades")
    trades = TradeArrays.from_frame(frame)
    assert store.write_trades(EX, SYM, trades) == len(frame) == 21_313
    store.write_trades(EX, SYM, trades[5000:9000])  # a re-fetch of an overlapping range
    got = store.read_trades(EX, SYM)
    assert len(got) == len(frame)
    np.testing.assert_array_equal(got.trade_id, frame.trade_id.to_numpy())
    np.testing.assert_array_equal(got.price, frame.price.to_numpy())
    np.testing.assert_array_equal(got.qty, frame.qty.to_numpy())
    assert (got.side == np.where(frame.side == "buy", 1, -1)).all()
    assert int((got.side == 1).sum()) == 9_616  # taker buys, as the README counts them
    first, last, rows, lo, hi = store.trade_span(EX, SYM)
    assert (rows, lo, hi) == (21_313, 5266583935, 5266605247)
    # half-open time range
    t0, t1 = int(frame.ts.iloc[100]), int(frame.ts.iloc[-100])
    part = store.read_trades(EX, SYM, t0, t1)
    assert part.ts.min() >= t0 and part.ts.max() < t1
    assert len(part) == int(((frame.ts >= t0) & (frame.ts < t1)).sum())


def test_quotes_round_trip(store):
    frame = tape(f"{PERP}_bookticker")
    quotes = QuoteArrays.from_frame(frame)
    store.write_quotes(EX, SYM, quotes)
    store.write_quotes(EX, SYM, quotes[:1000])
    got = store.read_quotes(EX, SYM)
    assert len(got) == len(frame) == 66_089
    np.testing.assert_array_equal(got.bid_px, frame.bid_px.to_numpy())
    np.testing.assert_array_equal(got.ask_qty, frame.ask_qty.to_numpy())
    kinds = {row[2]: row[5] for row in store.trade_series()}
    assert kinds == {"quotes": 66_089}


@pytest.mark.parametrize("name", ["binance_btcusdt_spot_2024-08-08_2354", "binance_btcusdt_spot_2023-04-05_0000"])
def test_one_minute_klines_built_from_trades_equal_the_exchanges(store, name):
    frame = tape(f"{name}_trades")
    store.write_trades("binance", "BTC/USDT", TradeArrays.from_frame(frame))
    built = store.trade_bars("binance", "BTC/USDT", "1m").to_frame()
    # Full minutes only: the tape starts and ends inside a minute.
    built = built[(built.ts >= frame.ts.min() // 60_000 * 60_000 + 60_000) & (built.ts + 60_000 <= frame.ts.max())]
    klines = pd.read_parquet(shared_file("binance_btcusdt_1m.parquet"))
    exchange = klines[klines.ts.isin(built.ts)].reset_index(drop=True)
    assert len(exchange) == len(built) >= 6
    for column in ("ts", "open", "high", "low", "close"):
        np.testing.assert_array_equal(built[column].to_numpy(), exchange[column].to_numpy())
    np.testing.assert_allclose(built.volume.to_numpy(), exchange.volume.to_numpy(), rtol=0, atol=1e-9)


def write_binance_trades_csv(path, frame, *, header: bool, agg: bool = False):
    """A file in Binance's public-archive layout (data.binance.vision) from a real tape."""
    maker = np.where(frame.side == "sell", "true", "false")
    if agg:  # one aggTrade per trade: agg id, price, qty, first id, last id, time, buyer is maker
        cols = {
            "agg_trade_id": frame.trade_id - 1000,
            "price": frame.price,
            "quantity": frame.qty,
            "first_trade_id": frame.trade_id,
            "last_trade_id": frame.trade_id,
            "transact_time": frame.ts,
            "is_buyer_maker": maker,
        }
    else:
        cols = {
            "id": frame.trade_id,
            "price": frame.price,
            "qty": frame.qty,
            "quote_qty": frame.price * frame.qty,
            "time": frame.ts,
            "is_buyer_maker": maker,
        }
        if not header:  # spot: a 7th column, is_best_match
            cols["is_best_match"] = "true"
    pd.DataFrame(cols).to_csv(path, index=False, header=header, float_format="%.8f")
    return path


@pytest.mark.parametrize("header,agg,zipped", [(False, False, True), (True, False, False), (True, True, True), (False, True, False)])
def test_binance_archive_trade_files_read_as_the_tape(tmp_path, header, agg, zipped):
    frame = tape("binance_btcusdt_spot_2021-01-08_0000_trades")
    name = f"BTCUSDT-{'aggTrades' if agg else 'trades'}-2021-01-08.csv"
    path = write_binance_trades_csv(tmp_path / name, frame, header=header, agg=agg)
    if zipped:
        with zipfile.ZipFile(tmp_path / (name[:-4] + ".zip"), "w") as archive:
            archive.write(path, name)
        path = tmp_path / (name[:-4] + ".zip")
    read = read_trade_file(path)
    assert read.kind == "trades" and read.bad == [] and read.rows == 2001
    got = read.data
    np.testing.assert_array_equal(got.trade_id, frame.trade_id.to_numpy())
    np.testing.assert_array_equal(got.last_id, frame.trade_id.to_numpy())
    np.testing.assert_array_equal(got.ts, frame.ts.to_numpy())
    np.testing.assert_allclose(got.price, frame.price.to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.qty, frame.qty.to_numpy(), rtol=1e-9)
    np.testing.assert_array_equal(got.side, np.where(frame.side == "buy", 1, -1))


def test_bad_trade_rows_are_named_not_dropped(tmp_path):
    frame = tape("binance_btcusdt_spot_2021-01-08_0000_trades").head(50).copy()
    path = write_binance_trades_csv(tmp_path / "BTCUSDT-trades-x.csv", frame, header=True)
    lines = path.read_text().splitlines()
    parts = lines[5].split(",")
    parts[2] = "-1"  # data row 4 (line 6): negative qty
    lines[5] = ",".join(parts)
    lines[9] = lines[8]  # line 10 repeats line 9's trade id
    path.write_text("\n".join(lines) + "\n")
    read = read_trade_file(path)
    assert [(b.where, b.problem) for b in read.bad] == [("line 6", "qty is not a positive number"), ("line 10", "duplicate trade_id")]
    assert len(read.data) == 48


def test_headerless_csv_of_unknown_layout_is_one_clear_error(tmp_path):
    path = tmp_path / "x_trades.csv"
    path.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="headerless CSV with 3 columns is not a Binance trades file"):
        read_trade_file(path)


def test_cli_imports_the_real_tapes_and_lists_them(quant, tmp_path):
    trades = shared_file(f"trades/{PERP}_trades.parquet")
    quotes = shared_file(f"trades/{PERP}_bookticker.parquet")
    store = f"store.path={tmp_path / 'chdb'}"
    done = quant("data", "import", str(trades), "exchange=binanceusdm", "symbol=BTC/USDT:USDT", store, check=True)
    assert "21,313 trades imported into binanceusdm BTC/USDT:USDT" in done.stdout
    done = quant("data", "import", str(quotes), "exchange=binanceusdm", "symbol=BTC/USDT:USDT", "kind=quotes", store, check=True)
    assert "66,089 quotes imported" in done.stdout
    listed = quant("data", "ls", store, check=True).stdout
    assert "trades" in listed and "21,313" in listed and "66,089" in listed
    wrong = quant("data", "import", str(trades), "kind=quotes", store)
    assert wrong.returncode == 2 and "missing column(s) bid_px" in wrong.stderr
    mark = quant("data", "import", str(trades), "price=mark", store)  # a setting is refused, not ignored
    assert mark.returncode == 2 and "price=mark applies to klines only" in mark.stderr


def test_trade_id_holes_are_found_by_a_query(store):
    frame = tape(f"{PERP}_trades")
    trades = TradeArrays.from_frame(frame)
    keep = np.ones(len(trades), dtype=bool)
    keep[1000:1010] = False  # ten prints lost
    store.write_trades(EX, SYM, trades[keep])
    first, last = int(frame.trade_id.iloc[1000]), int(frame.trade_id.iloc[1009])
    assert store.trade_gaps(EX, SYM) == [(first, last, int(frame.ts.iloc[999]), int(frame.ts.iloc[1010]))]
    store.write_trades(EX, SYM, trades[1000:1010])  # fetched later: the hole is gone
    assert store.trade_gaps(EX, SYM) == []


def test_cli_gaps_name_the_real_excluded_insurance_fund_print(quant, tmp_path):
    """The 2023-04-04 perpetual tape skips trade 3535191080 (an insurance-fund settlement, kept
    apart; see the data README): ``data gaps kind=trades`` finds exactly that id."""
    trades = shared_file("trades/binance_btcusdt_perp_2023-04-04_2358_trades.parquet")
    store = f"store.path={tmp_path / 'chdb'}"
    quant("data", "import", str(trades), "exchange=binanceusdm", "symbol=BTC/USDT:USDT", store, check=True)
    shown = quant("data", "gaps", "exchange=binanceusdm", "symbol=BTC/USDT:USDT", "kind=trades", store, check=True).stdout
    assert "3535191080" in shown and shown.count("3535191080") == 2  # first and last missing id


def test_other_tapes_read_too():
    kraken = read_trade_file(shared_file("trades/kraken_xbtusdt_spot_2025-11-10_1723_trades.parquet"))
    assert kraken.kind == "trades" and kraken.bad == [] and len(kraken.data) == 1000
    assert int((kraken.data.side == 1).sum()) == 578  # taker buys, as the README counts them
    quotes = read_trade_file(shared_file("trades/binance_btcusdt_spot_2021-01-08_0000_quotes.parquet"))
    assert quotes.kind == "quotes" and quotes.bad == [] and len(quotes.data) == 451
    # snapshots without update ids (23 share a millisecond with another) are numbered within their
    # millisecond, so the store keeps them all
    assert len(set(zip(quotes.data.ts.tolist(), quotes.data.update_id.tolist()))) == 451


def test_a_session_keeps_the_chdb_store_open_between_reads_and_closes_it_after(tmp_path):
    """A run's loads (bars, mark prices, funding, trades, quotes) share one connection; outside a
    session every read opens and closes the lazy store again (other processes may want it)."""
    from btc_quant.plugins.storage.clickhouse import ChdbConfig, ChdbStore

    store = ChdbStore(ChdbConfig(path=tmp_path / "chdb"))
    store.write_trades(EX, SYM, TradeArrays.from_frame(tape(f"{PERP}_trades")))
    store.close()
    opens = []
    open_store = store._open
    store._open = lambda: (opens.append(1), open_store())
    store.read_trades(EX, SYM)
    store.read_quotes(EX, SYM)
    assert len(opens) == 2 and store.client is None
    with store.session():
        assert len(store.read_trades(EX, SYM)) == 21_313
        store.read_quotes(EX, SYM)
        store.read_bars(EX, SYM, "1m")
        store.read_funding(EX, SYM)
        store.read_mark_bars(EX, SYM)
        assert store.client is not None
    assert len(opens) == 3 and store.client is None


def test_a_run_on_a_file_still_runs_when_the_configured_store_is_unreachable():
    """The loads' session must not turn a store that cannot be reached into an error: bars from a
    file, and the mark prices and funding the store would have given fall back as without it."""
    from conftest import REPO

    from btc_quant.core.plugins import load_plugins
    from btc_quant.core.run import backtest

    sample = REPO / "examples" / "data" / "btc_perp_1m_2022-01.parquet"
    settings = [
        "strategy=sma_cross",
        f"data.file={sample}",
        "data.start=2022-01-20",
        "data.end=2022-01-21",
        "store=clickhouse",
        "store.url=http://127.0.0.1:9",
        "store.connect_timeout_s=1",
    ]
    result = backtest(settings, plugins=load_plugins(env={}))
    assert result.bars == 1440 and result.funding_source != "store"
