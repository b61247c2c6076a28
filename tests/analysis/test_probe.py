"""`normbench probe`: values against a direct computation, and the command end to end."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch
import yaml

from normbench.run.optim import build_optimizer
from normbench.run.probe import probe_model

from support import TINY, run_cli, text_data
from support.models import gpt, optim_config

Optim = optim_config(lr=1e-3)


def batches(n=2, B=3, T=16, vocab=128):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        x = torch.randint(0, vocab, (B, T + 1), generator=g)
        out.append((x[:, :-1], x[:, 1:]))
    return out


@pytest.mark.parametrize("placement", ["pre", "post", "resi_dual"])
def test_probe_matches_a_direct_computation(placement):
    torch.manual_seed(0)
    model = gpt(placement, depth=3)
    reference = copy.deepcopy(model)
    data = batches()
    result = probe_model(model, data, Optim, lr=1e-3)
    layers = result["layers"]
    assert [r["layer"] for r in layers] == [1, 2, 3, 4]

    # hidden-state norms (mean over tokens of ||x|| and of ||x||^2) and weight-gradient norms,
    # per batch; the gradients of W2, summed over the batches
    grads = {(i, sub): [] for i in range(3) for sub in ("attn", "mlp")}
    hidden = {i: [] for i in range(4)}
    hidden_sq = {i: [] for i in range(4)}
    w2_sum = [torch.zeros_like(b.mlp.proj.weight) for b in reference.blocks]
    presum = {i: [] for i in range(3)}  # Post-LN: ||x + A(x)||^2 before the block's first norm
    for x, y in data:
        reference.zero_grad()
        T = x.shape[1]
        stream = reference.blocks[0].enter(reference.wte(x) + reference.wpe(torch.arange(T)))
        for i, block in enumerate(reference.blocks):
            main = stream[0] if isinstance(stream, tuple) else stream
            hidden[i].append(main.detach().norm(dim=-1).mean().item())
            hidden_sq[i].append(main.detach().double().square().sum(-1).mean().item())
            with torch.no_grad():
                total = main + block.attn(main)
            presum[i].append(total.double().square().sum(-1).mean().item())
            stream = block(stream)
        main = stream[0] if isinstance(stream, tuple) else stream
        hidden[3].append(main.detach().norm(dim=-1).mean().item())
        hidden_sq[3].append(main.detach().double().square().sum(-1).mean().item())
        _, loss = reference(x, y)
        loss.backward()
        for i, block in enumerate(reference.blocks):
            w2_sum[i] += block.mlp.proj.weight.grad
        for i, block in enumerate(reference.blocks):
            for sub in ("attn", "mlp"):
                # matrices: (1, out, in) with the member dimension of a run alone
                weights = [p for p in getattr(block, sub).parameters() if p.dim() == 3]
                grads[(i, sub)].append(math.sqrt(sum(p.grad.square().sum() for p in weights)))
    for i in range(4):
        assert layers[i]["hidden_norm"] == pytest.approx(sum(hidden[i]) / 2, rel=1e-5)
        assert layers[i]["hidden_sq"] == pytest.approx(sum(hidden_sq[i]) / 2, rel=1e-5)
    for i in range(3):  # ||E grad W2||: the norm of the mean, below the mean of the norms
        mean_norm = (w2_sum[i] / 2).norm().item()
        assert layers[i]["grad_mlp_out_mean"] == pytest.approx(mean_norm, rel=1e-5)
        assert layers[i]["grad_mlp_out_mean"] <= layers[i]["grad_mlp_out"] * (1 + 1e-6)
    for i in range(3):
        assert layers[i]["grad_attn"] == pytest.approx(sum(grads[(i, "attn")]) / 2, rel=1e-5)
        assert layers[i]["grad_mlp"] == pytest.approx(sum(grads[(i, "mlp")]) / 2, rel=1e-5)
    assert "grad_mlp" not in layers[3]
    if placement == "resi_dual":
        assert all(r["hidden_norm_dual"] > 0 for r in layers)
    for i in range(3):  # Lemma 2's quantity, for the post-norm placements only
        if placement == "pre":
            assert "presum_sq_attn" not in layers[i] and "presum_sq_mlp" not in layers[i]
        else:
            assert layers[i]["presum_sq_attn"] == pytest.approx(sum(presum[i]) / 2, rel=1e-5)
            assert layers[i]["presum_sq_mlp"] > 0

    # the output change after one AdamW step on the mean gradient of the batches
    fresh = copy.deepcopy(reference)
    fresh.zero_grad()
    for x, y in data:
        (fresh(x, y)[1] / len(data)).backward()
    inputs = []
    fresh.lm_head.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    with torch.no_grad():
        z0 = torch.cat([fresh(x)[0] for x, _ in data])
        h0 = torch.cat(inputs)
        optimizer = build_optimizer(fresh, Optim, torch.device("cpu"))
        optimizer.step()
        inputs.clear()
        z1 = torch.cat([fresh(x)[0] for x, _ in data])
        h1 = torch.cat(inputs)
    assert result["output_change"] == pytest.approx(
        (h1 - h0).square().mean().sqrt().item(), rel=1e-4
    )
    assert result["logit_change"] == pytest.approx(
        (z1 - z0).square().mean().sqrt().item(), rel=1e-4
    )
    assert result["loss"] == pytest.approx(math.log(128), abs=0.3)


def test_the_ladder_steps_each_size_from_the_same_initialization():
    """probe.ladder: each row is what a probe at that one learning rate gives, so every step
    starts from the initialization; the model is left updated by the largest step; and a
    small enough step is in the linear regime (halving it halves the change)."""
    torch.manual_seed(0)
    model = gpt("post", depth=2)
    fresh = copy.deepcopy(model)
    result = probe_model(model, batches(), Optim, lr=1e-3, ladder=3)
    steps = result["ladder"]
    assert [r["lr"] for r in steps] == [1e-3, 5e-4, 2.5e-4, 1.25e-4]
    assert steps[0]["output_change"] == result["output_change"]
    assert all(r["output_rms"] == result["output_rms"] for r in steps)
    for row in steps[1:]:
        alone = probe_model(copy.deepcopy(fresh), batches(), Optim, lr=row["lr"])
        assert row["output_change"] == pytest.approx(alone["output_change"], rel=1e-5)
        assert row["logit_change"] == pytest.approx(alone["logit_change"], rel=1e-5)
    stepped = copy.deepcopy(fresh)
    probe_model(stepped, batches(), Optim, lr=1e-3)
    for a, b in zip(model.parameters(), stepped.parameters(), strict=True):
        assert torch.equal(a, b)
    tiny = probe_model(copy.deepcopy(fresh), batches(), Optim, lr=1e-6, ladder=1)["ladder"]
    assert tiny[0]["output_change"] / tiny[1]["output_change"] == pytest.approx(2, rel=0.05)
    assert probe_model(copy.deepcopy(fresh), batches(), Optim, lr=1e-3)["ladder"] == []


def test_output_change_grows_with_the_learning_rate():
    changes = []
    for lr in (1e-6, 1e-4, 1e-2):
        torch.manual_seed(0)
        changes.append(probe_model(gpt("post", depth=2), batches(), Optim, lr)["output_change"])
    assert changes[0] < 1e-3 and changes[0] < changes[1] < changes[2]


PROBE = [
    "probe",
    *(o for o in TINY if not o.startswith("depth=")),
    "probe.norms=[pre,post]",
    "probe.depths=[2,3]",
    "probe.seeds=[0,1]",
    "probe.batch_size=2",
    "probe.ladder=1",
]


def test_probe_command_writes_one_row_per_layer_and_placement(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "probe"
    args = [*PROBE, *text_data(*text_files), f"hydra.run.dir={run_dir}"]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"run_dir: {run_dir}"
    assert done.stderr.splitlines()[-1].startswith(f"next: normbench compare {run_dir}")
    table = json.loads((run_dir / "probe.json").read_text())
    assert table["settings"]["seeds"] == [0, 1] and table["settings"]["norms"] == ["pre", "post"]
    keys = [(r["norm"], r["depth"], r["layer"]) for r in table["layers"]]
    expected = [(n, d, layer) for n in ("pre", "post") for d in (2, 3) for layer in range(1, d + 2)]
    assert keys == expected  # one row per placement, depth and layer (N + 1: the output)
    for row in table["layers"]:
        assert row["hidden_norm"] > 0 and row["hidden_norm_std"] >= 0
        if row["layer"] <= row["depth"]:
            assert row["grad_attn"] > 0 and row["grad_mlp"] > 0 and row["grad_mlp_std"] >= 0
    models = table["models"]
    assert [(m["norm"], m["depth"]) for m in models] == [
        (n, d) for n in ("pre", "post") for d in (2, 3)
    ]
    assert all(m["output_change"] > 0 and m["lr"] == 1e-3 for m in models)
    # the ladder: probe.lr and probe.lr / 2 per model, per seed and as means over the seeds
    steps = [(r["norm"], r["depth"], r["seed"], r["lr"]) for r in table["per_seed"]["ladder"]]
    assert steps == [
        (n, d, s, lr)
        for n in ("pre", "post")
        for d in (2, 3)
        for s in (0, 1)
        for lr in (1e-3, 5e-4)
    ]
    assert [(r["norm"], r["depth"], r["lr"]) for r in table["ladder"]] == [
        (n, d, lr) for n in ("pre", "post") for d in (2, 3) for lr in (1e-3, 5e-4)
    ]
    first = [r for r in table["per_seed"]["ladder"] if r["lr"] == 1e-3]
    by_model = {(m["norm"], m["depth"], m["seed"]): m for m in table["per_seed"]["models"]}
    for r in first:
        assert r["output_change"] == by_model[(r["norm"], r["depth"], r["seed"])]["output_change"]
    # Post-LN's stream is normalized: the hidden norm entering blocks 2.. is sqrt(d) = sqrt(32)
    post = [r for r in table["layers"] if r["norm"] == "post" and r["layer"] > 1]
    assert all(r["hidden_norm"] == pytest.approx(math.sqrt(32), rel=1e-3) for r in post)
    with open(run_dir / "probe.csv") as f:
        assert len(list(csv.DictReader(f))) == len(expected)
    md = (run_dir / "probe.md").read_text()
    assert "| pre | layernorm | 3 | 4 |" in md and "±" in md
    assert "## Output change per step size" in md and "| post | layernorm | 3 | 0.0005 |" in md
    for name in ("probe.png", "probe.svg", "probe_pre.png", "probe_post.png", "probe_post.svg"):
        assert (run_dir / name).stat().st_size > 1000, name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["probe"]["depths"] == [2, 3] and config["model"]["d_model"] == 32


def test_probe_defaults_to_the_selected_norm_and_depth(tmp_path, cli_env, text_files):
    run_dir = tmp_path / "probe"
    args = ["probe", *TINY, "norm=deepnorm", "probe.batches=1", *text_data(*text_files)]
    done = run_cli([*args, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=cli_env)
    assert done.returncode == 0, done.stderr
    table = json.loads((run_dir / "probe.json").read_text())
    assert {(r["norm"], r["depth"]) for r in table["layers"]} == {("deepnorm", 2)}
    assert table["layers"][0]["grad_mlp_std"] is None  # one seed: no spread


@pytest.mark.parametrize(
    "extra, message",
    [
        (["norm=post"], "norm=... and probe.norms=[...] both choose the norm"),
        (["-m", "seed=0,1"], "probe takes lists instead of -m"),
        (["probe.batches=0"], "probe.batches must be >= 1"),
        (["probe.ladder=-1"], "probe.ladder must be >= 0"),
        (["probe.norms=[pre,sideways]"], "probe.norms"),
        (["probe.depths=[2,0]"], "probe.depths must all be >= 1"),
        (["norm.kind=identity"], "norm=post with norm.kind=identity"),
    ],
)
def test_probe_bad_input(extra, message, tmp_path, cli_env, text_files):
    args = [*PROBE, *text_data(*text_files), *extra]
    if extra[0] == "-m":
        args = ["probe", "-m", *PROBE[1:], *text_data(*text_files), *extra[1:]]
    done = run_cli(args, cwd=tmp_path, env=cli_env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "outputs").exists()
