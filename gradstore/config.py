"""Every setting of every command, defined once, as composable frozen dataclasses.

A command's config holds smaller configs: the model (``ModelConfig``), how the warm-up
trains (``TrainConfig``), how gradients are computed and stored (``GradientConfig``), how
a selection chooses (``SelectConfig``) and how Ray is used (``RayConfig``). ``gradstore
run`` holds all of them, no field declared twice.

Each field carries its command-line help in its metadata (:func:`option`); the CLI's flags,
defaults and help are generated from them (``gradstore.cli.flags``). A flag is named after
its field (``proj_dim`` -> ``--proj-dim``), and one flag sets every field of that name in
the command's config tree: ``run --seed 3`` seeds the warm-up, the projection and the
random baseline, as the Python call ``RunConfig.from_options(seed=3, ...)`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from gradstore.budget import parse_budget
from gradstore.choices import (
    FEATURES,
    GRAD_TYPES,
    HIDDEN_TYPE,
    METHODS,
    PART_SCORES,
    PROJECTION_KINDS,
    PURSUITS,
    SCAN_MODES,
    TARGET_MODES,
    VECTOR_DTYPES,
)
from gradstore.errors import GradstoreError

T = TypeVar("T")


def option(default: Any = MISSING, *, help: str, flag: str | None = None,  # noqa: A002
           parse: Callable[[str], Any] | None = None, choices: tuple | None = None,
           metavar: str | None = None, repeat: bool = False, negate: bool = False,
           many: bool = False, positional: bool = False, cli: bool = True,
           default_factory: Any = MISSING) -> Any:
    """A config field with its command-line description.

    ``flag`` overrides the flag name; ``parse`` turns the flag's text into the value;
    ``repeat``: the flag may be given several times (a tuple of values); ``many``: one flag
    takes several values; ``negate``: a boolean whose flag (e.g. ``--quiet``) sets it to
    False; ``positional``: an argument without a flag; ``cli=False``: Python only.
    """
    meta = {"help": help, "flag": flag, "parse": parse, "choices": choices,
            "metavar": metavar, "repeat": repeat, "negate": negate, "many": many,
            "positional": positional, "cli": cli}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def leaves(cls_or_obj: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                               Any]]:
    """``(path, dataclass field)`` of every non-config field of a config tree, depth first."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    for f in fields(cls):
        sub = _config_type(f)
        if sub is not None:
            yield from leaves(sub, (*prefix, f.name))
        else:
            yield (*prefix, f.name), f


def _config_type(f) -> type | None:
    """The config class a field holds, if it holds one."""
    t = f.type if isinstance(f.type, type) else CONFIGS.get(str(f.type))
    return t if t is not None and is_dataclass(t) else None


