"""Run a strategy (default ``maker_vol``) over every period of a regime TOML and print a markdown table.

    python bench/regimes.py                                  # bench/regimes.toml, maker_vol defaults
    python bench/regimes.py --config my.toml strategy.order_pct=0.001 broker.fill_model=touch

The periods come from the TOML file (``[[period]]`` with name, file, start, end, optional note),
never from code. A period whose bars jump in ``ts`` is refused (``data.max_gap=1m``), so no run
spans a gap. Each row is one backtest through :func:`btc_quant.core.run.backtest`, the function
behind ``quant run``.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from pathlib import Path

from btc_quant.core.run import backtest

HERE = Path(__file__).resolve().parent
COLUMNS = ("period", "bars", "days", "return", "max DD", "round trips/day", "saturation closes", "liquidations", "funding", "cash pauses", "min dist. to liq.", "note")


def load_periods(path: Path) -> tuple[Path, list[dict]]:
    config = tomllib.loads(path.read_text())
    data_dir = Path(config.get("data_dir", "."))
    periods = config.get("period", [])
    for n, p in enumerate(periods):
        missing = {"name", "file", "start", "end"} - set(p)
        if missing:
            raise SystemExit(f"{path}: period {n + 1} lacks {', '.join(sorted(missing))}")
    return data_dir, periods


def run_period(data_dir: Path, period: dict, settings: list[str]) -> dict:
    pairs = [
        "strategy=maker_vol",
        "broker=sim",
        "exchange=binanceusdm",
        "symbol=BTC/USDT:USDT",
        f"data.file={data_dir / period['file']}",
        f"data.start={period['start']}",
        f"data.end={period['end']}",
        "data.max_gap=1m",  # one missing minute is a jump: refuse it
        *settings,
    ]
    result = backtest(pairs)
    m = result.metrics
    diag = result.extra.get("diagnostics", {})
    summary = diag.get("summary", {})
    days = result.bars / 1440
    funding = diag.get("pnl_attribution", {}).get("funding")
    return {
        "period": period["name"],
        "bars": result.bars,
        "days": round(days, 1),
        "return": m.get("total_return"),
        "max DD": m.get("max_drawdown"),
        "round trips/day": summary.get("round_trips", 0) / days if days else None,
        "saturation closes": summary.get("saturation_closes"),
        "liquidations": m.get("liquidations", summary.get("liquidations")),
        "funding": funding,
        "cash pauses": summary.get("cash_pauses"),
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
    parser.add_argument("settings", nargs="*", help="key=value settings for every run")
    args = parser.parse_args(argv)
    data_dir, periods = load_periods(args.config)
    rows = []
    started = time.perf_counter()
    for period in periods:
        row = run_period(data_dir, period, args.settings)
        rows.append(row)
        print(f"{row['period']}: {row['bars']} bars in {row['elapsed_s']:.1f}s", file=sys.stderr)
    print(table(rows))
    print(f"\n{len(rows)} periods, {sum(r['bars'] for r in rows):,} bars, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
