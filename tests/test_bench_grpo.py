import json

import pytest

from r1lab.bench import grpo_bench


def test_compare_alternates_the_order_and_takes_the_median_of_paired_ratios(monkeypatch):
    calls = []
    step_s = {"r1lab": iter([0.5, 0.4, 0.5]), "trl": iter([1.0, 1.2, 0.5])}

    def fake_worker(kind, model_dir, w):
        calls.append(kind)
        return {"framework": kind, "step_s": next(step_s[kind])}

    monkeypatch.setattr(grpo_bench, "_worker", fake_worker)
    out = grpo_bench.compare("model", {"template": "chat"}, repeats=3, have_trl=True)
    assert calls == ["r1lab", "trl", "trl", "r1lab", "r1lab", "trl"]
    assert out["speedup_vs_trl"] == pytest.approx([2.0, 3.0, 1.0])
    assert out["median_speedup_vs_trl"] == pytest.approx(2.0)

    calls.clear()
    step_s["r1lab"] = iter([0.5])
    out = grpo_bench.compare("model", {"template": "chat"}, repeats=1, have_trl=False)
    assert calls == ["r1lab"] and "trl" not in out and "speedup_vs_trl" not in out


def test_bench_runs_the_r1lab_worker_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "grpo.json"
    grpo_bench.main(["--no-trl", "--template", "chat", "--steps", "2", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result) == ["chat"]
    run, = result["chat"]["r1lab"]
    w = result["chat"]["workload"]
    assert w["template"] == "chat" and w["steps"] == 2 and w["group_size"] == 8
    assert run["decoder"] == "static KV cache"
    assert run["step_s"] > 0 and 0 < run["sample_share"] < 1
    rows = w["prompts_per_step"] * w["group_size"]
    assert 0 < run["tokens_per_s"] * run["step_s"] <= rows * w["max_new_tokens"] + 1e-6
    assert set(run["bare_s"]) == {"decode", "policy_fwd_bwd", "reference_fwd"}
    assert run["overhead_vs_bare"] == pytest.approx(run["step_s"] / sum(run["bare_s"].values()))
    printed = capsys.readouterr().out
    assert "[chat] the grpo stage's prompts" in printed and "s/step" in printed


def test_bench_rejects_a_run_without_measured_steps():
    with pytest.raises(SystemExit):
        grpo_bench.main(["--steps", "1"])
