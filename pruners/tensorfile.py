"""Named tensors in one flat file, read back one at a time with plain reads (no mmap), so that a
large read-mostly set (D-Pruner's G, the dense weights kept for restoring) costs disk and page
cache instead of process memory. `<path>` holds the bytes, `<path>.json` the index and notes;
the index is written last (by rename), so a file without its index is an unfinished one."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


class TensorFile(Mapping[str, torch.Tensor]):
    """Write with `put` then `finish`; read with `TensorFile.open(path)[name]`."""

    def __init__(self, path: Path, index: dict[str, dict] | None = None, notes: Any = None,
                 device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        self.index = index if index is not None else {}
        self.notes = notes
        self.device = torch.device(device)
        self._writer = None

    @classmethod
    def create(cls, path: Path, device: torch.device | str = "cpu") -> TensorFile:
        """A new file, written under a temporary name until `finish` renames it into place."""
        store = cls(path, device=device)
        store.path.parent.mkdir(parents=True, exist_ok=True)
        store._writer = open(store._part, "wb")  # noqa: SIM115  (closed by finish)
        return store

    @classmethod
    def open(cls, path: Path, device: torch.device | str = "cpu") -> TensorFile | None:
        """A finished file, or None when there is none at `path`."""
        meta = Path(f"{path}.json")
        if not meta.exists() or not Path(path).exists():
            return None
        payload = json.loads(meta.read_text(encoding="utf-8"))
        return cls(path, payload["index"], payload.get("notes"), device)

    @property
    def _part(self) -> Path:
        return Path(f"{self.path}.{os.getpid()}.part")  # concurrent writers never share a file

    def put(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu").contiguous()
        offset = self._writer.tell()
        self.index[name] = {"offset": offset, "shape": list(data.shape), "dtype": str(data.dtype)}
        self._writer.write(_bytes(data))

    def finish(self, notes: Any = None) -> TensorFile:
        self.notes = notes
        self._writer.close()
        self._writer = None
        os.replace(self._part, self.path)
        staged = Path(f"{self.path}.json.{os.getpid()}.part")
        staged.write_text(json.dumps({"index": self.index, "notes": notes}), encoding="utf-8")
        os.replace(staged, f"{self.path}.json")
        return self

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self.index[name]
        out = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
        with open(self.path, "rb") as handle:
            handle.seek(entry["offset"])
            handle.readinto(_bytes(out))
        return out.to(self.device)

    def __iter__(self) -> Iterator[str]:
        return iter(self.index)

    def __len__(self) -> int:
        return len(self.index)
