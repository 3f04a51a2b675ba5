"""Training of the siren network (:class:`perception.models.siren.SirenNet`) on synthesised audio.

Every training clip is made by this module from a seed; no recorded audio is used (the real ESC-50
clips under ``../shared/realdata/esc50_audio`` are the held-out test, never trained on). A clip is
CLIP_S of 16 kHz mono audio:

* positive: one or two sirens over a background, the siren-to-background power ratio drawn from
  [snr_db_min, snr_db_max]. Siren styles: the simulator's own wail and yelp
  (:func:`drivers.sim_audio.siren_phase_cycles`, with its harmonic mix or others, the frequency scaled
  x0.45-1.6 and periods beyond the simulator's), triangle/sawtooth/sine sweeps, hi-lo two-tone,
  and mechanical (spin-up / coast-down, rotating-horn modulation). Each is heard from a vehicle passing
  at 0-30 m/s (Doppler, 1 / r), optionally with a ground reflection, reverberation, band limiting,
  partial presence in the clip, clipping and 16-bit quantisation.
* negative: a street soundscape without a siren: a noise floor (road, wind, white / pink / brown) and
  0-3 events from: engine (idle, revving), horn beeps and chords, reversing beeper, speech and babble,
  barking, birdsong chirps, rain and impulsive clicks, hammering, music (notes, chords, vibrato), church
  bells (random strikes or a peal), aircraft and helicopter, train (rumble, wheel clacks, brake squeal),
  machinery whine and wind whistle, each with the same street acoustics as the sirens; half of the
  negatives also carry a tonal decoy (horn, beeper, machinery, music, bells, whistling wind, voice,
  barking, engine, train) mixed in exactly as a siren would be (same SNR range), so that "a tone stands
  out of the noise" never means siren on its own; a few are digital silence.

A positive's pitch must sweep by at least MIN_SWEEP_RATIO within every window the network can see (its
parameters are redrawn otherwise): a window showing a steady tone cannot tell a siren from a horn, and
such windows are left to the negatives.

Reproducible: clip ``k`` of split ``s`` depends only on ``(seed, s, k)``, so the data does not depend on
how many processes make it; the network's initialisation, batch order and dropout come from ``seed``.
Validation accuracy (threshold 0.5) on ``n_val_clips`` held-out simulated clips (split 1) is measured
every ``val_every_steps`` steps and at the end; the checkpoint keeps the final weights and those numbers.

Command line: ``perception train --config configs/train_siren.yaml --out DIR`` calls
:func:`main_train_siren`.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from calibration.yamlconf import load_yaml_file, to_dict
from drivers.sim_audio import SIREN_HARMONICS, SPEED_OF_SOUND_MPS, siren_frequency, siren_phase_cycles
from perception.audio import FEATURE_RATE_HZ, N_FRAMES, N_MELS, WINDOW_S, WINDOW_SAMPLES, log_mel

FS = FEATURE_RATE_HZ
CLIP_S = WINDOW_S + 0.25  # clips are a little longer than the network's window: each epoch crops a random window
CLIP_SAMPLES = int(CLIP_S * FS)
NYQUIST_GUARD_HZ = 7600.0  # harmonics above this are left out (no aliasing at 16 kHz)
WEIGHTS_NAME = "siren.pt"


@dataclass(frozen=True)
class SirenTrainConfig:
    """Everything a siren training run depends on (``configs/train_siren.yaml``).

    Args:
        seed: seeds the clips, the initialisation, batch order and dropout.
        n_train_clips, n_val_clips: simulated clips for training and validation.
        positive_fraction: share of clips with a siren.
        snr_db_min, snr_db_max: siren-to-background power ratio range [dB] of positive clips.
        epochs, batch_size: passes over the training clips and clips per step.
        lr: peak learning rate (AdamW, one-cycle schedule); weight_decay: AdamW decoupled decay.
        channels: widths of SirenNet's four conv blocks.
        val_every_steps: validation period [steps].
        num_threads: torch CPU threads for training.
        num_workers: processes that synthesise clips (1: in this process).
    """

    seed: int = 0
    n_train_clips: int = 6000
    n_val_clips: int = 600
    positive_fraction: float = 0.5
    snr_db_min: float = -5.0
    snr_db_max: float = 20.0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    channels: tuple[int, int, int, int] = (16, 32, 48, 64)
    val_every_steps: int = 100
    num_threads: int = 2
    num_workers: int = 2

    def __post_init__(self) -> None:
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"SirenTrainConfig: {what}")

        need(self.n_train_clips >= 2, f"n_train_clips must be >= 2, got {self.n_train_clips}")
        need(self.n_val_clips >= 1, f"n_val_clips must be >= 1, got {self.n_val_clips}")
        need(0.0 < self.positive_fraction < 1.0, f"positive_fraction must be in (0, 1), got {self.positive_fraction}")
        need(self.snr_db_min <= self.snr_db_max, f"snr_db_min ({self.snr_db_min}) > snr_db_max ({self.snr_db_max})")
        need(self.epochs >= 1 and self.batch_size >= 2, f"epochs must be >= 1 and batch_size >= 2, got "
             f"{self.epochs}, {self.batch_size}")
        need(self.lr > 0 and self.weight_decay >= 0, f"lr must be > 0 and weight_decay >= 0, got {self.lr}, "
             f"{self.weight_decay}")
        need(len(self.channels) == 4 and min(self.channels) >= 1, f"channels must be 4 positive widths, got "
             f"{self.channels}")
        need(self.val_every_steps >= 1, f"val_every_steps must be >= 1, got {self.val_every_steps}")
        need(self.num_threads >= 1 and self.num_workers >= 1, f"num_threads and num_workers must be >= 1, got "
             f"{self.num_threads}, {self.num_workers}")


def load_siren_train_config(path: str | Path) -> SirenTrainConfig:
    """Read ``configs/train_siren.yaml`` (strict: unknown or mistyped keys are errors naming the key)."""
    return load_yaml_file(SirenTrainConfig, path)


# ================================================================================== synthesis helpers
def _t(n: int) -> np.ndarray:
    return np.arange(n) / FS


def _unit(x: np.ndarray) -> np.ndarray:
    """Scaled to unit rms (silence stays silence)."""
    r = float(np.sqrt(np.mean(x * x)))
    return x / r if r > 1e-12 else x


def _fast_len(n: int) -> int:
    """A length >= n that is a multiple of 1024 (FFT-friendly)."""
    return -(-n // 1024) * 1024


def _shape_spectrum(x: np.ndarray, gain_of_hz) -> np.ndarray:
    """Zero-phase filter ``x`` by the gain curve ``gain_of_hz(f)`` (FFT, padded against wrap-around)."""
    n = len(x)
    m = _fast_len(n + 2048)
    f = np.fft.rfftfreq(m, 1.0 / FS)
    return np.fft.irfft(np.fft.rfft(x, m) * gain_of_hz(f), m)[:n]


def _noise(rng: np.random.Generator, n: int, gain_of_hz) -> np.ndarray:
    """Unit-rms Gaussian noise with the magnitude response ``gain_of_hz`` (drawn directly as a spectrum:
    stationary noise needs no padding)."""
    f = np.fft.rfftfreq(n, 1.0 / FS)
    spec = (rng.normal(size=len(f)) + 1j * rng.normal(size=len(f))) * gain_of_hz(f)
    return _unit(np.fft.irfft(spec, n))


def _smooth_random(rng: np.random.Generator, n: int, rate_hz: float) -> np.ndarray:
    """Unit-rms random curve varying on the time scale 1 / rate_hz (Catmull-Rom spline through random
    knots, evaluated every 1 ms and linearly interpolated)."""
    k = int(math.ceil(n / FS * rate_hz)) + 4
    knots = rng.normal(size=k)
    m = n // 16 + 2
    x = np.linspace(1.0, k - 3.0, m)
    i = np.clip(x.astype(int), 1, k - 3)
    u = x - i
    p0, p1, p2, p3 = knots[i - 1], knots[i], knots[i + 1], knots[i + 2]
    y = 0.5 * (2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)
    y = np.interp(np.linspace(0.0, m - 1.0, n), np.arange(m), y)
    return _unit(y - y.mean())


def _harmonic_amps(rng: np.random.Generator, n_max: int) -> np.ndarray:
    """Relative amplitudes of harmonics 1..n_max: a power law (all or odd harmonics), jittered."""
    h = np.arange(1, n_max + 1, dtype=np.float64)
    a = h ** -rng.uniform(0.4, 2.2)
    if rng.random() < 0.35:
        a[1::2] *= rng.uniform(0.0, 0.3)  # square-ish: mostly odd harmonics
    a *= 10.0 ** (rng.normal(0.0, 4.0, n_max) / 20.0)
    a[0] = max(a[0], 0.3 * a.max()) if rng.random() < 0.8 else a[0]
    return a / a.max()


def _tone(phase_cycles: np.ndarray, freq_hz: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of harmonics ``amps[h-1] sin(2 pi h phase)``, each harmonic faded out where ``h f`` nears
    NYQUIST_GUARD_HZ (so a sweeping tone never aliases). sin(h x) by the Chebyshev recurrence."""
    x = 2.0 * np.pi * (phase_cycles - np.floor(phase_cycles))
    s_prev, s_cur, c2 = np.zeros_like(x), np.sin(x), 2.0 * np.cos(x)
    out = np.zeros(len(x))
    f_max = float(np.max(freq_hz))
    for h, a in enumerate(amps, start=1):
        if h * np.min(freq_hz) >= NYQUIST_GUARD_HZ:
            break
        if a > 0:
            if h * f_max > NYQUIST_GUARD_HZ - 400.0:
                out += a * np.clip((NYQUIST_GUARD_HZ - h * freq_hz) / 400.0, 0.0, 1.0) * s_cur
            else:
                out += a * s_cur
        s_prev, s_cur = s_cur, c2 * s_cur - s_prev
    return out


