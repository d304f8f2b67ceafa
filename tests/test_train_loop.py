"""The trainer: exact resume after an interrupt, signals, atomic checkpoints, accumulation, the projection
switch, config handling and export."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from _train_data import lm_config, write_codebook, write_upstream_shards
from aromni.core.errors import AromniError
from aromni.core.train import checkpoint as C
from aromni.core.train.config import load_config
from aromni.core.train.stages import run

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLI = [sys.executable, "-m", "aromni", "train"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    return {"shards": write_upstream_shards(str(root / "up"), n_files=2, per_file=12),
            "codebook": write_codebook(str(root / "codebook.npy"))}


def metrics(out_dir: str) -> list[dict]:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _cfg(tmp_path, data, name: str, *overrides: str):
    path = lm_config(str(tmp_path), data["shards"])
    base = [f"out_dir={tmp_path / name}", "loss.perceptual_weight=0.5", f"loss.codebook={data['codebook']}",
            "loss.perceptual_tasks=[text_to_image]"]
    return load_config(path, base + list(overrides))


def test_interrupt_and_resume_reproduce_the_losses_exactly(tmp_path, data):
    over = ["train.max_steps=9", "optim.grad_accum=2", "data.batch_size=2", "checkpoint.every=4"]
    ref = run(_cfg(tmp_path, data, "ref", *over), quiet=True)
    assert ref["interrupted"] is None and ref["step"] == 9

    def interrupt(rec):
        if rec["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # handled by the trainer: finish the step, save, stop

    cfg = _cfg(tmp_path, data, "cut", *over)
    first = run(cfg, quiet=True, on_step=interrupt)
    assert first["interrupted"] == "SIGINT" and first["step"] == 5
    assert os.path.basename(C.latest_checkpoint(str(tmp_path / "cut" / "checkpoints"))) == "step-00000005"
    second = run(cfg, resume=True, quiet=True)
    assert second["step"] == 9 and second["interrupted"] is None

    a, b = metrics(str(tmp_path / "ref")), metrics(str(tmp_path / "cut"))
    keys = ("step", "loss", "ntp", "pl", "lr", "grad_norm", "tokens")
    assert [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]  # bit-exact
    assert any(r["pl"] > 0 for r in a)  # the perceptual term was active
    # the same data in the same order: 24 samples, 4 per step -> steps 7..9 are the second epoch
    assert sum(r["tokens"] for r in a[:6]) == sum(r["tokens"] for r in b[:6])


def test_stop_at_pauses_a_run_that_resume_continues_exactly(tmp_path, data):
    """train.stop_at ends the run early with a checkpoint and no export; the schedule still spans max_steps, so
    --resume gives the uninterrupted run's losses bit for bit."""
    over = ["train.max_steps=6", "data.batch_size=2", "checkpoint.every=0", "checkpoint.export_bundle=true"]
    run(_cfg(tmp_path, data, "ref", *over), quiet=True)
    cfg = _cfg(tmp_path, data, "part", *over, "train.stop_at=4")
    first = run(cfg, quiet=True)
    assert first["paused"] and first["step"] == 4 and first["bundle"] is None and first["interrupted"] is None
    assert not os.path.exists(tmp_path / "part" / "bundle")
    again = run(cfg, resume=True, quiet=True)  # stop_at is a step number, not a step count
    assert again["paused"] and again["step"] == 4
    second = run(_cfg(tmp_path, data, "part", *over), resume=True, quiet=True)
    assert second["step"] == 6 and not second["paused"] and second["bundle"]
    keys = ("step", "loss", "ntp", "lr", "grad_norm")
    assert [[r[k] for k in keys] for r in metrics(str(tmp_path / "ref"))] == \
        [[r[k] for k in keys] for r in metrics(str(tmp_path / "part"))]


