"""The siren network: its I/O spec, ONNX export parity, the training run (config, reproducibility,
checkpoint), and the shipped weights on real recordings (ESC-50 sirens vs. other street sounds).

How a real clip is scored: the 5 s clip (44.1 kHz) is resampled once to 16 kHz, cut into windows of
WINDOW_S = 1 s every 0.5 s (9 windows; the last one aligned to the clip's end), and the clip's probability
is the maximum over its windows (:func:`perception.audio.clip_siren_probability`); a clip is flagged as a siren
at >= 0.5.
"""

from __future__ import annotations

import dataclasses
import wave
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from calibration.yamlconf import ConfigError
from perception.audio import N_FRAMES, N_MELS, SIREN_INPUT, SIREN_OUTPUT, clip_siren_probability
from perception.models.siren import (
    SIREN_SPEC,
    SirenNet,
    export_siren_onnx,
    load_siren_model,
    n_parameters,
    onnxruntime_network,
    torch_network,
)
from perception.train_siren import load_siren_train_config, synth_clip, train_siren

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "recordings" / "models" / "siren.pt"
CONFIG = REPO / "configs" / "train_siren.yaml"


def shipped_model() -> SirenNet:
    if not WEIGHTS.is_file():
        pytest.skip(f"shipped siren weights missing at {WEIGHTS}")
    return load_siren_model(WEIGHTS)


# ------------------------------------------------------------------------------------------- network
def test_spec_names_the_log_mel_input_and_the_probability_output():
    assert SIREN_SPEC.name == "siren"
    assert [(t.name, t.shape, t.dtype) for t in SIREN_SPEC.inputs] == [(SIREN_INPUT, (1, 1, N_MELS, N_FRAMES), "float32")]
    assert [(t.name, t.shape, t.dtype) for t in SIREN_SPEC.outputs] == [(SIREN_OUTPUT, (1, 1), "float32")]
    model = SirenNet()
    assert SirenNet.spec is SIREN_SPEC
    assert 3_000 <= n_parameters(model) <= 100_000


