"""Keep-masks of pruned models, stored one bit per weight so that every cell of a grid can keep
its mask (a 135M model: ~12 MB) and the leaderboard can compare methods and domains by the
Jaccard similarity of the weights they keep.

File format (numpy .npz, no pickles): `__names__` (matrix names, `core.structure.model_linears`
order), `__shapes__` ([n, 2] int64), and per matrix `m<i>` = numpy.packbits of the flat
row-major keep-mask (True = weight kept, i.e. non-zero)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.files import atomic_open
from core.structure import model_linears

Packed = dict[str, tuple[np.ndarray, tuple[int, ...]]]


def save_masks(model: nn.Module, path: Path | str) -> Path:
    """Write the keep-mask of every prunable matrix; atomic, so a killed cell never leaves a
    half-written mask."""
    path = Path(path)
    names, shapes, arrays = [], [], {}
    with torch.no_grad():
        for i, (name, linear) in enumerate(model_linears(model).items()):
            keep = (linear.weight != 0).cpu().numpy()
            names.append(name)
            shapes.append(keep.shape)
            arrays[f"m{i}"] = np.packbits(keep.ravel())
    with atomic_open(path, "wb") as handle:
        np.savez(handle, __names__=np.array(names, dtype=str),
                 __shapes__=np.array(shapes, dtype=np.int64).reshape(-1, 2), **arrays)
    return path


def load_packed(path: Path | str) -> Packed:
    """{matrix name: (packed bits, shape)}: eight times smaller in memory than `load_masks`."""
    with np.load(Path(path), allow_pickle=False) as data:
        names, shapes = data["__names__"], data["__shapes__"]
        return {str(name): (data[f"m{i}"], tuple(int(s) for s in shapes[i])) for i, name in enumerate(names)}


def load_masks(path: Path | str) -> dict[str, np.ndarray]:
    """{matrix name: boolean keep-mask with the matrix's shape}."""
    return {
        name: np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)
        for name, (bits, shape) in load_packed(path).items()
    }


def _packed_jaccard(a: Packed, b: Packed) -> float:
    if a.keys() != b.keys() or any(a[n][1] != b[n][1] for n in a):
        raise ValueError("masks of different models (matrix names or shapes differ)")
    both = either = 0
    for name, (bits, _) in a.items():
        other = b[name][0]
        both += int(np.bitwise_count(bits & other).sum())
        either += int(np.bitwise_count(bits | other).sum())
    return both / either if either else 1.0


def _pack(mask: np.ndarray | Mapping[str, np.ndarray]) -> Packed:
    items = mask.items() if isinstance(mask, Mapping) else [("", mask)]
    return {name: (np.packbits(np.asarray(m, dtype=bool).ravel()), np.shape(m)) for name, m in items}


def jaccard(a: np.ndarray | Mapping[str, np.ndarray], b: np.ndarray | Mapping[str, np.ndarray]) -> float:
    """|kept in both| / |kept in either|, for one mask or over all matrices of two mask dicts
    (1.0 when neither keeps anything)."""
    return _packed_jaccard(_pack(a), _pack(b))


def similarity_matrix(paths: Sequence[Path]) -> np.ndarray:
    """Pairwise Jaccard of the kept weights of several saved masks (packed in memory)."""
    packed = [load_packed(p) for p in paths]
    n = len(packed)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = _packed_jaccard(packed[i], packed[j])
    return out
