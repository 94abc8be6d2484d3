"""armsrace from Python: the Rust engine's models, passes and attacks.

    import armsrace
    model = armsrace.Model.load("models/pythia-password-match")
    logits, preds = model.classify(["You are an online security system. ..."])
    run = armsrace.attack(model, task="password-match", attack="gcg", examples=20)
    print(run.summary["asr"], run.summary["nominal_flops"])

Engine work releases the GIL; Ctrl-C stops an attack after the unit of work it is in (its
results directory resumes like a killed run's). Engine errors raise ValueError (bad input),
OSError (files) or armsrace.ArmsraceError, with the engine's message.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _armsrace
from ._armsrace import ArmsraceError, set_threads

__all__ = [
    "ArmsraceError",
    "AttackRun",
    "Model",
    "attack",
    "bundled_model",
    "set_threads",
]

_ROOT = Path(__file__).resolve().parent


def bundled_model() -> Path:
    """The bundled PasswordMatch classifier, when the package runs from a checkout."""
    for base in [_ROOT.parent.parent, Path.cwd()]:
        p = base / "models" / "pythia-password-match"
        if (p / "config.json").exists():
            return p
    raise FileNotFoundError(
        "the bundled classifier (models/pythia-password-match) is not beside this package; "
        "pass a checkpoint directory"
    )


class Model:
    """A Hugging Face checkpoint (GPTNeoX or Qwen2, classifier or causal LM) on a backend.

    Attributes mirror `armsrace inspect`: path, device, dtype, architecture, head
    ("classifier" or "causal_lm"), n_params (the study's N), n_gen (the causal LM's N),
    num_labels, vocab_size, hidden_size, num_layers, max_position_embeddings, pad_token_id.
    """

    def __init__(self, inner: "_armsrace.Model"):
        self._inner = inner

    @classmethod
    def load(
        cls, path: Union[str, Path], device: str = "cpu", dtype: str = "f32"
    ) -> "Model":
        """device: "cpu" or "cuda" (a build with the cuda feature); dtype: "f32" or "bf16"."""
        return cls(_armsrace.Model.load(str(path), device=device, dtype=dtype))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        i = self._inner
        return (
            f"armsrace.Model({str(i.path)!r}, {i.architecture} {i.head}, "
            f"N={i.n_params:,}, device={i.device!r}, dtype={i.dtype!r})"
        )

    def tokenize(self, text: str) -> list[int]:
        return self._inner.tokenize(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._inner.decode(list(ids))

    def classify(
        self, texts: Union[str, Sequence[str]], batch_tokens: int = 16384
    ) -> tuple[np.ndarray, np.ndarray]:
        """Logits [n, num_labels] (float32) and predictions [n] of a classifier."""
        if isinstance(texts, str):
            texts = [texts]
        raw, n, width = self._inner.classify_logits(list(texts), batch_tokens)
        logits = np.frombuffer(raw, dtype="<f4").reshape(n, width)
        return logits, logits.argmax(axis=1)

    def loss(
        self,
        seqs: Sequence[Sequence[int]],
        labels: Optional[Sequence[int]] = None,
        target_mask: Optional[Sequence[Sequence[bool]]] = None,
    ) -> np.ndarray:
        """Loss per sequence: cross-entropy toward `labels` (a classifier), or the mean
        next-token cross-entropy over the tokens `target_mask` marks (a causal LM)."""
        out = self._inner.loss(*_seqs_args(seqs, labels, target_mask))
        return np.asarray(out, dtype=np.float32)

    def onehot_grad(
        self,
        seqs: Sequence[Sequence[int]],
        positions: Sequence[tuple[int, int]],
        labels: Optional[Sequence[int]] = None,
        target_mask: Optional[Sequence[Sequence[bool]]] = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(loss per sequence, d loss / d one-hot input [len(positions), vocab]) at the
        (sequence, token) `positions`: what GCG's token proposals come from."""
        s, lab, mask = _seqs_args(seqs, labels, target_mask)
        pos = [(int(b), int(t)) for b, t in positions]
        losses, raw, rows, vocab = self._inner.onehot_grad(s, pos, lab, mask)
        grad = np.frombuffer(raw, dtype="<f4").reshape(rows, vocab)
        return np.asarray(losses, dtype=np.float32), grad


