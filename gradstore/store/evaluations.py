"""Evaluations: fine-tunes on a selection and on a baseline, scored on held-out rows
(``gradstore evaluate``), kept in the store beside the selections they judge."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from gradstore.store.integrity import DamagedTable

EVALUATIONS_TABLE = "_evaluations"

EVALUATIONS_SCHEMA = pa.schema([
    pa.field("evaluation_id", pa.string(), nullable=False),
    pa.field("selection_id", pa.string(), nullable=False),
    pa.field("created", pa.string()),
    pa.field("payload", pa.string()),
    pa.field("checksum", pa.string()),
])


def payload_checksum(payload: str) -> str:
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=16).hexdigest()


def to_record(evaluation_id: str, selection_id: str, created: str,
              result: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps(result, sort_keys=True, default=str)
    return {"evaluation_id": evaluation_id, "selection_id": selection_id, "created": created,
            "payload": payload, "checksum": payload_checksum(payload)}


def from_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The stored result, or :class:`DamagedTable` when the record fails its checksum."""
    if payload_checksum(rec["payload"]) != rec["checksum"]:
        raise DamagedTable(
            f"evaluation {rec['evaluation_id']!r} fails its checksum (the evaluation log's "
            "files were changed); run `gradstore restore STORE _evaluations` or evaluate again")
    return json.loads(rec["payload"]) | {"evaluation_id": rec["evaluation_id"],
                                         "created": rec["created"]}