@pytest.mark.slow
def test_sigterm_through_the_cli_saves_and_exits(tmp_path, data):
    path = lm_config(str(tmp_path), data["shards"])
    out = tmp_path / "run"
    p = subprocess.Popen(CLI + [path, "train.max_steps=100000", "checkpoint.every=0"], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fn = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not fn.exists() or len(fn.read_text().splitlines()) < 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "continue with --resume" in err and "Traceback" not in err
    step = metrics(str(out))[-1]["step"]
    latest = C.latest_checkpoint(str(out / "checkpoints"))
    assert latest.endswith(f"step-{step:08d}")
    assert os.path.isfile(out / "config.yaml") and os.path.isfile(os.path.join(latest, "config.yaml"))
    r = subprocess.run(CLI + [path, f"train.max_steps={step + 2}", "--resume", "-q", "--json"], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["step"] == step + 2
    assert [m["step"] for m in metrics(str(out))][-3:] == [step, step + 1, step + 2]


def test_checkpoint_killed_mid_write_leaves_the_previous_one(tmp_path):
    root = tmp_path / "ck"
    script = textwrap.dedent(f"""
        import os, signal, torch
        from aromni.core.train import checkpoint as C
        C.save_checkpoint({str(root)!r}, 1, {{"trainer.pt": {{"x": torch.ones(3)}}, "config.yaml": "a: 1\\n"}})
        def dying(obj, f, *a, **k):  # write half a file, then the process dies
            with open(f, "wb") as fh:
                fh.write(b"PK\\x03\\x04 partial")
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying
        C.save_checkpoint({str(root)!r}, 2, {{"model.safetensors": {{"w": torch.zeros(2)}},
                                             "trainer.pt": {{"x": torch.zeros(3)}}}})
    """)
    r = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    leftovers = [n for n in os.listdir(root) if n.startswith(C.TMP_PREFIX)]
    assert leftovers  # the partial write is there ...
    latest = C.latest_checkpoint(str(root))
    assert latest.endswith("step-00000001")  # ... but the latest is still the complete one
    assert torch.equal(C.read_file(latest, "trainer.pt")["x"], torch.ones(3))
    # the next save cleans up and rotation keeps the newest `keep`
    for s in (2, 3, 4):
        C.save_checkpoint(str(root), s, {"trainer.pt": {"x": torch.full((3,), float(s))}}, keep=2)
    assert sorted(os.listdir(root)) == ["latest", "step-00000003", "step-00000004"]
    with pytest.raises(AromniError, match="missing"):
        C.read_file(str(root / "step-00000004"), "model.safetensors")


def test_gradient_accumulation_matches_a_big_batch(tmp_path, data):
    fp32 = "train.precision=fp32"  # exact comparison: precision auto picks bf16 on CPUs with avx512_bf16
    a = run(_cfg(tmp_path, data, "big", "data.batch_size=4", "optim.grad_accum=1", "train.max_steps=3", fp32),
            quiet=True)
    b = run(_cfg(tmp_path, data, "acc", "data.batch_size=1", "optim.grad_accum=4", "train.max_steps=3", fp32),
            quiet=True)
    ma, mb = metrics(a["out_dir"]), metrics(b["out_dir"])
    for x, y in zip(ma, mb):
        assert x["tokens"] == y["tokens"]
        assert abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["grad_norm"] - y["grad_norm"]) < 1e-4


@pytest.mark.parametrize("train_projection", [True, False])
def test_projection_is_trained_unless_switched_off(tmp_path, data, train_projection):
    from aromni.core.train.loop import Trainer
    from aromni.core.train.resolve import build_omni

    cfg = _cfg(tmp_path, data, "proj", "train.max_steps=2", "loss.perceptual_tasks=null",
               f"loss.train_projection={str(train_projection).lower()}")
    tr = Trainer(cfg, build_omni(cfg), quiet=True)
    w0 = tr.module.proj.weight.detach().clone()
    in_opt = any(p is tr.module.proj.weight for g in tr.opt.param_groups for p in g["params"])
    tr.fit()
    changed = not torch.equal(w0, tr.module.proj.weight.detach())
    assert in_opt == train_projection and changed == train_projection
    assert metrics(cfg.out_dir)[-1]["pl"] > 0


def test_config_errors_and_print_config(tmp_path, data):
    path = lm_config(str(tmp_path), data["shards"])
    r = subprocess.run(CLI + [path, "optim.lr=2e-4", "data.train.0.path=/x", "--print-config"], env=ENV,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "lr: 0.0002" in r.stdout and "path: /x" in r.stdout
    r = subprocess.run(CLI + [path, "optim.lrr=1"], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown key 'optim.lrr'" in r.stderr and "lm.yaml" in r.stderr
    r = subprocess.run(CLI + [path, "train.stop_at=0"], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "train.stop_at" in r.stderr
    r = subprocess.run(CLI + [path, "tokenizer.pick=middle"], env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "tokenizer.pick" in r.stderr
    for bad, msg in [("optim.lr=fast", "optim.lr"), ("kind=gan", "kind"), ("lr", "not key=value"),
                     ("data.train.5.path=x", "no element"), ("train.max_steps=0", "max_steps"),
                     ("train.stop_at=0", "stop_at"), ("tokenizer.pick=middle", "tokenizer.pick")]:
        with pytest.raises(AromniError, match=msg):
            load_config(path, [bad])
    cfg = load_config(path, ["optim.betas=[0.9, 0.95]", "loss.perceptual_tasks=null", "optim.lr=1e-4"])
    assert cfg.optim.betas == [0.9, 0.95] and cfg.loss.perceptual_tasks is None and cfg.optim.lr == 1e-4


def test_export_bundle_and_validation(tmp_path, data):
    from aromni.core.bundle import load_bundle

    cfg = _cfg(tmp_path, data, "exp", "train.max_steps=4", "checkpoint.export_bundle=true", "train.eval_every=2",
               "train.eval_batches=2", f"data.heldout=[{{type: pretrain_jsonl, path: {data['shards']}}}]",
               "checkpoint.every=1", "checkpoint.keep=2", "checkpoint.export_hf=true")
    res = run(cfg, quiet=True)
    assert os.path.isfile(os.path.join(res["out_dir"], "hf", "config.json"))
    m = metrics(res["out_dir"])
    assert [r["step"] for r in m if "val_loss" in r] == [2, 4]
    assert all(k in m[0] for k in ("loss", "ntp", "pl", "lr", "grad_norm", "tokens_per_s"))
    assert len(C.list_checkpoints(os.path.join(res["out_dir"], "checkpoints"))) == 2
    omni = load_bundle(res["bundle"])
    sd = C.read_file(res["checkpoint"], "model.safetensors")
    assert all(torch.equal(v, sd[k]) for k, v in omni.model.state_dict().items())
    with pytest.raises(AromniError, match="resume"):  # a second run into the same out_dir must not clobber it
        run(cfg, quiet=True)


@pytest.mark.slow
def test_tokenizer_stages_then_lm_from_scratch(tmp_path):
    """kind bpe / image_vq / codec write one tokenizer dir; an LM from a config name trains on the raw manifest."""
    from aromni.core.bundle import load_bundle
    from aromni.core.train.resolve import read_tokenizer_specs
    from test_train_data import _manifest

    man = _manifest(str(tmp_path / "corpus"))
    cfg = tmp_path / "tok.yaml"
    cfg.write_text(f"kind: bpe\nout_dir: {tmp_path / 'toks'}\ndata: {{train: [{{type: manifest, path: {man}}}], "
                   f"batch_size: 2}}\ntokenizer: {{vocab_size: 300}}\ntrain: {{max_steps: 2}}\noptim: {{lr: 1e-3}}\n")
    for kind in ("bpe", "image_vq", "codec"):
        res = run(load_config(str(cfg), [f"kind={kind}"]), quiet=True)
        assert res["tokenizer"] == {"bpe": "text", "image_vq": "image", "codec": "speech"}[kind]
    specs = read_tokenizer_specs(str(tmp_path / "toks"))
    assert sorted(specs) == ["image", "speech", "text"]
    assert -60 < specs["speech"]["input_dbfs"] < 0  # the level of the clips it heard (levels.typical_level)

    lm = tmp_path / "lm.yaml"
    lm.write_text(f"kind: lm\nout_dir: {tmp_path / 'lm'}\nmodel: {{config: tiny, tokenizers: {tmp_path / 'toks'}, "
                  f"overrides: {{max_seq_len: 256}}}}\ndata: {{train: [{{type: manifest, path: {man}}}], "
                  f"batch_size: 2}}\nloss: {{perceptual_weight: 1.0}}\ntrain: {{max_steps: 2, device: cpu}}\n")
    res = run(load_config(str(lm)), quiet=True)
    omni = load_bundle(res["bundle"])
    assert omni.vocab.text_start == omni.text.offset == 16
    assert omni.vocab.image_codes == omni.image.codebook_size and omni.vocab.audio_codes == omni.speech.codebook_size
    assert omni.model.cfg.vocab_size == omni.vocab.vocab_size


def test_normalisation_modes_on_the_first_step(tmp_path, data):
    """step: Σce·w / Σw over the step's micro-batches; micro (reference): the mean of per-micro-batch means."""
    from aromni.core.train.loop import Trainer
    from aromni.core.train.resolve import build_omni

    got, parts = {}, None
    for mode in ("step", "micro"):
        cfg = _cfg(tmp_path, data, f"norm-{mode}", "optim.grad_accum=2", "data.batch_size=2",
                   "loss.perceptual_weight=0", f"loss.normalize={mode}")
        tr = Trainer(cfg, build_omni(cfg), quiet=True)
        if parts is None:  # the two micro-batches of step 1 through the untrained model: (Σ ce·w, Σ w) each
            probe = Trainer(cfg, build_omni(cfg), quiet=True)
            with torch.no_grad():
                parts = [(float(probe._micro(b)[0]), float(b.weights.sum())) for b in
                         (next(probe.batcher), next(probe.batcher))]
        got[mode] = tr.train_step()["ntp"]
    (n1, w1), (n2, w2) = parts
    assert w1 != w2
    assert abs(got["step"] - (n1 + n2) / (w1 + w2)) < 1e-5
    assert abs(got["micro"] - (n1 / w1 + n2 / w2) / 2) < 1e-5


def test_tokenizer_file_picks(tmp_path):
    """max_items with pick first: the manifest's first N mentions (a file named twice counts twice); with pick
    spread: each file once, a seeded sample across the whole manifest (late tasks included)."""
    from aromni.core.train.stages import _files_of

    man = tmp_path / "m.jsonl"
    lines = [{"task": "asr", "audio": f"a{i // 2}.wav"} for i in range(20)]  # each clip named twice
    lines += [{"task": "tts", "audio": f"t{i}.wav"} for i in range(10)]  # only at the end
    lines += [{"task": "chat", "turns": [{"role": "user", "audio": "c.wav"}, {"role": "assistant", "text": "hi"}]}]
    lines += [{"task": "asr", "audio": "a0.wav"}]  # named again at the end: keeps its first place
    man.write_text("".join(json.dumps(d) + "\n" for d in lines))

    (tmp_path / "codec.yaml").write_text(f"kind: codec\ndata: {{train: [{{type: manifest, path: {man}}}]}}\n")

    def files(*over):
        cfg = load_config(str(tmp_path / "codec.yaml"), list(over))
        return [os.path.basename(p) for p, _ in _files_of(cfg, "audio")]

    assert files() == [f"a{i // 2}.wav" for i in range(20)] + [f"t{i}.wav" for i in range(10)] + ["c.wav", "a0.wav"]
    assert files("tokenizer.max_items=6") == ["a0.wav", "a0.wav", "a1.wav", "a1.wav", "a2.wav", "a2.wav"]
    every = [f"a{i}.wav" for i in range(10)] + [f"t{i}.wav" for i in range(10)] + ["c.wav"]
    assert files("tokenizer.pick=spread") == every
    got = files("tokenizer.pick=spread", "tokenizer.max_items=12")
    assert len(got) == len(set(got)) == 12 and any(f.startswith("t") for f in got)
    assert got == files("tokenizer.pick=spread", "tokenizer.max_items=12")  # seeded
    assert got != files("tokenizer.pick=spread", "tokenizer.max_items=12", "seed=1")
    with pytest.raises(AromniError, match="tokenizer.pick"):
        files("tokenizer.pick=middle")


def test_cpu_bf16_detection_reads_the_cpu_flags():
    from aromni.core.device import cpu_has_native_bf16

    amd = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    spr = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n"
    assert not cpu_has_native_bf16(amd) and cpu_has_native_bf16(spr)
    assert cpu_has_native_bf16("flags : amx_bf16 amx_tile\n") and not cpu_has_native_bf16("model name : x\n")


@pytest.mark.parametrize("native", [False, True])
def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(tmp_path, data, monkeypatch, capsys, native):
    """On a CPU without native bf16, autocast is emulated (~17x slower than fp32 on an AVX2 EPYC): ``auto``
    trains in fp32 there and an explicit ``bf16`` warns."""
    import aromni.core.device as device
    import aromni.core.train.loop as loop

    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda cpuinfo=None: native)
    run(_cfg(tmp_path, data, "auto", "train.max_steps=1", "train.device=cpu", "train.precision=auto"), quiet=False)
    err = capsys.readouterr().err
    picked = "bf16 autocast" if native else "fp32"
    assert f"precision {picked} (train.precision auto)" in err
    run(_cfg(tmp_path, data, "bf16", "train.max_steps=1", "train.device=cpu", "train.precision=bf16"), quiet=False)
    err = capsys.readouterr().err
    assert "precision bf16 autocast (train.precision bf16)" in err
    assert ("without native bf16" in err) is (not native)
