"""Read the records of an offline W&B run (``<dir>/offline-run-*/run-<id>.wandb``) back, so tests
can check what would be uploaded without a network or an account.

The file is wandb's transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB
log-format blocks of 32 KiB holding length-prefixed chunks (types FULL=1, FIRST=2, MIDDLE=3, LAST=4)
of serialised ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Dict, Iterator, List

_BLOCK = 32768
_HEADER = 7
_CHUNK_HEADER = 7  # crc32 (4), length (2), type (1)


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log (no ':W&B' header)")
    pos, pending = _HEADER, b""
    while pos + _CHUNK_HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK_HEADER])
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + _CHUNK_HEADER : pos + _CHUNK_HEADER + length]
        pos += _CHUNK_HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


def read_run(path: Path) -> Dict[str, Any]:
    """``{run: {id, project, group, job_type, display_name, tags}, config: {...}, history: [{...}],
    summary: {...}, metrics: {name: summary options}}`` of one ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    out: Dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "metrics": {}}

    def nested(item) -> List[str]:
        return list(item.nested_key) if item.nested_key else [item.key]

    for raw in _chunks(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            out["run"] = {
                "id": run.run_id,
                "project": run.project,
                "group": run.run_group,
                "job_type": run.job_type,
                "display_name": run.display_name,
                "tags": list(run.tags),
            }
            for item in run.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"]["/".join(nested(item))] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append(
                {"/".join(nested(i)): json.loads(i.value_json) for i in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"]["/".join(nested(item))] = json.loads(item.value_json)
        elif kind == "metric":
            out["metrics"][record.metric.name] = str(record.metric.summary).strip()
    return out
