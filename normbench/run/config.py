"""Typed configuration: the schema behind `configs/`, and the checks run before any work.

Each dataclass is the schema of one config group (`norm`, `model`, `optim`, `data`, `logger`)
or of the loop settings under `train`. Hydra merges the YAML files into these schemas, so a
misspelt key or an unknown enum value fails at composition time with the valid choices listed.
`validate()` then checks what a schema cannot express (cross-field consistency) and turns it
into a one-line `ConfigError` that says what to change.

The schemas carry types, not values: the YAML files in `configs/` are the one place where
defaults live (every field below is MISSING until a YAML file sets it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from normbench.errors import ConfigError
from normbench.model import KINDS, PLACEMENTS
from normbench.model.kinds import KIND_OPTIONS, kind_options
from normbench.run import vocab

__all__ = ["ConfigError", "NormbenchConfig", "config_dir", "register_configs", "validate"]


def config_dir() -> Path:
    """configs/ beside the package (source checkout, editable install) or inside it (wheel)."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "configs", package / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"normbench's configs/ folder was not found next to {package}")


class Choice(str, Enum):
    """An enum whose members print as their value (in interpolations, names and logs)."""

    def __str__(self) -> str:
        return str(self.value)


# Generated from the registries, so a new kind or placement needs no edit here.
NormKind = Choice("NormKind", {name: name for name in KINDS})
Placement = Choice("Placement", {name: name for name in PLACEMENTS})


class BlockType(Choice):
    sequential = "sequential"  # x = x + A(.); x = x + M(.)
    parallel = "parallel"  # x = x + A(Norm(x)) + M(Norm(x)) (GPT-J, PaLM); pre-norm style only


class Init(Choice):
    gpt2 = "gpt2"  # N(0, 0.02); residual output projections N(0, 0.02/sqrt(2N))
    xavier = "xavier"  # Xavier-uniform linear weights (2002.04745's analysis)


class Schedule(Choice):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"
    inverse_sqrt = "inverse_sqrt"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Precision(Choice):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Documents(Choice):
    file = "file"  # each file (or split) is one document
    wikitext_articles = "wikitext_articles"  # a new document at each ` = Title = ` line


@dataclass
class NormConfig:
    name: Placement = MISSING  # set by the chosen `norm=<placement>` file
    kind: NormKind = MISSING
    # The kind's options; null: the kind's default. Setting one the kind lacks is an error.
    # (None is "unset", not a default value: the defaults are the kind's, in norm/kinds.py.)
    eps: Optional[float] = None  # layernorm/scalenorm/batchnorm 1e-5, rmsnorm 1e-6
    bias: Optional[bool] = None  # the shift b of layernorm, dyt, batchnorm (default true)
    alpha0: Optional[float] = None  # dyt's initial alpha (default 0.5)
    # Derived at start from depth and the placement's options (read-only; logged).
    constants: dict[str, Any] = field(default_factory=dict)


def placement_schema(name: str) -> type[NormConfig]:
    """The schema of `norm` for a placement with options of its own (Mix-LN's `mix_ratio`,
    ResiDual's `dual_scale`): NormConfig plus the options its class declares (`options`),
    so that a new placement needs no edit here. Stored as `<placement>_norm_schema`."""
    Block = PLACEMENTS[name]
    fields = [(key, typ, field(default=MISSING)) for key, typ in Block.options.items()]
    return make_dataclass(f"{Block.__name__}NormConfig", fields, bases=(NormConfig,))


@dataclass
class ModelConfig:
    d_model: int = MISSING
    n_heads: int = MISSING
    context: int = MISSING
    dropout: float = MISSING
    init: Init = MISSING
    block: BlockType = MISSING
    qk_norm: bool = MISSING  # QKNorm (2010.04245): L2-normalized q, k and a learned scale
    # null: the data's vocabulary rounded up to a multiple of 64 (faster matmuls): GPT-2's
    # 50,257 -> 50,304, or data.vocab_limit=4000 -> 4032; filled in by validate()
    vocab_size: Optional[int] = MISSING
    bias: bool = MISSING  # biases in linear layers, as in GPT-2
    fused_head: bool = MISSING  # LM head + loss fused and chunked (normbench/model/loss.py)
    head_chunk: int = MISSING  # tokens per chunk of the fused head