def _seqs_args(seqs, labels, target_mask):
    s = [[int(t) for t in q] for q in seqs]
    lab = None if labels is None else [int(x) for x in labels]
    mask = None if target_mask is None else [[bool(x) for x in m] for m in target_mask]
    return s, lab, mask


@dataclass
class AttackRun:
    """An attack's results: `summary` (summary.json: both ASR curves, FLOPs nominal and
    executed, compute to X% ASR), `iterations` (results.jsonl's per-example lines),
    `examples` (each example's final, best and first successful attack with the prompt
    text the victim read) and the results directory `out`."""

    summary: dict
    iterations: list[dict]
    examples: list[dict]
    out: Path
    complete: bool = True
    clean: list[dict] = field(default_factory=list)


def attack(
    model: Union["Model", str, Path, None] = None,
    *,
    task: str = "password-match",
    attack: str = "gcg",
    sampler: Union[str, Path, None] = None,
    out: Union[str, Path, None] = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: Optional[Callable[[dict], None]] = None,
    **options: Any,
) -> AttackRun:
    """Runs `attack` ("gcg", "random-token", "beast") with the study's settings, the same
    engine and results format as `armsrace attack`.

    `model`: an armsrace.Model (attacked on its device) or a checkpoint directory (loaded
    on `device`); default: the bundled classifier. `options` set any field of the run's
    plan or of the attack's config, by the names `config.json` uses: examples, threat
    ("suffix", "prefix", "infix:0.9"), iterations, flops (a FLOP budget per example),
    data, data_seed, attack_tokens, init, ascii_only, target, group_size, pretrain_tokens,
    and the attack's own (GCG: search_width, topk, n_replace, buffer_size, early_stop,
    filter, seed, loss; BEAST: beam, branching, temperature). Unknown names raise
    TypeError. `out`: the results directory (default: a temporary one, removed after the
    results are read); re-running into the same `out` with the same settings resumes.
    `progress` is called with a dict (done, total, broken, attacked, FLOPs) after every
    unit of work.
    """
    loaded = model if isinstance(model, Model) else None
    path = Path(loaded.path if loaded else (model or bundled_model()))
    plan = json.loads(
        _armsrace.default_plan(
            str(path), attack, None if sampler is None else str(sampler)
        )
    )
    plan["task"] = task
    for key, value in options.items():
        _set_option(plan, key, value)
    plan_json = json.dumps(plan)
    inner = loaded._inner if loaded else None
    if out is None:
        with tempfile.TemporaryDirectory(prefix="armsrace-") as tmp:
            return _run(plan_json, Path(tmp), overwrite, inner, device, progress, keep=False)
    return _run(plan_json, Path(out), overwrite, inner, device, progress, keep=True)


def _set_option(plan: dict, key: str, value: Any) -> None:
    if key == "iterations":
        plan["budget"]["iterations"] = int(value)
    elif key == "flops":
        plan["budget"]["flops"] = None if value is None else float(value)
    elif key in plan["attack"] and key != "name":
        plan["attack"][key] = str(value) if key == "sampler" else value
    elif key in ("model", "attack", "budget"):
        raise TypeError(f"attack(): set {key!r} through its own argument")
    elif key in plan or key in ("data", "target", "pretrain_tokens"):
        plan[key] = str(value) if key == "data" and value is not None else value
    else:
        known = sorted(
            set(plan) - {"model", "attack", "budget", "task"}
            | {k for k in plan["attack"] if k != "name"}
            | {"iterations", "flops", "pretrain_tokens"}
        )
        raise TypeError(
            f"attack(): unknown option {key!r} for {plan['attack']['name']}; "
            f"known: {', '.join(known)}"
        )


def _run(plan_json, out, overwrite, inner, device, progress, keep) -> AttackRun:
    res = json.loads(
        _armsrace.attack(
            plan_json, str(out), overwrite=overwrite, model=inner, device=device,
            progress=progress,
        )
    )
    lines = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l]
    return AttackRun(
        summary=res["summary"],
        iterations=[l for l in lines if l["type"] == "iter"],
        examples=res["examples"],
        out=out if keep else Path(),
        complete=res["complete"],
        clean=[l for l in lines if l["type"] == "clean"],
    )
