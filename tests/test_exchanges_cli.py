"""``quant exchanges``: what each ccxt exchange can do here, and the README's table is its output."""

from __future__ import annotations

import json

from conftest import REPO

from btc_quant.plugins.exchanges.catalog import abilities, catalog, table


def test_json_lists_every_ccxt_exchange_with_its_abilities(quant):
    import ccxt

    rows = json.loads(quant("exchanges", "--json", check=True).stdout)
    assert [r["id"] for r in rows] == list(ccxt.exchanges)
    by_id = {r["id"]: r for r in rows}
    assert by_id["binanceusdm"]["live"] and "live" in by_id["binanceusdm"]["tested"]
    assert by_id["bybit"]["live"] and by_id["bybit"]["hedge"] and by_id["bybit"]["post_only"] and "live" in by_id["bybit"]["tested"]
    assert by_id["coinbase"]["data"] and not by_id["coinbase"]["live"] and by_id["coinbase"]["tested"] == ["data"]
    assert all(set(r["tested"]) <= {"data", "trades", "paper", "live", "hedge", "post_only"} for r in rows)


def test_live_column_is_the_live_drivers_capability_check():
    from btc_quant.plugins.exchanges.driver import live_capabilities

    coinbase = abilities("coinbase")
    import ccxt

    missing = [k for k in live_capabilities(perpetual=True) if not ccxt.coinbase().has.get(k)]
    assert missing and not coinbase.live  # e.g. setLeverage: the live run refuses it with one line


def test_readme_table_is_the_commands_output(quant):
    out = quant("exchanges", "--tested", check=True).stdout.strip()
    assert out == table(catalog(only_tested=True))
    readme = (REPO / "README.md").read_text()
    assert out in readme, "README's exchange table is not `quant exchanges --tested` output: paste it again"


def test_real_money_only_where_the_live_path_is_verified(quant):
    from btc_quant.plugins.exchanges.catalog import _tested
    from btc_quant.plugins.exchanges.driver import LIVE_VERIFIED

    assert LIVE_VERIFIED == {e for e, what in _tested().items() if "live" in what}
    proc = quant("run", "broker=live", "exchange=okx", "symbol=BTC/USDT:USDT", "--i-understand-this-trades-real-money")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "broker=live with real money on okx: the live broker has been run end to end only on binanceusdm, bybit" in proc.stderr