def _phase(freq_hz: np.ndarray) -> np.ndarray:
    """Phase [cycles] of a tone with instantaneous frequency ``freq_hz`` (per sample), 0 at the first sample."""
    return np.cumsum(freq_hz) / FS


def _envelope_bursts(rng: np.random.Generator, n: int, on_s: tuple[float, float], off_s: tuple[float, float],
                     ramp_s: float = 0.01) -> np.ndarray:
    """0/1 gate (smoothed edges) of bursts with durations and gaps drawn from the given ranges [s]."""
    g = np.zeros(n)
    t = -rng.uniform(0.0, on_s[1] + off_s[1])
    while t < n / FS:
        on = rng.uniform(*on_s)
        a, b = int(max(t, 0.0) * FS), int(min(t + on, n / FS) * FS)
        if b > a:
            g[a:b] = 1.0
        t += on + rng.uniform(*off_s)
    return _smooth(g, max(1, int(ramp_s * FS)))


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Moving average over 2k + 1 samples, applied twice (triangular kernel; edges use what exists)."""
    for _ in range(2):
        c = np.concatenate([[0.0], np.cumsum(x)])
        i = np.arange(len(x))
        lo, hi = np.maximum(i - k, 0), np.minimum(i + k + 1, len(x))
        x = (c[hi] - c[lo]) / (hi - lo)
    return x


def _fft_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear convolution by FFT, first len(x) samples."""
    m = _fast_len(len(x) + len(kernel))
    return np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(kernel, m), m)[:len(x)]


def _decays(rng: np.random.Generator, n: int, rate_hz: float, decay_s: tuple[float, float],
            regular: bool = False) -> np.ndarray:
    """Impulse train (Poisson or regular at ``rate_hz``, starting before the clip so tails run in)
    convolved with an exponential decay -> (n,) envelope."""
    tau = rng.uniform(*decay_s)
    pre = int(min(5.0 * tau, 1.0) * FS)
    span = (n + pre) / FS
    if regular:
        times = np.arange(rng.uniform(0, 1.0 / rate_hz), span, 1.0 / rate_hz)
    else:
        times = rng.uniform(0.0, span, rng.poisson(rate_hz * span))
    train = np.zeros(n + pre)
    np.add.at(train, np.minimum((times * FS).astype(int), n + pre - 1), rng.uniform(0.3, 1.0, len(times)))
    kernel = np.exp(-np.arange(pre + 1) / (tau * FS))
    return np.maximum(_fft_convolve(train, kernel)[pre:], 0.0)


