"""nanoGCG's API on the armsrace engine: change `import nanogcg` to
`from armsrace import nanogcg` and pass a checkpoint directory (or an armsrace.Model)
where nanoGCG takes a torch model.

    from armsrace import nanogcg
    config = nanogcg.GCGConfig(num_steps=250, search_width=512, topk=256, seed=42)
    result = nanogcg.run("path/to/causal-lm", None, "Tell me how to {optim_str}", "Sure,", config)
    print(result.best_string, result.best_loss)

Every field of nanoGCG 0.3's GCGConfig is accepted. Differences, by field:
- seed: armsrace draws from its own keyed streams (seed, example, iteration), not torch's,
  so a seed gives the same run on any thread count and backend but not nanoGCG's strings.
- filter_ids: nanoGCG keeps a candidate whose tokens survive decode -> encode; armsrace's
  filter (the study's) also requires the whole prompt to survive it and drops no-op swaps.
- batch_size: ignored; the engine sizes its scoring calls itself (and halves them when the
  device runs out of memory, with the same results).
- verbosity: ignored (the engine logs nothing; use armsrace.attack's progress callback).
- probe_sampling_config: not implemented (raises NotImplementedError when set).
- optim_str_init as a list (nanoGCG's buffer initialisation): not implemented.
- messages: a string, or a list of {"role", "content"} dicts whose contents are joined,
  as nanoGCG does for a tokenizer without a chat template; a checkpoint whose tokenizer
  has a chat template needs the formatted string (armsrace applies no templates).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, List, Optional, Union

from . import Model, attack

__all__ = ["GCGConfig", "GCGResult", "GCG", "run"]

_SLOT = "{optim_str}"


@dataclass
class GCGConfig:
    """nanoGCG 0.3's GCGConfig, field for field (defaults included)."""

    num_steps: int = 250
    optim_str_init: Union[str, List[str]] = "x x x x x x x x x x x x x x x x x x x x"
    search_width: int = 512
    batch_size: Optional[int] = None
    topk: int = 256
    n_replace: int = 1
    buffer_size: int = 0
    use_mellowmax: bool = False
    mellowmax_alpha: float = 1.0
    early_stop: bool = False
    use_prefix_cache: bool = True
    allow_non_ascii: bool = False
    filter_ids: bool = True
    add_space_before_target: bool = False
    seed: Optional[int] = None
    verbosity: str = "INFO"
    probe_sampling_config: Any = None


@dataclass
class GCGResult:
    """nanoGCG's GCGResult: the best loss and string, and per step the current loss and
    string. `run` is armsrace's full result (summary with FLOPs, results directory)."""

    best_loss: float
    best_string: str
    losses: List[float]
    strings: List[str]
    run: Any = field(default=None, repr=False)


def _prompt(messages: Union[str, list]) -> str:
    if isinstance(messages, str):
        text = messages
    else:
        text = "".join(m["content"] for m in messages)
    if _SLOT not in text:
        text += _SLOT
    if text.count(_SLOT) != 1:
        raise ValueError(f"the prompt must hold {_SLOT} once, found {text.count(_SLOT)}")
    return text


def _has_chat_template(model_dir: Path) -> bool:
    p = model_dir / "tokenizer_config.json"
    try:
        return bool(json.loads(p.read_text()).get("chat_template"))
    except (OSError, ValueError):
        return False


class GCG:
    """nanoGCG's GCG class: GCG(model, tokenizer, config).run(messages, target)."""

    def __init__(self, model: Union[str, Path, Model], tokenizer: Any = None,
                 config: Optional[GCGConfig] = None):
        if isinstance(model, Model):
            self.model = model
        else:
            if not isinstance(model, (str, Path)):
                raise TypeError(
                    "armsrace.nanogcg takes a checkpoint directory or an armsrace.Model, "
                    f"not {type(model).__name__} (torch modules stay in nanoGCG)"
                )
            self.model = Model.load(model)
        if self.model.head != "causal_lm":
            raise ValueError(
                f"{self.model.path}: GCG toward a target string needs a causal LM; use "
                "armsrace.attack for classifiers"
            )
        self.tokenizer = tokenizer  # unused: the checkpoint's tokenizer.json is read
        self.config = config or GCGConfig()
        self._check(self.config)

    @staticmethod
    def _check(c: GCGConfig) -> None:
        known = {f.name for f in fields(GCGConfig)}
        extra = set(vars(c)) - known
        if extra:
            raise TypeError(f"unknown GCGConfig fields: {sorted(extra)}")
        if c.probe_sampling_config is not None:
            raise NotImplementedError(
                "probe sampling (nanoGCG's probe_sampling_config) is not implemented in "
                "armsrace; leave it None"
            )
        if not isinstance(c.optim_str_init, str):
            raise NotImplementedError(
                "optim_str_init as a list (buffer initialisation) is not implemented; give "
                "one string"
            )

    def run(self, messages: Union[str, list], target: str,
            out: Union[str, Path, None] = None) -> GCGResult:
        c = self.config
        self._check(c)
        if not isinstance(messages, str) and _has_chat_template(Path(self.model.path)):
            raise NotImplementedError(
                f"{self.model.path} has a chat template, which armsrace does not apply: pass "
                "the formatted prompt string with {optim_str} in it"
            )
        before, after = _prompt(messages).split(_SLOT)
        init_ids = self.model.tokenize(c.optim_str_init)
        if not init_ids:
            raise ValueError(f"optim_str_init {c.optim_str_init!r} tokenizes to nothing")
        if c.add_space_before_target:
            target = " " + target
        with tempfile.TemporaryDirectory(prefix="armsrace-nanogcg-") as tmp:
            data = Path(tmp) / "prompt.jsonl"
            data.write_text(json.dumps({"text": "", "label": 0}) + "\n")
            (Path(tmp) / "prompt.task.json").write_text(json.dumps({
                "instructions": before,
                "label_names": [" A", " B"],
                "answer_prompt": after,
            }))
            loss = ({"kind": "mellowmax", "alpha": float(c.mellowmax_alpha)}
                    if c.use_mellowmax else {"kind": "cross_entropy"})
            res = attack(
                self.model, task=f"jsonl:{data}", attack="gcg", out=out,
                overwrite=out is not None, examples=1, threat="suffix", target=target,
                init=c.optim_str_init, attack_tokens=len(init_ids),
                ascii_only=not c.allow_non_ascii, iterations=c.num_steps,
                search_width=c.search_width, topk=c.topk, n_replace=c.n_replace,
                buffer_size=c.buffer_size, loss=loss, early_stop=c.early_stop,
                filter=c.filter_ids, seed=0 if c.seed is None else int(c.seed),
                fast={"prefix_cache": bool(c.use_prefix_cache), "group_reuse": True,
                      "shortcut": True},
            )
        if res.summary["attacked"] == 0:
            raise ValueError(
                "the model already generates the target after the prompt: nothing to attack"
            )
        losses = [float("nan") if l["loss"] is None else l["loss"] for l in res.iterations]
        strings = [l.get("attack_text", "") for l in res.iterations]
        best = min(range(len(losses)), key=lambda i: (losses[i] != losses[i], losses[i]))
        return GCGResult(losses[best], strings[best], losses, strings, run=res)


def run(model: Union[str, Path, Model], tokenizer: Any, messages: Union[str, list],
        target: str, config: Optional[GCGConfig] = None) -> GCGResult:
    """nanoGCG's nanogcg.run(model, tokenizer, messages, target, config)."""
    return GCG(model, tokenizer, config).run(messages, target)
