"""Named tensors in one flat file, read back one at a time with plain reads (no mmap), so that a
large read-mostly set (D-Pruner's G, the dense weights kept for restoring) costs disk and page
cache instead of process memory. `<path>` holds the bytes, `<path>.json` the index and notes;
both are staged and renamed into place, the index last, so a file without its index is an
unfinished one."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from core.files import atomic_open, read_json, write_atomic

DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}


def _bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


class TensorFile(Mapping[str, torch.Tensor]):
    """Write inside `with TensorFile.writing(path) as f: f.put(name, tensor)`; read with
    `TensorFile.open(path)[name]`."""

    def __init__(self, path: Path, index: dict[str, dict] | None = None, notes: Any = None,
                 device: torch.device | str = "cpu") -> None:
        self.path = Path(path)
        self.index = index if index is not None else {}
        self.notes = notes
        self.device = torch.device(device)
        self._writer = None

    @classmethod
    @contextmanager
    def writing(cls, path: Path, device: torch.device | str = "cpu") -> Iterator[TensorFile]:
        """A new file; it appears at `path`, with its index and `notes`, only when the block ends
        without error."""
        store = cls(path, device=device)
        with atomic_open(store.path, "wb") as handle:
            store._writer = handle
            yield store
            store._writer = None
        write_atomic(Path(f"{path}.json"), json.dumps({"index": store.index, "notes": store.notes}))

    @classmethod
    def open(cls, path: Path, device: torch.device | str = "cpu") -> TensorFile | None:
        """A finished file, or None when there is none at `path`."""
        meta = Path(f"{path}.json")
        if not meta.exists() or not Path(path).exists():
            return None
        payload = read_json(meta, "a tensor file index {index, notes}")
        return cls(path, payload["index"], payload.get("notes"), device)

    def put(self, name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu").contiguous()
        offset = self._writer.tell()
        self.index[name] = {"offset": offset, "shape": list(data.shape), "dtype": str(data.dtype)}
        self._writer.write(_bytes(data))

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