# ================================================================================== sirens
def _pass_by(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A source passing the microphone: emission times tau (n,) [s] for reception times 0..n/FS, and the
    1 / r amplitude (n,) (unit mean). Speed 0-30 m/s, closest approach 3-150 m at -3..4 s."""
    v = rng.uniform(0.0, 30.0) if rng.random() < 0.8 else 0.0
    d = math.exp(rng.uniform(math.log(3.0), math.log(150.0)))
    tc = rng.uniform(-3.0, 4.0)
    t = _t(n)
    tau = t.copy()
    for _ in range(6):  # fixed point of tau = t - r(tau) / c: contraction by v / c
        r = np.hypot(v * (tau - tc), d)
        tau = t - r / SPEED_OF_SOUND_MPS
    r = np.hypot(v * (tau - tc), d)
    amp = 1.0 / r
    return tau, amp / amp.mean()


def _sweep_shape(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Periodic sweep shape in [-1, 1] of phase x [cycles]: sine, triangle, rising or falling saw."""
    u = x - np.floor(x)
    kind = rng.integers(4)
    if kind == 0:
        return np.sin(2 * np.pi * u)
    if kind == 1:
        return 1.0 - 4.0 * np.abs(u - 0.5)
    rise = rng.uniform(0.6, 0.9)  # fraction of the period spent rising (then a quick fall), or mirrored
    s = np.where(u < rise, -1.0 + 2.0 * u / rise, 1.0 - 2.0 * (u - rise) / (1.0 - rise))
    return s if kind == 2 else -s


def _siren_frequency(rng: np.random.Generator, style: str, tau: np.ndarray) -> np.ndarray:
    """Emitted fundamental [Hz] at emission times tau for one of the non-simulator styles."""
    offset = rng.uniform(0.0, 100.0)
    te = tau + offset
    if style in ("wail", "yelp"):
        period = rng.uniform(1.5, 8.0) if style == "wail" else rng.uniform(0.1, 0.5)
        lo = math.exp(rng.uniform(math.log(300.0), math.log(1000.0)))
        hi = min(lo * rng.uniform(1.35, 3.0), 2600.0)
        s = _sweep_shape(rng, te / period)
        return lo + (hi - lo) * 0.5 * (s + 1.0)
    if style == "hilo":
        lo = math.exp(rng.uniform(math.log(330.0), math.log(1100.0)))
        hi = lo * rng.uniform(1.15, 1.6)
        period = 2.0 * rng.uniform(0.25, 0.9)
        square = np.sin(2 * np.pi * te / period)
        edge = rng.uniform(0.02, 0.2)  # transition sharpness
        g = 0.5 * (1.0 + np.tanh(square / edge))
        return lo + (hi - lo) * g
    if style == "mechanical":
        target = math.exp(rng.uniform(math.log(250.0), math.log(1300.0)))
        tconst = rng.uniform(0.4, 3.0)
        start = target * rng.uniform(0.2, 0.8)
        t0 = rng.uniform(-3.0, 1.0)
        x = np.clip(tau - t0, 0.0, None) / tconst
        if rng.random() < 0.5:  # spin up
            f = target - (target - start) * np.exp(-x)
        else:  # coast down from the target
            f = start + (target - start) * np.exp(-x)
        return f * (1.0 + 0.01 * _smooth_random(rng, len(tau), 1.0))
    raise ValueError(f"unknown siren style {style!r}")


SIREN_STYLES = ("sim_wail", "sim_yelp", "wail", "yelp", "hilo", "mechanical")
SIREN_STYLE_P = (0.16, 0.16, 0.18, 0.15, 0.22, 0.13)


MIN_SWEEP_RATIO = 1.15  # a siren's emitted pitch spans at least this ratio within any network window


def _sweeps(f_emit: np.ndarray) -> bool:
    """True when the emitted fundamental spans MIN_SWEEP_RATIO within both the first and the last
    window of the clip (the crops furthest apart): a window showing a steady tone is not labelled siren,
    since a horn or a whistle looks the same there."""
    w = min(len(f_emit), WINDOW_SAMPLES)
    return all(part.max() >= MIN_SWEEP_RATIO * part.min() for part in (f_emit[:w], f_emit[-w:]))


def _one_siren(rng: np.random.Generator, n: int) -> np.ndarray:
    """One siren as heard from a passing vehicle (unit rms); its pitch sweeps within every window."""
    style = SIREN_STYLES[rng.choice(len(SIREN_STYLES), p=SIREN_STYLE_P)]
    tau, amp = _pass_by(rng, n)
    for _ in range(50):  # redraw the siren's parameters until it sweeps (a few tries at most)
        if style.startswith("sim_"):
            kind = 1 if style == "sim_wail" else 2
            period = rng.uniform(2.0, 8.0) if kind == 1 else rng.uniform(0.12, 0.5)
            scale = math.exp(rng.uniform(math.log(0.45), math.log(1.6)))
            te = tau + rng.uniform(0.0, 1000.0)
            f_emit = scale * siren_frequency(kind, te, period)
        else:
            f_emit = _siren_frequency(rng, style, tau)
        if _sweeps(f_emit):
            break
    if style.startswith("sim_"):
        phase = scale * siren_phase_cycles(kind, te, period)  # exact, Doppler included through tau
        freq = np.gradient(phase) * FS
        n_max = 12
        if rng.random() < 0.4:
            amps = np.zeros(n_max)
            for mult, a in SIREN_HARMONICS:
                amps[mult - 1] = a
        else:
            amps = _harmonic_amps(rng, n_max)
    else:
        freq = f_emit * np.gradient(tau) * FS  # Doppler: received frequency = emitted x dtau/dt
        phase = _phase(freq) + rng.uniform()
        amps = _harmonic_amps(rng, 14)
    wave = _tone(phase, freq, amps)
    if style == "mechanical" and rng.random() < 0.5:  # a rotating horn sweeps its beam past us
        wave *= 1.0 + rng.uniform(0.2, 0.8) * np.sin(2 * np.pi * rng.uniform(0.2, 2.0) * _t(n) + rng.uniform(0, 7))
    return _unit(wave * amp)


def _propagate(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Street acoustics: ground reflection (comb), reverberation, band limiting by distance / microphone."""
    n = len(x)
    if rng.random() < 0.5:
        d = int(rng.uniform(0.0003, 0.006) * FS)
        x = x + rng.uniform(0.3, 0.8) * np.concatenate([np.zeros(d), x[:n - d]])
    if rng.random() < 0.5:
        rt60 = rng.uniform(0.15, 1.5)
        t = _t(int(min(rt60, 1.0) * FS))
        ir = rng.normal(size=len(t)) * np.exp(-6.9 * t / rt60)
        wet = _fft_convolve(x, ir)
        x = x + rng.uniform(0.1, 1.0) * _unit(wet) * np.std(x)
    if rng.random() < 0.7:
        lp = rng.uniform(1500.0, 8000.0)
        hp = rng.uniform(20.0, 300.0)
        x = _shape_spectrum(x, lambda f: 1.0 / (1.0 + (f / lp) ** 4) * (f / hp) ** 2 / (1.0 + (f / hp) ** 2))
    return _unit(x)


def synth_siren(rng: np.random.Generator, n: int = CLIP_SAMPLES) -> np.ndarray:
    """A siren (one, or two sounding together) with street acoustics; unit rms, (n,) float64 at FS."""
    x = _one_siren(rng, n)
    if rng.random() < 0.15:
        x = x + 10.0 ** (rng.uniform(-12.0, 0.0) / 20.0) * _one_siren(rng, n)
    return _propagate(rng, x)


# ================================================================================== backgrounds
def _road(rng, n):
    """Tyre/road noise (the simulator's spectrum shape: flat 50-400 Hz, -12 dB/octave above), slow level drift."""
    lo, hi = rng.uniform(30, 80), rng.uniform(250, 700)
    x = _noise(rng, n, lambda f: (f / lo) ** 2 / (1 + (f / lo) ** 2) / (1 + (f / hi) ** 2))
    return x * np.exp(0.2 * _smooth_random(rng, n, 1.0))


def _wind(rng, n):
    """Wind buffeting: below ~100 Hz, gusty."""
    fc = rng.uniform(40, 200)
    x = _noise(rng, n, lambda f: 1 / (1 + (f / fc) ** 2))
    return x * np.exp(rng.uniform(0.2, 1.0) * _smooth_random(rng, n, rng.uniform(0.5, 4.0)))


def _colored(rng, n):
    """White, pink or brown noise with a random tilt."""
    slope = rng.uniform(-1.0, 0.0) if rng.random() < 0.7 else rng.uniform(-2.0, 0.5)  # amplitude ~ f^slope
    return _noise(rng, n, lambda f: np.maximum(f, 20.0) ** slope)


def _engine(rng, n):
    """Combustion engine: firing harmonics of 20-150 Hz (idle, steady or revving) plus modulated noise."""
    f0 = rng.uniform(20, 150)
    mode = rng.integers(3)
    t = _t(n)
    if mode == 0:
        f = f0 * (1 + 0.02 * _smooth_random(rng, n, 2.0))
    elif mode == 1:
        f = f0 * np.exp(rng.uniform(0.1, 0.5) * _smooth_random(rng, n, 0.7))
    else:  # rev up and back down
        t_peak, width = rng.uniform(0, n / FS), rng.uniform(0.2, 1.0)
        f = f0 * (1 + rng.uniform(0.5, 2.0) * np.exp(-0.5 * ((t - t_peak) / width) ** 2))
    phase = _phase(f) + 4e-5 * np.cumsum(rng.normal(size=n))  # cycle-to-cycle firing jitter
    n_h = int(min(80, 5000 / f.max()))
    amps = np.arange(1, n_h + 1) ** -rng.uniform(0.3, 1.5) * 10 ** (rng.normal(0, 5, n_h) / 20)
    x = _unit(_tone(phase, f, amps))
    rough = _noise(rng, n, lambda ff: 1 / (1 + (ff / rng.uniform(500, 3000)) ** 2))
    x = x + rng.uniform(0.2, 1.0) * rough * (1 + np.cos(2 * np.pi * phase))
    return _unit(_shape_spectrum(x, _random_resonance(rng)))


def _random_resonance(rng):
    fc, q, g = rng.uniform(300, 3000), rng.uniform(1, 5), rng.uniform(0, 3)
    return lambda f: 1 + g / (1 + (q * (f - fc) / fc) ** 2)


def _horn(rng, n):
    """Car or truck horn: one or two steady tones (a chord), rich harmonics, honks of 0.08-1.5 s, each
    honk a little off the last in pitch (supply voltage, another car); from a passing car it glides by the
    Doppler shift."""
    f0 = math.exp(rng.uniform(math.log(150), math.log(700)))
    ratios = [1.0] + ([rng.uniform(1.18, 1.35)] if rng.random() < 0.6 else [])
    doppler = np.gradient(_pass_by(rng, n)[0]) * FS if rng.random() < 0.3 else np.ones(n)
    if rng.random() < 0.4:
        gate, detune = np.ones(n), np.ones(n)
    else:
        gate = _envelope_bursts(rng, n, (0.08, 1.5), (0.05, 0.8))
        # a new pitch offset wherever the gate switches on
        onsets = np.flatnonzero(np.diff((gate > 0.5).astype(int)) > 0)
        detune = np.ones(n)
        for a in onsets:
            detune[a:] = 1.0 + rng.normal(0.0, 0.025)
    x = np.zeros(n)
    amps = _harmonic_amps(rng, 20)
    for r in ratios:
        ff = f0 * r * detune * doppler * (1 + rng.uniform(-0.01, 0.01) * np.linspace(0, 1, n))
        ff = ff * (1 + 0.003 * _smooth_random(rng, n, 3))
        x += _tone(_phase(ff) + rng.uniform(), ff, amps)
    return _unit(x * gate)


def _beeper(rng, n):
    """Reversing beeper / pedestrian signal / alarm clock: one pitch switched on and off."""
    f = math.exp(rng.uniform(math.log(500), math.log(3500)))
    on = rng.uniform(0.05, 0.6)
    gate = _envelope_bursts(rng, n, (on, on * 1.05), (rng.uniform(0.05, 0.6),) * 2, ramp_s=0.003)
    x = _tone(_phase(np.full(n, f)) + rng.uniform(), np.full(n, f), _harmonic_amps(rng, 6))
    return _unit(x * gate)


def _voice(rng, n, f0_range=(85.0, 280.0)):
    """Speech-like: glottal harmonics with intonation, vowel formants per syllable, syllable rhythm."""
    f0 = rng.uniform(*f0_range) * np.exp(rng.uniform(0.05, 0.25) * _smooth_random(rng, n, 3.0))
    n_h = int(min(60, 4000 / f0.max()))
    phase = _phase(f0) + rng.uniform()
    # Formants at a 100 Hz control rate, one vowel per syllable.
    n_ctl = n // 160 + 2
    ctl_t = np.arange(n_ctl) * 0.01
    syll = np.cumsum(rng.uniform(0.1, 0.3, 40))
    vowel = np.searchsorted(syll, ctl_t)
    F = np.stack([rng.uniform(300, 900, 41), rng.uniform(900, 2500, 41), rng.uniform(2300, 3300, 41)], 1)[vowel]
    F = np.apply_along_axis(lambda c: np.convolve(c, np.ones(5) / 5, mode="same"), 0, F)
    idx = np.minimum(np.arange(n) // 160, n_ctl - 1)
    f0_ctl = f0[np.minimum(np.arange(n_ctl) * 160, n - 1)]
    h = np.arange(1, n_h + 1)[:, None]
    gain = sum(1.0 / (1.0 + ((h * f0_ctl - F[None, :, k]) / (60.0 + 40 * k)) ** 2) for k in range(3))  # (H, ctl)
    weights = h ** -1.0 * gain  # (H, ctl): harmonic amplitude through the vocal tract
    x = np.zeros(n)
    arg = 2.0 * np.pi * (phase - np.floor(phase))
    s_prev, s_cur, c2 = np.zeros(n), np.sin(arg), 2.0 * np.cos(arg)
    for k in range(n_h):  # sin((k + 1) x) by the Chebyshev recurrence
        x += weights[k, idx] * s_cur
        s_prev, s_cur = s_cur, c2 * s_cur - s_prev
    env = np.clip(np.sin(np.pi * np.interp(_t(n), np.concatenate([[0], syll]), np.arange(41) + 0.0) % 1.0), 0, 1)
    gaps = _envelope_bursts(rng, n, (0.3, 1.5), (0.05, 0.4), ramp_s=0.03)
    voiced = _unit(x) * env * gaps
    fric = _noise(rng, n, lambda f: (f / 3000) ** 2 / (1 + (f / 5000) ** 4)) * _envelope_bursts(
        rng, n, (0.03, 0.12), (0.2, 0.6), ramp_s=0.01)
    return _unit(voiced + rng.uniform(0.0, 0.5) * fric)


def _babble(rng, n):
    """Several talkers at once."""
    return _unit(sum(_voice(rng, n) * rng.uniform(0.3, 1.0) for _ in range(rng.integers(2, 5))))


def _bark(rng, n):
    """Dog barks: short noisy harmonic bursts with a falling pitch, irregular spacing."""
    x = np.zeros(n)
    t = rng.uniform(-0.2, 0.3)
    while t < n / FS:
        d = rng.uniform(0.08, 0.25)
        m = int(d * FS)
        f0 = rng.uniform(300, 900) * np.linspace(1.0, rng.uniform(0.6, 0.95), m)
        burst = _tone(_phase(f0), f0, _harmonic_amps(rng, 10)) * np.hanning(m)
        burst = burst + 0.5 * rng.normal(size=m) * np.hanning(m) * np.std(burst)
        a = int(t * FS)
        lo, hi = max(a, 0), min(a + m, n)
        if hi > lo:
            x[lo:hi] += burst[lo - a:hi - a]
        t += d + rng.uniform(0.1, 0.8)
    return _unit(_shape_spectrum(x, _random_resonance(rng)))


def _birds(rng, n):
    """Birdsong: fast chirps 1.5-8 kHz (up, down, trills) in phrases."""
    x = np.zeros(n)
    t = rng.uniform(-0.1, 0.2)
    base = rng.uniform(1500, 6000)
    while t < n / FS:
        d = rng.uniform(0.02, 0.15)
        m = int(d * FS)
        f = base * np.exp(rng.uniform(-0.2, 0.2)) * np.linspace(1, np.exp(rng.uniform(-0.6, 0.6)), m)
        f = np.minimum(f, 7500)
        chirp = np.sin(2 * np.pi * _phase(f)) * np.hanning(m)
        a = int(t * FS)
        lo, hi = max(a, 0), min(a + m, n)
        if hi > lo:
            x[lo:hi] += chirp[lo - a:hi - a]
        t += d + (rng.uniform(0.01, 0.1) if rng.random() < 0.7 else rng.uniform(0.2, 0.6))
    return _unit(x)


def _rain(rng, n):
    """Rain or gravel: dense random short clicks, high-passed, over hiss."""
    rate = math.exp(rng.uniform(math.log(50), math.log(3000)))
    clicks = rng.normal(size=n) * _decays(rng, n, rate, (0.0005, 0.004))
    hp = rng.uniform(500, 3000)
    x = _shape_spectrum(clicks, lambda f: (f / hp) ** 2 / (1 + (f / hp) ** 2))
    return _unit(_unit(x) + rng.uniform(0, 0.5) * _colored(rng, n))


BELL_RATIOS = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.67, 3.0, 4.0, 5.33, 6.1, 7.2])  # hum, prime, tierce...


def _strike(rng, n, t0, f0, n_partials, decay_s, out):
    """Add one strike at t0 [s] (may be before the clip) of a bell / metal object with fundamental f0."""
    ratios = BELL_RATIOS[:n_partials] * (1 + rng.normal(0, 0.02, n_partials))
    start = int(max(t0, 0.0) * FS)
    if start >= n:
        return
    tt = np.arange(start, n) / FS - t0
    for r in ratios:
        f = f0 * r
        if f > NYQUIST_GUARD_HZ:
            continue
        tau = decay_s * rng.uniform(0.3, 1.0) / max(r, 0.5) ** 0.5
        out[start:] += rng.uniform(0.2, 1.0) * np.exp(-tt / tau) * np.sin(2 * np.pi * f * tt + rng.uniform(0, 6))
    if t0 >= 0:  # the clapper's impact: a broadband click
        m = min(int(0.01 * FS), n - start)
        out[start:start + m] += rng.normal(size=m) * np.exp(-np.arange(m) / (0.002 * FS)) * rng.uniform(1, 4)


def _ringing(rng, n, f0, n_partials, decay_s):
    """Inharmonic struck partials (bells, metal) at 1-4 random strike times; (n,) sum."""
    x = np.zeros(n)
    for t0 in rng.uniform(-decay_s, n / FS, rng.integers(1, 5)):
        _strike(rng, n, t0, f0, n_partials, decay_s, x)
    return x


def _bells(rng, n):
    """Church / bicycle bells: a few bells struck at random, or a peal (tuned bells rung in turn at a
    steady pace, each ringing on), inharmonic partials, long decays."""
    if rng.random() < 0.5:
        x = sum(_ringing(rng, n, math.exp(rng.uniform(math.log(150), math.log(1500))), rng.integers(5, 12),
                         rng.uniform(0.5, 4.0)) for _ in range(rng.integers(1, 4)))
        return _unit(x)
    n_bells = rng.integers(3, 9)
    top = math.exp(rng.uniform(math.log(300), math.log(1500)))
    tuning = top * 2.0 ** (-np.array([0, 2, 4, 5, 7, 9, 11, 12])[:n_bells] / 12.0)
    pace = rng.uniform(0.2, 0.7)
    decay = rng.uniform(0.8, 4.0)
    n_partials = rng.integers(5, 12)
    x = np.zeros(n)
    t0 = -rng.uniform(0.0, 2.0)
    k = rng.integers(n_bells)
    while t0 < n / FS:
        _strike(rng, n, t0, tuning[k % n_bells], n_partials, decay, x)
        k += 1 if rng.random() < 0.8 else rng.integers(1, n_bells)
        t0 += pace * rng.uniform(0.9, 1.1)
    return _unit(x)


def _hammer(rng, n):
    """Hammering / construction: regular or irregular impacts with short metallic ringing."""
    x = _ringing(rng, n, rng.uniform(300, 3000), 6, rng.uniform(0.02, 0.2))
    x = x + rng.normal(size=n) * _decays(rng, n, rng.uniform(1.5, 8.0), (0.005, 0.03), regular=rng.random() < 0.5)
    return _unit(x)


def _music(rng, n):
    """Music: notes of a scale (110-1500 Hz) with harmonics, plucked or sustained, 1-3 voices, vibrato."""
    x = np.zeros(n)
    root = rng.integers(40, 70)
    scale = np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16])
    for _ in range(rng.integers(1, 4)):
        t = rng.uniform(-0.3, 0.1)
        amps = _harmonic_amps(rng, 12)
        pluck = rng.random() < 0.5
        vib = rng.uniform(0.002, 0.02) if rng.random() < 0.4 else 0.0
        while t < n / FS:
            d = rng.uniform(0.1, 0.7)
            m = int(d * FS)
            midi = root + scale[rng.integers(len(scale))] + 12 * rng.integers(-1, 2)
            f0 = 440.0 * 2 ** ((midi - 69) / 12)
            if f0 > 1500:
                f0 /= 2
            tt = np.arange(m) / FS
            f = f0 * (1 + vib * np.sin(2 * np.pi * rng.uniform(4.5, 7) * tt))
            env = np.exp(-tt / rng.uniform(0.1, 0.5)) if pluck else np.minimum(1, tt / 0.03) * np.minimum(1, (d - tt) / 0.05)
            note = _tone(_phase(f) + rng.uniform(), f, amps) * env
            a = int(t * FS)
            lo, hi = max(a, 0), min(a + m, n)
            if hi > lo:
                x[lo:hi] += note[lo - a:hi - a]
            t += d
    if rng.random() < 0.4:  # drums
        x = _unit(x) + 0.5 * rng.normal(size=n) * _decays(rng, n, rng.uniform(2, 6), (0.01, 0.08), regular=True)
    return _unit(x)