def test_output_does_not_depend_on_the_recording_gain():
    model = SirenNet().eval()
    x = torch.from_numpy(SIREN_SPEC.random_inputs(3)[SIREN_INPUT]) * 30.0 - 60.0
    with torch.inference_mode():
        a, b = model(x), model(x - 40.0)  # the same window recorded 40 dB quieter
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_onnx_export_matches_torch_to_1e_4(tmp_path):
    model = shipped_model() if WEIGHTS.is_file() else SirenNet().eval()
    path = export_siren_onnx(model, tmp_path / "siren.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == SIREN_SPEC.input_names
    assert [tuple(i.shape) for i in session.get_inputs()] == [(1, 1, N_MELS, N_FRAMES)]
    torch_run = torch_network(model)
    for seed in range(4):
        feeds = SIREN_SPEC.random_inputs(seed)
        feeds[SIREN_INPUT] = feeds[SIREN_INPUT] * 50.0 - 50.0  # dB-like values
        want = torch_run(feeds)[SIREN_OUTPUT]
        got = session.run(SIREN_SPEC.output_names, feeds)[0]
        SIREN_SPEC.check_outputs({SIREN_OUTPUT: got})
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_onnxruntime_backend_runs_the_shipped_weights_like_torch():
    model = shipped_model()
    before = torch.get_num_threads()
    ort_run, torch_run = onnxruntime_network(model, num_threads=1), torch_network(model, num_threads=1)
    feeds = SIREN_SPEC.random_inputs(9)
    feeds[SIREN_INPUT] = feeds[SIREN_INPUT] * 50.0 - 50.0
    np.testing.assert_allclose(ort_run(feeds)[SIREN_OUTPUT], torch_run(feeds)[SIREN_OUTPUT], rtol=1e-4, atol=1e-6)
    assert torch.get_num_threads() == before  # the torch backend put the thread setting back


def test_torch_backend_refuses_a_wrongly_shaped_feed():
    run = torch_network(SirenNet())
    with pytest.raises(ValueError, match="siren.log_mel"):
        run({SIREN_INPUT: np.zeros((1, 1, N_MELS, N_FRAMES + 1), np.float32)})


# ------------------------------------------------------------------------------------------- training
def test_training_config_file_loads_and_unknown_keys_are_refused(tmp_path):
    config = load_siren_train_config(CONFIG)
    assert config.num_threads == 2 and config.n_train_clips > config.n_val_clips > 0
    bad = tmp_path / "train_siren.yaml"
    bad.write_text(CONFIG.read_text() + "learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        load_siren_train_config(bad)
    bad.write_text(CONFIG.read_text().replace("snr_db_min: ", "snr_db_min: 50 #"))
    with pytest.raises(ConfigError, match="snr_db_min"):
        load_siren_train_config(bad)


def test_training_clips_depend_only_on_seed_split_and_index():
    a, label_a, _, _ = synth_clip(0, 0, 5, 0.5, (-10.0, 20.0))
    b, label_b, _, _ = synth_clip(0, 0, 5, 0.5, (-10.0, 20.0))
    c, _, _, _ = synth_clip(0, 1, 5, 0.5, (-10.0, 20.0))
    assert np.array_equal(a, b) and label_a == label_b
    assert not np.array_equal(a, c)
    labels = [synth_clip(0, 0, k, 0.5, (-10.0, 20.0))[1] for k in range(30)]
    assert 5 <= sum(labels) <= 25  # both classes are made


def test_a_tiny_training_run_is_reproducible_and_writes_a_safe_checkpoint(tmp_path):
    config = dataclasses.replace(load_siren_train_config(CONFIG), n_train_clips=48, n_val_clips=16, epochs=1,
                                 batch_size=16, val_every_steps=2, num_workers=1, channels=(4, 4, 8, 8))
    first = train_siren(config, tmp_path / "a", progress=False)
    second = train_siren(config, tmp_path / "b", progress=False)
    ckpt = torch.load(first, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"config", "state_dict", "val"}
    assert ckpt["config"]["channels"] == [4, 4, 8, 8] and ckpt["config"]["seed"] == config.seed
    assert 0.0 <= ckpt["val"]["accuracy"] <= 1.0 and ckpt["val"]["n_clips"] == 16
    assert [h["step"] for h in ckpt["val"]["history"]] == [2, 3]  # every 2 steps and at the end
    other = torch.load(second, map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(v, other[k]) for k, v in ckpt["state_dict"].items())
    model = load_siren_model(first)
    assert model.channels == (4, 4, 8, 8) and not model.training


def test_loading_something_that_is_not_a_siren_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a siren checkpoint"):
        load_siren_model(path)


def test_shipped_weights_are_small_and_carry_their_validation():
    model = shipped_model()
    assert WEIGHTS.stat().st_size < 1_000_000
    ckpt = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert ckpt["val"]["accuracy"] >= 0.9
    assert tuple(ckpt["config"]["channels"]) == model.channels


# ------------------------------------------------------------------------------------------- real clips
def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """16-bit PCM mono WAV -> (N,) float32 in [-1, 1], sample rate."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, path
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0, w.getframerate()


def test_shipped_detector_on_real_esc50_clips(realdata):
    folder = realdata / "esc50_audio" / "audio"
    if not folder.is_dir():
        pytest.skip(f"ESC-50 clips not found at {folder}")
    clips = sorted(folder.glob("*.wav"))
    sirens = [p for p in clips if p.stem.endswith("-42")]  # ESC-50 class 42 is "siren"
    others = [p for p in clips if not p.stem.endswith("-42")]
    assert (len(sirens), len(others)) == (8, 11)
    run = torch_network(shipped_model(), num_threads=1)  # one window at a time: one thread is fastest
    scores = {}
    for p in clips:
        audio, rate = read_wav(p)
        assert rate == 44100
        scores[p.name] = clip_siren_probability(run, audio, rate, hop_s=0.5)[0]
    report = ", ".join(f"{k}={v:.2f}" for k, v in scores.items())
    assert sum(scores[p.name] >= 0.5 for p in sirens) >= 7, report
    assert sum(scores[p.name] >= 0.5 for p in others) <= 1, report
