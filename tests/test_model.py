"""Masked-gene transformer: backend parity, packing invariances, training signal, save/load."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sc_fm.config import ModelConfig
from sc_fm.errors import ConfigError, InputDataError
from sc_fm.model import MaskedGeneTransformer, count_parameters
from sc_fm.model.attention import BACKENDS, PackedCells
from sc_fm.pretrained import Pretrained
from sc_fm.vocab import CLS_ID, MASK_ID, N_SPECIAL

N_GENES = 40
N_TOKENS = N_SPECIAL + N_GENES
N_BINS = 5
CONDITION_SIZES = [3, 4]
# the token transformer's mechanics (the cell-level objective has its own tests: test_cell_objective.py)
TINY = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=64, attention="math", cell_objective="none",
                   encoder_conditions=True, pooling="cls", positional=None)


def make_cells(lengths: list[int], value_encoding: str, seed: int = 0) -> list[dict]:
    """Cells per the batch contract: ``<cls>`` (value hidden) then distinct genes with values."""
    rng = np.random.default_rng(seed)
    cells = []
    for n in lengths:
        genes = N_SPECIAL + rng.choice(N_GENES, n - 1, replace=False)
        if value_encoding == "bin":
            values = rng.integers(1, N_BINS, n - 1).astype(np.float32)
        else:
            values = np.sort(rng.gamma(2.0, 0.5, n - 1).astype(np.float32))[::-1]
        cells.append({"gene_ids": np.r_[CLS_ID, genes], "values": np.r_[-1.0, values].astype(np.float32),
                      "condition_ids": rng.integers(0, CONDITION_SIZES)})
    return cells


def pack(cells: list[dict], mask_seed: int | None = None, mask_ratio: float = 0.3,
         mask_genes: bool = True) -> dict:
    """Pack cells back to back; with ``mask_seed``, hide values (and genes) at random positions."""
    gene_ids = np.concatenate([c["gene_ids"] for c in cells]).astype(np.int64)
    values = np.concatenate([c["values"] for c in cells]).astype(np.float32)
    labels = np.full_like(gene_ids, -100)
    targets = np.full_like(values, -100.0)
    if mask_seed is not None:
        rng = np.random.default_rng(mask_seed)
        masked = (rng.random(len(gene_ids)) < mask_ratio) & (gene_ids >= N_SPECIAL)
        targets[masked], values[masked] = values[masked], -1.0
        if mask_genes:
            labels[masked], gene_ids[masked] = gene_ids[masked], MASK_ID
    lengths = [len(c["gene_ids"]) for c in cells]
    return {"gene_ids": torch.from_numpy(gene_ids), "values": torch.from_numpy(values),
            "cu_seqlens": torch.tensor(np.r_[0, np.cumsum(lengths)], dtype=torch.int32),
            "max_seqlen": max(lengths),
            "condition_ids": torch.tensor(np.stack([c["condition_ids"] for c in cells]), dtype=torch.int64),
            "labels": torch.from_numpy(labels), "target_values": torch.from_numpy(targets),
            "cell_index": torch.arange(len(cells))}


def build(value_encoding: str = "continuous", seed: int = 0, **overrides) -> MaskedGeneTransformer:
    torch.manual_seed(seed)
    config = dataclasses.replace(TINY, **overrides)
    return MaskedGeneTransformer(config, N_TOKENS, value_encoding, N_BINS, CONDITION_SIZES).eval()


LENGTHS = [7, 20, 1, 13, 30]


@pytest.mark.parametrize("value_encoding", ["continuous", "bin"])
def test_sdpa_matches_math_reference(value_encoding):
    cells = PackedCells(torch.tensor([0, 5, 25, 26, 40], dtype=torch.int32), 20)
    qkv = torch.randn(40, 3, 4, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(BACKENDS["sdpa"](qkv, cells), BACKENDS["math"](qkv, cells),
                               atol=1e-6, rtol=1e-5)
    batch = pack(make_cells(LENGTHS, value_encoding), mask_seed=3)
    with torch.no_grad():
        math_out = build(value_encoding).hidden_states(batch)
        sdpa_out = build(value_encoding, attention="sdpa").hidden_states(batch)
        auto_out = build(value_encoding, attention="auto").hidden_states(batch)
    torch.testing.assert_close(sdpa_out, math_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(auto_out, sdpa_out, atol=0, rtol=0)


def one_call_per_cell(qkv: torch.Tensor, cells: PackedCells) -> torch.Tensor:
    """SDPA on each cell alone: what a run of equal-length cells in one call must equal."""
    outputs = []
    for cell in qkv.split(cells.split_sizes):
        q, k, v = (t.unsqueeze(0).transpose(1, 2) for t in cell.unbind(1))
        outputs.append(F.scaled_dot_product_attention(q, k, v)[0].transpose(0, 1))
    return torch.cat(outputs)


def test_equal_length_runs_are_one_call_and_bit_identical_per_cell(monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *rest, **kw: calls.append(q.shape[0]) or
                        sdpa(q, *rest, **kw))
    lengths = [16, 16, 16, 5, 16, 16, 9, 9, 1]
    cells = PackedCells(torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32), 16)
    assert cells.length_runs == [(16, 3), (5, 1), (16, 2), (9, 2), (1, 1)]
    # the tiny model's heads (4 of 32): at a head width of 8 the fused CPU kernel on 2 threads
    # rounds the last place of 9- and 17-token cells by how the run is split (docs/model.md)
    qkv = torch.randn(sum(lengths), 3, 4, 32, generator=torch.Generator().manual_seed(0), requires_grad=True)
    grad = torch.randn(sum(lengths), 4, 32, generator=torch.Generator().manual_seed(1))
    runs = BACKENDS["sdpa"](qkv, cells)
    assert calls == [3, 1, 2, 2, 1]  # cells per call: one call per run
    per_cell = one_call_per_cell(qkv, cells)
    assert runs.shape == (sum(lengths), 4, 32) and runs.is_contiguous()
    assert torch.equal(runs, per_cell)
    assert torch.equal(torch.autograd.grad(runs, qkv, grad)[0], torch.autograd.grad(per_cell, qkv, grad)[0])


def padded_attention(qkv: torch.Tensor, cells: PackedCells, dropout_p: float = 0.0) -> torch.Tensor:
    """What a padded model (BERT) computes: ``[B, L_max]`` slots, padded keys masked out."""
    n_cells, width = len(cells.split_sizes), cells.max_seqlen
    rows, cols = cells.cell_of_token, cells.position_in_cell
    padded = qkv.new_zeros(n_cells, width, *qkv.shape[1:]).index_put((rows, cols), qkv)
    q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)
    real_keys = (torch.arange(width) < cells.cu_seqlens.diff()[:, None])[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=real_keys).transpose(1, 2)[rows, cols]


def test_packed_equals_padded_per_token(monkeypatch):
    batch = pack(make_cells(LENGTHS, "continuous"), mask_seed=4)
    model = build(attention="sdpa")
    with torch.no_grad():
        packed = model.hidden_states(batch)
        monkeypatch.setitem(BACKENDS, "sdpa", padded_attention)
        padded = model.hidden_states(batch)
        wider = model.hidden_states({**batch, "max_seqlen": batch["max_seqlen"] + 17})
    torch.testing.assert_close(padded, packed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(wider, packed, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["math", "sdpa"])
def test_cell_output_independent_of_neighbours(attention):
    cells = make_cells(LENGTHS, "continuous", seed=5)
    model = build(attention=attention)
    with torch.no_grad():
        together = model.hidden_states(pack(cells))
        reordered = model.hidden_states(pack(cells[::-1]))
        alone = [model.hidden_states(pack([cell])) for cell in cells]
    bounds = np.r_[0, np.cumsum(LENGTHS)]
    rev_bounds = np.r_[0, np.cumsum(LENGTHS[::-1])]
    for i, cell_out in enumerate(alone):
        torch.testing.assert_close(together[bounds[i]:bounds[i + 1]], cell_out, atol=1e-5, rtol=1e-5)
        j = len(cells) - 1 - i
        torch.testing.assert_close(reordered[rev_bounds[j]:rev_bounds[j + 1]], cell_out,
                                   atol=1e-5, rtol=1e-5)


def test_condition_tokens_change_output_and_unknown_id_zero_works():
    cells = make_cells(LENGTHS, "bin", seed=6)
    batch = pack(cells, mask_seed=1)
    unknown = {**batch, "condition_ids": torch.zeros_like(batch["condition_ids"])}
    model = build("bin")
    out_known, out_unknown = model(batch), model(unknown)
    assert torch.isfinite(out_unknown["loss"])
    assert out_unknown["cell_embedding"].shape == (len(cells), TINY.d_model)
    assert not torch.allclose(out_known["cell_embedding"], out_unknown["cell_embedding"])
    no_conditions = MaskedGeneTransformer(TINY, N_TOKENS, "bin", N_BINS, [])
    bare = {**batch, "condition_ids": torch.zeros(len(cells), 0, dtype=torch.int64)}
    assert no_conditions.embed(bare).shape == (len(cells), TINY.d_model)


def test_pooling_cls_and_mean():
    batch = pack(make_cells(LENGTHS, "continuous"))
    with torch.no_grad():
        hidden = build().hidden_states(batch)
        cls_embedding = build().embed(batch)
        mean_embedding = build(pooling="mean").embed(batch)
    bounds = np.r_[0, np.cumsum(LENGTHS)]
    torch.testing.assert_close(cls_embedding, hidden[bounds[:-1]])
    expected = torch.stack([hidden[lo:hi].mean(0) for lo, hi in zip(bounds[:-1], bounds[1:])])
    torch.testing.assert_close(mean_embedding, expected)


def test_positional_encoding_follows_value_encoding():
    """Rank (continuous) input is ordered, so positions matter; bin input is a set by default."""
    cells = make_cells([12], "continuous", seed=2)
    shuffled = dict(cells[0])
    order = np.r_[0, 1 + np.random.default_rng(0).permutation(11)]
    shuffled["gene_ids"], shuffled["values"] = cells[0]["gene_ids"][order], cells[0]["values"][order]
    for value_encoding, positional, order_matters in [("continuous", None, True), ("bin", None, False),
                                                      ("bin", True, True)]:
        model = build(value_encoding, positional=positional)
        with torch.no_grad():
            original, permuted = model.embed(pack(cells)), model.embed(pack([shuffled]))
        assert torch.allclose(original, permuted, atol=1e-5) != order_matters, value_encoding


def test_loss_zero_without_masked_positions_and_gradients_reach_every_parameter():
    model = build("continuous").train()
    unmasked = model(pack(make_cells(LENGTHS, "continuous")))
    assert unmasked["gene_loss"].item() == 0.0 and unmasked["value_loss"].item() == 0.0
    out = model(pack(make_cells(LENGTHS, "continuous"), mask_seed=0))
    assert out["loss"].item() == pytest.approx(out["gene_loss"].item() + out["value_loss"].item())
    # a fresh model scores masked genes near uniformly over the vocabulary
    assert abs(out["gene_loss"].item() - np.log(N_TOKENS)) < 0.1
    out["loss"].backward()
    silent = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert silent == []


def _overfit(value_encoding: str, batch: dict) -> tuple[dict, dict]:
    model = build(value_encoding, attention="sdpa").train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(batch)
    for _ in range(60):
        optimiser.zero_grad()
        out = model(batch)
        out["loss"].backward()
        optimiser.step()
    return first, out


def test_overfits_a_tiny_batch_rank_input():
    batch = pack(make_cells([12, 18, 9, 15], "continuous", seed=8), mask_seed=2, mask_ratio=0.4)
    first, last = _overfit("continuous", batch)
    assert last["gene_loss"].item() < 0.3 * first["gene_loss"].item()
    assert last["value_loss"].item() < 0.3 * first["value_loss"].item()


def test_overfits_a_tiny_batch_bin_input():
    """Set-like bin input masks values only: identical <mask> tokens could not be told apart."""
    batch = pack(make_cells([12, 18, 9, 15], "bin", seed=8), mask_seed=2, mask_ratio=0.4,
                 mask_genes=False)
    first, last = _overfit("bin", batch)
    assert first["gene_loss"].item() == 0.0 and last["gene_loss"].item() == 0.0
    assert last["value_loss"].item() < 0.3 * first["value_loss"].item()


def test_activation_checkpointing_gives_the_same_gradients():
    batch = pack(make_cells(LENGTHS, "bin"), mask_seed=5)
    grads = []
    for ckpt in (False, True):
        model = build("bin", activation_checkpointing=ckpt).train()
        model(batch)["loss"].backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_save_load_round_trip_is_exact(tmp_path):
    model = build("bin", norm="layernorm", mlp="gelu", pooling="mean")
    with torch.no_grad():  # move weights off their initial values so a fresh init cannot pass
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path)
    loaded = MaskedGeneTransformer.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.init_args == model.init_args
    assert loaded.gene_head.decoder.weight is loaded.embedding.gene.weight
    saved, restored = model.state_dict(), loaded.state_dict()
    assert saved.keys() == restored.keys()
    assert all(torch.equal(saved[key], restored[key]) for key in saved)
    batch = pack(make_cells(LENGTHS, "bin"), mask_seed=7)
    with torch.no_grad():
        assert torch.equal(loaded(batch)["loss"], model(batch)["loss"])
    assert count_parameters(loaded) == count_parameters(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "model_config.json"]


def test_from_pretrained_bad_directory_names_the_file(tmp_path):
    with pytest.raises(InputDataError, match="model_config.json is missing"):
        MaskedGeneTransformer.from_pretrained(tmp_path)
    build().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(InputDataError, match="model.safetensors is missing"):
        MaskedGeneTransformer.from_pretrained(tmp_path)
    other = tmp_path / "other"
    build().save_pretrained(other)
    build(d_model=64).save_pretrained(tmp_path)
    shutil.copy(other / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(InputDataError, match="weights do not fit"):
        MaskedGeneTransformer.from_pretrained(tmp_path)
    with pytest.raises(InputDataError, match="tokenizer is missing"):
        Pretrained.load(other)


def test_bad_inputs_raise_specific_errors():
    with pytest.raises(ConfigError, match="value_encoding"):
        MaskedGeneTransformer(TINY, N_TOKENS, "rank", N_BINS, CONDITION_SIZES)
    with pytest.raises(ConfigError, match="not divisible"):
        build(d_model=30)
    batch = pack(make_cells(LENGTHS, "bin"))
    with pytest.raises(InputDataError, match="labels"):
        build("bin")({key: value for key, value in batch.items() if key != "labels"})
    with pytest.raises(InputDataError, match="1 condition columns, the model 2"):
        build("bin").embed({**batch, "condition_ids": batch["condition_ids"][:, :1]})
    model = build("bin", attention="flash")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="flash"):
            model.embed(batch)


def test_parameter_count_matches_the_architecture():
    model = build("continuous", tie_embeddings=False)
    d, f, L = TINY.d_model, TINY.d_ff, TINY.n_layers
    block = (d * 3 * d + 3 * d) + (d * d + d) + (d * 2 * f + 2 * f) + (f * d + d) + 2 * d
    embeddings = N_TOKENS * d + (d + d + d * d + d) + d + sum(CONDITION_SIZES) * d
    heads = (d * N_TOKENS + N_TOKENS) + (d + 1)
    assert count_parameters(model) == embeddings + L * block + d + heads
    assert count_parameters(build("continuous")) == count_parameters(model) - d * N_TOKENS


def test_varlen_without_cuda_says_what_it_needs():
    batch = pack(make_cells(LENGTHS, "continuous"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="varlen needs CUDA tensors in fp16/bf16"):
            build(attention="varlen").embed(batch)
    with pytest.raises(ConfigError, match="no attention dropout"):
        build(attention="varlen", dropout=0.1).train().embed(batch)


def _skip_without(backend: str) -> None:
    if not torch.cuda.is_available():
        pytest.skip(f"the {backend} backend needs a CUDA device (benchmarks/gpu.py runs it on one)")
    if backend == "flash":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed")
    if backend == "varlen":
        from sc_fm.model.attention import _torch_varlen

        if _torch_varlen() is None:
            pytest.skip(f"torch.nn.attention.varlen needs PyTorch >= 2.10, this is {torch.__version__}")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["varlen", "flash"])
def test_flash_backends_match_math_on_gpu(backend):
    _skip_without(backend)
    batch = {key: value.cuda() if torch.is_tensor(value) else value
             for key, value in pack(make_cells(LENGTHS, "continuous"), mask_seed=1).items()}
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        fast = build(attention=backend).cuda().hidden_states(batch).float()
        reference = build(attention="math").cuda().hidden_states(batch).float()
    torch.testing.assert_close(fast, reference, atol=3e-2, rtol=3e-2)


@pytest.mark.gpu
def test_auto_picks_varlen_on_cuda_in_bf16():
    _skip_without("varlen")
    from sc_fm.model.attention import select_backend, varlen_attention

    qkv = torch.zeros(8, 3, 2, 16, device="cuda", dtype=torch.bfloat16)
    assert select_backend("auto", qkv) is varlen_attention
    assert select_backend("auto", qkv.float()) is BACKENDS["sdpa"]
