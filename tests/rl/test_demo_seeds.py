"""The seeds command: a finished seed is reused, and the table lands between README's markers."""

import json

import pytest

from rl.demo_seeds import (BEGIN, END, commit, improved, results_table, run_seed,
                           write_between_markers)


def summary(gain: float, se: float, **extra) -> dict:
    return {"accuracy_after_sft": 0.2, "accuracy_after_rl": 0.2 + gain, "gain": gain,
            "gain_stderr": se, "state_mementos_after_sft": 0.5, "state_mementos_after_rl": 0.9,
            "accuracy_all_carry_after_sft": 0.6, "accuracy_all_carry_after_rl": 0.65,
            "recovered_after_lossy_after_sft": 0.03, "recovered_after_lossy_after_rl": 0.0,
            "recovered_by_chance": 1 / 21,
            "minutes": 12.3, "heldout_problems": 200, **extra}


def test_improved_needs_five_points_and_two_standard_errors():
    assert improved(summary(0.12, 0.03))
    assert not improved(summary(0.04, 0.01))   # beyond 2 s.e. but under 5 points
    assert not improved(summary(0.08, 0.045))  # 5 points but within 2 s.e.


def test_table_has_a_row_per_seed_and_names_the_machine():
    table = results_table({0: summary(0.12, 0.03), 2: summary(-0.01, 0.02)}, ["rl_steps=40"])
    lines = table.splitlines()
    assert lines[2] == ("| 0 | 0.200 | 0.320 | +0.120 (0.030) | yes | 0.50 -> 0.90 | 0.60 -> 0.65 | "
                        "0.03 -> 0.00 | 12.3 min |")
    assert lines[3].startswith("| 2 |") and "| no |" in lines[3]
    assert "cores)" in table and "`rl_steps=40`" in table and "commit" in table
    assert "by chance 0.05 of the time" in table


def test_table_replaces_only_what_is_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    write_between_markers(readme, "| new |")
    assert readme.read_text() == f"# Title\nbefore\n{BEGIN}\n| new |\n{END}\nafter\n"
    readme.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="markers|demo-seeds"):
        write_between_markers(readme, "| new |")
    assert readme.read_text() == "no markers here\n"


def test_a_finished_seed_is_reused_and_other_settings_are_not(tmp_path, monkeypatch):
    out = tmp_path / "seed_0"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps(summary(0.1, 0.02, overrides=["rl_steps=5"],
                                                         commit=commit())))
    assert run_seed(0, out, ["rl_steps=5"])["gain"] == 0.1  # no demo started

    started = []
    monkeypatch.setattr("rl.demo_seeds.run_child", lambda cmd, cwd: started.append(cmd) or 3)
    with pytest.raises(SystemExit, match="seed 0 failed"):
        run_seed(0, out, ["rl_steps=6"])  # other settings: cleared and rerun
    assert started and "rl_steps=6" in started[0] and not (out / "summary.json").exists()

    # the same settings measured by other code: rerun too
    (out / "summary.json").write_text(json.dumps(summary(0.1, 0.02, overrides=["rl_steps=5"],
                                                         commit="0000000")))
    monkeypatch.setattr("rl.demo_seeds.commit", lambda: "1234567")
    with pytest.raises(SystemExit, match="seed 0 failed"):
        run_seed(0, out, ["rl_steps=5"])
    assert len(started) == 2
