"""The checks run before any work: what the config schema cannot express.

`validate` checks the typed config (cross-field consistency, ranges, finiteness) and raises a
one-line `ConfigError` that says what to change. It changes nothing: the values derived from
others (the kind's option defaults, `model.vocab_size: null`, the placement's constants) are
filled in by `resolve` (run/config/resolve.py) after it, on the typed copy that resolve returns. (The schema's
own checks, of types and enum values, ran when Hydra composed the config.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from normbench.errors import ConfigError
from normbench.model.kinds import KIND_OPTIONS, KINDS, kind_options
from normbench.model.placements import PLACEMENTS
from normbench.run.config.schema import COMPILE_MODES, CollapseConfig, NormbenchConfig
from normbench.run.data import vocab


def need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(cfg: NormbenchConfig) -> None:
    """Check every part of `cfg`; raise a one-line ConfigError naming what to change."""
    check_finite(dataclasses.asdict(cfg))
    need(cfg.depth >= 1, f"depth must be >= 1 (got {cfg.depth})")
    need(0 <= cfg.seed < 2**64, f"seed must be in [0, 2^64) (got {cfg.seed})")
    need(
        cfg.threads is None or cfg.threads >= 1,
        f"threads must be >= 1, or null for automatic (got {cfg.threads})",
    )
    need(cfg.jobs_per_gpu >= 1, f"jobs_per_gpu must be >= 1 (got {cfg.jobs_per_gpu})")
    validate_model(cfg)
    validate_vocab(cfg)
    validate_optim(cfg)
    validate_loop(cfg)
    validate_norm(cfg)
    validate_divergence(cfg)
    need(cfg.diag.every >= 0, f"diag.every must be >= 0, 0 turns it off (got {cfg.diag.every})")
    need(
        cfg.diag.attn_rows >= 0,
        f"diag.attn_rows must be >= 0, 0: every sequence (got {cfg.diag.attn_rows})",
    )
    if cfg.logger.backend == "wandb" and cfg.logger.mode is not None:
        modes = ("online", "offline", "disabled")
        need(cfg.logger.mode in modes, f"logger.mode must be one of {', '.join(modes)} or null")


def validate_model(cfg: NormbenchConfig) -> None:
    m = cfg.model
    need(m.d_model >= 1 and m.n_heads >= 1, "model.d_model and model.n_heads must be >= 1")
    need(
        m.d_model % m.n_heads == 0,
        f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; pick "
        f"n_heads from {', '.join(str(h) for h in range(1, 65) if m.d_model % h == 0)}",
    )
    need(m.context >= 1, f"model.context must be >= 1 (got {m.context})")
    need(m.head_chunk >= 1, f"model.head_chunk must be >= 1 (got {m.head_chunk})")
    need(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1) (got {m.dropout})")


def validate_optim(cfg: NormbenchConfig) -> None:
    o, t = cfg.optim, cfg.train
    need(math.isfinite(o.lr) and o.lr > 0, f"optim.lr must be > 0 (got {o.lr})")
    need(0 <= o.min_lr <= o.lr, f"optim.min_lr must be in [0, optim.lr] (got {o.min_lr})")
    need(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0 (got {o.warmup_steps})")
    need(t.max_steps >= 1, f"train.max_steps must be >= 1 (got {t.max_steps})")
    need(
        o.warmup_steps <= t.max_steps,
        f"optim.warmup_steps={o.warmup_steps} exceeds train.max_steps={t.max_steps}; "
        "lower the warmup or raise max_steps",
    )
    need(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    need(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        f"optim.betas must be two numbers in [0, 1) (got {list(o.betas)})",
    )
    need(o.eps > 0, f"optim.eps must be > 0 (got {o.eps})")
    need(o.grad_clip >= 0, f"optim.grad_clip must be >= 0, 0 disables it (got {o.grad_clip})")
    need(
        math.isfinite(o.z_loss) and o.z_loss >= 0,
        f"optim.z_loss must be >= 0, 0 disables it (got {o.z_loss})",
    )


def validate_loop(cfg: NormbenchConfig) -> None:
    t = cfg.train
    modes = ", ".join(str(m).lower() for m in COMPILE_MODES)
    need(
        isinstance(t.compile, (bool, str)) and t.compile in COMPILE_MODES,
        f"train.compile must be one of {modes} (got {t.compile})",
    )
    need(t.batch_size >= 1, f"train.batch_size must be >= 1 (got {t.batch_size})")
    need(t.eval_every >= 1, f"train.eval_every must be >= 1 (got {t.eval_every})")
    need(t.log_every >= 1, f"train.log_every must be >= 1 (got {t.log_every})")
    need(
        t.ckpt_every >= 0, f"train.ckpt_every must be >= 0, 0: only at the end (got {t.ckpt_every})"
    )
    need(
        t.ckpt_every_min is None or t.ckpt_every_min >= 0,
        f"train.ckpt_every_min must be >= 0 minutes, 0 or null: off (got {t.ckpt_every_min})",
    )
    need(t.ckpt_keep >= 1, f"train.ckpt_keep must be >= 1 (got {t.ckpt_keep})")
    need(
        str(t.resume).strip() != "",
        "train.resume must be auto, never or the path of a checkpoint (got an empty value)",
    )
    need(
        t.eval_batch_size is None or t.eval_batch_size >= 1,
        f"train.eval_batch_size must be >= 1 (got {t.eval_batch_size})",
    )


def validate_vocab(cfg: NormbenchConfig) -> None:
    """`data.vocab_limit` in [2, 50257] or null; an explicit `model.vocab_size` must hold the
    data's vocabulary and, with a limit, not exceed it rounded up to a multiple of 64 (outputs
    that never occur would only cost time and change what the loss means). Null is filled in
    by `resolve` (run/config/resolve.py)."""
    limit, m = vocab.limit_of(cfg.data), cfg.model
    need(
        limit is None or limit >= 2,
        "data.vocab_limit must be >= 2 (the K-1 most frequent training tokens plus one "
        f"shared id), or null for the full vocabulary (got {limit})",
    )
    need(
        limit is None or limit <= vocab.GPT2_VOCAB,
        f"data.vocab_limit={limit} is larger than the GPT-2 vocabulary ({vocab.GPT2_VOCAB} "
        f"tokens); give at most {vocab.GPT2_VOCAB}, or null for the full vocabulary",
    )
    if m.vocab_size is None:
        return
    size, padded = vocab.data_vocab(limit), vocab.model_vocab(limit)
    where = "the GPT-2 vocabulary" if limit is None else f"data.vocab_limit={limit}"
    need(
        m.vocab_size >= size,
        f"model.vocab_size={m.vocab_size} is smaller than {where} ({size} tokens); set "
        f"model.vocab_size=null (it follows the data: {padded})",
    )
    also = f" or a value in [{limit}, {padded}]" if limit is not None and padded > limit else ""
    need(
        limit is None or m.vocab_size <= padded,
        f"model.vocab_size={m.vocab_size} does not fit data.vocab_limit={limit}: the model "
        f"would train outputs that never occur; set model.vocab_size=null (it follows the "
        f"data: {padded}){also}",
    )


def check_finite(values: dict[str, Any]) -> None:
    """Every number in the config (as plain values) is finite: no setting means anything at
    inf or NaN (and a NaN passes every range check written as a comparison)."""

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            path = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix[:-1]}[{key}]"
            if isinstance(value, (dict, list)):
                walk(value, f"{path}.")
            elif isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{path} must be a finite number (got {value})")

    walk(values, "")


def validate_divergence(cfg: NormbenchConfig) -> None:
    """The detectors' settings: each threshold in its range, with the key to change."""
    d = cfg.divergence
    s, g, st = d.spike, d.grad_explosion, d.stagnation
    checks = [
        (d.history >= 0, f"divergence.history must be >= 0, 0 keeps none (got {d.history})"),
        (
            math.isfinite(d.penalty) and d.penalty > 0,
            f"divergence.penalty must be a finite number > 0 (got {d.penalty})",
        ),
        (
            s.rel_margin is not None or s.abs_margin is not None or not s.enabled,
            "divergence.spike needs rel_margin or abs_margin (or divergence.spike.enabled=false)",
        ),
        (
            (s.rel_margin is None or s.rel_margin > 0)
            and (s.abs_margin is None or s.abs_margin > 0),
            "divergence.spike.rel_margin and abs_margin must be > 0 (or null: unused)",
        ),
        (s.patience >= 1, f"divergence.spike.patience must be >= 1 (got {s.patience})"),
        (0 <= s.ema < 1, f"divergence.spike.ema must be in [0, 1) (got {s.ema})"),
        (g.factor > 1, f"divergence.grad_explosion.factor must be > 1 (got {g.factor})"),
        (g.window >= 1, f"divergence.grad_explosion.window must be >= 1 (got {g.window})"),
        (
            1 <= g.min_steps,
            f"divergence.grad_explosion.min_steps must be >= 1 (got {g.min_steps})",
        ),
        (g.patience >= 1, f"divergence.grad_explosion.patience must be >= 1 (got {g.patience})"),
        (0 < st.rel < 1, f"divergence.stagnation.rel must be in (0, 1) (got {st.rel})"),
        (0 <= st.after <= 1, f"divergence.stagnation.after must be in [0, 1] (got {st.after})"),
        (st.min_steps >= 1, f"divergence.stagnation.min_steps must be >= 1 (got {st.min_steps})"),
        (st.window >= 1, f"divergence.stagnation.window must be >= 1 (got {st.window})"),
    ]
    for name in ("attention_logit_growth", "output_logit_drift"):
        c = getattr(d, name)
        checks += [
            (c.threshold > 0, f"divergence.{name}.threshold must be > 0 (got {c.threshold})"),
            (c.patience >= 1, f"divergence.{name}.patience must be >= 1 (got {c.patience})"),
        ]
    for ok, message in checks:
        need(ok, message)
    validate_collapse(d.collapse)


