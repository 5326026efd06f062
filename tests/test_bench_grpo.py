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


def test_the_engine_axis_pairs_each_engine_with_the_first_and_trl_with_the_first(monkeypatch):
    calls = []
    step_s = {"auto": iter([0.5, 0.4]), "hf": iter([1.0, 1.2]), "trl": iter([2.0, 0.8])}

    def fake_worker(kind, model_dir, w):
        name = w["engine"] if kind == "r1lab" else kind
        calls.append(name)
        return {"framework": kind, "step_s": next(step_s[name])}

    monkeypatch.setattr(grpo_bench, "_worker", fake_worker)
    out = grpo_bench.compare("model", {"template": "chat"}, repeats=2, have_trl=True, engines=("auto", "hf"))
    assert calls == ["auto", "hf", "trl", "trl", "hf", "auto"]
    assert [r["step_s"] for r in out["engines"]["hf"]] == [1.0, 1.2]
    assert out["step_ratio_vs_auto"] == {"hf": pytest.approx((2.0 + 3.0) / 2)}
    assert out["speedup_vs_trl"] == pytest.approx([4.0, 2.0])  # TRL against the first engine


def test_the_bench_runs_each_engine_through_the_grpo_module(tmp_path, capsys):
    out = tmp_path / "grpo.json"
    grpo_bench.main(["--no-trl", "--template", "chat", "--steps", "2", "--repeats", "1", "--engine", "auto", "hf",
                     "--micro-batch-size", "16", "--out", str(out)])
    res = json.loads(out.read_text())["chat"]
    (auto,), (hf,) = res["engines"]["auto"], res["engines"]["hf"]
    assert (auto["engine"], auto["decoder"]) == ("auto", "static KV cache")
    assert (hf["engine"], hf["decoder"]) == ("hf", "generic HF forward")
    assert res["step_ratio_vs_auto"]["hf"] == pytest.approx(hf["step_s"] / auto["step_s"])
    assert res["workload"]["micro_batch_size"] == 16
    assert "engine hf:" in capsys.readouterr().out


def test_bench_runs_the_r1lab_worker_and_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "grpo.json"
    grpo_bench.main(["--no-trl", "--template", "chat", "--steps", "2", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert list(result) == ["backbone", "engines", "chat"] and result["backbone"] == "tiny"
    assert result["engines"] == ["auto"] and "engines" not in result["chat"]
    run, = result["chat"]["r1lab"]
    w = result["chat"]["workload"]
    assert w["template"] == "chat" and w["steps"] == 2 and w["group_size"] == 8
    assert run["decoder"] == "static KV cache"
    assert run["step_s"] > 0 and 0 < run["sample_share"] < 1
    rows = w["prompts_per_step"] * w["group_size"]
    assert 0 < run["tokens_per_s"] * run["step_s"] <= rows * w["max_new_tokens"] + 1e-6
    assert set(run["bare_s"]) == {"decode", "policy_fwd_bwd", "reference_fwd"}
    assert run["overhead_vs_bare"] == pytest.approx(run["step_s"] / sum(run["bare_s"].values()))
    # MFU = 6 x parameters x trained tokens / the training pass's time / the measured matmul throughput
    assert run["parameters"] == 848_896 and run["matmul_gflops"] > 0
    expected = 6 * run["parameters"] * run["trained_tokens"] / run["bare_s"]["policy_fwd_bwd"] / 1e9
    assert run["training_pass_mfu"] == pytest.approx(expected / run["matmul_gflops"])
    assert rows * 11 < run["trained_tokens"]  # at least the prompts once and one token per completion
    printed = capsys.readouterr().out
    assert "[chat] the grpo stage's prompts" in printed and "s/step" in printed


def test_bench_rejects_a_run_without_measured_steps():
    with pytest.raises(SystemExit):
        grpo_bench.main(["--steps", "1"])


def test_the_memory_worker_measures_both_training_passes(tmp_path):
    from r1lab.bench.grpo_workers import _tiny_export, run_memory

    model = str(_tiny_export(tmp_path / "tiny"))
    w = {**grpo_bench.WORKLOAD, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "template": "chat",
         "threads": 1}
    fused, plain = run_memory(model, w, "fused"), run_memory(model, w, "plain")
    assert fused["shape"] == plain["shape"] == [4, 8] and fused["vocab"] == 479
    assert fused["pass_peak_mb"] >= 0 and plain["pass_peak_mb"] >= 0 and fused["pass_s"] > 0
    # with micro-batches the pass is one micro-batch's, as the step runs it
    assert run_memory(model, {**w, "micro_batch_size": 2}, "fused")["shape"] == [2, 8]


def test_the_micro_batch_must_divide_the_step():
    with pytest.raises(SystemExit):
        grpo_bench.main(["--no-trl", "--micro-batch-size", "5"])  # 64 sequences per step


def test_the_r1lab_worker_trains_only_the_adapters_with_lora(tmp_path):
    from r1lab.bench.grpo_workers import _tiny_export, run_r1lab

    model = str(_tiny_export(tmp_path / "tiny"))
    w = {**grpo_bench.WORKLOAD, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "template": "chat",
         "threads": 1, "steps": 2, "lora": 4}
    run = run_r1lab(model, w)
    # rank 4 on the 7 projections of 4 layers: r x (in + out) each; hidden 128, kv 64, MLP 384
    per_layer = 4 * ((128 + 128) * 2 + (128 + 64) * 2 + (128 + 384) * 3)
    assert run["trainable"] == 4 * per_layer and run["parameters"] == 848_896 + 4 * per_layer
    assert run["decoder"] == "static KV cache"  # the sampler unwraps the peft model and runs its adapters


def test_the_bf16_bench_times_both_precisions_and_keeps_fp32_logprobs(tmp_path, capsys):
    from r1lab.bench import cpu_bf16

    out = tmp_path / "bf16.json"
    res = cpu_bf16.main(["--backbone", "tiny", "--rows", "3", "--new-tokens", "5", "--repeats", "1",
                         "--out", str(out)])
    assert json.loads(out.read_text()) == res
    for part in ("decode", "train_pass"):
        assert res[f"{part}_s_fp32"] > 0 and res[f"{part}_s_bf16"] > 0
        assert res[f"{part}_speedup_bf16"] == pytest.approx(res[f"{part}_s_fp32"] / res[f"{part}_s_bf16"])
    assert res["logp_dtype_bf16"] == "torch.float32"  # the loss's log-probs stay fp32 under autocast
    # bf16 matrix products move the log-probs, but only by rounding (~1e-3 here), never by a wrong token
    assert 0 < res["logp_abs_diff_mean"] <= res["logp_abs_diff_max"] < 0.1
    assert "fp32 / bf16" in capsys.readouterr().out