def _aircraft(rng, n):
    """Jet / propeller aircraft: broadband roar with a moving low-pass, flanging by the ground reflection,
    propeller harmonics or turbine whine with a slow Doppler glide."""
    t = _t(n)
    roar = _noise(rng, n, lambda f: 1 / (1 + (f / rng.uniform(200, 1500)) ** 1.5))
    d = np.clip(0.002 + 0.0015 * _smooth_random(rng, n, 0.5), 0.0002, 0.006)  # reflection delay [s]
    idx = np.clip(np.arange(n) - d * FS, 0, n - 1)
    roar = roar + 0.7 * np.interp(idx, np.arange(n), roar)
    glide = np.exp(-rng.uniform(0.0, 0.25) * (t - rng.uniform(0, n / FS)) / (n / FS))
    if rng.random() < 0.5:
        f = rng.uniform(60, 200) * glide
        tonal = _tone(_phase(f), f, _harmonic_amps(rng, 25))
    else:
        f = rng.uniform(2000, 6000) * glide
        tonal = np.sin(2 * np.pi * _phase(f))
    return _unit(_unit(roar) + rng.uniform(0.0, 0.7) * _unit(tonal))


def _helicopter(rng, n):
    """Helicopter: blade slap (noise pulses at 10-25 Hz), tail-rotor harmonics, turbine whine."""
    rate = rng.uniform(10, 25)
    slap = _noise(rng, n, lambda f: 1 / (1 + (f / 2000) ** 2)) * (0.5 + 0.5 * np.cos(2 * np.pi * rate * _t(n))) ** 8
    f = np.full(n, rng.uniform(50, 120))
    tail = _tone(_phase(f), f, _harmonic_amps(rng, 20))
    return _unit(_unit(slap) + rng.uniform(0.1, 0.6) * _unit(tail) + 0.3 * _road(rng, n))