def from_options(cls: type[T], **options: Any) -> T:
    """A ``cls`` config from flat keyword options: each sets every field of its name in the
    tree; the other fields keep their defaults. An unknown name is refused."""
    known = {path[-1] for path, _ in leaves(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise GradstoreError(
            f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    return _build(cls, options)


def _build(cls: type[T], options: dict[str, Any]) -> T:
    values = {}
    for f in fields(cls):
        sub = _config_type(f)
        if sub is not None:
            values[f.name] = _build(sub, options)
        elif f.name in options:
            values[f.name] = _normalise(f, options[f.name])
    try:
        return cls(**values)
    except TypeError as exc:  # a required option is missing
        raise GradstoreError(f"{cls.__name__}: {exc}") from None


def _normalise(f, value: Any) -> Any:
    """Lists become tuples (configs are frozen and hashable), one string given to a
    repeatable option a tuple of it; paths become strings."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, str) and (f.name == "params" or f.metadata.get("repeat")):
        value = (value,)  # one value of a repeatable option, given alone
    if isinstance(value, tuple) and f.name in ("checkpoints", "targets"):
        value = tuple(str(v) for v in value)
    if isinstance(value, Path):
        value = str(value)
    return value


def with_options(cfg: T, **options: Any) -> T:
    """A copy of ``cfg`` with every field of each given name replaced, wherever it sits."""
    known = {path[-1] for path, _ in leaves(cfg)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise GradstoreError(f"{type(cfg).__name__} has no option "
                             f"{', '.join(map(repr, unknown))}")
    return _replace_leaves(cfg, options)


def _replace_leaves(cfg: T, options: dict[str, Any]) -> T:
    values = {}
    for f in fields(cfg):
        current = getattr(cfg, f.name)
        if _config_type(f) is not None:
            values[f.name] = _replace_leaves(current, options)
        elif f.name in options:
            values[f.name] = _normalise(f, options[f.name])
    return replace(cfg, **values)


def check_choices(cfg: Any) -> None:
    """Every field of a config tree that declares its ``choices`` holds one of them (each of
    its values, for a field that takes several): the declaration is the only list, for
    Python callers as for the command line, where argparse checks the same tuple."""
    for path, f in leaves(cfg):
        choices = f.metadata.get("choices")
        if not choices:
            continue
        value = leaf_value(cfg, path)
        for v in value if isinstance(value, tuple) else (value,):
            if v not in choices:
                flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
                _bad(f"{flag} {v!r} is not one of {', '.join(map(str, choices))}")


def settings_of(cfg: Any) -> dict[str, Any]:
    """Every leaf of a config tree by name (a name shared by several leaves: the first)."""
    out: dict[str, Any] = {}
    for path, _ in leaves(cfg):
        out.setdefault(path[-1], leaf_value(cfg, path))
    return out


def leaf_value(cfg: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` (as :func:`leaves` gives it) in a config tree."""
    for part in path:
        cfg = getattr(cfg, part)
    return cfg


def parse_size(text: str) -> int:
    """Bytes from ``8GB``, ``512MB``, ``1.5g`` or a plain number."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        value = -1.0
    if not value >= 0 or not math.isfinite(value):
        _bad(f"memory size {text!r} is not a size such as 8GB or 512MB")
    return int(value)


def lora_layer_indices(spec: str, num_layers: int | None) -> list[int]:
    """The layers ``--lora-layers`` names (``top:N`` or ``10,11``); with ``num_layers`` None,
    only the spec's form is checked."""
    text = spec.strip().lower()
    try:
        if text.startswith("top:"):
            n = int(text[4:])
            if n < 1:
                raise ValueError
            if num_layers is None:
                return []
            if n > num_layers:
                _bad(f"--lora-layers {spec!r} asks for {n} layers but the model has {num_layers}")
            return list(range(num_layers - n, num_layers))
        layers = sorted({int(t) for t in text.split(",") if t.strip()})
        if not layers or layers[0] < 0:
            raise ValueError
    except ValueError:
        _bad(f"--lora-layers {spec!r} is not top:N or a comma list of layer indices (e.g. 10,11)")
    if num_layers is not None and layers[-1] >= num_layers:
        _bad(f"--lora-layers {spec!r}: the model has layers 0..{num_layers - 1} only")
    return layers


def _bad(msg: str) -> None:
    raise GradstoreError(msg)


def _positive(**named: int | None) -> None:
    for flag, value in named.items():
        if value is not None and value < 1:
            _bad(f"--{flag.replace('_', '-')} {value} must be a positive integer")


# ------------------------------------------------------------------ the parts


@dataclass(frozen=True)
class ModelConfig:
    """The model gradients are taken of, and where it runs."""

    model: str = option(help="Hugging Face id or local model directory")
    gguf_file: str | None = option(None, help="GGUF weights file inside --model's directory")
    device: str = option("auto", help="cpu, cuda, cuda:N or auto")
    dtype: str = option("auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="model weights (auto: float32 on CPU, bfloat16 on CUDA)")


@dataclass(frozen=True)
class TrainConfig:
    """How the warm-up trains LoRA (and how ``evaluate`` fine-tunes)."""

    fraction: float = option(0.05, help="share of the pool trained on, drawn with --seed")
    num_examples: int | None = option(None, help="train on this many examples instead")
    epochs: int = option(4, help="epochs; one checkpoint is saved after each")
    lr: float = option(2e-5, help="peak learning rate (LESS's warm-up uses 2e-5)")
    warmup_ratio: float = option(0.03, help="share of steps with a rising lr, then linear decay")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    batch_size: int = option(8, help="examples per forward pass")
    grad_accum: int = option(1, help="forward passes per optimizer step")
    max_grad_norm: float = option(1.0, help="gradient clipping (0: none)")
    max_length: int = option(2048, help="tokens per example (longer ones lose their oldest "
                                        "context, never their response)")
    lora_r: int = option(8, help="LoRA rank")
    lora_alpha: int = option(32, help="LoRA alpha")
    lora_dropout: float = option(0.0, help="LoRA dropout")
    lora_targets: tuple[str, ...] | None = option(
        None, parse=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
        help="LoRA modules, e.g. q_proj,v_proj (default q/k/v/o projections when present, "
             "else all linear layers)")
    lora_layers: str | None = option(None, help="LoRA only on these layers: top:N or e.g. "
                                                "20,21,22")
    seed: int = option(0, help="seed of the subset, the LoRA init and the data order")
    gradient_checkpointing: bool = option(
        False, help="recompute activations: less memory for long sequences, slower")
    weight_field: str | None = option(
        None, help="row field with a loss weight per example (e.g. an export's weight "
                   "column; scaled to mean 1)")

    def validate(self) -> None:
        if not 0 < self.fraction <= 1:
            _bad(f"--fraction {self.fraction} must be in (0, 1], e.g. 0.05")
        _positive(epochs=self.epochs, batch_size=self.batch_size, grad_accum=self.grad_accum,
                  lora_r=self.lora_r, max_length=self.max_length,
                  num_examples=self.num_examples)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            _bad(f"--lr {self.lr} must be a positive number, e.g. 2e-5")
        if not 0 <= self.warmup_ratio < 1:
            _bad(f"--warmup-ratio {self.warmup_ratio} must be in [0, 1)")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.lora_alpha <= 0:
            _bad("--weight-decay and --max-grad-norm must be >= 0 and --lora-alpha > 0")
        if not 0 <= self.lora_dropout < 1:
            _bad(f"--lora-dropout {self.lora_dropout} must be in [0, 1)")
        if self.lora_layers is not None:
            lora_layer_indices(self.lora_layers, None)


@dataclass(frozen=True)
class GradientConfig:
    """How per-example gradients are computed, projected and stored."""

    grad_type: str | tuple[str, ...] | None = option(
        None, metavar="TYPE[,TYPE]",
        help="adam, sgd or sign, or several (adam,sgd; the first is the table's own). Default "
             "with optimizer state: adam for a pool, adam,sgd for a target (GTP reads the "
             "pool's type, LESS sgd); without: sgd")
    projection: str = option("rademacher", choices=PROJECTION_KINDS,
                             help="how gradients are projected")
    proj_dim: int = option(8192, help="projected dims")
    seed: int = option(0, help="projection (and fresh-LoRA) seed; pool and targets must "
                               "share it")
    nnz: int | None = option(None, help="nonzeros per input coordinate of countsketch")
    max_length: int = option(2048, help="tokens per example")
    batch_size: int = option(8, help="examples per gradient batch")
    lora_r: int = option(8, help="rank of a fresh LoRA (no --checkpoint)")
    lora_alpha: int = option(32, help="alpha of a fresh LoRA")
    lora_targets: tuple[str, ...] | None = option(
        None, parse=lambda t: tuple(x.strip() for x in t.split(",") if x.strip()),
        help="modules of a fresh LoRA, e.g. q_proj,v_proj")
    vector_dtype: str = option("float16", choices=VECTOR_DTYPES, help="how vectors are stored")
    write_rows: int = option(512, help="rows per commit: at most this much work is lost on "
                                       "a crash")
    flush_seconds: float = option(60.0, cli=False, help="commit at least this often")

    def requested_types(self) -> tuple[str, ...] | None:
        """``grad_type`` as a tuple of type names (None: the default for the kind)."""
        if self.grad_type is None:
            return None
        if isinstance(self.grad_type, str):
            return tuple(t.strip() for t in self.grad_type.split(","))
        return tuple(self.grad_type)

    def validate(self) -> None:
        types = self.requested_types()
        if types is not None:
            wrong = [t for t in types if t not in GRAD_TYPES]
            if wrong or not types or len(set(types)) != len(types):
                _bad(f"gradient type {self.grad_type!r} is not one of {', '.join(GRAD_TYPES)} "
                     "or a comma list of different ones (e.g. adam,sgd)")
        if self.max_length < 2:
            _bad(f"--max-length {self.max_length} must be at least 2")
        _positive(proj_dim=self.proj_dim, batch_size=self.batch_size,
                  write_rows=self.write_rows)


@dataclass(frozen=True)
class SelectConfig:
    """How a selection chooses (everything but the pool, the targets and the budgets)."""

    method: str = option("gtp", choices=METHODS,
                         help="gtp: the selection's mean trajectory matches the target's; "
                              "gtp-paper: GTP as published (NNLS weights); omp; less; "
                              "round-robin: the target's parts take turns (RDS+'s rule); "
                              "random")
    target_mode: str = option("mean", choices=TARGET_MODES,
                              help="match the target mean; joint: its subtask means, each "
                                   "the same weight; clusters: as joint, the subtasks found "
                                   "by clustering the target's rows (no labels needed); "
                                   "parts (gtp): a pursuit per subtask (else cluster), equal "
                                   "shares of the budget")
    part_score: str = option("max", choices=PART_SCORES,
                             help="round-robin: score a pool row by its largest cosine with "
                                  "a part's rows (max) or with the part's mean (mean)")
    tolerance: float | str = option(
        "auto", parse=lambda t: t if t == "auto" else float(t),
        help="gtp: how far the selection's mean trajectory may stay from the target's, "
             "within which it prefers the examples most aligned with the target (auto: the "
             "target mean's standard error, from its examples; 0: as close as possible)")
    normalize: bool = option(True, flag="--no-normalize", negate=True,
                             help="do not unit-normalise each checkpoint's gradient")
    m: int | None = option(None, help="GTP candidates per scan (default 2k; capped per "
                                      "round, docs/selection.md)")
    max_iter: int = option(30, help="GTP scans (rounds) at most")
    min_gain: float = option(1e-3, flag="--tol",
                             help="GTP stops when a round improves the residual by less than "
                                  "this share of it")
    seed: int = option(0, help="seed of the random baseline")
    checkpoint_weights: tuple[float, ...] | None = option(
        None, parse=float, many=True, metavar="W",
        help="weights per checkpoint (default: the stored learning rates)")
    mode: str = option("auto", flag="--scan-mode", choices=SCAN_MODES,
                       help="pool in RAM or streamed from Lance (auto: by --memory-budget)")
    memory_budget: int | None = option(None, parse=lambda t: parse_size(t),
                                       help="largest pool held in RAM, e.g. 8GB (default 40%% "
                                            "of RAM)")
    partitions: int | None = option(None, metavar="P",
                                    help="the pursuit on P parts of the pool, then on the "
                                         "union of their picks")
    ray: str | None = option(None, metavar="ADDRESS",
                             help="run on Ray: 'local' starts a cluster here, 'auto' joins "
                                  "this node's, or HOST:PORT / ray://HOST:PORT (needs pip "
                                  "install gradstore[ray])")
    ray_tasks: int | None = option(None, metavar="N",
                                   help="Ray tasks per pass over the pool (default: one per "
                                        "cluster CPU, at least 4096 rows each)")
    device: str = option("auto", help="where the pool is scanned: cpu, cuda, cuda:N or auto "
                                      "(kept on the GPU when it fits; with --ray the scans "
                                      "run in the cluster's CPU tasks)")
    where: str | None = option(None, metavar="SQL",
                               help="choose only among the pool rows this SQL predicate keeps "
                                    "(over the pool's stored columns, e.g. \"subtask = "
                                    "'math'\"); budgets in %% count those rows")
    exclude: tuple[str, ...] = option((), repeat=True, metavar="SELECTION|FILE",
                                      help="never choose the rows of this stored selection "
                                           "(its id, or latest) or of this file of ids, one "
                                           "per line (repeatable)")
    exclude_near: tuple[str, ...] = option((), repeat=True, metavar="TABLE[:COSINE]",
                                           help="decontaminate: never choose pool rows "
                                                "whose content equals a row of TABLE (e.g. "
                                                "a test set ingested as a target), nor, with "
                                                ":COSINE, rows whose cosine (LESS's space) "
                                                "with one of its rows reaches COSINE "
                                                "(repeatable)")
    extend: str | None = option(None, metavar="SELECTION",
                                help="keep this stored selection's rows (its id, or latest; "
                                     "of the same pool) and add rows up to the budget, the "
                                     "best given the kept ones (gtp: fixed members of its "
                                     "pursuit)")
    max_share: tuple[str, ...] = option((), repeat=True, metavar="FIELD=SHARE",
                                        help="no value of the pool's stored column FIELD "
                                             "takes more than SHARE (0-1] of the budget, "
                                             "e.g. subtask=0.3; kept inside the method, not "
                                             "by trimming afterwards (repeatable)")
    progress: bool = option(True, flag="--quiet", negate=True, help="no progress bars")
    save: bool = option(True, cli=False, help="store the selections in the log")

    from_options = classmethod(from_options)

    def validate(self) -> None:
        check_choices(self)
        if self.target_mode == "parts" and self.method != "gtp":
            _bad(f"--target-mode parts applies to gtp only, not {self.method}; "
                 "--method round-robin takes the parts in turn by cosine")
        tol = self.tolerance
        if tol != "auto" and not (isinstance(tol, int | float) and math.isfinite(tol)
                                  and tol >= 0):
            _bad(f"--tolerance {tol!r} must be 'auto' or a number >= 0")
        if self.max_iter < 1:
            _bad(f"max_iter {self.max_iter} must be at least 1")
        if self.m is not None and self.m < 1:
            _bad(f"candidate count m={self.m} must be at least 1")
        p = self.partitions
        if p is not None and (isinstance(p, bool) or int(p) != p or p < 1):
            _bad(f"--partitions {p!r} must be a whole number >= 1")
        if p is not None and self.method not in PURSUITS:
            _bad(f"--partitions applies to gtp and gtp-paper only, not {self.method}; drop it "
                 f"(with --ray, {self.method}'s scans are spread over the cluster anyway)")
        if self.ray_tasks is not None and self.ray_tasks < 1:
            _bad(f"--ray-tasks {self.ray_tasks} must be at least 1")
        if self.ray_tasks is not None and self.ray is None:
            _bad("--ray-tasks applies with --ray ADDRESS")
        if self.where is not None and not str(self.where).strip():
            _bad("--where is empty; give a predicate such as \"subtask = 'math'\"")
        for entry in self.max_share:
            parse_share(entry)
        if self.max_share and self.target_mode == "parts" and self.partitions:
            _bad("--max-share with --target-mode parts does not run with --partitions (the "
                 "parts' pursuits share their counts of the caps); drop --partitions")


def parse_share(entry: str) -> tuple[str, float]:
    """``FIELD=SHARE`` (``--max-share``) as (field, share), the share in (0, 1]."""
    field_, sep, tail = str(entry).rpartition("=")
    try:
        share = float(tail)
    except ValueError:
        share = math.nan
    if not sep or not field_.strip() or not 0 < share <= 1:
        _bad(f"--max-share {entry!r}: give FIELD=SHARE with SHARE in (0, 1], e.g. "
             "subtask=0.3")
    return field_.strip(), share


@dataclass(frozen=True)
class RayConfig:
    """How an ingestion uses a Ray cluster (none: in this process)."""

    ray: str | None = option(None, metavar="ADDRESS",
                             help="run on Ray: 'local' starts a cluster here, 'auto' joins "
                                  "this node's, or HOST:PORT / ray://HOST:PORT (needs pip "
                                  "install gradstore[ray])")
    workers: int | None = option(None, metavar="N",
                                 help="Ray workers, one model copy each (default: one per "
                                      "GPU, else cluster CPUs / --worker-cpus)")
    worker_cpus: int = option(1, metavar="C", help="CPU threads per Ray worker on CPUs")
    worker_retries: int = option(2, metavar="R",
                                 help="restarts of a Ray worker that dies, retrying its shard")

    def validate(self) -> None:
        if self.ray is None and self.workers is not None:
            _bad("--workers applies to Ray ingestion: add --ray ADDRESS")
        if self.workers is not None and self.workers < 1:
            _bad(f"--workers {self.workers} must be at least 1")
        if self.worker_cpus < 1 or self.worker_retries < 0:
            _bad("--worker-cpus must be at least 1 and --worker-retries at least 0")


# ------------------------------------------------------------------ the commands


@dataclass(frozen=True)
class WarmupConfig:
    """One `gradstore warmup` run."""

    lm: ModelConfig
    data: str = option(help="the pool: .jsonl, .json, .parquet or a datasets directory")
    out: str = option(help="directory for the checkpoints (resumed if a run stopped)")
    split: str | None = option(None, help="split of a saved DatasetDict")
    encoding: str = option("utf-8", help="text encoding of a .jsonl/.json data file")
    train: TrainConfig = field(default_factory=TrainConfig)
    overwrite: bool = option(False, help="replace checkpoints of a run with other settings")
    progress: bool = option(True, flag="--quiet", negate=True, help="no progress bars")

    from_options = classmethod(from_options)

    def validate(self) -> None:
        check_choices(self)
        self.train.validate()
        if not Path(self.data).exists():
            _bad(f"data {self.data!r} does not exist; give the pool's data file")


@dataclass(frozen=True)
class IngestConfig:
    """One `gradstore ingest` run."""

    table: str = option(positional=True,
                        help="table to write (created, or resumed if a run stopped)")
    lm: ModelConfig
    data: str = option(help="examples: .jsonl, .json, .parquet or a datasets directory")
    checkpoints: tuple[str, ...] = option(
        (), flag="--checkpoint", repeat=True, metavar="DIR",
        help="LoRA checkpoint dir (adapter + optimizer state); repeat for each; none: a "
             "fresh LoRA")
    params: tuple[str, ...] = option(
        (), flag="--params", repeat=True, metavar="PATTERN",
        help="gradients of the --model's own parameters whose full names (as in "
             "named_parameters) match this glob, e.g. 'model.layers.*.mlp.*.weight', instead "
             "of LoRA; repeat for several (docs/projections.md)")
    kind: str = option("pool", choices=("pool", "target"), help="what the table is for")
    features: str = option(
        "gradients", choices=FEATURES,
        help="what is stored per example: gradients, or hidden: the final layer's hidden "
             "states, position-weighted mean over the tokens, unit norm (RDS+); forward "
             "passes only, no projection (--grad-type, --projection, --proj-dim and the fresh "
             "LoRA flags do not apply); without --checkpoint, of the base model")
    subtask_field: str | None = option(None, help="data field holding subtask labels")
    split: str | None = option(None, help="split of a saved DatasetDict")
    encoding: str = option("utf-8", help="text encoding of a .jsonl/.json data file")
    fields: str = option("all", metavar="all|none|NAME,...",
                         help="the data rows' scalar fields (string, number, bool) kept as "
                              "columns of the table, for --where, --max-share and report "
                              "--by: all of them (not the example's text), none, or these")
    lrs: tuple[float, ...] | None = option(
        None, flag="--lr", repeat=True, parse=float,
        help="learning rate per checkpoint, in order (default: from its saved state)")
    gradients: GradientConfig = field(default_factory=GradientConfig)
    cluster: RayConfig = field(default_factory=RayConfig)
    overwrite: bool = option(False, help="replace an existing table")
    force: bool = option(False, help="take over the table's write lock (another process "
                                     "writing it) once you know that process is gone")

    progress: bool = option(True, flag="--quiet", negate=True, help="no progress bar")

    from_options = classmethod(from_options)

    def validate(self) -> None:
        if not self.table or self.table.startswith("_") or "/" in self.table:
            _bad(f"table name {self.table!r} is not allowed; use letters, digits, '-', '_'")
        check_choices(self)
        self.gradients.validate()
        self.cluster.validate()
        if self.lrs is not None and len(self.lrs) != max(1, len(self.checkpoints)):
            _bad(f"{len(self.lrs)} learning rates given for {len(self.checkpoints)} checkpoints")
        for c in self.checkpoints:
            if not Path(c).is_dir():
                _bad(f"checkpoint directory {c!r} does not exist")
        if any(not isinstance(p, str) or not p.strip() for p in self.params):
            _bad(f"--params {list(self.params)!r}: each pattern must be a non-empty glob, "
                 "e.g. 'model.layers.*.mlp.*.weight'")
        if self.params and self.checkpoints:
            _bad("--params takes gradients of the --model's own weights and does not combine "
                 "with --checkpoint (LoRA adapters); drop one of them")
        self._validate_features()

    def _validate_features(self) -> None:
        if self.features != HIDDEN_TYPE:
            return
        if self.params:
            _bad("--params chooses weights to take gradients of; --features hidden takes none: "
                 "drop --params")
        if self.gradients.grad_type is not None:
            _bad(f"--grad-type {self.gradients.grad_type} applies to gradients, not to "
                 "--features hidden: drop --grad-type")

    def grad_types(self, has_state: bool) -> tuple[str, ...]:
        """The gradient types this run stores, primary first (hidden features: ``hidden``)."""
        if self.features == HIDDEN_TYPE:
            return (HIDDEN_TYPE,)
        given = self.gradients.requested_types()
        if given is not None:
            return given
        if not has_state:
            return ("sgd",)
        return ("adam",) if self.kind == "pool" else ("adam", "sgd")


@dataclass(frozen=True)
class RunConfig:
    """One `gradstore run`: warm-up, ingestion of the pool and targets, selection, export."""

    lm: ModelConfig
    data: str = option(help="the pool: .jsonl, .json, .parquet or a datasets directory")
    out: str = option(help="working directory (created; a rerun resumes in it)")
    targets: tuple[str, ...] = option(
        (), flag="--target", repeat=True, metavar="FILE",
        help="target examples (repeat for several; none: in-domain selection)")
    budgets: tuple[str, ...] = option(
        ("5%",), flag="--budget", repeat=True,
        help="count, fraction or percentage; repeatable (default 5%%)")
    methods: tuple[str, ...] = option(("gtp",), flag="--method", repeat=True, choices=METHODS,
                                      help="repeatable (default gtp)")
    split: str | None = option(None, help="split of a saved DatasetDict pool")
    encoding: str = option("utf-8", help="text encoding of a .jsonl/.json data file")
    subtask_field: str | None = option(None, help="target field holding subtask labels")
    train: TrainConfig = field(default_factory=TrainConfig)
    gradients: GradientConfig = field(default_factory=GradientConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    cluster: RayConfig = field(default_factory=RayConfig)
    overwrite: bool = option(False, help="replace what a run with other settings left in "
                                         "--out")
    force: bool = option(False, help="take over the table's write lock (another process "
                                     "writing it) once you know that process is gone")

    progress: bool = option(True, flag="--quiet", negate=True, help="no progress bars")

    from_options = classmethod(from_options)

    def validate(self) -> None:

        check_choices(self)
        self.cluster.validate()
        self.train.validate()
        self.gradients.validate()
        if not self.methods:
            _bad(f"give at least one --method: some of {', '.join(METHODS)}")
        if not self.budgets:
            _bad("give at least one --budget, e.g. 5%")
        for b in self.budgets:
            parse_budget(b)
        for path in (self.data, *self.targets):
            if not Path(path).exists():
                _bad(f"data file {path!r} does not exist; check the path")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            _bad(f"--out {self.out!r} is a file; give a working directory")


CONFIGS = {c.__name__: c for c in (ModelConfig, TrainConfig, GradientConfig, SelectConfig,
                                   RayConfig)}
"""Config classes by name: the field types of the command configs (``from __future__
import annotations`` makes them strings)."""


@dataclass(frozen=True)
class TrainSettings:
    passes: int = 160
    """Example passes asked per fine-tune: epochs = round(passes / selection size), at least
    1, so the passes that run are epochs x size (200 for 160 asked of 100 rows)."""
    lr: float = 1e-3
    batch_size: int = 8
    lora_r: int = 8
    lora_alpha: int = 32
    lora_layers: str | None = "top:8"
    max_length: int = 128
    warmup_ratio: float = 0.03

    def epochs_for(self, n: int) -> int:
        return max(1, round(self.passes / n))
