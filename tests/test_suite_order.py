"""The suite's own ordering under xdist (tests/conftest.py): the longest tests start first, one per
worker, so none of them is left to run alone at the end."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import LONG_FIRST, pytest_collection_modifyitems


def _shares(items: list, workers: int) -> list[list]:
    """What worksteal hands each worker at the start: the next len(pending) // workers_left items."""
    shares, start, remaining = [], 0, len(items)
    for i in range(workers):
        size = remaining // (workers - i)
        shares.append(items[start : start + size])
        start, remaining = start + size, remaining - size
    return shares


def test_the_sweep_and_the_soaks_start_first_each_on_its_own_worker():
    ids = [f"tests/test_a{i}.py::test_{i}" for i in range(40)]
    ids[7:7] = [f"tests/test_live_soak.py::test_soak_faults_and_kills[{case}]" for case in ("binanceusdm", "bybit", "hedge")]
    ids.append("tests/test_live_sweep.py::test_seeded_fault_sweep")  # collected last, as its file name sorts
    items = [SimpleNamespace(nodeid=i) for i in ids]
    pytest_collection_modifyitems(SimpleNamespace(workerinput={"workercount": 4}), items)
    assert sorted(it.nodeid for it in items) == sorted(ids)  # nothing lost or added
    firsts = [share[0].nodeid for share in _shares(items, 4)]
    assert firsts == [
        "tests/test_live_sweep.py::test_seeded_fault_sweep",
        "tests/test_live_soak.py::test_soak_faults_and_kills[binanceusdm]",
        "tests/test_live_soak.py::test_soak_faults_and_kills[bybit]",
        "tests/test_live_soak.py::test_soak_faults_and_kills[hedge]",
    ]
    assert LONG_FIRST[:2] == ("test_live_sweep", "test_live_soak")


def test_the_cold_start_tests_share_one_worker_and_the_other_long_tests_are_dealt_around_them():
    cold = [f"tests/test_cold_start.py::test_{i}" for i in range(3)]
    ids = [f"tests/test_a{i}.py::test_{i}" for i in range(40)] + [
        *cold,
        "tests/test_data_safety.py::test_x",
        "tests/test_data_safety.py::test_y",
    ]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    pytest_collection_modifyitems(SimpleNamespace(workerinput={"workercount": 4}), items)
    assert sorted(it.nodeid for it in items) == sorted(ids)
    shares = [[it.nodeid for it in share] for share in _shares(items, 4)]
    assert shares[0][:3] == cold  # in a row: the first builds the install's cache, the next reuse it
    assert [share[0] for share in shares[1:3]] == ["tests/test_data_safety.py::test_x", "tests/test_data_safety.py::test_y"]


def test_one_process_keeps_the_collected_order():
    items = [SimpleNamespace(nodeid=f"tests/test_{name}.py::t") for name in ("a", "live_soak", "live_sweep")]
    pytest_collection_modifyitems(SimpleNamespace(), items)
    assert [it.nodeid for it in items] == ["tests/test_a.py::t", "tests/test_live_soak.py::t", "tests/test_live_sweep.py::t"]
