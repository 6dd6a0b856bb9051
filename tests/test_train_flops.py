"""The FLOP count behind every MFU figure and the device peak table."""

from __future__ import annotations

import torch

from sc_fm.config import ModelConfig
from sc_fm.model import MaskedGeneTransformer
from sc_fm.train.flops import StepFlops, gpu_bf16_peak, measure_cpu_peak, peak_flops
from sc_fm.vocab import N_SPECIAL

V = N_SPECIAL + 40  # vocabulary
D, F, LAYERS, LATENT = 32, 64, 2, 8
CONDITIONS = [3, 4]
LENGTHS = [7, 20, 1, 13, 30]


def model(**overrides) -> MaskedGeneTransformer:
    config = ModelConfig(n_layers=LAYERS, d_model=D, n_heads=4, d_ff=F, cell_latent=LATENT, **overrides)
    return MaskedGeneTransformer(config, V, "continuous", 5, CONDITIONS)


def batch(masked: int) -> dict:
    cu = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    labels = torch.full((int(cu[-1]),), -100)
    labels[:masked] = N_SPECIAL
    return {"cu_seqlens": cu, "labels": labels}


def test_step_flops_is_the_documented_formula_on_real_shapes():
    block = (D * 3 * D + 3 * D) + (D * D + D) + (D * 2 * F + 2 * F) + (F * D + D) + 2 * D  # swiglu, rmsnorm
    value_encoder = (D + D) + (D * D + D) + D  # Linear(1, d), Linear(d, d), the hidden-value vector
    n = LAYERS * block + D + value_encoder  # + final norm; gene, bin and condition tables excluded
    heads = (D * V + V) + (D + 1)  # the (tied) gene matrix and the value head, on masked tokens
    decoder = (D * LATENT + LATENT) * 2 + (LATENT * V + V) + V  # mean, log-variance, rates, dispersion
    for encoder_conditions, cell_objective in ((True, "none"), (False, "nb")):
        counter = StepFlops.of(model(encoder_conditions=encoder_conditions, cell_objective=cell_objective))
        c = len(CONDITIONS) if encoder_conditions else 0
        lengths = [length + c for length in LENGTHS]
        d_cells = decoder if cell_objective == "nb" else 0
        expected = (6 * (n * sum(lengths) + heads * 11 + d_cells * len(LENGTHS))
                    + 12 * LAYERS * D * sum(length**2 for length in lengths))
        assert counter.batch(batch(masked=11)) == expected
        assert counter.step([batch(11), batch(11)]) == 2 * expected


def test_one_peak_table_and_a_measured_cpu_peak():
    assert gpu_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert gpu_bf16_peak("NVIDIA A10G") == 70e12 and gpu_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_bf16_peak("Some Future GPU") is None
    cpu = peak_flops(torch.device("cpu"))
    assert cpu == measure_cpu_peak() and 1e8 < cpu < 1e14  # measured once per thread count, then cached


def test_a_step_faster_than_the_cpu_peak_raises_the_peak():
    from sc_fm.train.flops import raised_cpu_peak

    measured = measure_cpu_peak()
    assert raised_cpu_peak(measured, measured / 2) == measured  # a slower step changes nothing
    low = measured / 1000  # as if measured while other jobs held the cores
    raised = raised_cpu_peak(low, low * 3)
    assert raised > low * 3 and raised > measured / 10  # measured again: the MFU stays below 100%
    assert raised_cpu_peak(1.0, 1e30) == 1e30  # never below what a step achieved
    assert raised_cpu_peak(100.0, 105.0) == 105.0  # timing noise: no new measurement, just the step
