"""Run a strategy (default ``maker_vol``) over every period of a regime TOML and print a markdown table.

    python bench/regimes.py                                  # bench/regimes.toml, maker_vol defaults
    python bench/regimes.py --config my.toml strategy.order_pct=0.001
    python bench/regimes.py --sides long,short,both --fills through,touch --periods perp

The periods come from the TOML file (``[[period]]`` with name, file, start, end, optional note,
``timeframe`` (default ``1m``), ``max_gap`` and ``mark_file``: mark-price klines that trigger liquidations), never from code. A period whose bars jump in ``ts`` by more than its
``max_gap`` (default ``1m``; ``1h`` for hourly files) is refused, so no run spans a gap. Each row
is one backtest through :func:`btc_quant.core.run.backtest`, the function behind ``quant run``,
for each side (``strategy.side``) and fill model (``broker.fill_model``) asked for. The liquidation
columns are maker_vol's promise: ``breaches`` (wake-ups with the position's liquidation price
beyond bottom while the price was on the safe side) and ``liq. above bottom`` (liquidations
while the price had not crossed the line) must both be 0; ``restores`` counts the wake-ups that
moved margin or closed lots to keep it.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

from btc_quant.core.run import backtest

HERE = Path(__file__).resolve().parent
COLUMNS = (
    "period",
    "side",
    "fill",
    "bars",
    "days",
    "return",
    "max DD",
    "round trips/day",
    "saturation closes",
    "liquidations",
    "breaches",
    "liq. above bottom",
    "restores",
    "funding",
    "cash pauses",
    "min dist. to liq.",
    "path",
    "note",
)


def load_periods(path: Path) -> tuple[Path, list[dict]]:
    config = tomllib.loads(path.read_text())
    data_dir = Path(config.get("data_dir", "."))
    periods = config.get("period", [])
    for n, p in enumerate(periods):
        missing = {"name", "file", "start", "end"} - set(p)
        if missing:
            raise SystemExit(f"{path}: period {n + 1} lacks {', '.join(sorted(missing))}")
    return data_dir, periods


def run_period(data_dir: Path, period: dict, settings: list[str], side: str = "long", fill: str = "through") -> dict:
    pairs = [
        "strategy=maker_vol",
        "broker=sim",
        "exchange=binanceusdm",
        "symbol=BTC/USDT:USDT",
        f"data.file={data_dir / period['file']}",
        f"data.start={period['start']}",
        f"data.end={period['end']}",
        f"timeframe={period.get('timeframe', '1m')}",  # the bar size of the file (runs check it)
        f"data.max_gap={period.get('max_gap', '1m')}",  # one missing bar is a jump: refuse it
        *([f"data.mark_file={data_dir / period['mark_file']}"] if period.get("mark_file") else []),  # liquidation on the mark
        f"strategy.side={side}",
        f"broker.fill_model={fill}",
        *settings,
    ]
    result = backtest(pairs)
    m = result.metrics
    diag = result.diagnostics
    summary = diag.get("summary", {})
    days = (result.end_ms - result.start_ms) / 86_400_000
    funding = diag.get("pnl_attribution", {}).get("funding")
    return {
        "period": period["name"],
        "side": side,
        "fill": fill,
        "bars": result.bars,
        "days": round(days, 1),
        "return": m.get("total_return"),
        "max DD": m.get("max_drawdown"),
        "round trips/day": summary.get("round_trips", 0) / days if days else None,
        "saturation closes": summary.get("saturation_closes"),
        "liquidations": m.get("liquidations", summary.get("liquidations")),
        "funding": funding,
        "cash pauses": summary.get("cash_pauses"),
        "breaches": summary.get("liq_line_breaches"),
        "liq. above bottom": summary.get("liquidations_above_bottom"),
        "restores": summary.get("liq_line_restores"),
        "path": "compiled" if result.compiled else "event",
        "min dist. to liq.": summary.get("min_distance_to_liquidation"),
        "note": period.get("note", ""),
        "elapsed_s": result.elapsed_s,
    }


def fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("return", "max DD", "min dist. to liq."):
        return f"{value:.2%}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(c, row.get(c)) for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "regimes.toml")
    parser.add_argument("--sides", default="long", help="comma-separated strategy.side values (long, short, both)")
    parser.add_argument("--fills", default="through", help="comma-separated fill models (through, touch)")
    parser.add_argument("--periods", default="", help="only periods whose name contains this text")
    parser.add_argument("settings", nargs="*", help="key=value settings for every run")
    args = parser.parse_args(argv)
    data_dir, periods = load_periods(args.config)
    periods = [p for p in periods if args.periods in p["name"]]
    rows = []
    started = time.perf_counter()
    for period in periods:
        for side in args.sides.split(","):
            for fill in args.fills.split(","):
                row = run_period(data_dir, period, args.settings, side, fill)
                rows.append(row)
                print(
                    f"{row['period']} {side} {fill}: {row['bars']} bars in {row['elapsed_s']:.1f}s ({row['path']})",
                    file=sys.stderr,
                    flush=True,
                )
    print(table(rows))
    print(f"\n{len(rows)} periods, {sum(r['bars'] for r in rows):,} bars, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