def validate_collapse(c: CollapseConfig) -> None:
    """`divergence.collapse`'s settings (run/monitor/collapse.py)."""
    checks = [
        (
            math.isfinite(c.margin) and c.margin >= 0,
            f"divergence.collapse.margin must be a finite number of nats >= 0 (got {c.margin})",
        ),
        (0 <= c.after <= 1, f"divergence.collapse.after must be in [0, 1] (got {c.after})"),
        (c.min_steps >= 1, f"divergence.collapse.min_steps must be >= 1 (got {c.min_steps})"),
        (c.window >= 1, f"divergence.collapse.window must be >= 1 (got {c.window})"),
    ]
    for ok, message in checks:
        need(ok, message)


def validate_probe(cfg: NormbenchConfig) -> None:
    """`normbench probe`'s settings (the model, data and norm are checked by `validate`)."""
    p = cfg.probe
    checks = [
        (p.batches >= 1, f"probe.batches must be >= 1 (got {p.batches})"),
        (p.batch_size >= 1, f"probe.batch_size must be >= 1 (got {p.batch_size})"),
        (p.lr is None or p.lr > 0, f"probe.lr must be > 0 or null (got {p.lr})"),
        (p.ladder >= 0, f"probe.ladder must be >= 0 (got {p.ladder})"),
        (not p.norms or len(set(p.norms)) == len(p.norms), "probe.norms lists a placement twice"),
        (p.depths is None or all(d >= 1 for d in p.depths), "probe.depths must all be >= 1"),
        (p.norms is None or len(p.norms) > 0, "probe.norms is empty; give placements or null"),
        (p.depths is None or len(p.depths) > 0, "probe.depths is empty; give depths or null"),
        (p.seeds is None or len(p.seeds) > 0, "probe.seeds is empty; give seeds or null"),
    ]
    for ok, message in checks:
        need(ok, message)