def _train(rng, n):
    """Train: rumble, wheel clacks over rail joints, sometimes brake squeal (a wandering high tone)."""
    x = _unit(_noise(rng, n, lambda f: 1 / (1 + (f / 150) ** 2)))
    x = x + rng.normal(size=n) * _decays(rng, n, rng.uniform(1, 4), (0.005, 0.03), regular=True) * 2
    if rng.random() < 0.3:
        f = rng.uniform(1500, 5000) * (1 + 0.03 * _smooth_random(rng, n, 1.0))
        squeal = np.sin(2 * np.pi * _phase(f)) * _envelope_bursts(rng, n, (0.3, 1.2), (0.1, 0.5), ramp_s=0.05)
        x = _unit(x) + rng.uniform(0.3, 2.0) * squeal
    return _unit(x)


def _machine(rng, n):
    """Machinery whine, fans, mains hum, kettle: steady tones with a little drift."""
    f = math.exp(rng.uniform(math.log(50), math.log(4000))) * (1 + 0.01 * _smooth_random(rng, n, 0.5))
    x = _tone(_phase(f) + rng.uniform(), f, _harmonic_amps(rng, 10))
    return _unit(_unit(x) + rng.uniform(0.0, 1.0) * _colored(rng, n))


def _whistle_wind(rng, n):
    """Wind whistling round an edge: narrow-band noise whose centre wanders slowly."""
    fc = rng.uniform(300, 2500) * np.exp(0.15 * _smooth_random(rng, n, 1.0))
    bw = rng.uniform(0.03, 0.15)
    carrier = np.sin(2 * np.pi * _phase(fc))
    am = _noise(rng, n, lambda f: 1 / (1 + (f / (bw * fc.mean())) ** 4))
    return _unit(carrier * (1 + am) + 0.5 * _wind(rng, n))


