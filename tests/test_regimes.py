"""bench/regimes.py: periods come from TOML, each row is a real backtest, a jump in ts is refused."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO

from btc_quant.core.errors import DataError

spec = importlib.util.spec_from_file_location("regimes", REPO / "bench" / "regimes.py")
regimes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(regimes)


def write(tmp_path, body):
    path = tmp_path / "regimes.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n' + body)
    return path


def test_rows_come_from_the_toml_periods(tmp_path, sample_bars):
    sample_bars[:9000].to_frame().to_parquet(tmp_path / "jan.parquet")
    path = write(
        tmp_path,
        """
[[period]]
name = "first days"
file = "jan.parquet"
start = "2022-01-01"
end = "2022-01-03"
note = "quiet"

[[period]]
name = "next days"
file = "jan.parquet"
start = "2022-01-04"
end = "2022-01-07"
""",
    )
    data_dir, periods = regimes.load_periods(path)
    rows = [regimes.run_period(data_dir, p, []) for p in periods]
    assert [r["period"] for r in rows] == ["first days", "next days"]
    assert rows[0]["bars"] == 2 * 1440 and rows[0]["note"] == "quiet"
    table = regimes.table(rows)
    assert table.count("\n") == 3 and "| first days | long | through | 2880 | 2.00 |" in table


def test_a_period_with_a_jump_in_ts_is_refused(tmp_path, sample_bars):
    frame = sample_bars[:3000].to_frame().drop(index=range(1000, 1002))  # two missing minutes
    frame.to_parquet(tmp_path / "holey.parquet")
    path = write(tmp_path, '[[period]]\nname = "holey"\nfile = "holey.parquet"\nstart = "2021-12-31"\nend = "2022-01-03"\n')
    data_dir, periods = regimes.load_periods(path)
    with pytest.raises(DataError, match="separate stretches"):
        regimes.run_period(data_dir, periods[0], [])


def test_a_period_missing_a_key_names_it(tmp_path):
    path = write(tmp_path, '[[period]]\nname = "x"\nfile = "f.parquet"\n')
    with pytest.raises(SystemExit, match="period 1 lacks end, start"):
        regimes.load_periods(path)
