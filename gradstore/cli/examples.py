"""The examples each command's --help ends with."""

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
  # the target's subtasks (else clusters of its rows) take turns: RDS+'s rule; with
  # hidden-state tables (ingest --features hidden) it is RDS+ itself
  gradstore select ./store --pool pool --target mix --budget 5% --method round-robin
  gradstore select ./store --pool pool-rds --target mix-rds --budget 5% --method round-robin
  # a gtp pursuit per part of the target, each an equal share of the budget
  gradstore select ./store --pool pool --target mix --budget 5% --target-mode parts
  # scans as Ray tasks; GTP on 8 parts, then on the union of their picks
  gradstore select ./store --pool pool --target mmlu --budget 5% --ray local --partitions 8
"""

INGEST_EXAMPLES = """examples:
  # a pool at every warm-up checkpoint (Adam-preconditioned, as LESS)
  gradstore ingest ./store pool --model HuggingFaceTB/SmolLM2-135M-Instruct --data pool.jsonl \\
      --checkpoint warmup/checkpoint-1 --checkpoint warmup/checkpoint-2
  # a target set at the same checkpoints (the pool's gradient type and plain SGD), with
  # subtasks
  gradstore ingest ./store mmlu --kind target --model HuggingFaceTB/SmolLM2-135M-Instruct \\
      --data mmlu_dev.jsonl --subtask-field subject \\
      --checkpoint warmup/checkpoint-1 --checkpoint warmup/checkpoint-2
  # a GGUF model from a local directory, a fresh LoRA, a small projection
  gradstore ingest ./store pool --model ./smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data pool.parquet --proj-dim 1024 --grad-type sgd
  # RDS+ features instead of gradients (pooled final hidden states, of the base model);
  # ingest the target the same way
  gradstore ingest ./store pool-rds --model HuggingFaceTB/SmolLM2-135M-Instruct \\
      --data pool.jsonl --features hidden
  # on Ray: the examples sharded over 4 workers (one model copy each)
  gradstore ingest ./store pool --model ./smollm2 --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf \\
      --data pool.parquet --checkpoint warmup/checkpoint-1 --ray local --workers 4
Running the same command again after an interruption writes only the missing rows.
"""

VERIFY_EXAMPLES = """examples:
  gradstore verify ./store                      # every table and the selection log
  gradstore verify ./store pool --drop-damaged  # then rerun pool's ingest to recompute them
  gradstore verify ./store pool --add-checksums # a table written before checksums

exit status: 0 when every table checked is ok, 2 when something is damaged.
"""

RESTORE_EXAMPLES = """examples:
  gradstore restore ./store pool                # list its versions (newest first)
  gradstore restore ./store pool --version 3    # make version 3 the current one
  gradstore restore ./store _selections --version 7   # the selection log
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

NEIGHBORS_EXAMPLES = """examples:
  gradstore neighbors ./store --pool pool --target mmlu --k 3
  gradstore neighbors ./store --pool pool --target mmlu --row mmlu-17 --k 10
  gradstore neighbors ./store --pool pool --target mmlu --of pool-0042
Scores are LESS's: the checkpoints' cosines weighted by their learning rates (sum 1).
"""

EVALUATE_EXAMPLES = """examples:
  gradstore evaluate ./store --selection latest --model ./smollm2 \\
      --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --test test.jsonl
  gradstore evaluate ./store --selection 3f2a9c1e --baseline 81c0d2aa --seeds 3 \\
      --model M --test test.jsonl
LoRA fine-tunes on the selection and on the baseline (random: as many pool rows drawn
per seed), the same example passes, scored on the test rows: answer-token loss and
exact match. Stopped runs resume; results are kept in the store and shown by report.
"""

REPORT_EXAMPLES = """examples:
  gradstore report ./store --out report.html          # the latest run's selections
  gradstore report ./store --selection 3f2a9c1e --selection 81c0d2aa --by source \\
      --out report.html
One HTML file (figures embedded): residuals on one footing, a budget advisor,
composition, near-duplicates, overlap, the heaviest and lightest examples, provenance.
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
