"""Cross-field checks of a parsed RunConfig. Each check returns problems instead of raising,
so that a file with several mistakes is reported in one go."""
from __future__ import annotations

import re

from multikpi.config.architectures import ARCHITECTURES, arch_model_keys
from multikpi.config.architectures import subnet_names as arch_subnet_names
from multikpi.config.schema import RunConfig, TaskSpec
from multikpi.formula import FUNCTIONS, FormulaError, parse_formula

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Metrics `train.monitor: valid.<task>.<metric>` may name, by task kind, with their direction
# (+1: higher is better). `relative_loss` is the task's valid loss over that of the constant predictor.
MONITOR_METRICS: dict[str, dict[str, int]] = {
    "binary": {"auc": 1, "logloss": -1, "relative_loss": -1},
    "regression": {"rmse": -1, "mae": -1, "pearson": 1, "relative_loss": -1,
                   "rmse_log1p": -1, "mae_log1p": -1, "pearson_log1p": 1},
}


def validate_config(config: RunConfig) -> list[str]:
    """All cross-field problems of `config`, as messages (empty when the config is valid)."""
    return (
        _check_tasks(config)
        + _check_columns(config)
        + _check_loss(config)
        + _check_model(config)
        + _check_optim(config)
        + _check_decide(config)
        + _check_train(config)
    )


def parse_monitor(config: RunConfig) -> tuple[str, str, int] | None:
    """`valid.<task>.<metric>` -> (task, metric, direction); None for `auto`. Assumes it is valid."""
    if config.train.monitor == "auto":
        return None
    _, task, metric = config.train.monitor.split(".", 2)
    return task, metric, MONITOR_METRICS[config.tasks[task].kind][metric]


def _check_train(config: RunConfig) -> list[str]:
    train, data, problems = config.train, config.data, []
    monitor = train.monitor
    if monitor != "auto":
        parts = monitor.split(".", 2)
        task = config.tasks.get(parts[1]) if len(parts) == 3 and parts[0] == "valid" else None
        allowed = MONITOR_METRICS[task.kind] if task is not None else {}
        if task is None or parts[2] not in allowed:
            names = ", ".join(f"valid.<task>.{m}" for m in sorted(set().union(*MONITOR_METRICS.values())))
            problems.append(f"`train.monitor` must be auto or valid.<task>.<metric> with a task among "
                            f"{list(config.tasks)} and a metric of its kind ({names}). Got {monitor!r}")
        elif parts[2].endswith("_log1p") and task.transform != "log1p":
            problems.append(f"`train.monitor` {monitor!r} needs `tasks.{parts[1]}.transform: log1p`")
    if train.epochs == "auto" and data.valid is None and data.valid_fraction == 0:
        problems.append("`train.epochs: auto` stops early on a validation split: set `data.valid`, or "
                        "`data.valid_fraction` > 0, or an integer `train.epochs`. Got valid_fraction 0")
    return problems


def upstream_tasks(config: RunConfig, name: str) -> list[str]:
    """The tasks whose output `name` reads: its `inputs_from`, and for ESMM's CTCVR task the CTR task."""
    upstream = list(config.tasks[name].inputs_from)
    esmm = config.model.esmm
    if config.model.arch == "esmm" and esmm is not None and name == esmm.ctcvr and esmm.ctr not in upstream:
        upstream.append(esmm.ctr)
    return upstream


