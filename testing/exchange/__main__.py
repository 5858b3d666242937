"""``python -m btc_quant.testing.exchange``: run the local exchange as its own process.

Prints one JSON line once listening, e.g. ``{"url": "http://127.0.0.1:40123", "port": 40123,
"now_ms": ...}``, then serves until SIGTERM/SIGINT. Examples::

    python -m btc_quant.testing.exchange --port 0
    python -m btc_quant.testing.exchange --usdm perp.parquet --clock-start 2022-01-10 --speed 120 \\
        --seed 7 --fault rate_limit=0.05 --fault server_error=0.05
    python -m btc_quant.testing.exchange --clock-start 2022-01-10 --speed 60 --trading-faults \\
        --seed 7 --fault accepted_timeout=0.02 --fault partial_fill=0.2 --fault ws_delay=0.1
    python -m btc_quant.testing.exchange --dialect bybit --clock-start 2022-01-10 --speed 60
    python -m btc_quant.testing.exchange --dialect coinbase --coinbase coinbase_btcusd_1m_days_2016-2018.parquet

Trading account: API key ``local-test-key``, secret ``local-test-secret`` (``--usdt`` USDT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import UTC, datetime

from btc_quant.core.trade_files import read_trade_file

from .faults import KINDS, TRADING_PATHS, FaultPlan
from .market import DEFAULT_FUNDING_FILE, DEFAULT_SPOT_FILE, binance_state
from .server import serve_forever


def _ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _fault(text: str) -> tuple[str, float]:
    kind, _, rate = text.partition("=")
    if kind not in KINDS or not rate:
        raise argparse.ArgumentTypeError(f"expected KIND=RATE with KIND one of {', '.join(KINDS)}")
    return kind, float(rate)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m btc_quant.testing.exchange", description=__doc__.splitlines()[0])
    p.add_argument(
        "--dialect",
        choices=("binance", "bybit", "coinbase"),
        default="binance",
        help="which exchange's API to speak (see testing/exchange/dialects); bybit serves --usdm/--funding "
        "as its linear BTCUSDT, coinbase serves --coinbase as BTC-USD",
    )
    p.add_argument("--coinbase", default=None, help="1m bars for Coinbase BTC-USD (--dialect coinbase; required there)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    p.add_argument("--spot", default=str(DEFAULT_SPOT_FILE), help="1m bars for spot BTCUSDT ('none' to list no spot market)")
    p.add_argument("--usdm", default=None, help="1m bars for the USD-M BTCUSDT perpetual (default: the bundled sample)")
    p.add_argument("--spot-trades", default=None, help="a trade tape (parquet/CSV, shared/data/trades) served by spot aggTrades")
    p.add_argument("--usdm-trades", default=None, help="a trade tape served by the perpetual's aggTrades")
    p.add_argument("--funding", default=str(DEFAULT_FUNDING_FILE), help="funding rates for the perpetual ('none' for none)")
    p.add_argument(
        "--mark",
        default=None,
        help="mark-price klines of the perpetual (parquet/CSV bar columns; default: the bundled Binance 1h klines of January 2022; 'none' for none)",
    )
    p.add_argument(
        "--clock-start", type=_ms, default=None, help="exchange time to start at (ISO date/time or ms); default: after the last bar"
    )
    p.add_argument("--speed", type=float, default=0.0, help="exchange seconds per real second (0 = frozen clock)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault schedule")
    p.add_argument("--fault", type=_fault, action="append", default=[], help="KIND=RATE, repeatable")
    p.add_argument("--script", action="append", default=[], help="PATH:KIND[,KIND...] scripted faults, repeatable")
    p.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds on 429")
    p.add_argument("--timeout-s", type=float, default=5.0, help="how long a 'timeout' fault holds the answer")
    p.add_argument(
        "--usdt", type=float, default=10_000.0, help="USDT in the test account (API key local-test-key, secret local-test-secret)"
    )
    p.add_argument("--listen-key-ttl-s", type=float, default=3600.0, help="real seconds a listen key lives without keep-alive")
    p.add_argument("--all-paths", action="store_true", help="faults may hit every endpoint, not only data endpoints")
    p.add_argument(
        "--trading-faults",
        action="store_true",
        help="faults may also hit the trading endpoints, user-data pushes and fills (faults.TRADING_PATHS)",
    )
    p.add_argument("--ban-after", type=int, default=3, help="requests inside Retry-After before a 418 ban")
    p.add_argument("--ban-s", type=float, default=2.0, help="length of a 418 ban")
    p.add_argument("--ws-delay-s", type=float, default=0.5, help="how long a 'ws_delay' fault holds a user-data event")
    p.add_argument("--user-cancel-after-ms", type=int, default=30_000, help="exchange time until a 'user_cancel' fault cancels an order")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = None if args.all_paths else FaultPlan.paths + (TRADING_PATHS if args.trading_faults else ())
    if args.dialect == "bybit" and not args.all_paths:
        from .dialects.bybit_trading import FAULT_PATHS

        paths = FAULT_PATHS if args.trading_faults else ("kline", "history", "ws")
    plan = FaultPlan(
        seed=args.seed,
        rates=dict(args.fault),
        retry_after_s=args.retry_after,
        timeout_s=args.timeout_s,
        paths=paths,
        ban_after=args.ban_after,
        ban_s=args.ban_s,
        ws_delay_s=args.ws_delay_s,
        user_cancel_after_ms=args.user_cancel_after_ms,
    )
    for item in args.script:
        path, _, kinds = item.partition(":")
        plan.script(path, *kinds.split(","))
    if args.dialect == "bybit":
        from .dialects.bybit import bybit_state

        state = bybit_state(
            bars_file=args.usdm,
            funding_file=None if args.funding == "none" else args.funding,
            clock_start_ms=args.clock_start,
            speed=args.speed,
            faults=plan,
        )
    elif args.dialect == "coinbase":
        from .dialects.coinbase import coinbase_state

        if not args.coinbase:
            raise SystemExit("--dialect coinbase needs --coinbase FILE (1m bars of BTC-USD)")
        state = coinbase_state(args.coinbase, clock_start_ms=args.clock_start, speed=args.speed, faults=plan)
    else:
        state = binance_state(
            spot_file=None if args.spot == "none" else args.spot,
            usdm_file=args.usdm,
            funding_file=None if args.funding == "none" else args.funding,
            **({} if args.mark is None else {"mark_file": None if args.mark == "none" else args.mark}),
            clock_start_ms=args.clock_start,
            speed=args.speed,
            faults=plan,
            usdt=args.usdt,
        )

    state.trading.listen_key_ttl_s = args.listen_key_ttl_s
    for family, tape in (("spot", args.spot_trades), ("usdm", args.usdm_trades)):
        if tape:
            state.tapes[(family, "BTCUSDT")] = read_trade_file(tape, "trades").data

    def announce(port: int) -> None:
        print(json.dumps({"url": f"http://{args.host}:{port}", "port": port, "now_ms": state.clock.now_ms()}), flush=True)

    async def run() -> None:
        task = asyncio.create_task(serve_forever(state, args.host, args.port, announce))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
