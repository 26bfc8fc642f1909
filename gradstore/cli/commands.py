"""The commands: each adds its flags (generated from its config where it has one) and maps
the parsed flags onto one call of the Python API; the API decides."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gradstore.choices import SCAN_MODES
from gradstore.cli import examples
from gradstore.cli.flags import add_config_flags, config_from_args
from gradstore.config import IngestConfig, RunConfig, SelectConfig, TrainSettings, WarmupConfig
from gradstore.errors import GradstoreError

FORMATS = ("text", "json")


class UsageError(GradstoreError):
    """A command line that cannot be run as given."""


def _parser(sub, name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _format_flag(p: argparse.ArgumentParser, help_text: str = "how to print the result") -> None:
    p.add_argument("--format", choices=FORMATS, default="text", help=help_text)


def print_summary(summary, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(summary.to_dict(), default=str))
    else:
        print("\n".join(summary.lines()))


# ---------------------------------------------------------------- import


def add_import(sub) -> None:
    p = _parser(sub, "import", "import precomputed gradient vectors (.npy / .pt)",
                examples.IMPORT_EXAMPLES)
    p.add_argument("store", help="store path (created if missing)")
    p.add_argument("table", help="table to create or add a checkpoint to")
    p.add_argument("--vectors", required=True, help=".npy (N x d) or .pt tensor file")
    p.add_argument("--checkpoint", default="0", help="checkpoint name (default 0)")
    p.add_argument("--ids", help="text file, one example id per line (default: row numbers)")
    p.add_argument("--subtasks", help="text file, one subtask label per line")
    p.add_argument("--lr", type=float, help="learning rate at this checkpoint (its weight)")
    p.add_argument("--vector-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--kind", choices=("pool", "target"), help="what the table is for")
    p.add_argument("--grad-type", choices=("adam", "sgd", "sign"), help="gradient type")
    p.add_argument("--model", help="model id the gradients came from")
    p.add_argument("--projection", help="projection kind, e.g. rademacher")
    p.add_argument("--proj-seed", type=int, help="projection seed")
    p.add_argument("--force", action="store_true",
                   help="take over the table's write lock (its holder is gone)")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    import gradstore
    from gradstore.store.importing import read_lines, read_vector_file

    vectors = read_vector_file(args.vectors)
    projection = None
    if args.projection or args.proj_seed is not None:
        projection = {"kind": args.projection or "unknown", "seed": args.proj_seed,
                      "dim": int(vectors.shape[-1]) if vectors.ndim == 2 else None}
    store = gradstore.open(args.store)
    res = store.import_vectors(
        args.table, vectors, checkpoint=args.checkpoint,
        ids=read_lines(args.ids, "ids") if args.ids else None,
        subtasks=read_lines(args.subtasks, "subtasks") if args.subtasks else None,
        lr=args.lr, kind=args.kind, vector_dtype=args.vector_dtype, projection=projection,
        grad_type=args.grad_type, model=args.model, force=args.force,
    )
    verb = "created" if res["created"] else "added checkpoint to"
    print(f"{verb} table {args.table!r}: {res['rows']} rows, checkpoint {res['checkpoint']!r}")
    return 0


# ---------------------------------------------------------------- select


def add_select(sub) -> None:
    p = _parser(sub, "select",
                "choose training examples (gtp, gtp-paper, omp, less, round-robin, random)",
                examples.SELECT_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("--pool", help="pool table (required unless --again)")
    p.add_argument("--target", action="append",
                   help="target table (repeat for several; omit for in-domain selection)")
    p.add_argument("--budget", action="append",
                   help="count (1000), fraction (0.05) or percentage (5%%); repeatable "
                        "(required unless --again)")
    p.add_argument("--again", metavar="SELECTION",
                   help="run a stored selection's query again (its pool, target, budget, "
                        "method and options) on the tables' current versions")
    add_config_flags(p, SelectConfig, skip=("save",))
    _format_flag(p)
    p.add_argument("--out", help="also write the selections as JSON to this file")
    p.set_defaults(func=cmd_select)


def cmd_select(args: argparse.Namespace) -> int:
    import dataclasses

    import gradstore

    store = gradstore.open(args.store, create=False)
    if args.again is not None:
        if args.pool or args.target or args.budget:
            raise UsageError("gradstore select: --again reruns a stored selection as it was; "
                             "drop --pool, --target and --budget (see `gradstore --help`)")
        sels = [store.select_again(args.again, progress=args.progress)]
    else:
        if not args.pool or not args.budget:
            raise UsageError("gradstore select: give --pool and --budget, or --again "
                             "SELECTION (see `gradstore --help`)")
        cfg = config_from_args(SelectConfig, args)
        cfg.validate()
        sels = store.select(args.pool, target=list(args.target or [None]),
                            budget=list(args.budget), **dataclasses.asdict(cfg))
    payload = [s.to_dict() for s in sels]
    if args.out:
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
    if args.format == "json":
        print(json.dumps(payload))
    else:
        for s in sels:
            _print_selection(s)
    _print_notes(store, sels)
    return 0


def _print_selection(sel) -> None:
    print(f"selection {sel.selection_id}  method={sel.method}  "
          f"target={sel.target or '(in-domain)'}  budget={sel.budget} (k={sel.k})  "
          f"chosen={len(sel.ids)}  residual={sel.residual:.4f}  {sel.seconds:.2f}s")
    show = min(10, len(sel.ids))
    for r in range(show):
        print(f"  {r + 1:>5}  {sel.ids[r]:<30}  {sel.weights[r]:.6g}")
    if len(sel.ids) > show:
        print(f"  ... {len(sel.ids) - show} more (--format json or --out for all)")


def _print_notes(store, sels) -> None:
    """One note on stderr per distinct reason a selection stopped short or read another
    gradient type than it needs."""
    seen = set()
    for s in sels:
        note = store.stop_note(s)
        if note and (s.target, len(s.ids)) not in seen:
            seen.add((s.target, len(s.ids)))
            print(f"note: {s.target or '(in-domain)'}, budget {s.budget}: {note}",
                  file=sys.stderr)


# ---------------------------------------------------------------- warmup, ingest, run


def add_warmup(sub) -> None:
    p = _parser(sub, "warmup", "LoRA warm-up on a slice of the pool; one checkpoint per epoch",
                examples.WARMUP_EXAMPLES)
    add_config_flags(p, WarmupConfig)
    _format_flag(p)
    p.set_defaults(func=cmd_warmup)


def cmd_warmup(args: argparse.Namespace) -> int:
    import gradstore

    print_summary(gradstore.warmup(config_from_args(WarmupConfig, args)), args.format)
    return 0


def add_ingest(sub) -> None:
    p = _parser(sub, "ingest", "compute per-example gradients of a data file and store them",
                examples.INGEST_EXAMPLES)
    p.add_argument("store", help="store path (created if missing)")
    add_config_flags(p, IngestConfig)
    _format_flag(p, "how to print the final summary")
    p.set_defaults(func=cmd_ingest)


def cmd_ingest(args: argparse.Namespace) -> int:
    import gradstore

    cfg = config_from_args(IngestConfig, args)
    if cfg.cluster.ray:
        from gradstore.distributed import require_ray

        require_ray()
    cfg.validate()  # before opening (and creating) the store
    print_summary(gradstore.open(args.store).ingest(cfg), args.format)
    return 0


def add_run(sub) -> None:
    p = _parser(sub, "run", "the whole pipeline: warm-up, ingest, select, export",
                examples.RUN_EXAMPLES)
    add_config_flags(p, RunConfig, skip=("method", "save", "weight_field"))
    _format_flag(p)
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    import gradstore

    cfg = config_from_args(RunConfig, args)
    if cfg.cluster.ray:
        from gradstore.distributed import require_ray

        require_ray()
    print_summary(gradstore.run(cfg), args.format)
    return 0


# ---------------------------------------------------------------- export, info


def add_export(sub) -> None:
    p = _parser(sub, "export",
                "write a selection's examples (with weights) from the original data file",
                examples.EXPORT_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("--selection", required=True,
                   help="selection id (as printed by select), or 'latest'")
    p.add_argument("--data", help="the pool's data file (default: the file it was ingested from)")
    p.add_argument("--split", help="split of a saved DatasetDict")
    p.add_argument("--out", required=True, help="output file: .jsonl or .parquet")
    p.add_argument("--weight-column", default="weight", help="name of the weight column")
    p.add_argument("--rank-column", default="rank", help="name of the rank column")
    p.add_argument("--encoding", default="utf-8", help="text encoding of a .jsonl/.json file")
    p.add_argument("--from-store", action="store_true",
                   help="no data file: each row is its id and the fields the store kept "
                        "of it (ingest --fields), for a pool whose data file is gone")
    _format_flag(p)
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    import gradstore

    store = gradstore.open(args.store, create=False)
    summary = store.export(args.selection, args.out, data=args.data, split=args.split,
                           weight_column=args.weight_column, rank_column=args.rank_column,
                           encoding=args.encoding, from_store=args.from_store)
    print_summary(summary, args.format)
    return 0


def add_neighbors(sub) -> None:
    p = _parser(sub, "neighbors",
                "the pool rows most aligned with each target row (LESS's space), or the "
                "target rows a pool row serves", examples.NEIGHBORS_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("--pool", required=True, help="pool table")
    p.add_argument("--target", required=True, help="target table")
    p.add_argument("--k", type=int, default=5, help="neighbours per row (default 5)")
    p.add_argument("--row", help="one target row, by id (default: every target row)")
    p.add_argument("--of", metavar="POOL_ID",
                   help="the reverse: the target rows closest to this pool row")
    p.add_argument("--scan-mode", default="auto", choices=SCAN_MODES,
                   help="pool in RAM or streamed from Lance (auto: by --memory-budget)")
    p.add_argument("--memory-budget", help="largest pool held in RAM, e.g. 8GB")
    p.add_argument("--data", help="the pool's data file, for the rows' text (default: the "
                                  "file it was ingested from)")
    _format_flag(p)
    p.set_defaults(func=cmd_neighbors)


def cmd_neighbors(args: argparse.Namespace) -> int:
    import gradstore
    from gradstore.config import parse_size

    store = gradstore.open(args.store, create=False)
    budget = None if args.memory_budget is None else parse_size(args.memory_budget)
    found = store.neighbors(args.pool, args.target, args.k, row=args.row, of=args.of,
                            mode=args.scan_mode, memory_budget=budget, data=args.data)
    if args.format == "json":
        print(json.dumps([vars(n) for n in found], indent=1))
        return 0
    for n in found:
        text = "" if n.text is None else "  " + " ".join(n.text.split())[:80]
        print(f"{n.target_id:<24} {n.rank:>3}  {n.pool_id:<24} {n.score:+.4f}{text}")
    return 0


def add_evaluate(sub) -> None:
    p = _parser(sub, "evaluate", "fine-tune on a selection and on a baseline, score both",
                examples.EVALUATE_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("--selection", required=True, help="selection id, or 'latest'")
    p.add_argument("--model", required=True, help="Hugging Face id or local model directory")
    p.add_argument("--gguf-file", help="GGUF weights file inside --model's directory")
    p.add_argument("--test", required=True,
                   help="held-out chat rows, the last message the reference answer")
    p.add_argument("--data", help="the pool's data file (default: the file it was ingested "
                                  "from)")
    p.add_argument("--baseline", default="random",
                   help="random (as many pool rows, drawn per seed) or a selection id")
    p.add_argument("--seeds", type=int, default=1, help="fine-tunes per arm (default 1)")
    d = TrainSettings()
    p.add_argument("--passes", type=int, default=d.passes,
                   help=f"example passes per fine-tune (default {d.passes})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"default {d.batch_size}")
    p.add_argument("--lora-layers", default=d.lora_layers,
                   help=f"LoRA on these layers: top:N, indices, or all (default "
                        f"{d.lora_layers})")
    p.add_argument("--max-length", type=int, default=d.max_length,
                   help=f"tokens per example (default {d.max_length})")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--work", help="working directory (default STORE/.evaluate/SEL-BASELINE)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _format_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    import gradstore

    store = gradstore.open(args.store, create=False)
    settings = TrainSettings(passes=args.passes, lr=args.lr, batch_size=args.batch_size,
                             lora_layers=None if args.lora_layers == "all" else args.lora_layers,
                             max_length=args.max_length)
    result = store.evaluate(args.selection, model=args.model, test=args.test,
                            gguf_file=args.gguf_file, data=args.data, baseline=args.baseline,
                            seeds=args.seeds, settings=settings, device=args.device,
                            work=args.work, progress=not args.quiet)
    print_summary(result, args.format)
    return 0


def add_report(sub) -> None:
    p = _parser(sub, "report", "one HTML page on what selections hold, side by side",
                examples.REPORT_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("--selection", action="append", default=[], metavar="ID",
                   help="a selection id or 'latest'; repeat to compare (default: the most "
                        "recent run's selections of one pool and target, up to 8)")
    p.add_argument("--out", required=True, help="output file (.html)")
    p.add_argument("--data", help="the pool's data file (default: the file it was ingested "
                                  "from), for texts and composition")
    p.add_argument("--by", help="a field of the pool's rows to show composition by")
    p.add_argument("--target-data", help="the target's data file, for its composition")
    p.add_argument("--duplicate-cosine", type=float, default=None,
                   help="pairs of chosen rows at this cosine or more count as near-duplicates "
                        "(default 0.99)")
    _format_flag(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    import gradstore

    store = gradstore.open(args.store, create=False)
    options = ({} if args.duplicate_cosine is None
               else {"duplicate_cosine": args.duplicate_cosine})
    rep = store.report(args.selection, args.out, data=args.data, by=args.by,
                       target_data=args.target_data, **options)
    if args.format == "json":
        print(json.dumps({"out": str(args.out), "selections": [
            {"selection_id": f.selection.selection_id, "method": f.selection.method,
             "residual": f.residual, "enough_at": f.enough_at,
             "spent_on_copies": f.spent_on_copies} for f in rep.selections]}))
    else:
        for f in rep.selections:
            s = f.selection
            print(f"{s.selection_id} {s.method:<9} {s.budget:<6} residual {f.residual:.4f} "
                  f"enough at {f.enough_at}  copies spent {f.spent_on_copies}")
        print(f"report written to {args.out}")
    return 0


def add_info(sub) -> None:
    p = _parser(sub, "info", "describe a store or one table", examples.INFO_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("table", nargs="?", help="table (default: the whole store)")
    _format_flag(p)
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    import gradstore

    info = gradstore.open(args.store, create=False).info(args.table)
    if args.format == "json":
        print(json.dumps(info, indent=1, default=str))
        return 0
    if args.table is None:
        print(f"store {info['uri']}: {len(info['tables'])} table(s), "
              f"{len(info['selections'])} selection(s)")
    for t in (info["tables"].values() if args.table is None else [info]):
        _print_table(t)
    if "selections_problem" in info:
        print(f"selection log DAMAGED: {info['selections_problem']}")
    if args.table is None and info["selections"]:
        print("selections (gradstore export STORE --selection ID --out FILE):")
        for s in info["selections"]:
            _print_selection_line(s, pool=True)
    tables = info["tables"].values() if args.table is None else [info]
    damaged = [t["table"] for t in tables if t["status"] == "damaged"]
    damaged += ["_selections"] if "selections_problem" in info else []
    if damaged:
        raise GradstoreError(f"damaged: {', '.join(damaged)}; run `gradstore verify "
                             f"{args.store}` for the details")
    return 0


def add_verify(sub) -> None:
    p = _parser(sub, "verify", "check every stored vector against its checksum; repair",
                examples.VERIFY_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("table", nargs="?", help="table (default: every table and the log)")
    p.add_argument("--drop-damaged", action="store_true",
                   help="remove damaged rows (an ingested table is marked incomplete: rerun "
                        "its ingest to recompute them)")
    p.add_argument("--drop-duplicates", action="store_true",
                   help="keep the first row of an id stored more than once")
    p.add_argument("--add-checksums", action="store_true",
                   help="give vector columns written before checksums their checksums")
    p.add_argument("--force", action="store_true",
                   help="take over the table's write lock when its holder is gone")
    _format_flag(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    import gradstore

    reports = gradstore.open(args.store, create=False).verify(
        args.table, drop_damaged=args.drop_damaged, drop_duplicates=args.drop_duplicates,
        add_checksums=args.add_checksums, force=args.force)
    if args.format == "json":
        print(json.dumps([r.to_dict() for r in reports], indent=1))
    else:
        for r in reports:
            print("\n".join(r.lines()))
    damaged = [r.table for r in reports if r.status == "damaged"]
    if damaged:
        raise GradstoreError(f"damaged: {', '.join(damaged)}; see the report above for what "
                             "to do")
    return 0


def add_restore(sub) -> None:
    p = _parser(sub, "restore", "list a table's versions, or make an earlier one current",
                examples.RESTORE_EXAMPLES)
    p.add_argument("store", help="store path")
    p.add_argument("table", help="table (_selections: the selection log)")
    p.add_argument("--version", type=int, help="the version to make current (default: list)")
    p.add_argument("--force", action="store_true",
                   help="take over the table's write lock when its holder is gone")
    _format_flag(p)
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    import gradstore

    store = gradstore.open(args.store, create=False)
    if args.version is None:
        vs = store.versions(args.table)
        if args.format == "json":
            print(json.dumps(vs, indent=1))
            return 0
        print(f"versions of {args.table} (gradstore restore STORE {args.table} --version N):")
        for v in vs:
            print(f"  {v['version']}: {v['timestamp']}, {v['rows']} rows, "
                  + ("files present" if v["files_ok"] else "FILES MISSING")
                  + ("  (current)" if v["current"] else ""))
        return 0
    report = store.restore(args.table, args.version, force=args.force)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(f"restored version {args.version} of {args.table}")
        print("\n".join(report.lines()))
    if report.status == "damaged":
        raise GradstoreError(f"version {args.version} of {args.table} is damaged too; pick an "
                             "earlier one")
    return 0


def _print_table(t: dict) -> None:
    if t["status"] == "damaged":
        print(f"{t['table']}: DAMAGED")
        for p in t["problems"]:
            print(f"  {p}")
        return
    ck = ", ".join(f"{c['name']}" + (f" (lr {c['lr']:g})" if c["lr"] is not None else "")
                   for c in t["checkpoints"])
    pr = t["projection"]
    print(f"{t['table']}: {t['kind']}, {t['rows']} rows x {t['dim']} dims {t['vector_dtype']}, "
          f"checkpoints [{ck}], projection {pr['kind']} (seed {pr['seed']}"
          + (f"; {pr['layout']}" if pr.get("layout") else "") + "), "
          f"grad {'+'.join(t['grad_types']) or '?'}, model {t['model']}"
          + ("  [INCOMPLETE: rerun its ingest command]" if t["status"] == "running" else ""))
    if "ingest" in t:
        ing = t["ingest"]
        print(f"  ingested from {ing['source']} ({ing['expected_rows']} examples, max length "
              f"{ing['max_length']}, dtype {ing['dtype']}), {t['rows']} rows stored")
    if t.get("fields"):
        print(f"  fields: {', '.join(t['fields'])}")
    elif "ingest" in t and t["ingest"].get("source"):
        print("  fields: none kept (to query the data's own fields, run the same `gradstore "
              "ingest` command again: it adds them as columns without recomputing gradients)")
    for s in t.get("selections", []):
        _print_selection_line(s)


def _print_selection_line(s: dict, pool: bool = False) -> None:
    print(f"  selection {s['selection_id']}: {s['method']} "
          + (f"pool={s['pool']} " if pool else "")
          + f"target={s['target'] or '(in-domain)'} budget={s['budget']} chosen={s['k']} "
          f"residual={s['residual']:.4f}"
          + "".join(f" {k}={v!r}" for k, v in s.get("query", {}).items()))


COMMANDS = (add_import, add_select, add_warmup, add_ingest, add_export, add_neighbors,
            add_report, add_evaluate, add_run, add_info, add_verify, add_restore)

__all__ = ["COMMANDS", "UsageError"]
