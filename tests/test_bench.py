"""make bench's loader table arithmetic: FLOPs of a training step, the H100 rate from them, workers needed.
Nothing here is timed; the bench itself is run by hand."""

from __future__ import annotations

import pytest
import torch

from bioexp.bench import (
    ASSUMED_MFU,
    H100_BF16_DENSE_FLOPS,
    LoaderRow,
    _batch_items,
    format_loader_table,
    gpu_samples_per_s,
    train_step_flops,
    workers_needed,
)


def test_a_linear_layers_step_is_its_forward_matmul_three_times():
    batch, n_in, n_out = 4, 8, 3
    layer = torch.nn.Linear(n_in, n_out)
    forward = 2 * batch * n_in * n_out
    x = torch.randn(batch, n_in, requires_grad=True)  # backward: the input's and the weight's gradients
    assert train_step_flops(lambda: layer(x).sum()) == 3 * forward
    data = torch.randn(batch, n_in)  # a network's first layer: no gradient for the data
    assert train_step_flops(lambda: layer(data).sum()) == 2 * forward


def test_the_h100_rate_is_mfu_times_peak_over_flops_per_sample():
    assert ASSUMED_MFU == 0.3 and H100_BF16_DENSE_FLOPS == 989e12
    assert gpu_samples_per_s(0.3 * 989e12 / 1000) == pytest.approx(1000)
    assert gpu_samples_per_s(1e9, mfu=0.5, peak=1e12) == pytest.approx(500)


@pytest.mark.parametrize(("gpu", "worker", "expected"), [(900, 300, 3), (901, 300, 4), (100, 300, 1), (1, 0.5, 2)])
def test_workers_needed_rounds_up(gpu, worker, expected):
    assert workers_needed(gpu, worker) == expected


def test_a_batchs_items_are_counted_in_tuples_and_dicts():
    assert _batch_items((torch.zeros(5, 12, 250), torch.zeros(5, 3))) == 5
    assert _batch_items({"patient": ["p1", "p2"], "image_t1": torch.zeros(2, 1, 8, 8)}) == 2


def test_the_table_gives_each_studys_workers_and_says_the_rate_is_estimated():
    rows = [LoaderRow("csi", 32, 250.0, 12e9, gpu_samples_per_s(12e9), workers_needed(gpu_samples_per_s(12e9), 250)),
            LoaderRow("cardiac_dreamer", 16, 1500.0, 174e9, 1705.0, 2),
            LoaderRow("bvae", 16, 40_000.0, 848e3, 3.5e8, 8750)]
    lines = format_loader_table(rows).splitlines()
    assert lines[0].split()[:3] == ["study", "batch", "items/s/worker"]
    assert lines[1].split() == ["csi", "32", "250", "12", "24,725", "1.29", "99", "FLOP", "estimate"]
    assert lines[2].endswith("target >= 2000/s: NO")
    assert lines[3].endswith("overhead-bound: estimate far too high")
    assert "0.3 (assumed MFU) x 989e12 FLOP/s (H100 SXM bf16 dense peak)" in lines[4]