def norm_options(cfg: NormbenchConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kind's options (null: the kind's default; those it lacks stay null) and the
    placement's own options of `cfg.norm`."""
    n = cfg.norm
    Kind, Block = KINDS[str(n.kind)], PLACEMENTS[str(n.name)]
    kind = kind_options(str(n.kind), **{k: getattr(n, k) for k in Kind.options})
    return kind, {k: getattr(n, k) for k in Block.options}


def validate_norm(cfg: NormbenchConfig) -> None:
    """The placement, its options and the kind, against each other and the model."""
    n = cfg.norm
    placement, kind = str(n.name), str(n.kind)
    Block, Kind = PLACEMENTS[placement], KINDS[kind]
    for option in KIND_OPTIONS:
        need(
            getattr(n, option) is None or option in Kind.options,
            f"norm.{option} has no meaning for norm.kind={kind}; remove it, or pick a kind "
            f"that has it: {', '.join(k for k, c in KINDS.items() if option in c.options)}",
        )
    options, own = norm_options(cfg)
    eps, alpha0 = options.get("eps"), options.get("alpha0")
    need(eps is None or eps > 0, f"norm.eps must be > 0 (got {eps})")
    need(
        alpha0 is None or (math.isfinite(alpha0) and alpha0 > 0),
        f"norm.alpha0 must be > 0 (got {alpha0})",
    )
    Block.check_options(**own)
    validate_combination(cfg)
    if n.constants:  # resolve computes them, once; the model takes them from the config
        raise ConfigError(
            f"norm.constants are derived from depth and the placement's options "
            f"({Block.constants(cfg.depth, **own)}); remove the override"
        )


def validate_combination(cfg: NormbenchConfig) -> None:
    """The kind, the block type and the batch size that a placement or kind rules out."""
    n, m = cfg.norm, cfg.model
    placement, kind = str(n.name), str(n.kind)
    Block = PLACEMENTS[placement]
    need(
        not (kind == "identity" and Block.normalizes_stream),
        f"norm={placement} with norm.kind=identity leaves its residual stream unnormalized, "
        "which that placement relies on; use norm=none for a no-normalization control, or "
        "another norm.kind",
    )
    need(
        kind == "identity" or Block.uses_norm,
        f"norm={placement} has no norms, so norm.kind={kind} would be ignored; leave "
        "norm.kind=identity (its default)",
    )
    parallel_ok = [name for name, c in PLACEMENTS.items() if c.parallel]
    need(
        str(m.block) != "parallel" or Block.parallel,
        f"model.block=parallel is defined for pre-norm style placements only "
        f"({', '.join(parallel_ok)}), not norm={placement}; use model.block=sequential",
    )
    need(
        kind != "batchnorm" or cfg.train.batch_size >= 2,
        "norm.kind=batchnorm takes statistics over the batch; train.batch_size must be >= 2 "
        f"(got {cfg.train.batch_size})",
    )
    need(
        str(m.qk_norm) != "l2" or m.context >= 2,
        "model.qk_norm=l2 needs model.context >= 2 (its scale starts at log2(T^2 - T))",
    )
