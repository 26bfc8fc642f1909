"""Run `bergson build` (EleutherAI Bergson's own Build command) once, timing its gradient
loop; run by benchmarks/vs_bergson.py with .venv-bergson's Python (it imports bergson, not
gradstore).

The command is built from Bergson's config dataclasses exactly as its CLI builds it, and
executed with ``Build.execute()``; the only addition is a timer around
``bergson.build.collect_gradients`` (the forward/backward/projection/write loop), so the
model and data loading can be told apart from the loop. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="index directory to write")
    ap.add_argument("--model", required=True, help="model or peft adapter directory")
    ap.add_argument("--tokenizer", default="", help="tokenizer directory (an adapter has none)")
    ap.add_argument("--data", required=True, help="pre-tokenised .jsonl (input_ids, labels)")
    ap.add_argument("--projection-dim", type=int, default=0)
    ap.add_argument("--projection-target", choices=("per_module", "global"),
                    default="per_module")
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--token-batch-size", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    import bergson.build
    from bergson.cli.commands import Build
    from bergson.config.config import DataConfig, IndexConfig, PreprocessConfig

    loop: dict[str, float] = {}
    collect = bergson.build.collect_gradients

    def timed_collect(**kwargs):
        t = time.perf_counter()
        collect(**kwargs)
        loop["seconds"] = time.perf_counter() - t

    bergson.build.collect_gradients = timed_collect
    index_cfg = IndexConfig(
        run_path=args.run, overwrite=True, model=args.model, tokenizer=args.tokenizer,
        precision="fp32",
        data=DataConfig(dataset=args.data), projection_dim=args.projection_dim,
        projection_target=args.projection_target, loss_reduction="mean",
        max_batch_size=args.max_batch_size, token_batch_size=args.token_batch_size,
    )
    Build(index_cfg, PreprocessConfig()).execute()
    print(json.dumps({"loop_seconds": loop["seconds"],
                      "seconds": time.perf_counter() - t_start}), flush=True)


if __name__ == "__main__":
    main()
