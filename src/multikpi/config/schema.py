"""Typed configuration. A YAML file is parsed once into these frozen objects (pydantic v2);
unknown keys are rejected. Cross-field rules (references between tasks, cycles, weights that
must name every task) live in `validate.py` so that all problems are reported together."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, field_validator

from multikpi.config.architectures import ARCHITECTURES

# The architecture names come from the catalogue, so that a new architecture is one row there.
ArchName = Literal[tuple(ARCHITECTURES)]  # type: ignore[valid-type]


class Spec(BaseModel):
    """Base of every config section: frozen, and unknown keys are errors."""

    # allow_inf_nan=False: no infinite or NaN number anywhere (a weight, an init, a learning rate)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _scalar_as_name(value: object) -> object:
    """YAML reads an unquoted 10914 (or 109_14, 1.5, on) as a number or boolean: a column name is
    text, so take the text of the scalar. When that text is not a column of the file, the data
    layer says which column YAML's number parsing hid (data/tabular.py)."""
    return str(value) if isinstance(value, int | float | bool) else value


ColumnName = Annotated[str, BeforeValidator(_scalar_as_name)]


# numeric_bins auto: the bins close the gap to trees on small tabular data (adult: +0.02 AUC) but
# widen the first layer; on the 1M-row feed they gained 0.0013 click AUC for ~30% of the speed.
NUMERIC_BINS_AUTO = 128
NUMERIC_BINS_AUTO_ROWS = 500_000


