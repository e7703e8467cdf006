"""Model directories, one format for every model the package trains.

A directory holds ``config.json`` (``{"format": ..., "format_version": N, "<section>": {config}}``),
``model.safetensors`` (the weights), ``metadata.json`` and, for models that read token streams,
``tokenizer.json``. Nothing is unpickled. Writes go to a temporary sibling that replaces the
target at the end, so a crash never leaves half a model. Reading checks everything a damaged,
foreign or outdated folder can get wrong and says so in one line naming the file:
:class:`ArtifactError` (a ``ValueError``), or ``FileNotFoundError`` for a missing folder or file.

The generator (:data:`MODEL`, :mod:`crystalformer.model.files`), the position refiner
(:data:`REFINER`, :mod:`crystalformer.refinement.io`) and the property models (:data:`PROPERTY`,
:mod:`crystalformer.inverse.property`) all use :func:`write_artifact` / :func:`read_artifact`.
Older layouts still load (refiner format 2 kept its fields at the top level) or fail with
one line saying what to do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import swap_into_place, temporary_sibling


class ArtifactError(ValueError):
    """A model directory that cannot be read as what it claims to be."""


@dataclass(frozen=True)
class Kind:
    """What one kind of model directory looks like."""

    name: str  # for messages: "model", "refiner", "property model"
    format: str  # config.json "format"
    version: int  # the format_version this package writes and reads
    section: str  # the key of config.json that holds the model's config fields
    tokenizer: bool  # the directory carries tokenizer.json
    metadata: bool = False  # metadata.json is required (it holds what the model needs, e.g. a property's scale)
    outdated: dict[int, str] = field(default_factory=dict)  # older version -> what to do about it
    legacy: dict[str, int] = field(default_factory=dict)  # older "format" strings (fields at top level) -> version

    @property
    def files(self) -> tuple[str, ...]:
        return (("config.json", "model.safetensors") + (("tokenizer.json",) if self.tokenizer else ())
                + (("metadata.json",) if self.metadata else ()))


MODEL = Kind("model", "crystalformer-model", 1, "model", tokenizer=True)
REFINER = Kind("refiner", "crystalformer-refiner", 2, "refiner", tokenizer=False,
               outdated={1: "it was written before the score network changed (format 2 predicts the normalized "
                            "score); train it again with `crystalformer train-refiner`"},
               legacy={"crystalformer-refiner/1": 1, "crystalformer-refiner/2": 2})
PROPERTY = Kind("property model", "crystalformer-property", 1, "property", tokenizer=True, metadata=True)
KINDS: dict[str, Kind] = {name: kind for kind in (MODEL, REFINER, PROPERTY) for name in (kind.format, *kind.legacy)}


@dataclass
class Artifact:
    """A model directory that passed the checks: its config section, metadata and (maybe) tokenizer."""

    path: Path
    kind: Kind
    config: dict
    metadata: dict
    tokenizer: object | None

    def weight_count(self) -> int:
        """Number of stored weights, read from the safetensors header (nothing is allocated)."""
        from safetensors import SafetensorError, safe_open

        f = self.path / "model.safetensors"
        try:
            with safe_open(str(f), "pt") as weights:
                return sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())  # noqa: SIM118
        except (SafetensorError, OSError) as err:
            raise ArtifactError(f"{f}: cannot read the weights ({err})") from None

    def load_into(self, module, device="cpu"):
        """Load the weights into ``module`` (strict) and return it on ``device`` in eval mode."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        f = self.path / "model.safetensors"
        try:
            state = load_file(str(f), device=str(device))
        except (SafetensorError, OSError) as err:
            raise ArtifactError(f"{f}: cannot read the weights ({err})") from None
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ArtifactError(f"{f} does not fit the {self.kind.name} in config.json: {first}") from None
        return module.to(device).eval()


def write_artifact(path, kind: Kind, config: dict, module, tokenizer=None, metadata: dict | None = None) -> Path:
    """Write ``module``'s weights and ``config`` as a ``kind`` directory at ``path`` (replaced if it exists)."""
    from safetensors.torch import save_file

    if kind.tokenizer and tokenizer is None:
        raise ValueError(f"a {kind.name} directory needs its tokenizer")
    path = Path(path)
    tmp = temporary_sibling(path)
    write_json(tmp / "config.json", {"format": kind.format, "format_version": kind.version, kind.section: config})
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp / "model.safetensors"))
    if kind.tokenizer:
        tokenizer.save(tmp)
    write_json(tmp / "metadata.json", metadata or {})
    swap_into_place(tmp, path)
    return path


def read_artifact(path, kind: Kind) -> Artifact:
    """Check a ``kind`` directory and read its config section, metadata and tokenizer (not the weights)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such {kind.name} directory")
    data = read_json(path / "config.json") if (path / "config.json").is_file() else {}
    found = data.get("format")
    other = KINDS.get(found) if isinstance(found, str) else None
    if other is not None and other is not kind:  # before the file check: a refiner has no tokenizer.json
        raise ArtifactError(f"{path} holds a crystalformer {other.name}, not a {kind.name}")
    missing = [name for name in kind.files if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a crystalformer {kind.name} directory: missing {', '.join(missing)}")
    if isinstance(found, str) and found in kind.legacy:  # older layout: config fields at the top level
        version = kind.legacy[found]
        section = {k: v for k, v in data.items() if k != "format"}
    elif found == kind.format:
        version = data.get("format_version")
        section = data.get(kind.section)
    else:
        raise ArtifactError(f"{path / 'config.json'} is not a crystalformer {kind.name} config (format {found!r})")
    if version != kind.version:
        advice = kind.outdated.get(version, f"this package reads format {kind.version}; use the crystalformer "
                                            f"version that wrote it, or train it again")
        raise ArtifactError(f"{path} is a {kind.name} of format {version}: {advice}")
    if not isinstance(section, dict):
        raise ArtifactError(f"{path / 'config.json'} has no \"{kind.section}\" section: the folder is incomplete or not a {kind.name}")
    metadata = read_json(path / "metadata.json") if (path / "metadata.json").is_file() else {}
    tokenizer = None
    if kind.tokenizer:
        from .tokenizer import CrystalTokenizer

        try:
            tokenizer = CrystalTokenizer.load(path)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{path / 'tokenizer.json'}: cannot read the tokenizer ({err})") from None
    return Artifact(path, kind, section, metadata, tokenizer)


def read_metadata(path) -> dict:
    """``metadata.json`` of a model directory ({} when there is none)."""
    f = Path(path) / "metadata.json"
    return read_json(f) if f.is_file() else {}


def read_json(f: Path) -> dict:
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{f} is not valid JSON: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{f}: cannot read it ({err})") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{f}: a JSON object is expected")
    return data


def write_json(f: Path, data: dict) -> None:
    tmp = f.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(f)
