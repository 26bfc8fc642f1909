"""`gradstore` command line: a thin layer mapping flags onto the Python API.

Exit status: 0 success; 2 bad input or usage (one line on stderr); 1 unexpected.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from gradstore.choices import GRAD_TYPES, METHODS, PROJECTION_KINDS, TARGET_MODES
from gradstore.errors import GradstoreError


class UsageError(GradstoreError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().rstrip("b")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 4GB or 512MB") from None


IMPORT_EXAMPLES = """examples:
  gradstore import ./store pool --vectors ckpt1/all_orig.pt --checkpoint 1 --lr 2e-5 --ids ids.txt
  gradstore import ./store pool --vectors ckpt2/all_orig.pt --checkpoint 2 --lr 1e-5 --ids ids.txt
  gradstore import ./store mmlu --vectors mmlu.npy --subtasks subjects.txt --kind target
"""

SELECT_EXAMPLES = """examples:
  gradstore select ./store --pool pool --target mmlu --budget 5%
  gradstore select ./store --pool pool --target mmlu --target bbh --budget 0.01 --budget 0.05
  gradstore select ./store --pool pool --budget 1000 --method omp --format json --out sel.json
  gradstore select ./store --pool pool --target mmlu --budget 5% --method less
  # scans as Ray tasks; GTP on 8 parts, then on the union of their picks
  gradstore select ./store --pool pool --target mmlu --budget 5% --ray local --partitions 8
"""

INGEST_EXAMPLES = """examples:
  # a pool at every warm-up checkpoint (Adam-preconditioned, as LESS)
  gradstore ingest ./store pool --model HuggingFaceTB/SmolLM2-135M-Instruct --data pool.jsonl \\
      --checkpoint warmup/checkpoint-1 --checkpoint warmup/checkpoint-2
  # a target set at the same checkpoints (plain SGD gradients by default), with subtasks
  gradstore ingest ./store mmlu --kind target --model HuggingFaceTB/SmolLM2-135M-Instruct \\
      --data mmlu_dev.jsonl --subtask-field subject \\
      --checkpoint warmup/checkpoint-1 --checkpoint warmup/checkpoint-2
  # a GGUF model from a local directory, a fresh LoRA, a small projection
  gradstore ingest ./store pool --model ./smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data pool.parquet --proj-dim 1024 --grad-type sgd
  # on Ray: the examples sharded over 4 workers (one model copy each)
  gradstore ingest ./store pool --model ./smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \
      --data pool.parquet --checkpoint warmup/checkpoint-1 --ray local --workers 4
Running the same command again after an interruption writes only the missing rows.
"""

INFO_EXAMPLES = """examples:
  gradstore info ./store
  gradstore info ./store pool --format json
"""

WARMUP_EXAMPLES = """examples:
  # 4 epochs of LoRA on a random 5% of the pool: warmup/checkpoint-<step>, one per epoch
  gradstore warmup --model HuggingFaceTB/SmolLM2-135M-Instruct --data pool.jsonl --out warmup
  # a GGUF model, LoRA on the top 4 layers, 2 epochs of 10% at a higher learning rate
  gradstore warmup --model ./smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data pool.jsonl --out warmup --fraction 0.1 --epochs 2 --lr 1e-4 --lora-layers top:4
Running the same command again after an interruption continues from the last checkpoint.
"""

EXPORT_EXAMPLES = """examples:
  gradstore export ./store --selection 3f2a9c1e --out subset.jsonl
  gradstore export ./store --selection latest --data pool.parquet --out subset.parquet
Rows keep every original field, in selection order, plus `rank` and `weight`.
"""

RUN_EXAMPLES = """examples:
  # warm-up, ingest pool and target, select 5% with GTP, export: all in ./work
  gradstore run --model HuggingFaceTB/SmolLM2-135M-Instruct --data pool.jsonl \\
      --target target.jsonl --out work
  # two methods, two budgets, in-domain (no target)
  gradstore run --model ./smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data pool.jsonl --out work --method gtp --method less --budget 1% --budget 5%