def find_cycle(config: RunConfig) -> list[str] | None:
    """A cycle of `inputs_from` edges (and ESMM's CTR -> CTCVR edge), as task names from and back
    to the same task, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for upstream in upstream_tasks(config, name):
            if upstream not in config.tasks:
                continue
            if state.get(upstream) == 1:
                return path[path.index(upstream):] + [upstream]
            if upstream not in state and (cycle := visit(upstream)):
                return cycle
        state[name] = 2
        path.pop()
        return None

    for name in config.tasks:
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def _check_tasks(config: RunConfig) -> list[str]:
    problems = []
    if not config.tasks:
        problems.append("`tasks` must name at least one task")
    names = sorted(config.tasks)
    for name, task in config.tasks.items():
        if not TASK_NAME.fullmatch(name):  # not match(): `$` also matches before a final newline
            problems.append(f"task name must be a letter or _ followed by letters, digits or _. Got {name!r}")
        for upstream in task.inputs_from:
            if upstream not in config.tasks:
                problems.append(f"`tasks.{name}.inputs_from` must name tasks among {names}. Got {upstream!r}")
        problems += _check_task_loss(name, task)
        if task.train_on is not None:
            parent = config.tasks.get(task.train_on)
            if parent is None or task.train_on == name:
                others = [n for n in names if n != name]
                problems.append(f"`tasks.{name}.train_on` must be another task among {others}. Got {task.train_on!r}")
            elif parent.kind != "binary":
                problems.append(f"`tasks.{name}.train_on` must name a binary task. "
                                f"Got {task.train_on!r} ({parent.kind})")
    cycle = find_cycle(config)
    if cycle:
        problems.append(f"`inputs_from` edges must not form a cycle. Got {' -> '.join(cycle)}")
    return problems + _check_train_on_cycle(config) + _check_task_names(config)


# Names a task may not have: the formula's functions (a formula could not name the task) and the
# columns that `rank` adds to its output next to the tasks' estimates.
RESERVED_TASK_NAMES = (*FUNCTIONS, "score", "rank", "in_top_k", "baseline")


def _check_task_names(config: RunConfig) -> list[str]:
    problems = []
    reserved = sorted(set(config.tasks) & set(RESERVED_TASK_NAMES))
    if reserved:
        problems.append(f"task names must not be one of {list(RESERVED_TASK_NAMES)} (formula functions and the "
                        f"columns rank writes). Got {reserved}")
    clash = sorted(set(config.tasks) & set(config.data.id_columns))
    if clash:
        problems.append(f"task names must differ from `data.id_columns`: predict writes both as columns. "
                        f"Got {clash} in both")
    return problems


def _check_train_on_cycle(config: RunConfig) -> list[str]:
    """`train_on` chains must end: click <- convert <- refund, never back to a task on the chain."""
    for start in config.tasks:
        chain, name = [start], config.tasks[start].train_on
        while name is not None and name in config.tasks and name not in chain:
            chain.append(name)
            name = config.tasks[name].train_on
        if name is not None and name == start:
            return [f"`train_on` must not form a cycle. Got {' -> '.join(chain + [start])}"]
    return []


def _check_task_loss(name: str, task: TaskSpec) -> list[str]:
    if task.clip and task.kind != "regression":
        return [f"`tasks.{name}.clip` is for regression tasks (a probability is already in [0, 1]). "
                f"Got kind {task.kind!r}"]
    if task.loss == "mse":
        return []
    if task.kind != "regression":
        return [f"`tasks.{name}.loss` {task.loss} is for regression tasks; a binary task uses log loss. "
                f"Got kind {task.kind!r}"]
    if task.transform != "none":
        return [f"`tasks.{name}.loss: {task.loss}` models the raw label with a log link: its `transform` must be "
                f"none. Got {task.transform!r}"]
    return []


def _check_columns(config: RunConfig) -> list[str]:
    data = config.data
    problems = []
    for kind, columns in (("categorical", data.categorical), ("dense", data.dense)):
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            problems.append(f"`data.{kind}` lists columns more than once: {duplicates}")
    both = sorted(set(data.categorical) & set(data.dense))
    if both:
        problems.append(f"columns must be either categorical or dense, not both. Got {both}")
    stray = sorted(set(data.log1p) - set(data.dense))
    if stray:
        problems.append(f"`data.log1p` must name columns of `data.dense`. Got {stray}")
    if not data.categorical and not data.dense:
        problems.append("`data.categorical` and `data.dense` are both empty: the model needs input features")
    labels = {t.label for t in config.tasks.values()}
    leaked = sorted(labels & (set(data.categorical) | set(data.dense)))
    if leaked:
        problems.append(f"label columns must not also be input features. Got {leaked}")
    for key, column in (("weight", data.weight), ("group", data.group)):
        if column is not None and column in labels | set(data.categorical) | set(data.dense):
            problems.append(f"`data.{key}` must be a column that is neither a feature nor a label. Got {column!r}")
    if data.position is not None and data.position in set(data.categorical) | set(data.dense) | labels:
        problems.append(f"`data.position` must not also be an input feature or a label: its tower is dropped at "
                        f"prediction, so that estimates are position-free. Got {data.position!r}")
    return problems


def _check_loss(config: RunConfig) -> list[str]:
    loss, names = config.loss, sorted(config.tasks)
    problems = []
    if loss.combine == "weighted":
        missing = sorted(set(names) - set(loss.weights))
        if missing:
            problems.append(f"`loss.weights` must give a weight for every task {names}. Missing {missing}")
    elif loss.weights:
        problems.append(f"`loss.weights` is only used with `loss.combine: weighted`. Got combine {loss.combine!r}")
    if loss.uncertainty.update == "closed_form" and loss.uncertainty.init != "auto":
        problems.append("`loss.uncertainty.init` is where a learned log-variance starts: it needs "
                        f"`loss.uncertainty.update: gradient`. Got init {loss.uncertainty.init} "
                        "with update closed_form")
    unknown = sorted(set(loss.weights) - set(names))
    if unknown:
        problems.append(f"`loss.weights` must name tasks among {names}. Got {unknown}")
    negative = sorted(t for t, w in loss.weights.items() if w < 0)
    if negative:
        problems.append(f"`loss.weights` must be >= 0. Got negative weights for {negative}")
    return problems


def _check_model(config: RunConfig) -> list[str]:
    model, problems = config.model, []
    values, defaults = model.model_dump(), type(model)().model_dump()
    for key, archs in arch_model_keys().items():
        if model.arch not in archs and values[key] != defaults[key]:
            problems.append(f"`model.{key}` is only used with `model.arch` {' or '.join(archs)}. "
                            f"Got arch {model.arch!r}")
    if not ARCHITECTURES[model.arch].shares_a_layer and config.loss.combine == "gradnorm":
        problems.append(f"`loss.combine` must not be gradnorm with `model.arch: {model.arch}`: GradNorm balances "
                        f"gradient norms on a layer every task shares, and {model.arch} shares none. Got 'gradnorm'")
    if model.arch == "esmm":
        problems += _check_esmm(config)
    return problems


def _check_esmm(config: RunConfig) -> list[str]:
    esmm = config.model.esmm
    binary = sorted(t for t, spec in config.tasks.items() if spec.kind == "binary")
    if esmm is None:
        return [f"`model.esmm` is required with `model.arch: esmm`: give {{ctr: <task>, ctcvr: <task>}} "
                f"naming two binary tasks among {binary}. Got none"]
    problems = []
    for key, name in (("ctr", esmm.ctr), ("ctcvr", esmm.ctcvr)):
        if name not in binary:
            problems.append(f"`model.esmm.{key}` must name a binary task among {binary}. Got {name!r}")
    if esmm.ctr == esmm.ctcvr:
        problems.append(f"`model.esmm.ctcvr` must be another task than `model.esmm.ctr`. Got {esmm.ctcvr!r} twice")
    task = config.tasks.get(esmm.ctcvr)
    if task is not None and task.train_on is not None:
        problems.append(f"`tasks.{esmm.ctcvr}.train_on` must be unset with `model.arch: esmm`, which trains "
                        f"{esmm.ctcvr!r} as pCTR * pCVR on every row. Got {task.train_on!r}")
    return problems


def subnet_names(config: RunConfig) -> list[str]:
    """The optimizer groups this config's model has: `embeddings`, shared subnets, heads, `loss`."""
    return arch_subnet_names(config.model.arch, list(config.tasks)) + (["position"] if config.data.position else [])


