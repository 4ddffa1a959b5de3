import itertools
import math
import os

import pytest
import torch

from softtok.metrics import THINK_ENDS, PassAtK, SoftThinkingMetrics, pass_at_k


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(5, 2, 1, 0.4), (5, 2, 2, 0.7), (5, 0, 3, 0.0), (5, 5, 5, 1.0), (5, 3, 3, 1.0), (4, 2, 3, 1.0), (1, 1, 1, 1.0)],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 7):
        for c in range(n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute), (n, c, k)


def test_pass_at_k_large_n_is_stable():
    assert pass_at_k(1000, 1, 1) == pytest.approx(1e-3)
    assert 0.0 < pass_at_k(10_000, 3, 100) < 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (3, 1, 0), (0, 0, 1), (3, 4, 1), (3, -1, 1), (3, 1, 1.5)])
def test_pass_at_k_rejects_bad_values(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_pass_at_k_metric_across_batches():
    metric = PassAtK(ks=(1, 2))
    # problem 0: 2/4 correct, problem 1: 0/4, problem 2: 4/4; spread over batches and input types
    metric.update([0, 1, 2, 0], torch.tensor([True, False, True, False]))
    metric.update(torch.tensor([0, 1, 2, 0]), [True, False, True, False])
    metric.update([1, 1, 2, 2], torch.tensor([0, 0, 1, 1]))
    out = metric.compute()
    assert set(out) == {"pass@1", "pass@2"}
    assert out["pass@1"] == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert out["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + 0.0 + 1.0) / 3)
    metric.reset()
    metric.update([5, 5], [True, False])
    assert metric.compute() == pytest.approx({"pass@1": 0.5, "pass@2": 1.0})


def test_pass_at_k_metric_drops_duplicate_samples():
    metric = PassAtK(ks=(1,))
    metric.update([0, 0, 1], [True, False, False], sample_ids=[0, 1, 0])
    metric.update([0], [True], sample_ids=[0])  # DistributedSampler padding repeats a row
    assert metric.compute()["pass@1"] == pytest.approx(0.25)


def test_pass_at_k_metric_errors():
    with pytest.raises(ValueError, match="ks"):
        PassAtK(ks=())
    with pytest.raises(ValueError, match="ks"):
        PassAtK(ks=(0,))
    metric = PassAtK(ks=(1, 3))
    metric.update([0, 0, 1, 1, 1], [True, False, False, False, True])
    with pytest.raises(ValueError, match=r"pass@3 .*problem 0 has 2"):
        metric.compute()
    with pytest.raises(ValueError, match="one entry per sample"):
        PassAtK().update([0, 1], [True])


def test_pass_at_k_metric_merge_state_like_ddp():
    # "cat" states: merging two ranks' states (what DDP sync does) equals one metric that saw everything.
    rank0, rank1, whole = PassAtK(ks=(1, 2)), PassAtK(ks=(1, 2)), PassAtK(ks=(1, 2))
    rank0.update([0, 1], [True, False], sample_ids=[0, 0])
    rank1.update([0, 1], [False, False], sample_ids=[1, 1])
    whole.update([0, 1, 0, 1], [True, False, False, False], sample_ids=[0, 0, 1, 1])
    rank0.merge_state(rank1)
    assert rank0.compute() == pytest.approx(whole.compute())
    assert all(rank0._reductions[name].__name__ == "dim_zero_cat" for name in ("problem", "sample", "correct"))


def _result(problem, correct, think_end="think_end", sample=None, think=10, answer=5, entropy=1.0):
    out = {
        "problem": problem,
        "correct": correct,
        "think_tokens": think,
        "answer_tokens": answer,
        "mean_entropy": entropy,
        "think_end": think_end,
    }
    if sample is not None:
        out["sample"] = sample
    return out


def test_soft_thinking_metrics():
    metric = SoftThinkingMetrics(ks=(1, 2))
    metric.update(
        [
            _result(0, True, "cold_stop", sample=0, think=10, answer=2, entropy=0.5),
            _result(0, False, "budget", sample=1, think=30, answer=4, entropy=None),
        ]
    )
    metric.update(
        [
            _result(1, False, "eos", sample=0, think=20, answer=6, entropy=1.5),
            _result(1, False, "think_end", sample=1, think=20, answer=8, entropy=float("nan")),
            _result(0, True, "cold_stop", sample=0, think=10, answer=2, entropy=0.5),  # duplicate row: dropped
        ]
    )
    out = metric.compute()
    assert out["accuracy"] == pytest.approx(0.25)
    assert out["pass@1"] == pytest.approx(0.25)
    assert out["pass@2"] == pytest.approx(0.5)
    assert out["mean_think_tokens"] == pytest.approx(20.0)
    assert out["mean_answer_tokens"] == pytest.approx(5.0)
    assert out["mean_entropy"] == pytest.approx(1.0)  # None / NaN entropies are left out
    for end in ("think_end", "cold_stop", "budget", "eos"):
        assert out[f"{end}_rate"] == pytest.approx(0.25)
    assert out["switch_limit_rate"] == 0.0 and set(THINK_ENDS) == {"think_end", "cold_stop", "budget", "eos",
                                                                   "switch_limit"}
    assert "mean_latent_fraction" not in out and "mean_switch_count" not in out  # no SwiReasoning rows
    assert out["num_samples"] == 4 and out["num_problems"] == 2
    assert all(isinstance(v, float) for v in out.values())


def test_soft_thinking_metrics_swir_fields():
    """SwiReasoning rows carry latent_fraction and switch_count: means over the rows that have them."""
    metric = SoftThinkingMetrics()
    rows = [_result(0, True, "switch_limit", sample=0), _result(0, False, "eos", sample=1), _result(1, True, "budget")]
    rows[0].update(latent_fraction=0.25, switch_count=3)
    rows[1].update(latent_fraction=0.5, switch_count=1)
    rows[2].update(latent_fraction=None, switch_count=None)
    metric.update(rows)
    out = metric.compute()
    assert out["mean_latent_fraction"] == pytest.approx(0.375) and out["mean_switch_count"] == pytest.approx(2.0)
    assert out["switch_limit_rate"] == pytest.approx(1 / 3)


def test_soft_thinking_metrics_merge_state_like_ddp():
    rows = [_result(p, p == 0, "cold_stop" if p else "think_end", sample=s) for p in range(3) for s in range(2)]
    rank0, rank1, whole = SoftThinkingMetrics(), SoftThinkingMetrics(), SoftThinkingMetrics()
    rank0.update(rows[::2])
    rank1.update(rows[1::2])
    whole.update(rows)
    rank0.merge_state(rank1)
    assert rank0.compute() == pytest.approx(whole.compute())


def test_soft_thinking_metrics_errors_and_empty():
    metric = SoftThinkingMetrics()
    with pytest.raises(ValueError, match=r"think_end='stopped' is not one of"):
        metric.update([_result(0, True, "stopped")])
    with pytest.raises(ValueError, match=r"result 0 lacks key\(s\) \['think_tokens'\]"):
        metric.update([{"problem": 0, "correct": True, "answer_tokens": 1, "think_end": "eos"}])
    with pytest.raises(TypeError, match="list"):
        metric.update(_result(0, True))
    metric.update([])
    with pytest.warns(UserWarning):  # torchmetrics: compute before any update
        out = SoftThinkingMetrics().compute()
    assert math.isnan(out["accuracy"]) and math.isnan(out["pass@1"]) and out["num_samples"] == 0


def _ddp_worker(rank, world, init_file, queue):  # pragma: no cover - runs in a child process
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    metric = SoftThinkingMetrics(ks=(1, 2))
    # problem p, sample s lives on rank s; rank 1 also repeats one row (sampler padding)
    rows = [_result(p, (p + rank) % 2 == 0, sample=rank) for p in range(3)]
    if rank == 1:
        rows.append(rows[0])
    metric.update(rows)
    queue.put((rank, metric.compute()))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_soft_thinking_metrics_sync_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    init_file = os.path.join(tmp_path, "init")
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, init_file, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results[0] == results[1]
    assert results[0]["num_samples"] == 6 and results[0]["num_problems"] == 3
    assert results[0]["pass@1"] == pytest.approx(0.5)
    assert results[0]["pass@2"] == pytest.approx(1.0)


def test_wilson_interval_against_hand_values():
    """18 of 200 (the soft-prompt page's zero-shot row: 5.8-13.8%), and the edges."""
    from softtok.metrics import wilson_interval

    low, high = wilson_interval(18, 200)
    # p = 0.09, z = 1.96: centre (0.09 + 1.9208 / 200) / (1 + 3.8416 / 200) = 0.097727,
    # half 1.96 * sqrt(0.09 * 0.91 / 200 + 3.8416 / 160000) / 1.019208 = 0.040041.
    assert round(low, 4) == 0.0577 and round(high, 4) == 0.1378  # by hand: 0.097727 -+ 0.040041
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="correct=11"):
        wilson_interval(11, 10)
