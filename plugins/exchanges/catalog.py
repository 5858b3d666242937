"""``quant exchanges``: the exchanges ccxt knows, what each can do here, and which the tests run.

Every ccxt exchange id is a data source (:mod:`.ccxt_source`), so the list is ccxt's. For each,
what this project can do with it, from ccxt's own capability table (``has``) and the same checks
the commands make:

* ``data``   - ``quant data fetch|collect``: ccxt can fetch OHLCV (``fetchOHLCV``);
* ``trades`` - ``quant data fetch|collect kind=trades``: ccxt reads public trades (``fetchTrades``;
  :mod:`.ccxt_trades` says how each exchange is paged);
* ``paper``  - ``broker=paper`` needs closed bars only: the same as ``data``;
* ``live``   - ``broker=live`` passes the live driver's capability check for a perpetual
  (:func:`.driver.required_capabilities`: post-only orders, cancel, order look-up, open orders,
  balance, leverage, margin mode, positions) and ccxt.pro streams its orders (``watchOrders``);
* ``hedge``  - the exchange has a hedge (two-sided) position mode ccxt can set (``setPositionMode``);
* ``post_only`` - ccxt can send post-only orders (``createPostOnlyOrder``);
* ``tested`` - which of these the test suite runs against the local exchange's dialect of it
  (:mod:`btc_quant.testing.exchange.dialects`), through the real ccxt client.

A capability here means ccxt offers it and the project's code path for it accepts the exchange;
only the ``tested`` column says it has been run end to end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import ccxt
import typer

from btc_quant.sdk import hookimpl

COLUMNS = ("data", "trades", "paper", "live", "hedge", "post_only")


@dataclass(frozen=True)
class ExchangeAbilities:
    """What one ccxt exchange can do in this project."""

    id: str
    name: str
    data: bool
    trades: bool
    paper: bool
    live: bool
    hedge: bool
    post_only: bool
    #: capabilities the test suite exercises against a local dialect (e.g. ("data", "paper"))
    tested: tuple[str, ...] = ()


def _tested() -> dict[str, tuple[str, ...]]:
    from btc_quant.testing.exchange.dialects import DIALECTS

    out: dict[str, tuple[str, ...]] = {}
    for dialect in DIALECTS.values():
        for exchange_id, what in dialect.exercised.items():
            out[exchange_id] = tuple(c for c in COLUMNS if c in what)
    return out


def abilities(exchange_id: str, tested: dict[str, tuple[str, ...]] | None = None) -> ExchangeAbilities:
    """The abilities of one ccxt exchange id (builds its ccxt class; no request is sent)."""
    from .driver import live_capabilities

    client = getattr(ccxt, exchange_id)()
    has = client.has
    pro_orders = False
    try:
        import ccxt.pro as ccxt_pro

        if exchange_id in ccxt_pro.exchanges:
            pro_orders = bool(getattr(ccxt_pro, exchange_id)().has.get("watchOrders"))
    except ImportError:
        pass
    data = bool(has.get("fetchOHLCV"))
    live = all(has.get(k) for k in live_capabilities(perpetual=True)) and pro_orders
    return ExchangeAbilities(
        id=exchange_id,
        name=str(getattr(client, "name", exchange_id)),
        data=data,
        trades=bool(has.get("fetchTrades")),
        paper=data,
        live=live,
        hedge=bool(has.get("setPositionMode")),
        post_only=bool(has.get("createPostOnlyOrder")),
        tested=(tested or {}).get(exchange_id, ()),
    )


def catalog(only_tested: bool = False) -> list[ExchangeAbilities]:
    """Every ccxt exchange id (or those the tests exercise), in ccxt's order."""
    tested = _tested()
    ids = [e for e in ccxt.exchanges if not only_tested or e in tested]
    return [abilities(e, tested) for e in ids]


def table(rows: list[ExchangeAbilities]) -> str:
    """A Markdown table (the README's is this output)."""
    head = "| exchange | " + " | ".join(c.replace("_", "-") for c in COLUMNS) + " | tested against a local dialect |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        cells = ["yes" if getattr(r, c) else "-" for c in COLUMNS]
        lines.append(f"| {r.id} | " + " | ".join(cells) + f" | {', '.join(c.replace('_', '-') for c in r.tested) or '-'} |")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("exchanges")
    def exchanges(
        as_json: bool = typer.Option(False, "--json", help="print a JSON list instead of the table"),
        tested: bool = typer.Option(False, "--tested", help="only the exchanges the test suite runs against a local dialect"),
    ) -> None:
        """The exchanges ccxt knows and what each can do here (data, trades, paper, live, hedge mode, post-only)."""
        rows = catalog(only_tested=tested)
        if as_json:
            typer.echo(json.dumps([asdict(r) for r in rows], indent=1))
            return
        typer.echo(table(rows))
        if not tested:
            typer.echo(
                f"\n{len(rows)} exchanges; {sum(r.live for r in rows)} pass the live check, "
                f"{sum(bool(r.tested) for r in rows)} are exercised by the tests (quant exchanges --tested)"
            )


@hookimpl
def quant_register_commands(cli):
    register(cli)