class DataSpec(Spec):
    train: str
    valid: str | None = None
    test: str | None = None
    categorical: list[ColumnName] = Field(default_factory=list)
    dense: list[ColumnName] = Field(default_factory=list)
    log1p: list[ColumnName] = Field(default_factory=list, description="dense columns to log1p before standardizing")
    min_frequency: PositiveInt = Field(1, description="ids seen fewer times in train map to out-of-vocabulary")
    numeric_bins: Annotated[int, Field(ge=0, le=4096)] | Literal["auto"] = Field("auto", description=(
        "each dense column also enters as an embedded bin index: one bin per distinct value when it has at "
        "most this many, else this many quantile bins; 0 = off; auto = 128 up to "
        "NUMERIC_BINS_AUTO_ROWS training rows, 0 above (docs/defaults.md)"))
    id_columns: list[ColumnName] = Field(default_factory=list, description="passed through by predict and rank")
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0, description=(
        "without `valid`: the share of train held out (seeded by train.seed) for early stopping and calibration"))
    group: ColumnName | None = Field(None, description="column of the request / page-view id: a held-out valid split "
                                                "keeps each group's rows on one side")
    weight: ColumnName | None = Field(None, description="column of non-negative sample weights for every task's loss "
                                                 "and the metrics")
    position: ColumnName | None = Field(None, description="column of the logged position: trains a shallow position "
                                                   "tower that multiplies the binary tasks' probabilities by the "
                                                   "position's examination (PAL), dropped at prediction")
    # Scale (docs/scale.md): datasets of any size, streamed, on several processes.
    streaming: Literal["auto", "on", "off"] = Field(
        "auto", description="on = stream train from its Parquet files in bounded memory; auto = stream when the "
                            "splits would not fit comfortably in memory")
    shuffle_buffer: int = Field(100_000, ge=1, le=1 << 26, description="streaming: rows in the shuffle buffers")
    shards: PositiveInt | Literal["auto"] = Field(
        "auto", description="streaming and torchrun: row intervals read side by side, a multiple of the processes; "
                            "auto = the least common multiple of 8 and the processes")
    max_vocab: PositiveInt | None = Field(None, description="most ids kept per categorical column (the most frequent)")
    hash_buckets: int = Field(0, ge=0, le=1 << 26, description=(
        "ids outside a vocabulary share this many hashed embedding rows per column instead of one; 0 = off"))
    eval_sample_rows: PositiveInt = Field(1_000_000, description=(
        "streaming and torchrun: rows of valid/test kept in memory for calibration and centring (metrics use "
        "every row)"))

    @field_validator("streaming", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        """YAML reads a bare on/off as a boolean; accept it as the word the user wrote."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class TaskSpec(Spec):
    kind: Literal["binary", "regression"]
    label: ColumnName
    transform: Literal["none", "log1p"] = "none"
    inputs_from: list[str] = Field(default_factory=list, description="tasks whose estimate feeds this tower")
    stop_gradient: bool = True
    upstream_as: Literal["prob", "logit"] = "prob"
    train_on: str | None = Field(None, description="binary task whose label must be 1 for this task to count")
    loss: Literal["mse", "poisson", "tweedie"] = Field(
        "mse", description="regression: mse on the standardized (transformed) target, or a log-link poisson / "
                           "tweedie loss on the raw label for counts and durations")
    tweedie_power: float = Field(1.5, gt=1.0, lt=2.0, description="loss: tweedie, the variance power p")
    clip: bool = Field(False, description="regression: clip the estimates (predict, rank, serving, metrics) to "
                                          "the range of the training labels")


class EsmmSpec(Spec):
    """ESMM (Ma et al., SIGIR 2018): `ctcvr` is trained as pCTR · pCVR on every row."""

    ctr: str = Field(description="binary task of the click label (pCTR)")
    ctcvr: str = Field(description="binary task of the conversion label over all rows; its tower is the CVR tower")


class ModelSpec(Spec):
    arch: ArchName = "shared_bottom"  # type: ignore[valid-type]
    embedding_dim: int = Field(16, gt=0, le=1024)
    shared: list[PositiveInt] = Field(default_factory=lambda: [256, 128], min_length=1,
                                      description="shared MLP widths; for mmoe/ple the widths of every expert; "
                                                  "for single_task/esmm the widths of each task's own MLP")
    tower: list[PositiveInt] = Field(default_factory=lambda: [64])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_experts: int = Field(4, gt=0, le=256, description="mmoe: experts; ple: shared experts per level")
    num_specific_experts: PositiveInt = Field(1, description="ple: task-specific experts per task and level")
    num_levels: PositiveInt = Field(1, description="ple: extraction levels (1 = a single CGC layer)")
    gate_hidden: list[PositiveInt] = Field(default_factory=list,
                                           description="mmoe/ple: hidden widths of each gate; [] = softmax(W x)")
    esmm: EsmmSpec | None = None


class UncertaintySpec(Spec):
    form: Literal["kendall", "plain"] = "kendall"
    init: float | Literal["auto"] = Field(
        "auto", description="initial log-variance s; auto = the optimum for the first batch's losses")
    update: Literal["closed_form", "gradient"] = Field(
        "closed_form", description="closed_form: s = the optimum for a moving average of each task's loss; "
        "gradient: s learned by the optimizer's loss group, as in the paper")
    decay: float = Field(0.98, gt=0.0, lt=1.0, description="closed_form: the moving average's decay per step")


class LossSpec(Spec):
    combine: Literal["sum", "weighted", "uncertainty", "gradnorm", "dwa"] = "sum"
    weights: dict[str, float] = Field(default_factory=dict)
    uncertainty: UncertaintySpec = Field(default_factory=UncertaintySpec)
    gradnorm_alpha: float = Field(1.5, ge=0.0)
    dwa_temperature: float = Field(2.0, gt=0.0)
    dwa_window: PositiveInt | None = Field(None, description="steps per DWA period; None = one epoch")


class ScheduleSpec(Spec):
    name: Literal["constant", "warmup_cosine", "step"] = "constant"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    step_size: PositiveInt = 1000
    gamma: float = Field(0.1, gt=0.0)


Beta = Annotated[float, Field(ge=0.0, lt=1.0)]  # Adam's betas: each in [0, 1)
MAX_BATCH = 1 << 24  # rows per step; any more is a typo (and cannot be indexed with int32 offsets)


DenseOptimizer = Literal["adam", "adamw", "sgd", "adagrad"]
# row by row, for the `embeddings` group only (optim/sparse.py)
SparseOptimizer = Literal["lazy_adam", "rowwise_adagrad", "sparse_sgd"]


class OptimizerSpec(Spec):
    name: DenseOptimizer | SparseOptimizer = "adam"
    lr: Annotated[float, Field(ge=0.0)] | Literal["auto"] = Field(
        "auto", description="auto = 1e-3 · sqrt(batch size / 512) for batches above 512, else 1e-3")
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    momentum: float = Field(0.0, ge=0.0)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class GroupOptimizerSpec(Spec):
    """Per-subnet override: any field left out takes the value of `optim.default`."""

    name: DenseOptimizer | SparseOptimizer | None = None
    lr: float | None = Field(None, ge=0.0)
    weight_decay: float | None = Field(None, ge=0.0)
    betas: tuple[Beta, Beta] | None = None
    momentum: float | None = Field(None, ge=0.0)
    schedule: ScheduleSpec | None = None


class OptimSpec(Spec):
    default: OptimizerSpec = Field(default_factory=OptimizerSpec)
    groups: dict[str, GroupOptimizerSpec] = Field(default_factory=dict)
    grad_clip: float | None = Field(None, gt=0.0)


class TrainSpec(Spec):
    epochs: PositiveInt | Literal["auto"] = Field(
        "auto", description="auto = early stopping on the valid split, up to max_epochs / max_steps")
    max_epochs: PositiveInt = Field(100, description="epochs: auto, the most epochs trained")
    max_steps: PositiveInt | None = Field(None, description="the most optimizer steps trained (any epochs)")
    patience: PositiveInt = Field(5, description="epochs: auto, evaluations without improvement before stopping")
    eval_every: PositiveInt | None = Field(None, description="steps between evaluations; null = every epoch")
    monitor: str = Field("auto", description="auto = mean over tasks of valid loss relative to the constant "
                                             "predictor; or valid.<task>.<metric>")
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] | Literal["auto"] = Field(
        "auto", description="auto = scaled with the training rows within [256, 4096]")
    seed: int = Field(0, ge=0, lt=2**32, description="seeds NumPy, torch and the shuffles: 0 <= seed < 2^32")
    threads: int | None = Field(None, gt=0, le=1024)
    log_every: PositiveInt = 50
    eval_batch_size: int = Field(4096, gt=0, le=MAX_BATCH)
    train_metrics_rows: PositiveInt = Field(
        200_000, description="train-split metrics are computed on at most this many evenly spaced rows")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="matmul precision; auto = bf16 autocast where the hardware has native bf16")
    progress: Literal["auto", "on", "off"] = "auto"
    checkpoint_every: PositiveInt | None = Field(
        500, description="steps between checkpoints (one is also written at each epoch end); null = none")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms for bitwise-repeatable runs")
    tensorboard: bool = Field(False, description="also write per-step and per-epoch scalars to RUN_DIR/tensorboard")

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        """YAML reads a bare on/off as a boolean; accept it as the word the user wrote."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class DecideSpec(Spec):
    """How `rank` (and the server) turns the per-task estimates into one score (docs/deciding.md)."""

    score: str | None = Field(None, description="fusion formula over task names, e.g. 'click * convert^0.5'")
    calibration: Literal["auto", "none", "isotonic", "platt"] = Field(
        "auto", description="calibrator applied to binary probabilities; auto = platt when the run has them")
    top_k: PositiveInt = Field(10, description="default cut-off of `rank` (rows flagged in_top_k)")


class RunConfig(Spec):
    data: DataSpec
    tasks: dict[str, TaskSpec]
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossSpec = Field(default_factory=LossSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    decide: DecideSpec = Field(default_factory=DecideSpec)
    out_dir: str = "runs/latest"