@dataclass
class OptimConfig:
    lr: float = MISSING
    warmup_steps: int = MISSING
    schedule: Schedule = MISSING
    min_lr: float = MISSING
    weight_decay: float = MISSING
    betas: list[float] = MISSING
    eps: float = MISSING
    grad_clip: float = MISSING  # max global grad norm; 0 disables clipping
    fused: Optional[bool] = MISSING  # the fused AdamW kernel; null: where torch has one


@dataclass
class TrainLoopConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING
    eval_every: int = MISSING
    log_every: int = MISSING
    eval_batch_size: Optional[int] = MISSING  # null: train.batch_size
    compile: bool = MISSING  # torch.compile the model (compiled once per process, cached)
    ckpt_every: int = MISSING  # checkpoint every N steps (0: only at the end)
    ckpt_every_min: Optional[float] = MISSING  # and N minutes after the last one (0, null: off)
    ckpt_keep: int = MISSING  # the newest N checkpoints are kept
    resume: str = MISSING  # auto | never | the path of a checkpoint


@dataclass
class HubDataConfig:
    """A dataset on the Hugging Face hub (or a local copy laid out like it), via `datasets`."""

    source: str = "hub"
    label: str = MISSING  # a short name for run names and records
    path: str = MISSING  # `load_dataset(path, subset)`: hub id or local directory
    subset: Optional[str] = MISSING
    revision: Optional[str] = MISSING
    train_split: str = MISSING
    val_split: str = MISSING
    text_column: str = MISSING
    documents: Documents = MISSING
    cache_dir: str = MISSING
    vocab_limit: Optional[int] = MISSING  # null: GPT-2's 50,257 tokens; K: normbench/run/vocab.py


@dataclass
class TextDataConfig:
    """Two local UTF-8 text files: one to train on, one held out."""

    source: str = "text"
    label: str = MISSING
    train_path: str = MISSING
    val_path: str = MISSING
    documents: Documents = MISSING
    cache_dir: str = MISSING
    vocab_limit: Optional[int] = MISSING  # null: GPT-2's 50,257 tokens; K: normbench/run/vocab.py


@dataclass
class WikitextFilesConfig(TextDataConfig):
    """The official WikiText-2 split files in the folder `dir` (configs/data/wikitext2_files.yaml)."""

    dir: str = MISSING


@dataclass
class WandbConfig:
    backend: str = "wandb"
    project: str = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING  # null: the multirun's sweep directory, or no group
    job_type: str = MISSING
    name: Optional[str] = MISSING  # null: a name built from the axes, e.g. pre-layernorm-d6-lr1e-3
    tags: list[str] = MISSING
    mode: Optional[str] = MISSING  # online|offline|disabled; WANDB_MODE in the environment wins


@dataclass
class NoLoggerConfig:
    backend: str = "none"


# stop: end the run as `diverged` at the first event; continue: record the event, train on.
# (Functional form: `continue` is a keyword.)
Action = Choice("Action", {"stop": "stop", "continue": "continue"})


@dataclass
class SpikeConfig:
    enabled: bool = MISSING
    rel_margin: Optional[float] = MISSING
    abs_margin: Optional[float] = MISSING
    patience: int = MISSING
    ema: float = MISSING


@dataclass
class GradExplosionConfig:
    enabled: bool = MISSING
    factor: float = MISSING
    window: int = MISSING
    min_steps: int = MISSING
    patience: int = MISSING


@dataclass
class StagnationConfig:
    enabled: bool = MISSING
    rel: float = MISSING
    after: float = MISSING
    min_steps: int = MISSING
    window: int = MISSING


@dataclass
class DivergenceConfig:
    action: Action = MISSING
    history: int = MISSING
    penalty: float = MISSING
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    grad_explosion: GradExplosionConfig = field(default_factory=GradExplosionConfig)
    stagnation: StagnationConfig = field(default_factory=StagnationConfig)


@dataclass
class DiagConfig:
    every: int = MISSING
    per_param: bool = MISSING


@dataclass
class ProbeConfig:
    """`normbench probe` only (configs/probe.yaml); null lists mean the selected norm/depth/seed."""

    norms: Optional[list[Placement]] = MISSING
    depths: Optional[list[int]] = MISSING
    seeds: Optional[list[int]] = MISSING
    batches: int = MISSING
    batch_size: int = MISSING
    lr: Optional[float] = MISSING


