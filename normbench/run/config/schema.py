"""Typed configuration: the schema behind `configs/`.

Each dataclass is the schema of one config group (`norm`, `model`, `optim`, `data`, `logger`)
or of the loop settings under `train`. Hydra merges the YAML files into these schemas, so a
misspelt key or an unknown enum value fails at composition time with the valid choices listed.
`resolve` (run/config/resolve.py) then checks what a schema cannot express
(run/config/checks.py: a one-line `ConfigError` that says what to change) and converts the
composed config, once, to these dataclasses: everything below the command line takes the
typed objects.

The schemas carry types, not values: the YAML files in `configs/` are the one place where
defaults live (every field below is MISSING until a YAML file sets it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

import normbench
from normbench.model.gpt import QK_NORMS
from normbench.model.kinds import KINDS
from normbench.model.placements import PLACEMENTS


def config_dir() -> Path:
    """configs/ beside the package (source checkout, editable install) or inside it (wheel)."""
    package = Path(normbench.__file__).resolve().parent
    for candidate in (package.parent / "configs", package / "configs"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"normbench's configs/ folder was not found next to {package}")


# train.compile: each value and torch.compile's mode for it (None: not compiled).
COMPILE_MODES: dict[Any, str | None] = {
    False: None,
    True: "default",
    "default": "default",
    "reduce-overhead": "reduce-overhead",
    "max-autotune": "max-autotune",
    "max-autotune-no-cudagraphs": "max-autotune-no-cudagraphs",
}


def compile_mode(value: Any) -> str | None:
    """torch.compile's mode for a `train.compile` value (validated: run/config/checks.py)."""
    return COMPILE_MODES[value]


class Choice(str, Enum):
    """An enum whose members print as their value (in interpolations, names and logs):
    `str(member)` is the one way the code reads a choice."""

    def __str__(self) -> str:
        return str(self.value)


# Generated from the registries, so a new kind or placement needs no edit here.
NormKind = Choice("NormKind", {name: name for name in KINDS})
Placement = Choice("Placement", {name: name for name in PLACEMENTS})
QKNormKind = Choice("QKNormKind", {name: name for name in QK_NORMS})


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


class WeightDecayMode(Choice):
    coupled = "coupled"  # torch's AdamW: each update decays by lr_t x weight_decay
    independent = "independent"  # by weight_decay x lr_t / optim.lr: not scaled by the peak lr


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
    qk_norm: QKNormKind = MISSING  # none | l2 | layernorm | rmsnorm (model/gpt.py)
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
    weight_decay_mode: WeightDecayMode = MISSING  # coupled | independent (run/optim.py)
    betas: list[float] = MISSING
    eps: float = MISSING
    grad_clip: float = MISSING  # max global grad norm; 0 disables clipping
    z_loss: float = MISSING  # z x log(Z)^2 per token added to the loss (0: off; model/loss.py)
    fused: Optional[bool] = MISSING  # the fused AdamW kernel; null: where torch has one


@dataclass
class TrainLoopConfig:
    max_steps: int = MISSING
    batch_size: int = MISSING
    eval_every: int = MISSING
    log_every: int = MISSING
    eval_batch_size: Optional[int] = MISSING  # null: train.batch_size
    # torch.compile the step (model, statistics, update): false, true (torch's default
    # mode), reduce-overhead (CUDA graphs, for small launch-bound models), max-autotune
    compile: Any = MISSING
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
    vocab_limit: Optional[int] = (
        MISSING  # null: GPT-2's 50,257 tokens; K: normbench/run/data/vocab.py
    )


@dataclass
class TextDataConfig:
    """Two local UTF-8 text files: one to train on, one held out."""

    source: str = "text"
    label: str = MISSING
    train_path: str = MISSING
    val_path: str = MISSING
    documents: Documents = MISSING
    cache_dir: str = MISSING
    vocab_limit: Optional[int] = (
        MISSING  # null: GPT-2's 50,257 tokens; K: normbench/run/data/vocab.py
    )


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
class ThresholdConfig:
    enabled: bool = MISSING
    threshold: float = MISSING
    patience: int = MISSING


@dataclass
class CollapseConfig:
    enabled: bool = MISSING
    margin: float = MISSING
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
    attention_logit_growth: ThresholdConfig = field(default_factory=ThresholdConfig)
    output_logit_drift: ThresholdConfig = field(default_factory=ThresholdConfig)
    collapse: CollapseConfig = field(default_factory=CollapseConfig)


@dataclass
class DiagConfig:
    every: int = MISSING
    per_param: bool = MISSING
    from_init: bool = MISSING  # ||theta_t - theta_0|| / ||theta_0|| per block (a weight copy)
    attn_rows: int = MISSING  # sequences of each batch whose attention logits are measured
    layer_removal: bool = MISSING  # at the end, the val loss with each block removed (removal.py)


@dataclass
class ProbeConfig:
    """`normbench probe` only (configs/probe.yaml); null lists mean the selected norm/depth/seed."""

    norms: Optional[list[Placement]] = MISSING
    depths: Optional[list[int]] = MISSING
    seeds: Optional[list[int]] = MISSING
    batches: int = MISSING
    batch_size: int = MISSING
    lr: Optional[float] = MISSING
    ladder: int = MISSING  # K > 0: also the steps lr / 2 .. lr / 2^K, from the same weights


@dataclass
class NormbenchConfig:
    depth: int = MISSING
    seed: int = MISSING
    device: Device = MISSING
    precision: Precision = MISSING
    threads: Optional[int] = MISSING  # torch CPU threads per job; null: see train.yaml
    jobs_per_gpu: int = MISSING  # a multirun's jobs at once per GPU (run/gpus.py)
    # The literature claim a preset checks (its name in normbench/analysis/claims/registry.py, which
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
    if not OmegaConf.has_resolver("normbench_gpu_jobs"):  # hydra/launcher=gpus's n_jobs
        OmegaConf.register_new_resolver("normbench_gpu_jobs", gpu_jobs)


def gpu_jobs(per_gpu: Any) -> int:
    """The jobs a multirun runs at once under hydra/launcher=gpus: `jobs_per_gpu` on each
    GPU of the machine (on one without, `jobs_per_gpu` on the CPU)."""
    return max(1, torch.cuda.device_count()) * max(1, int(per_gpu))
