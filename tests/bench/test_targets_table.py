"""`python -m bench targets` judges each row by issue 23's targets; connects are
judged against Nchan's rate of the same run (no Nchan row: not met)."""

from __future__ import annotations

import argparse

from bench import targets

ARGS = argparse.Namespace(streams=3000, conc=500, unicast=10000, restart_clients=5000)


def row(table: str, starts: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(f"| {starts}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_connect_rate_is_judged_against_nchan_of_the_same_run() -> None:
    res = {
        "nchan_sse_idle": {"connect_rate": 8000.0},
        "ours_connect_w1": {"connect_rate": 3300.0},
        "ours_sse_idle": {"kb_per_stream": 6.5},
    }
    table = targets.render(res, ARGS)
    connect = row(table, "connect rate, new")
    assert connect[4:6] == ["3,200", "yes"]
    sse = row(table, "idle RSS per SSE")
    assert sse[4:6] == ["6.0", "no"]
    slower = targets.render({**res, "ours_connect_w1": {"connect_rate": 3100.0}}, ARGS)
    assert row(slower, "connect rate, new")[5] == "no"


def test_without_nchan_the_connect_target_is_not_met() -> None:
    table = targets.render({"ours_connect_w1": {"connect_rate": 9000.0}}, ARGS)
    assert row(table, "connect rate, new")[4:6] == ["0.4 x Nchan (no Nchan row)", "no"]