def _check_optim(config: RunConfig) -> list[str]:
    allowed = subnet_names(config)
    unknown = sorted(set(config.optim.groups) - set(allowed))
    problems = []
    if unknown:
        problems.append(f"`optim.groups` keys must be among {allowed}. Got {unknown}")
    sparse = ("lazy_adam", "rowwise_adagrad", "sparse_sgd")
    if config.optim.default.name in sparse:
        problems.append(f"`optim.default.name` {config.optim.default.name} updates the embedding table row by row: "
                        f"set it as `optim.groups.embeddings.name`, not as the default of every group")
    wrong = sorted(g for g, spec in config.optim.groups.items() if spec.name in sparse and g != "embeddings")
    if wrong:
        problems.append(f"`optim.groups.<group>.name` lazy_adam / rowwise_adagrad / sparse_sgd are for the "
                        f"`embeddings` group only. Got them for {wrong}")
    loss_group = config.optim.groups.get("loss")
    if (loss_group is not None and config.loss.combine == "uncertainty"
            and config.loss.uncertainty.update == "closed_form"):
        problems.append("`optim.groups.loss` trains learned loss weights, but `loss.uncertainty.update: closed_form` "
                        "sets them to their optimum: set `loss.uncertainty.update: gradient` to train them")
    if loss_group is not None and loss_group.weight_decay not in (None, 0.0):
        problems.append(f"`optim.groups.loss.weight_decay` must be 0: the loss weights are not decayed. "
                        f"Got {loss_group.weight_decay}")
    return problems


def _check_decide(config: RunConfig) -> list[str]:
    decide, tasks = config.decide, list(config.tasks)
    problems = []
    if decide.score is not None:
        try:
            formula = parse_formula(decide.score, tasks, kind="tasks")
        except FormulaError as err:
            problems.append(f"`decide.score`: {err.detail}")
        else:
            if not formula.names:
                problems.append(f"`decide.score` must use at least one of the tasks {tasks}. Got {decide.score!r}")
    if decide.calibration in ("isotonic", "platt"):
        if config.data.valid is None:
            problems.append(f"`decide.calibration: {decide.calibration}` needs `data.valid`: the calibrators are "
                            f"fitted on the valid split")
        if not any(t.kind == "binary" for t in config.tasks.values()):
            problems.append(f"`decide.calibration: {decide.calibration}` needs a binary task; use none")
    return problems
