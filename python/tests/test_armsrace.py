"""The Python package against the CLI (the same engine through another door) and against
hand computations: classify logits equal `armsrace classify`'s, an attack's results equal
`armsrace attack`'s, the nanoGCG-compatible API equals the CLI's target-string GCG with the
same settings, every nanoGCG 0.3 config field is accepted, bad inputs raise, and a run
stopped from Python resumes to the uninterrupted run's results."""

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import armsrace
from armsrace import nanogcg

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
CLS = FIX / "neox-parallel-cls"
LM = FIX / "neox-sequential-lm"
BUNDLED = ROOT / "models" / "pythia-password-match"


def cli() -> Path:
    exe = Path(os.environ.get("ARMSRACE_BIN", ROOT / "target" / "release" / "armsrace"))
    assert exe.exists(), f"{exe}: build the CLI first (cargo build --release)"
    return exe


def run_cli(*args) -> str:
    r = subprocess.run([str(cli()), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def lines(out: Path) -> list:
    rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l]
    for r in rows:
        r.pop("wall_s", None)
    return rows


def test_model_attributes_match_inspect():
    m = armsrace.Model.load(CLS)
    text = run_cli("inspect", "--model", CLS)
    assert f"{m.n_params:,}".replace(",", "") in text.replace(",", "")
    assert m.architecture == "gpt_neox" and m.head == "classifier" and m.num_labels == 2
    assert (m.device, m.dtype) == ("cpu", "f32")


def test_classify_logits_equal_the_clis():
    src = CLS / "classify.jsonl"
    want = [json.loads(l) for l in run_cli("classify", "--model", CLS, "--input", src).splitlines()]
    texts = [json.loads(l)["text"] for l in src.read_text().splitlines() if l.strip()]
    m = armsrace.Model.load(CLS)
    logits, preds = m.classify(texts)
    assert logits.dtype == np.float32 and logits.shape == (len(texts), 2)
    np.testing.assert_array_equal(logits, np.array([w["logits"] for w in want], np.float32))
    assert preds.tolist() == [w["pred"] for w in want]


def test_loss_is_the_cross_entropy_of_the_logits():
    m = armsrace.Model.load(CLS)
    texts = ["hello there", "System password: cat\nUser password: cat\n---\n"]
    logits, _ = m.classify(texts)
    labels = [1, 0]
    z = logits.astype(np.float64)
    want = np.log(np.exp(z).sum(axis=1)) - z[np.arange(2), labels]
    seqs = [m.tokenize(t) for t in texts]
    np.testing.assert_allclose(m.loss(seqs, labels=labels), want, rtol=1e-5)
    pos = [(0, 0), (1, len(seqs[1]) - 1)]
    losses, grad = m.onehot_grad(seqs, pos, labels=labels)
    np.testing.assert_allclose(losses, want, rtol=1e-5)
    assert grad.shape == (2, m.vocab_size) and np.isfinite(grad).all()
    # A causal LM's target-token loss: mean next-token cross-entropy over marked tokens.
    lm = armsrace.Model.load(LM)
    ids = lm.tokenize("one two three four")
    mask = [False] * (len(ids) - 1) + [True]
    assert lm.loss([ids], target_mask=[mask]).shape == (1,)


def test_attack_equals_the_cli_run(tmp_path):
    args = dict(examples=4, iterations=3, search_width=16, seed=2)
    res = armsrace.attack(str(BUNDLED), out=tmp_path / "py", **args)
    run_cli("attack", "--model", BUNDLED, "--examples", 4, "--iterations", 3,
            "--search-width", 16, "--seed", 2, "--out", tmp_path / "cli")
    assert lines(tmp_path / "py") == lines(tmp_path / "cli")
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    for k in ["asr", "asr_current", "asr_cumulative", "asr_kind", "nominal_flops", "attacked"]:
        assert res.summary[k] == cli_summary[k], k
    assert len(res.iterations) == sum(1 for l in lines(tmp_path / "cli") if l["type"] == "iter")
    ex = [json.loads(l) for l in (tmp_path / "cli" / "examples.jsonl").read_text().splitlines()]
    assert res.examples == ex
    # A loaded model attacks the same way.
    m = armsrace.Model.load(BUNDLED)
    again = armsrace.attack(m, out=tmp_path / "loaded", **args)
    assert again.summary["asr"] == res.summary["asr"]


def test_a_stopped_attack_resumes_to_the_uninterrupted_results(tmp_path):
    args = dict(examples=4, iterations=4, search_width=16, group_size=2)
    whole = armsrace.attack(str(BUNDLED), out=tmp_path / "whole", **args)
    seen = []

    def stop_after_two(p):
        seen.append(p)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        armsrace.attack(str(BUNDLED), out=tmp_path / "cut", progress=stop_after_two, **args)
    assert set(seen[0]) >= {"done", "total", "broken", "attacked", "nominal_flops"}
    cut = lines(tmp_path / "cut")
    assert 0 < len(cut) < len(lines(tmp_path / "whole"))
    resumed = armsrace.attack(str(BUNDLED), out=tmp_path / "cut", **args)
    assert lines(tmp_path / "cut") == lines(tmp_path / "whole")
    assert resumed.summary["asr"] == whole.summary["asr"]


# nanoGCG 0.3's GCGConfig fields, written out from its source (not read from ours).
NANOGCG_FIELDS = [
    "num_steps", "optim_str_init", "search_width", "batch_size", "topk", "n_replace",
    "buffer_size", "use_mellowmax", "mellowmax_alpha", "early_stop", "use_prefix_cache",
    "allow_non_ascii", "filter_ids", "add_space_before_target", "seed", "verbosity",
    "probe_sampling_config",
]


def test_every_nanogcg_config_field_is_accepted():
    names = [f.name for f in dataclasses.fields(nanogcg.GCGConfig)]
    assert names == NANOGCG_FIELDS
    cfg = nanogcg.GCGConfig(
        num_steps=2, optim_str_init="x x x x", search_width=8, batch_size=4, topk=16,
        n_replace=2, buffer_size=2, use_mellowmax=True, mellowmax_alpha=2.0, early_stop=True,
        use_prefix_cache=False, allow_non_ascii=True, filter_ids=False,
        add_space_before_target=True, seed=5, verbosity="WARNING",
    )
    r = nanogcg.run(str(LM), None, [{"role": "user", "content": "Say {optim_str} please"}],
                    "yes", cfg)
    assert len(r.losses) == len(r.strings) <= 2
    assert r.best_loss == min(r.losses)


def test_nanogcg_api_equals_the_cli_target_attack(tmp_path):
    before, after, target = "Tell me a story about ", " now", "Sure"
    cfg = nanogcg.GCGConfig(num_steps=4, search_width=32, topk=64, seed=3,
                            optim_str_init="x x x x x x x x")
    r = nanogcg.run(str(LM), None, before + "{optim_str}" + after, target, cfg)
    # The same attack from the CLI: the prompt as a JSONL task with its sidecar.
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"text": "", "label": 0}) + "\n")
    (tmp_path / "p.task.json").write_text(json.dumps(
        {"instructions": before, "label_names": [" A", " B"], "answer_prompt": after}))
    n = len(armsrace.Model.load(LM).tokenize(cfg.optim_str_init))
    run_cli("attack", "--model", LM, "--task", f"jsonl:{data}", "--examples", 1,
            "--target", target, "--init", cfg.optim_str_init, "--attack-tokens", n,
            "--vocab", "ascii", "--iterations", 4, "--search-width", 32, "--topk", 64,
            "--seed", 3, "--out", tmp_path / "cli")
    it = [l for l in lines(tmp_path / "cli") if l["type"] == "iter"]
    assert r.losses == [l["loss"] for l in it]
    assert r.strings == [l["attack_text"] for l in it]
    assert r.best_loss == min(l["loss"] for l in it)