FLOORS = (_road, _wind, _colored)
EVENTS = (_engine, _horn, _beeper, _voice, _babble, _bark, _birds, _rain, _hammer, _music, _bells, _aircraft,
          _helicopter, _train, _machine, _whistle_wind)
EVENT_NAMES = tuple(f.__name__.lstrip("_") for f in EVENTS)
DECOYS = (_horn, _horn, _beeper, _machine, _music, _bells, _whistle_wind, _voice, _bark, _engine, _train)
DECOY_FRACTION = 0.5  # share of negative clips built around a decoy


def synth_background(rng: np.random.Generator, n: int = CLIP_SAMPLES) -> tuple[np.ndarray, str]:
    """A non-siren street soundscape: a noise floor plus 0-3 events, each at its own level.

    Returns:
        ((n,) float64 unit rms, name of the loudest event or ``"floor"``).
    """
    x = FLOORS[rng.integers(len(FLOORS))](rng, n)
    if rng.random() < 0.5:
        x = x + 10 ** (rng.uniform(-20, 0) / 20) * FLOORS[rng.integers(len(FLOORS))](rng, n)
    name, loudest = "floor", -np.inf
    for _ in range(rng.choice(4, p=(0.15, 0.45, 0.3, 0.1))):
        k = rng.integers(len(EVENTS))
        level = rng.uniform(-15.0, 30.0)
        # The same street acoustics as the sirens get, so reverberation or a comb never means "siren".
        x = x + 10 ** (level / 20) * _propagate(rng, EVENTS[k](rng, n))
        if level > loudest:
            name, loudest = EVENT_NAMES[k], level
    return _unit(x), name


