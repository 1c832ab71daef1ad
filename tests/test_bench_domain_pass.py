"""The domain-pass benchmark's measuring function on the tiny model (no timing assertion)."""

from __future__ import annotations

import re

import torch

from bench.perf.domain_pass import analyse, domain_setup, measure_speed, plain_steps, report, restore
from core.structure import model_linears


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: linear.weight.detach().clone() for name, linear in model_linears(model).items()}


def test_report_gives_both_tokens_per_second_and_their_ratio():
    with domain_setup("tiny-llama", "legal", 2, []) as setup:
        speed = measure_speed(setup, rounds=1)
        loaded = weights(setup["model"])
        plain_steps(setup)  # the plain step's SGD update really moves the weights...
        assert any(not torch.equal(w, loaded[n]) for n, w in weights(setup["model"]).items())
        restore(setup)  # ...and every measurement starts again from the loaded ones
        assert all(torch.equal(w, loaded[n]) for n, w in weights(setup["model"]).items())
    assert speed["windows"] == [2, 256] and speed["tokens"] == 2 * 256
    assert len(speed["seconds"]["plain"]) == len(speed["seconds"]["domain"]) == 1
    a = analyse(speed)
    assert a["ratio"] == speed["seconds"]["domain"][0] / speed["seconds"]["plain"][0]
    text = report("python -m bench.perf.domain_pass", "a machine", speed, [])
    assert f"Ratio domain pass / plain step: {a['ratio']:.2f}" in text
    rows = {row.split("|")[1].strip(): row for row in text.splitlines() if row.startswith("| ")}
    for label, kind in (("plain step (forward + backward + SGD)", "plain"), ("domain pass", "domain")):
        tokens_per_s = float(rows[label].split("|")[-2])
        assert tokens_per_s == round(512 / speed["seconds"][kind][0]) > 0
    assert not re.search("Memory against", text)