@dataclass
class NormbenchConfig:
    depth: int = MISSING
    seed: int = MISSING
    device: Device = MISSING
    precision: Precision = MISSING
    threads: Optional[int] = MISSING  # torch CPU threads per job; null: see train.yaml
    # The literature claim a preset checks (its name in normbench/analysis/claims.py, which
    # checks it: this layer does not know the claims).
    claim: Optional[str] = MISSING
    norm: NormConfig = field(default_factory=NormConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    data: Any = MISSING  # HubDataConfig or TextDataConfig, chosen by `data=...`
    logger: Any = MISSING  # WandbConfig or NoLoggerConfig, chosen by `logger=...`
    divergence: DivergenceConfig = field(default_factory=DivergenceConfig)
    diag: DiagConfig = field(default_factory=DiagConfig)
    probe: Any = None  # ProbeConfig under `normbench probe`; null under `normbench train`


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; the YAML files name them in their defaults.

    They are stored outside the groups (`/norm_schema`, not `norm/norm_schema`), so they are
    not offered as choices such as `norm=norm_schema`.
    """
    cs = ConfigStore.instance()
    cs.store(name="normbench_schema", node=NormbenchConfig)
    cs.store(name="norm_schema", node=NormConfig)
    for name, Block in PLACEMENTS.items():
        if Block.options:
            cs.store(name=f"{name}_norm_schema", node=placement_schema(name))
    cs.store(name="model_schema", node=ModelConfig)
    cs.store(name="optim_schema", node=OptimConfig)
    cs.store(name="hub_schema", node=HubDataConfig)
    cs.store(name="text_schema", node=TextDataConfig)
    cs.store(name="files_schema", node=WikitextFilesConfig)
    cs.store(name="wandb_schema", node=WandbConfig)
    cs.store(name="none_schema", node=NoLoggerConfig)
    cs.store(name="divergence_schema", node=DivergenceConfig)
    cs.store(name="diag_schema", node=DiagConfig)
    cs.store(name="probe_schema", node=ProbeConfig)


def validate(cfg: DictConfig) -> None:
    """Check cross-field consistency; raise a one-line ConfigError naming what to change.

    Also fills in derived values (the norm's eps, model.vocab_size) so the saved config is the
    one that ran.
    """
    m, o, t = cfg.model, cfg.optim, cfg.train

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} is required; set {missing[0]}=<value>")
    check_finite(cfg)
    need(cfg.depth >= 1, f"depth must be >= 1 (got {cfg.depth})")
    need(0 <= cfg.seed < 2**64, f"seed must be in [0, 2^64) (got {cfg.seed})")
    need(
        cfg.threads is None or cfg.threads >= 1,
        f"threads must be >= 1, or null for automatic (got {cfg.threads})",
    )
    need(m.d_model >= 1 and m.n_heads >= 1, "model.d_model and model.n_heads must be >= 1")
    need(
        m.d_model % m.n_heads == 0,
        f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}; pick "
        f"n_heads from {', '.join(str(h) for h in range(1, 65) if m.d_model % h == 0)}",
    )
    need(m.context >= 1, f"model.context must be >= 1 (got {m.context})")
    need(m.head_chunk >= 1, f"model.head_chunk must be >= 1 (got {m.head_chunk})")
    need(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1) (got {m.dropout})")
    validate_vocab(cfg)
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
    validate_norm(cfg)
    validate_divergence(cfg)
    need(cfg.diag.every >= 0, f"diag.every must be >= 0, 0 turns it off (got {cfg.diag.every})")
    if cfg.logger.backend == "wandb" and cfg.logger.mode is not None:
        modes = ("online", "offline", "disabled")
        need(cfg.logger.mode in modes, f"logger.mode must be one of {', '.join(modes)} or null")


def validate_vocab(cfg: DictConfig) -> None:
    """`data.vocab_limit` in [2, 50257] or null; `model.vocab_size` follows it: null is
    filled in (the data's vocabulary rounded up to a multiple of 64), an explicit value must
    hold the data's vocabulary and, with a limit, not exceed that rounded value (outputs that
    never occur would only cost time and change what the loss means)."""
    limit, m = vocab.limit_of(cfg.data), cfg.model
    if limit is not None and limit < 2:
        raise ConfigError(
            "data.vocab_limit must be >= 2 (the K-1 most frequent training tokens plus one "
            f"shared id), or null for the full vocabulary (got {limit})"
        )
    if limit is not None and limit > vocab.GPT2_VOCAB:
        raise ConfigError(
            f"data.vocab_limit={limit} is larger than the GPT-2 vocabulary "
            f"({vocab.GPT2_VOCAB} tokens); give at most {vocab.GPT2_VOCAB}, or null for the "
            "full vocabulary"
        )
    size, padded = vocab.data_vocab(limit), vocab.model_vocab(limit)
    if m.vocab_size is None:
        m.vocab_size = padded
    where = "the GPT-2 vocabulary" if limit is None else f"data.vocab_limit={limit}"
    if m.vocab_size < size:
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} is smaller than {where} ({size} tokens); set "
            f"model.vocab_size=null (it follows the data: {padded})"
        )
    if limit is not None and m.vocab_size > padded:
        also = f" or a value in [{limit}, {padded}]" if padded > limit else ""
        raise ConfigError(
            f"model.vocab_size={m.vocab_size} does not fit data.vocab_limit={limit}: the model "
            f"would train outputs that never occur; set model.vocab_size=null (it follows the "
            f"data: {padded}){also}"
        )


def check_finite(cfg: DictConfig) -> None:
    """Every number in the config is finite: no setting means anything at inf or NaN (and a
    NaN passes every range check written as a comparison)."""

    def walk(node: Any, prefix: str) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            path = f"{prefix}{key}" if isinstance(node, dict) else f"{prefix[:-1]}[{key}]"
            if isinstance(value, (dict, list)):
                walk(value, f"{path}.")
            elif isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{path} must be a finite number (got {value})")

    walk(OmegaConf.to_container(cfg, resolve=True), "")


def validate_divergence(cfg: DictConfig) -> None:
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
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def validate_probe(cfg: DictConfig) -> None:
    """`normbench probe`'s settings (the model, data and norm are checked by `validate`)."""
    p = cfg.probe
    checks = [
        (p.batches >= 1, f"probe.batches must be >= 1 (got {p.batches})"),
        (p.batch_size >= 1, f"probe.batch_size must be >= 1 (got {p.batch_size})"),
        (p.lr is None or p.lr > 0, f"probe.lr must be > 0 or null (got {p.lr})"),
        (not p.norms or len(set(p.norms)) == len(p.norms), "probe.norms lists a placement twice"),
        (p.depths is None or all(d >= 1 for d in p.depths), "probe.depths must all be >= 1"),
        (p.norms is None or len(p.norms) > 0, "probe.norms is empty; give placements or null"),
        (p.depths is None or len(p.depths) > 0, "probe.depths is empty; give depths or null"),
        (p.seeds is None or len(p.seeds) > 0, "probe.seeds is empty; give seeds or null"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def validate_norm(cfg: DictConfig) -> None:
    """Check the placement, kind and block type against each other; fill in derived values.

    The kind's options are resolved (null -> the kind's default; an option the kind lacks
    stays null and may not be set), and `norm.constants` gets the placement's constants at
    this depth, so the logged config shows e.g. DeepNorm's alpha and beta.
    """
    n, m = cfg.norm, cfg.model
    placement, kind = str(n.name), str(n.kind)
    Block, Kind = PLACEMENTS[placement], KINDS[kind]

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for option in KIND_OPTIONS:
        need(
            n[option] is None or option in Kind.options,
            f"norm.{option} has no meaning for norm.kind={kind}; remove it, or pick a kind "
            f"that has it: {', '.join(k for k, c in KINDS.items() if option in c.options)}",
        )
    for option, value in kind_options(kind, **{k: n[k] for k in Kind.options}).items():
        n[option] = value
    need(n.eps is None or n.eps > 0, f"norm.eps must be > 0 (got {n.eps})")
    need(
        n.alpha0 is None or (math.isfinite(n.alpha0) and n.alpha0 > 0),
        f"norm.alpha0 must be > 0 (got {n.alpha0})",
    )
    Block.check_options(**{k: n[k] for k in Block.options})
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
        not m.qk_norm or m.context >= 2,
        "model.qk_norm=true needs model.context >= 2 (its scale starts at log2(T^2 - T))",
    )
    options = {k: n[k] for k in Block.options}
    constants = Block.constants(cfg.depth, **options)
    need(
        not n.constants or OmegaConf.to_container(n.constants) == constants,
        f"norm.constants are derived from depth and the placement's options "
        f"({constants}); remove the override",
    )
    n.constants = constants


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as plain Python values (enums as their names)."""
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)  # type: ignore[return-value]
