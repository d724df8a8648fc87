"""The scenario library's table: per family and method, the means, the worst trial, the
checks' hit and false-alarm rates and what following the bet gained over a coin."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from personalize.study.library import family_table, markdown


def records(coverages: list[float], fired: list[float]) -> pd.DataFrame:
    n = len(coverages)
    ours = pd.DataFrame(
        {
            "method": "ours",
            "pehe": [0.1 + 0.01 * i for i in range(n)],
            "sd_true": 0.13,
            "coverage": coverages,
            "width": 0.4,
            "gain_capture": 0.4,
            "gain_capture_bet": 0.5,
            "value_oracle": 0.30,
            "value_best_arm": 0.26,
            "share_bet": 0.2,
            "checks_fired": fired,
        }
    )
    peer = ours.drop(columns=["checks_fired"]).assign(method="bcf", pehe=0.2)
    return pd.concat([ours, peer], ignore_index=True)


def test_the_table_reads_hits_and_false_alarms_against_failed_coverage() -> None:
    table = family_table({"u-shape": records([0.70, 0.78, 0.90, 0.88], [1, 0, 0, 1])})
    ours = table[table["method"] == "ours"].iloc[0]
    assert ours["split"] == "held-out" and ours["trials"] == 4
    assert ours["pehe"] == pytest.approx(0.115)
    assert ours["coverage_worst"] == pytest.approx(0.70)
    assert ours["checks_hit"] == pytest.approx(0.5)  # fired in 1 of the 2 trials below 0.80
    assert ours["checks_false_alarm"] == pytest.approx(0.5)  # and in 1 of the 2 that held
    # gain capture 0.1 higher over an oracle-to-best spread of 0.04, bets to a fifth of
    # patients: each patient who took the bet gained 0.1 * 0.04 / 0.2 = 0.02 (2 points)
    assert ours["bet_vs_coin"] == pytest.approx(0.02)
    peer = table[table["method"] == "bcf"].iloc[0]
    assert math.isnan(peer["checks_hit"]) if "checks_hit" in peer else True


def test_development_and_held_out_families_are_reported_apart() -> None:
    table = family_table({"u-shape": records([0.9], [0]), "threshold": records([0.85], [0])})
    text = markdown(table, "title", "command")
    assert text.index("## Development families") < text.index("## Held-out families")
    assert (
        text.index("| threshold |") < text.index("## Held-out families") < text.index("| u-shape |")
    )
