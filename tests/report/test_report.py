"""`cambrian report`: plots and HTML for full and partial runs, clear errors for non-runs."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from cambrian.errors import ConfigError
from cambrian.report import (arm_hypotheses, best_so_far, guardrail_series, load_run, weight_steps, write_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert data.rstrip(b"\x00")[-8:-4] == b"IEND", f"{path.name} is truncated"
    return w, h


def assert_plot(out: Path, html: str, name: str) -> None:
    path = out / name
    assert path.is_file(), f"{name} was not written"
    w, h = png_size(path)
    assert 400 <= w <= 4000 and 250 <= h <= 4000, (name, w, h)
    assert path.stat().st_size > 15_000, f"{name} is suspiciously small ({path.stat().st_size} bytes)"
    assert f'src="{name}"' in html, f"report.html does not show {name}"


@pytest.fixture(scope="module")
def full_report(full_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-full")
    path = write_report(load_run(full_run), out)
    return out, path.read_text()


def test_full_run_has_every_plot(full_report):
    out, html = full_report
    for name in ("offline_progress.png", "lineage.png", "effects_0_sat-test.png", "guardrails_0_sat-test.png",
                 "proxy_vs_online.png"):
        assert_plot(out, html, name)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        ["offline_progress.png", "lineage.png", "effects_0_sat-test.png", "guardrails_0_sat-test.png",
         "proxy_vs_online.png"])
    assert "No online results yet" not in html


def test_summary_names_champion_decisions_and_spend(full_run, full_report):
    _, html = full_report
    result = json.loads((full_run / "rollouts" / "sat-test" / "result.json").read_text())
    assert result["outcome"] == "promote", result["reason"]  # the synthetic winner is clearly better
    assert f"{result['winner']} — promoted by rollout sat-test" in html
    assert "Rollout sat-test" in html and f"promote after {result['days_run']} day(s)" in html
    for arm in result["rolled_back"]:
        assert f"{arm} rolled back" in html
    assert "LLM spend" in html and "tokens" in html and "Training spend" in html
    assert "completed all generations" in html


def test_proxy_points_tie_arms_to_hypotheses(full_run):
    from cambrian.report import proxy_vs_online

    run = load_run(full_run)
    (ro,) = run.rollouts
    treatments = [a for a in ro.arm_hypothesis]
    assert len(treatments) == 2 and all(ro.arm_hypothesis[a] == a for a in treatments)
    points = proxy_vs_online(run)
    assert {p["id"] for p in points} == set(treatments)
    for p in points:
        assert p["lo"] < p["online"] < p["hi"] and p["relative"] and p["north_star"] == "watch_minutes"


def test_offline_only_run_says_online_is_missing(offline_only_run, tmp_path):
    html = write_report(load_run(offline_only_run), tmp_path).read_text()
    assert_plot(tmp_path, html, "offline_progress.png")
    assert_plot(tmp_path, html, "lineage.png")
    assert not list(tmp_path.glob("effects_*.png")) and not (tmp_path / "proxy_vs_online.png").exists()
    assert html.count("No online results yet") == 2  # effects section and proxy-vs-online section
    assert "baseline — no rollout has promoted a treatment yet" in html


def test_running_rollout_without_result(offline_only_run, rollout_builder, tmp_path):
    """A rollout still in progress (timeline.json only) is shown up to its last look."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(offline_only_run, run)
    hid = next(h for h in load_run(run).hypotheses if h.verdict == "better").id
    rollout_builder(run / "online" / "live-exp", {hid: 0.02}, {}, days=2, finish=False)
    html = write_report(load_run(run), tmp_path / "out").read_text()
    assert_plot(tmp_path / "out", html, "effects_0_sat-test.png")
    assert "Rollout sat-test" in html and "running: last look on day 1" in html


