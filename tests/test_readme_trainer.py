"""The README's "Training on an export with its weights" block, run as written on a tiny
Llama and a real export: it trains, and its loss is each example's mean token
cross-entropy times its weight over the mean weight (checked by hand)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import gradstore
from tests.grads.conftest import chat_tokenizer, llama_dir  # noqa: F401 - fixtures

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block() -> str:
    text = README.read_text()
    block = re.search(r"<!-- trainer-example[^>]*-->\s*```python\n(.*?)```\s*<!-- /trainer-example",
                      text, re.S)
    assert block, "the README lost its trainer example"
    return block.group(1)


def test_the_readme_trains_on_an_export_with_its_weights(tmp_path, monkeypatch,
                                                         llama_dir):  # noqa: F811
    rng = np.random.default_rng(0)
    st = gradstore.open(tmp_path / "store")
    ids = [f"r{i}" for i in range(12)]
    st.import_vectors("pool", rng.normal(size=(12, 6)).astype(np.float32), ids=ids)
    st.import_vectors("target", rng.normal(size=(3, 6)).astype(np.float32) + 1,
                      ids=["t0", "t1", "t2"], kind="target")
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"id": i, "messages": [
        {"role": "user", "content": f"Add {n} and 1."},
        {"role": "assistant", "content": str(n + 1)}]}) + "\n" for n, i in enumerate(ids)))
    sel = st.select("pool", target="target", budget=6, method="gtp-paper")
    assert len(set(np.round(sel.weights, 6))) > 1  # weights that matter
    monkeypatch.chdir(tmp_path)
    st.export(sel.selection_id, "subset.parquet", data=data)
    scope = {"MODEL": str(llama_dir)}
    exec(compile(readme_block(), "README.md", "exec"), scope)  # noqa: S102 - the README's code
    rows, train = scope["rows"], scope["train"]
    assert [r["id"] for r in rows] == sel.ids
    np.testing.assert_allclose([t["weight"] for t in train],
                               np.asarray(sel.weights) / np.mean(sel.weights), rtol=1e-6)
    assert (tmp_path / "out").is_dir()  # the Trainer ran and wrote its output
    # the loss the block trains on, by hand, for one example
    model = scope["AutoModelForCausalLM"].from_pretrained(str(llama_dir))
    trainer = scope["WeightedTrainer"](model=model, args=scope["args"], train_dataset=train)
    ex = train[2]
    inputs = {"input_ids": torch.tensor([ex["input_ids"]]),
              "labels": torch.tensor([ex["labels"]]), "weight": torch.tensor([ex["weight"]])}
    with torch.no_grad():
        got = trainer.compute_loss(model, dict(inputs))
        logits = model(input_ids=inputs["input_ids"]).logits[0]
    ce = [-torch.log_softmax(logits[t], -1)[ex["input_ids"][t + 1]]
          for t in range(len(ex["input_ids"]) - 1)]
    assert float(got) == pytest.approx(ex["weight"] * float(torch.stack(ce).mean()), rel=1e-5)