def _finish(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Recording chain: level, sometimes clipping, padding with digital silence, 16-bit quantisation."""
    x = x / max(np.abs(x).max(), 1e-12) * 10 ** (rng.uniform(-50.0, -1.0) / 20)
    if rng.random() < 0.08:
        x = np.clip(x * rng.uniform(2, 10), -1, 1) * 10 ** (rng.uniform(-20.0, -1.0) / 20)
    if rng.random() < 0.08:  # ESC-50 style: the recording ends early and is padded with zeros
        cut = int(rng.uniform(0.6, 0.95) * len(x))
        x[cut:] = 0.0
    if rng.random() < 0.5:
        x = np.round(x * 32767.0) / 32767.0
    return x.astype(np.float32)


def synth_clip(seed: int, split: int, index: int, positive_fraction: float, snr_db: tuple[float, float]
               ) -> tuple[np.ndarray, bool, str, float]:
    """One training clip, a function of (seed, split, index) only.

    Returns:
        (CLIP_SAMPLES,) float32 audio at FS, label (siren present), category name (the siren style is
        not reported; positives are ``"siren"``, negatives the loudest event or ``"floor"`` / ``"silence"``),
        SNR [dB] (NaN for negatives).
    """
    rng = np.random.default_rng([seed, split, index])
    positive = bool(rng.random() < positive_fraction)
    n = CLIP_SAMPLES
    if not positive and rng.random() < 0.03:
        x = np.zeros(n) if rng.random() < 0.5 else rng.normal(size=n) * 1e-4
        return _finish(rng, x) if x.any() else x.astype(np.float32), False, "silence", float("nan")
    background, name = synth_background(rng, n)
    snr = float(rng.uniform(*snr_db))
    if not positive:
        if rng.random() < DECOY_FRACTION:
            # A tonal decoy placed exactly as a siren would be (same SNR range, same street acoustics), so
            # "a tone stands out of the noise" alone never means siren.
            k = rng.integers(len(DECOYS))
            background = 10 ** (snr / 20) * _propagate(rng, DECOYS[k](rng, n)) + background
            return _finish(rng, background), False, DECOYS[k].__name__.lstrip("_"), float("nan")
        return _finish(rng, background), False, name, float("nan")
    siren = synth_siren(rng, n)
    if rng.random() < 0.15:  # the siren starts or stops inside the clip (present >= 60 % of it)
        keep = int(rng.uniform(0.6, 0.95) * n)
        gate = np.zeros(n)
        if rng.random() < 0.5:
            gate[:keep] = 1.0
        else:
            gate[n - keep:] = 1.0
        siren = siren * _smooth(gate, 80)  # 10 ms fades
    x = 10 ** (snr / 20) * siren + background
    return _finish(rng, x), True, "siren", snr


def _features_batch(args: tuple[int, int, range, float, tuple[float, float]]
                    ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Worker: clips ``indices`` of one split -> (K, N_MELS, T) float32 features, labels, categories, SNRs."""
    seed, split, indices, pos, snr = args
    feats, labels, cats, snrs = [], [], [], []
    for k in indices:
        x, label, cat, s = synth_clip(seed, split, k, pos, snr)
        feats.append(log_mel(x, FS))
        labels.append(label)
        cats.append(cat)
        snrs.append(s)
    return np.stack(feats), np.array(labels, bool), cats, np.array(snrs, np.float32)


def make_dataset(config: SirenTrainConfig, split: int, n_clips: int, progress: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Features of ``n_clips`` clips of one split (0 train, 1 validation).

    Returns:
        features (n, N_MELS, T) float32 [dB] (T frames of CLIP_S), labels (n,) bool, categories, SNRs (n,)
        float32 [dB] (NaN for negatives).
    """
    from tqdm import tqdm

    chunk = 100
    jobs = [(config.seed, split, range(a, min(a + chunk, n_clips)), config.positive_fraction,
             (config.snr_db_min, config.snr_db_max)) for a in range(0, n_clips, chunk)]
    bar = tqdm(total=n_clips, desc=f"synthesising {'train' if split == 0 else 'val'} clips", unit="clip",
               disable=not progress)
    parts = []
    if config.num_workers == 1:
        for job in jobs:
            parts.append(_features_batch(job))
            bar.update(len(job[2]))
    else:
        with ProcessPoolExecutor(config.num_workers, mp_context=get_context("spawn")) as pool:
            for part in pool.map(_features_batch, jobs):
                parts.append(part)
                bar.update(len(part[1]))
    bar.close()
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [c for p in parts for c in p[2]], np.concatenate([p[3] for p in parts]))


# ================================================================================== training
def _center_crop(feats: np.ndarray) -> np.ndarray:
    start = (feats.shape[-1] - N_FRAMES) // 2
    return feats[..., start:start + N_FRAMES]


def evaluate_siren(model, feats: np.ndarray, labels: np.ndarray, categories: list[str], snrs: np.ndarray
                   ) -> dict:
    """Accuracy (threshold 0.5) and mean BCE loss of ``model`` on (n, N_MELS, T) features (centre crop),
    overall, per category and per SNR band of the positives (plain dict of floats, checkpoint-safe)."""
    import torch

    model.eval()
    x = torch.from_numpy(_center_crop(feats)[:, None].copy())
    with torch.inference_mode():
        logits = torch.cat([model.logits(x[a:a + 256]) for a in range(0, len(x), 256)])[:, 0]
    y = torch.from_numpy(labels.astype(np.float32))
    loss = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
    pred = (logits > 0).numpy()
    correct = pred == labels
    per_cat = {c: float(correct[[k for k, cc in enumerate(categories) if cc == c]].mean())
               for c in sorted(set(categories))}
    by_snr = {}
    for lo, hi in ((-100, -5), (-5, 0), (0, 5), (5, 10), (10, 100)):
        m = labels & (snrs >= lo) & (snrs < hi)
        if m.any():
            by_snr[f"{max(lo, -99)}..{min(hi, 99)} dB"] = float(correct[m].mean())
    return {"accuracy": float(correct.mean()), "loss": loss, "n_clips": int(len(labels)),
            "true_positive_rate": float(correct[labels].mean()) if labels.any() else float("nan"),
            "true_negative_rate": float(correct[~labels].mean()) if (~labels).any() else float("nan"),
            "per_category": per_cat, "positives_by_snr": by_snr}


def train_siren(config: SirenTrainConfig, out_dir: str | Path, progress: bool = True) -> Path:
    """Synthesise the data, train SirenNet, validate, and write ``out_dir/siren.pt``.

    The checkpoint is ``{"config": dict, "state_dict": ..., "val": dict}`` (plain types and tensors,
    loadable with ``torch.load(weights_only=True)``; :func:`perception.models.siren.load_siren_model`).
    Also writes ``out_dir/train_siren.yaml`` (the resolved config) and ``out_dir/val.json``.

    Returns:
        the path of the checkpoint.
    """
    import json

    import torch
    import yaml
    from tqdm import tqdm

    from perception.models.siren import SirenNet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    train_x, train_y, _, _ = make_dataset(config, 0, config.n_train_clips, progress)
    val = make_dataset(config, 1, config.n_val_clips, progress)
    t_data = time.monotonic() - t_start

    model = SirenNet(config.channels)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = len(train_x) // config.batch_size
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=max(total, 1),
                                                pct_start=0.15)
    feats = torch.from_numpy(train_x)
    labels = torch.from_numpy(train_y.astype(np.float32))
    n_extra = feats.shape[-1] - N_FRAMES
    history = []
    bar = tqdm(total=total, desc="training siren", unit="step", disable=not progress)
    step = 0
    val_metrics: dict = {}
    for _ in range(config.epochs):
        order = torch.randperm(len(feats), generator=gen)
        for b in range(steps_per_epoch):
            model.train()
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            starts = torch.randint(0, n_extra + 1, (len(idx),), generator=gen)
            cols = starts[:, None] + torch.arange(N_FRAMES)[None, :]  # random crop per clip
            x = torch.gather(feats[idx], 2, cols[:, None, :].expand(-1, N_MELS, -1))[:, None]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model.logits(x)[:, 0], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % config.val_every_steps == 0 or step == total:
                val_metrics = evaluate_siren(model, *val)
                history.append({"step": step, "loss": float(loss.detach()), "val_accuracy": val_metrics["accuracy"]})
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", val_acc=f"{val_metrics['accuracy']:.3f}")
    bar.close()
    if not val_metrics:
        val_metrics = evaluate_siren(model, *val)
    val_metrics["history"] = history
    val_metrics["data_seconds"] = round(t_data, 1)
    val_metrics["total_seconds"] = round(time.monotonic() - t_start, 1)
    model.eval()
    ckpt = {"config": to_dict(config), "state_dict": model.state_dict(), "val": val_metrics}
    path = out / WEIGHTS_NAME
    torch.save(ckpt, path)
    (out / "train_siren.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    (out / "val.json").write_text(json.dumps(val_metrics, indent=2))
    return path


def main_train_siren(config_path: str | Path, out_dir: str | Path) -> Path:
    """``perception train --config configs/train_siren.yaml --out DIR``: load the config strictly, train
    with a progress bar, and return the written checkpoint path."""
    return train_siren(load_siren_train_config(config_path), out_dir, progress=True)