def test_cli_end_to_end(offline_only_run, tmp_path):
    from typer.testing import CliRunner

    from cambrian.cli import app

    out = tmp_path / "cli-out"
    r = CliRunner().invoke(app, ["report", str(offline_only_run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "report.html").is_file() and r.stdout.strip() == str(out / "report.html")
    assert {p.name for p in out.glob("*.png")} == {"offline_progress.png", "lineage.png"}


def test_not_a_run_directory_fails_clearly(tmp_path):
    (tmp_path / "something.txt").write_text("hello")
    with pytest.raises(ConfigError, match="not a Cambrian run directory: it has no objects/ folder and no journal.jsonl"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="no such directory"):
        load_run(tmp_path / "missing")
    r = subprocess.run([sys.executable, "-m", "cambrian.cli", "report", str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert "is not a Cambrian run directory" in r.stderr and "hint:" in r.stderr
    assert not (tmp_path / "report").exists()


def test_corrupt_rollout_result_names_the_file(offline_only_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(offline_only_run, run)
    (run / "rollouts" / "bad").mkdir(parents=True)
    (run / "rollouts" / "bad" / "result.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"rollouts/bad/result\.json: not readable JSON"):
        load_run(run)


# ---------------------------------------------------------------------------------------------- pure parts
def test_best_so_far_is_monotone_per_direction(full_run):
    curves = best_so_far(load_run(full_run))
    assert set(curves) == {"optimizer", "architecture", "reward"}
    for persona, d in curves.items():
        values = [v for _, v in d["curve"]]
        assert values[0] == d["baseline"]
        pairs = list(zip(values, values[1:]))
        assert all((b <= a) if d["lower"] else (b >= a) for a, b in pairs), (persona, values)
        best = min if d["lower"] else max
        assert values[-1] == best([d["baseline"]] + [p[1] for p in d["points"]])


def test_weight_changes_after_a_look_apply_from_the_next_day():
    from cambrian.report import Rollout

    ro = Rollout("x", Path("."), None, [
        {"kind": "started", "day": None, "weights": {"control": 80, "t": 20}},
        {"kind": "weights", "day": 0, "weights": {"control": 80, "t": 20}},
        {"kind": "day", "day": 0},
        {"kind": "weights", "day": 1, "weights": {"control": 50, "t": 50}},  # ramp step before day 1
        {"kind": "day", "day": 1},
        {"kind": "weights", "day": 1, "weights": {"control": 100, "t": 0}},  # rollback at day 1's look
    ], None)
    assert [d for d, _ in weight_steps(ro)] == [0, 0, 1, 2]


def test_guardrail_history_when_readouts_carry_guardrails(tmp_path):
    """Per-look guardrail results (GuardrailResult.to_dict in each readout arm) plot as a history."""
    from cambrian import report_plots
    from cambrian.stats.guardrails import Guardrail, non_inferiority
    from cambrian.report import Rollout

    g = Guardrail("hate_rate", margin=0.1, higher_is_better=False)
    readouts = [{"kind": "readout", "day": d, "arms": {"t": {"effect": 0.01, "ci": [-0.1, 0.1],
                "guardrails": [non_inferiority("t", g, est, est - w, est + w).to_dict()]}}}
                for d, est, w in ((0, 0.05, 0.3), (1, 0.04, 0.15), (2, 0.03, 0.05))]
    ro = Rollout("x", tmp_path, None, readouts, None)
    series, history = guardrail_series(ro)
    assert history and [p["status"] for p in series[("hate_rate", "t")]] == ["pending", "pending", "pass"]
    report_plots.guardrails("x", series, history, tmp_path / "g.png")
    assert png_size(tmp_path / "g.png")[0] >= 400


def test_arm_tied_to_hypothesis_by_bundle_path():
    spec = {"treatments": {"sat": "/runs/r1/candidates/g002-03/seed-0/bundle", "other": "/elsewhere/bundle"}}
    assert arm_hypotheses(["control", "sat", "other", "g001-01"], spec, {"g002-03", "g001-01"}) == {
        "sat": "g002-03", "g001-01": "g001-01"}
