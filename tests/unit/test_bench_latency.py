"""The bench's latency mode (tools/bench_latency.py): percentiles, overheads, the JSON
shape and the options, without namespaces (the netns smoke test runs it for real)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tools.bench_latency import LatencyResults, LatencySample, parse_args, percentile, to_json


def test_percentiles_are_nearest_rank_values() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0


def _sample(idle: list[float], load: list[float], sent: int = 4) -> LatencySample:
    return LatencySample(idle, load, 0.5, 3.0, 900.0, sent)


def test_overheads_are_against_plain_routing_of_the_same_run(tmp_path: Path) -> None:
    results = LatencyResults(
        ["plain", "tunneld"],
        {
            "plain": [_sample([0.1, 0.1, 0.2, 0.2], [0.1, 0.2, 0.2, 0.3])],
            "tunneld": [_sample([0.5, 0.6], [5.0, 9.0, 7.0])],  # 2 and 1 pings lost
        },
    )
    assert results.overhead("tunneld", "idle", 50) == pytest.approx(0.5 - 0.1)
    assert results.overhead("tunneld", "load", 99) == pytest.approx(9.0 - 0.3)
    args = argparse.Namespace(
        rounds=1, pings=4, ping_interval=0.01, tunneld_mode="daemon", trees={"base": tmp_path}
    )
    report = to_json(results, args, [0.0, 0.0, 0.0])
    tunneld = report["configs"]["tunneld"]
    assert tunneld["idle_p50_overhead_ms"] == pytest.approx(0.4)
    assert (tunneld["idle_lost"], tunneld["load_lost"]) == (2, 1)
    assert tunneld["load_mbps"] == 900.0 and len(tunneld["per_round"]) == 1
    assert report["mode"] == "latency" and report["trees"] == {"base": str(tmp_path)}


def test_without_plain_there_is_no_overhead() -> None:
    results = LatencyResults(["tunneld"], {"tunneld": [_sample([1.0], [2.0], sent=1)]})
    assert results.overhead("tunneld", "idle", 50) is None


def test_trees_join_the_configurations(tmp_path: Path) -> None:
    args = parse_args(["--configs", "plain,tunneld", "--tree", f"before={tmp_path}"])
    assert args.configs == ["plain", "tunneld", "before"]
    assert args.trees == {"before": tmp_path.resolve()}
    with pytest.raises(SystemExit):
        parse_args(["--tree", f"tunneld={tmp_path}"])  # a built-in configuration's name
    with pytest.raises(SystemExit):
        parse_args(["--tree", "x=/nonexistent/tree"])
    quick = parse_args(["--quick"])
    assert (quick.rounds, quick.pings) == (1, 100)