Exports land in OUT/selections/, the store in OUT/store; rerunning resumes.
"""


def build_parser() -> Parser:
    p = Parser(
        prog="gradstore",
        description="An embedded gradient store with training-data selection (GTP).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    imp = sub.add_parser(
        "import",
        help="import precomputed gradient vectors (.npy / .pt)",
        epilog=IMPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("store", help="store path (created if missing)")
    imp.add_argument("table", help="table to create or add a checkpoint to")
    imp.add_argument("--vectors", required=True, help=".npy (N x d) or .pt tensor file")
    imp.add_argument("--checkpoint", default="0", help="checkpoint name (default 0)")
    imp.add_argument("--ids", help="text file, one example id per line (default: row numbers)")
    imp.add_argument("--subtasks", help="text file, one subtask label per line")
    imp.add_argument("--lr", type=float, help="learning rate at this checkpoint (its weight)")
    imp.add_argument("--vector-dtype", choices=["float16", "float32"], default="float16")
    imp.add_argument("--kind", choices=["pool", "target"], help="what the table is for")
    imp.add_argument("--grad-type", choices=GRAD_TYPES, help="gradient type")
    imp.add_argument("--model", help="model id the gradients came from")
    imp.add_argument("--projection", help="projection kind, e.g. rademacher")
    imp.add_argument("--proj-seed", type=int, help="projection seed")
    imp.set_defaults(func=cmd_import)

    sel = sub.add_parser(
        "select",
        help="choose training examples (gtp, gtp-paper, omp, less, random)",
        epilog=SELECT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sel.add_argument("store", help="store path")
    sel.add_argument("--pool", required=True, help="pool table")
    sel.add_argument(
        "--target",
        action="append",
        help="target table (repeat for several; omit for in-domain selection)",
    )
    sel.add_argument(
        "--budget",
        action="append",
        required=True,
        help="count (1000), fraction (0.05) or percentage (5%%); repeatable",
    )
    sel.add_argument("--method", choices=METHODS, default="gtp",
                     help="gtp (default): the selection's mean trajectory matches the "
                     "target's; gtp-paper: GTP as published (NNLS weights); omp; less; random")
    sel.add_argument(
        "--target-mode",
        choices=TARGET_MODES,
        default="mean",
        help="match the target mean, or its subtask means jointly",
    )
    sel.add_argument(
        "--no-normalize",
        action="store_true",
        help="do not unit-normalise each checkpoint's gradient",
    )
    sel.add_argument("--m", type=int, help="GTP candidates per scan (default 2k)")
    sel.add_argument("--max-iter", type=int, default=30, help="GTP scans at most (default 30)")
    sel.add_argument(
        "--tol",
        type=float,
        default=1e-3,
        help="GTP stops when the residual improves by less (default 1e-3)",
    )
    sel.add_argument(
        "--tolerance", type=_tolerance, default="auto",
        help="gtp: how far the selection's mean trajectory may stay from the target's, "
        "within which it prefers the examples most aligned with the target (auto: the "
        "target mean's standard error, from its examples; 0: match it as closely as "
        "possible)",
    )
    sel.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    sel.add_argument(
        "--checkpoint-weights",
        type=float,
        nargs="+",
        help="weights per checkpoint (default: stored learning rates)",
    )
    sel.add_argument(
        "--scan-mode",
        choices=["auto", "ram", "stream"],
        default="auto",
        help="in-RAM pool or streamed from Lance (auto: by --memory-budget)",
    )
    sel.add_argument(
        "--memory-budget",
        type=_size,
        help="largest pool held in RAM, e.g. 8GB (default 40%% of RAM)",
    )
    sel.add_argument("--partitions", type=int, metavar="P",
                     help="GTP on P parts of the pool, then on the union of their picks")
    _add_ray_flag(sel)
    sel.add_argument("--ray-tasks", type=int, metavar="N",
                     help="Ray tasks per pass over the pool (default: one per cluster CPU, "
                     "at least 4096 rows each)")
    sel.add_argument("--format", choices=["text", "json"], default="text")
    sel.add_argument("--out", help="also write the selections as JSON to this file")
    sel.add_argument("--quiet", action="store_true", help="no progress bars")
    sel.set_defaults(func=cmd_select)

    _add_warmup(sub)
    _add_ingest(sub)
    _add_export(sub)
    _add_run(sub)

    inf = sub.add_parser(
        "info",
        help="describe a store or one table",
        epilog=INFO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inf.add_argument("store", help="store path")
    inf.add_argument("table", nargs="?", help="table (default: the whole store)")
    inf.add_argument("--format", choices=["text", "json"], default="text")
    inf.set_defaults(func=cmd_info)
    return p


def _add_ray_flag(p) -> None:
    p.add_argument(
        "--ray", metavar="ADDRESS",
        help="run on Ray: 'local' starts a cluster here, 'auto' joins this node's, or "
        "HOST:PORT / ray://HOST:PORT (needs pip install gradstore[ray])",
    )


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _add_ingest(sub) -> None:
    ing = sub.add_parser(
        "ingest",
        help="compute per-example gradients of a data file and store them",
        epilog=INGEST_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ing.add_argument("store", help="store path (created if missing)")
    ing.add_argument("table", help="table to write (resumed if an earlier run was interrupted)")
    _add_model_flags(ing)
    ing.add_argument("--data", required=True, help=".jsonl, .json, .parquet or a datasets dir")
    ing.add_argument("--split", help="split of a saved DatasetDict")
    ing.add_argument(
        "--checkpoint", action="append", default=[], metavar="DIR",
        help="LoRA checkpoint dir (adapter + optimizer state); repeat for each; "
        "none: a fresh LoRA",
    )
    ing.add_argument("--kind", choices=["pool", "target"], default="pool")
    ing.add_argument(
        "--grad-type", type=_grad_types, metavar="TYPE[,TYPE]",
        help="adam, sgd or sign, or several (adam,sgd; the first is the table's own). "
        "Default with optimizer state: adam for a pool, adam,sgd for a target (GTP reads "
        "the pool's type, LESS sgd); without: sgd",
    )
    ing.add_argument("--projection", choices=PROJECTION_KINDS,
                     default="rademacher")
    ing.add_argument("--proj-dim", type=int, default=8192, help="projected dims (default 8192)")
    ing.add_argument("--seed", type=int, default=0,
                     help="projection and fresh-LoRA seed; pool and targets must share it")
    ing.add_argument("--nnz", type=int, help="nonzeros per coordinate of countsketch")
    ing.add_argument("--max-length", type=int, default=2048, help="tokens per example")
    ing.add_argument("--batch-size", type=int, default=8)
    ing.add_argument("--lora-r", type=int, default=8, help="fresh LoRA rank")
    ing.add_argument("--lora-alpha", type=int, default=32, help="fresh LoRA alpha")
    ing.add_argument("--lora-targets", type=_csv, help="fresh LoRA modules, e.g. q_proj,v_proj")
    ing.add_argument("--lr", type=float, action="append",
                     help="learning rate per checkpoint, in order (default: from its state)")
    ing.add_argument("--subtask-field", help="data field holding subtask labels")
    ing.add_argument("--vector-dtype", choices=["float16", "float32"], default="float16")
    ing.add_argument("--write-rows", type=int, default=512, help="rows per commit")
    ing.add_argument("--overwrite", action="store_true", help="replace an existing table")
    _add_ray_flag(ing)
    ing.add_argument("--workers", type=int, metavar="N",
                     help="Ray workers, one model copy each (default: one per GPU, else "
                     "cluster CPUs / --worker-cpus)")
    ing.add_argument("--worker-cpus", type=int, default=1, metavar="C",
                     help="CPU threads per Ray worker on CPU clusters (default 1)")
    ing.add_argument("--worker-retries", type=int, default=2, metavar="R",
                     help="restarts of a Ray worker that dies, retrying its shard (default 2)")
    ing.add_argument("--format", choices=["text", "json"], default="text",
                     help="how to print the final summary")
    ing.add_argument("--quiet", action="store_true", help="no progress bar")
    ing.set_defaults(func=cmd_ingest)


def _add_model_flags(p) -> None:
    p.add_argument("--model", required=True, help="Hugging Face id or local model directory")
    p.add_argument("--gguf-file", help="GGUF weights file inside --model's directory")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default="auto", help="model weights (auto: float32 on CPU, bf16 on CUDA)")


def _add_training_flags(p, batch_help: str = "examples per forward pass") -> None:
    g = p.add_argument_group("warm-up training")
    g.add_argument("--fraction", type=float, default=0.05,
                   help="share of the pool trained on, drawn with --seed (default 0.05)")
    g.add_argument("--num-examples", type=int, help="train on this many examples instead")
    g.add_argument("--epochs", type=int, default=4, help="one checkpoint per epoch (default 4)")
    g.add_argument("--lr", type=float, default=2e-5, help="peak learning rate (default 2e-5)")
    g.add_argument("--warmup-ratio", type=float, default=0.03,
                   help="share of steps with a rising lr, then linear decay (default 0.03)")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="batches per optimizer step (default 1)")
    g.add_argument("--lora-dropout", type=float, default=0.0)
    g.add_argument("--lora-layers", help="LoRA only on these layers: top:N or e.g. 20,21,22")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute activations: less memory for long sequences, slower")
    g.add_argument("--batch-size", type=int, default=8, help=batch_help)
    g.add_argument("--max-length", type=int, default=2048, help="tokens per example")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=int, default=32)
    g.add_argument("--lora-targets", type=_csv, help="modules, e.g. q_proj,v_proj")


def _add_warmup(sub) -> None:
    w = sub.add_parser(
        "warmup",
        help="LoRA warm-up on a slice of the pool; one checkpoint per epoch",
        epilog=WARMUP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_flags(w)
    w.add_argument("--data", required=True, help="the pool: .jsonl, .json, .parquet, datasets dir")
    w.add_argument("--split", help="split of a saved DatasetDict")
    w.add_argument("--out", required=True, help="checkpoint directory (resumed if it exists)")
    _add_training_flags(w)
    w.add_argument("--weight-decay", type=float, default=0.0)
    w.add_argument("--max-grad-norm", type=float, default=1.0, help="clipping (0: none)")
    w.add_argument("--weight-field", help="row field with a loss weight per example (e.g. an "
                   "export's weight column; scaled to mean 1)")
    w.add_argument("--seed", type=int, default=0, help="subset, LoRA init and data order")
    w.add_argument("--overwrite", action="store_true", help="replace another run in --out")
    w.add_argument("--format", choices=["text", "json"], default="text")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.set_defaults(func=cmd_warmup)


def cmd_warmup(args: argparse.Namespace) -> int:
    from gradstore.config import config_from
    from gradstore.grads.warmup import WarmupConfig, warmup

    summary = warmup(config_from(WarmupConfig, args, progress=not args.quiet))
    _print_summary(summary, args.format)
    return 0


def _print_summary(summary, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(summary.to_dict(), default=str))
    else:
        print("\n".join(summary.lines()))


def _add_export(sub) -> None:
    e = sub.add_parser(
        "export",
        help="write a selection's examples (with weights) from the original data file",
        epilog=EXPORT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("store", help="store path")
    e.add_argument("--selection", required=True,
                   help="selection id (as printed by select), or 'latest'")
    e.add_argument("--data", help="the pool's data file (default: the file it was ingested from)")
    e.add_argument("--split", help="split of a saved DatasetDict")
    e.add_argument("--out", required=True, help="output file: .jsonl or .parquet")
    e.add_argument("--weight-column", default="weight", help="name of the weight column")
    e.add_argument("--rank-column", default="rank", help="name of the rank column")
    e.add_argument("--format", choices=["text", "json"], default="text")
    e.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import gradstore

    store = gradstore.open(args.store, create=False)
    summary = store.export(args.selection, args.out, data=args.data, split=args.split,
                           weight_column=args.weight_column, rank_column=args.rank_column)
    _print_summary(summary, args.format)
    return 0


def _add_run(sub) -> None:
    r = sub.add_parser(
        "run",
        help="the whole pipeline: warm-up, ingest, select, export",
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_flags(r)
    r.add_argument("--data", required=True, help="the pool: .jsonl, .json, .parquet, datasets dir")
    r.add_argument("--split", help="split of a saved DatasetDict pool")
    r.add_argument("--target", action="append", default=[], metavar="FILE",
                   help="target examples (repeat for several; none: in-domain selection)")
    r.add_argument("--subtask-field", help="target field holding subtask labels")
    r.add_argument("--out", required=True, help="working directory (resumed if it exists)")
    r.add_argument("--budget", action="append",
                   help="count, fraction or percentage; repeatable (default 5%%)")
    r.add_argument("--method", action="append", choices=METHODS,
                   help="repeatable (default gtp)")
    r.add_argument("--target-mode", choices=TARGET_MODES, default="mean")
    _add_training_flags(r, batch_help="examples per batch in training and ingestion")
    r.add_argument("--grad-type", choices=GRAD_TYPES, help="pool (default adam)")
    r.add_argument("--projection", choices=PROJECTION_KINDS,
                   default="rademacher")
    r.add_argument("--proj-dim", type=int, default=8192, help="projected dims (default 8192)")
    r.add_argument("--vector-dtype", choices=["float16", "float32"], default="float16")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--overwrite", action="store_true",
                   help="replace what a run with other settings left in --out")
    _add_ray_flag(r)
    r.add_argument("--workers", type=int, metavar="N",
                   help="Ray ingestion workers (default: one per GPU, else one per CPU)")
    r.add_argument("--format", choices=["text", "json"], default="text")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)


def _tolerance(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number >= 0")
    return value


def _grad_types(text: str) -> str:
    """``--grad-type``: one type or a comma list of different ones."""
    types = [t.strip() for t in text.split(",")]
    if not types or any(t not in GRAD_TYPES for t in types) or len(set(types)) != len(types):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one of {', '.join(GRAD_TYPES)} or a comma list of different ones"
        )
    return ",".join(types)


def cmd_run(args: argparse.Namespace) -> int:
    from gradstore.config import config_from
    from gradstore.ops.pipeline import RunConfig, run_pipeline

    if args.ray:
        from gradstore.distributed import require_ray

        require_ray()
    summary = run_pipeline(config_from(
        RunConfig, args, targets=tuple(args.target), budgets=tuple(args.budget or ["5%"]),
        methods=tuple(args.method or ["gtp"]), progress=not args.quiet,
    ))
    _print_summary(summary, args.format)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    import gradstore
    from gradstore.config import config_from
    from gradstore.grads.ingestion import IngestConfig

    cfg = config_from(
        IngestConfig, args, checkpoints=tuple(args.checkpoint),
        lrs=tuple(args.lr) if args.lr else None, progress=not args.quiet,
    )
    if args.ray:
        from gradstore.distributed import require_ray

        require_ray()
    elif args.workers is not None:
        raise UsageError("gradstore ingest: --workers applies to Ray ingestion; add --ray ADDRESS")
    cfg.validate()  # before opening (and creating) the store
    store = gradstore.open(args.store)
    ray = {} if not args.ray else {"ray": args.ray, "workers": args.workers,
                                   "worker_cpus": args.worker_cpus,
                                   "worker_retries": args.worker_retries}
    summary = store.ingest(cfg, **ray)
    _print_summary(summary, args.format)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import gradstore
    from gradstore.store.importing import read_lines, read_vector_file

    vectors = read_vector_file(args.vectors)
    ids = read_lines(args.ids, "ids") if args.ids else None
    subtasks = read_lines(args.subtasks, "subtasks") if args.subtasks else None
    projection = None
    if args.projection or args.proj_seed is not None:
        projection = {
            "kind": args.projection or "unknown",
            "seed": args.proj_seed,
            "dim": int(vectors.shape[-1]) if vectors.ndim == 2 else None,
        }
    store = gradstore.open(args.store)
    res = store.import_vectors(
        args.table,
        vectors,
        checkpoint=args.checkpoint,
        ids=ids,
        subtasks=subtasks,
        lr=args.lr,
        kind=args.kind,
        vector_dtype=args.vector_dtype,
        projection=projection,
        grad_type=args.grad_type,
        model=args.model,
    )
    verb = "created" if res["created"] else "added checkpoint to"
    print(f"{verb} table {args.table!r}: {res['rows']} rows, checkpoint {res['checkpoint']!r}")
    return 0


def _print_selection(sel) -> None:
    print(
        f"selection {sel.selection_id}  method={sel.method}  target={sel.target or '(in-domain)'}"
        f"  budget={sel.budget} (k={sel.k})  chosen={len(sel.ids)}  "
        f"residual={sel.residual:.4f}  {sel.seconds:.2f}s"
    )
    show = min(10, len(sel.ids))
    for r in range(show):
        print(f"  {r + 1:>5}  {sel.ids[r]:<30}  {sel.weights[r]:.6g}")
    if len(sel.ids) > show:
        print(f"  ... {len(sel.ids) - show} more (--format json or --out for all)")


def cmd_select(args: argparse.Namespace) -> int:
    import gradstore

    if args.ray_tasks is not None and not args.ray:
        raise UsageError("gradstore select: --ray-tasks applies with --ray ADDRESS")
    store = gradstore.open(args.store, create=False)
    targets = args.target or [None]
    sels = store.select(
        args.pool,
        target=list(targets),
        budget=list(args.budget),
        method=args.method,
        target_mode=args.target_mode,
        normalize=not args.no_normalize,
        m=args.m,
        max_iter=args.max_iter,
        tol=args.tol,
        tolerance=args.tolerance,
        seed=args.seed,
        checkpoint_weights=args.checkpoint_weights,
        mode=args.scan_mode,
        memory_budget=args.memory_budget,
        progress=not args.quiet,
        partitions=args.partitions,
        ray=args.ray,
        ray_tasks=args.ray_tasks,
    )
    payload = [s.to_dict() for s in sels]
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    if args.format == "json":
        print(json.dumps(payload))
    else:
        for s in sels:
            _print_selection(s)
    _print_stop_notes(store, sels)
    return 0


def _print_stop_notes(store, sels) -> None:
    """One note on stderr per distinct reason a GTP/OMP selection stopped short of k."""
    seen = set()
    for s in sels:
        note = store.stop_note(s)
        if note and (s.target, len(s.ids)) not in seen:
            seen.add((s.target, len(s.ids)))
            target = s.target or "(in-domain)"
            print(f"note: {target}, budget {s.budget}: {note}", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> int:
    import gradstore

    store = gradstore.open(args.store, create=False)
    info = store.info(args.table)
    if args.format == "json":
        print(json.dumps(info, indent=1, default=str))
        return 0
    tables = info["tables"].values() if args.table is None else [info]
    if args.table is None:
        print(
            f"store {info['uri']}: {len(info['tables'])} table(s), "
            f"{len(info['selections'])} selection(s)"
        )
    for t in tables:
        ck = ", ".join(
            f"{c['name']}" + (f" (lr {c['lr']:g})" if c["lr"] is not None else "")
            for c in t["checkpoints"]
        )
        pr = t["projection"]
        print(
            f"{t['table']}: {t['kind']}, {t['rows']} rows x {t['dim']} dims {t['vector_dtype']}, "
            f"checkpoints [{ck}], projection {pr['kind']} (seed {pr['seed']}), "
            f"grad {'+'.join(t['grad_types']) or '?'}, model {t['model']}"
            + ("  [INCOMPLETE: rerun its ingest command]" if t["status"] == "running" else "")
        )
        if "ingest" in t:
            ing = t["ingest"]
            print(
                f"  ingested from {ing['source']} ({ing['expected_rows']} examples, "
                f"max length {ing['max_length']}, dtype {ing['dtype']}), "
                f"{t['rows']} rows stored"
            )
        for s in t.get("selections", []):
            _print_selection_line(s)
    if args.table is None and info["selections"]:
        print("selections (gradstore export STORE --selection ID --out FILE):")
        for s in info["selections"]:
            _print_selection_line(s, pool=True)
    return 0


def _print_selection_line(s: dict, pool: bool = False) -> None:
    print(
        f"  selection {s['selection_id']}: {s['method']} "
        + (f"pool={s['pool']} " if pool else "")
        + f"target={s['target'] or '(in-domain)'} budget={s['budget']} chosen={s['k']} "
        f"residual={s['residual']:.4f}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except GradstoreError as exc:
        msg = str(exc).replace("\n", " ")
        print(msg if isinstance(exc, UsageError) else f"gradstore: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "gradstore: interrupted; what was committed is kept (run the same command again "
            "to resume)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        return 0
    except Exception:  # a bug, not bad input: keep the traceback for the report
        traceback.print_exc()
        print(
            "gradstore: unexpected error (exit 1); please report it with the trace above",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