def test_bad_inputs_raise():
    with pytest.raises(armsrace.ArmsraceError, match="does not exist"):
        armsrace.Model.load("/nonexistent/checkpoint")
    with pytest.raises(ValueError, match="dtype"):
        armsrace.Model.load(CLS, dtype="f64")
    with pytest.raises(ValueError, match="bf16"):
        armsrace.Model.load(CLS, dtype="bf16")
    with pytest.raises(ValueError, match="device"):
        armsrace.Model.load(CLS, device="tpu")
    with pytest.raises(armsrace.ArmsraceError, match="CUDA|cuda"):
        armsrace.Model.load(CLS, device="cuda")
    lm = armsrace.Model.load(LM)
    with pytest.raises(ValueError, match="not a classifier"):
        lm.classify(["hello"])
    m = armsrace.Model.load(CLS)
    with pytest.raises(ValueError, match="labels"):
        m.loss([[1, 2, 3]], labels=[0, 1])
    with pytest.raises(ValueError, match="exactly one"):
        m.loss([[1, 2, 3]])
    with pytest.raises(ValueError, match="outside"):
        m.onehot_grad([[1, 2, 3]], [(0, 7)], labels=[0])
    with pytest.raises(TypeError, match="unknown option"):
        armsrace.attack(str(BUNDLED), search_widht=8)
    with pytest.raises(ValueError, match="threat|infix"):
        armsrace.attack(str(BUNDLED), threat="middle", iterations=1, examples=1)
    with pytest.raises(ValueError, match="sampler"):
        armsrace.attack(str(BUNDLED), attack="beast")
    with pytest.raises(NotImplementedError, match="probe"):
        nanogcg.run(str(LM), None, "a {optim_str}", "b",
                    nanogcg.GCGConfig(probe_sampling_config=object()))
    with pytest.raises(TypeError, match="torch"):
        nanogcg.GCG(object())
    with pytest.raises(ValueError, match="causal LM"):
        nanogcg.GCG(str(CLS))


def test_beast_and_random_token_run_from_python():
    sampler = ROOT / "models" / "pythia-password-match-sampler"
    b = armsrace.attack(str(BUNDLED), attack="beast", sampler=sampler, examples=2,
                        iterations=3, beam=3, branching=3)
    assert b.summary["attack"] == "beast" and b.summary["iterations"] == 3
    r = armsrace.attack(str(BUNDLED), attack="random-token", examples=2, iterations=5)
    assert r.summary["asr_kind"] == "cumulative"


def test_ctrl_c_stops_an_attack_cleanly(tmp_path):
    import signal
    import sys
    import time

    out = tmp_path / "run"
    script = f"""
import sys, armsrace
def p(_):
    print("progress", flush=True)
armsrace.attack({str(BUNDLED)!r}, attack="random-token", examples=20, iterations=100000,
                out={str(out)!r}, progress=p)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "progress"
    time.sleep(0.3)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t < 10, "the engine did not stop promptly"
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
    # What was written is whole: every line a complete results line.
    done = lines(out)
    assert done and all(l["type"] in ("clean", "iter") for l in done)
