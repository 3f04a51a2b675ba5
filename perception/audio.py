"""Audio perception: siren detection (log-mel features + a small CNN), direction of arrival from the
microphone array, and late fusion of both with the vehicle detections.

Data flow (one microphone array)::

    AudioChunk (C, S) ─▶ SirenDetector ring buffer (last WINDOW_S of every channel)
                          ├─ log_mel (power averaged over channels) ─▶ network "siren" ─▶ probability
                          ├─ doa_bearing (SRP-PHAT over the C(C-1)/2 pairs) ─▶ bearing, quality
                          └─ tonal_level_db (the same tonal bins) ─▶ level (the audio stage's range check)
    Detections3D + SirenEstimate ─▶ associate_sirens ─▶ Detections3D with ``siren`` set + SirenEvent

Features (:func:`log_mel`): the network sees exactly one thing, the log-mel spectrogram of WINDOW_S of
mono audio at FEATURE_RATE_HZ, shape (N_MELS, N_FRAMES). Audio at any other integer sample rate (ESC-50
clips are 44.1 kHz, the rig is 16 kHz) is first brought to FEATURE_RATE_HZ by :func:`resample`, a
polyphase windowed-sinc (Kaiser) filter: the features, and so the detector, do not depend on the rate the
audio was recorded at. Multichannel input is mixed by averaging power spectra, not waveforms: summing
the waveforms of a 0.2 m array would comb-filter an off-axis siren (0.58 ms between microphones puts a
notch near 860 Hz, in the middle of the siren band).

Window: WINDOW_S = 1 s, so a siren is reported about a second after it starts. What one window can show
is limited: the slow end of a wail, or a two-tone siren that holds each tone for most of the window, is
a steady tone there and looks like a horn. The training data labels a window "siren" only where the
pitch visibly moves (perception/train_siren.py), and a clip or a stream is judged over several windows
(:func:`clip_siren_probability`: the maximum over 1 s windows every 0.5 s). A 2 s window (32 ms hop, same
input size) was tried and did worse within the training budget.

Direction of arrival (:func:`doa_bearing`): far-field plane wave, microphones at known positions in the
ego frame. For every frame (64 ms) and every pair (i, j) the PHAT-weighted cross-spectrum
``X_i X_j* / |X_i X_j*|`` is kept only on the siren's bins (the tonal bins: each frame's bins within
DOA_PEAK_DB of that frame's strongest bin in the siren band, which tracks a sweeping siren and ignores
the broadband noise floor between its harmonics), summed over frames, and steered over an azimuth grid
(SRP-PHAT: the sum over pairs and bins of ``Re(R_ij(f) exp(-2 pi i f tau_ij(theta)))``, with
``tau_ij = (p_i - p_j) . u(theta) / c``). The grid maximum (0.5 deg) is refined on a 0.02 deg grid
around it. A planar array cannot tell up from down; sources are assumed near the horizon, which holds
for vehicles and costs little for the ground reflection (cos(elevation) shrinks all delays alike).
``quality`` is the steered response at the peak divided by its value for a perfect plane wave (1: every
bin of every pair agrees on the direction; ~0: diffuse noise).

Spatial aliasing: the rig's microphones are 0.2 m apart, and pairs that far apart are ambiguous above
c / (2 d) = 860 Hz. A siren sweeping through the band spreads its bins over many frequencies, whose
ambiguous directions differ, so only the true one adds up. Near the top of a wail the tone holds still for
a few tenths of a second: its fundamental and harmonics then agree on a second direction almost as well.
In a simulated drive that second peak scored 0.8-1.1 of the true one. So the estimate
keeps every other local maximum of the steered response within DOA_ALIAS_RATIO of the best as another
possible bearing. The audio stage lets the vehicle that has the siren keep it while its bearing is one
of them: an alias taking the peak for a moment does not move the siren, and does not give it to anyone.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from drivers.messages import AudioChunk
from perception.decode import Detections3D, SirenEvent

# ------------------------------------------------------------------------------------------- constants
FEATURE_RATE_HZ = 16000  # every feature is computed at this rate (audio is resampled to it)
WINDOW_S = 1.0  # the network sees this much audio (see "Window" in the module docstring)
WINDOW_SAMPLES = int(WINDOW_S * FEATURE_RATE_HZ)
N_FFT = 1024  # 64 ms Hann frames: 15.6 Hz bins, fine enough to see a siren's harmonics
HOP = 256  # 16 ms: 6+ frames per cycle of the fastest yelp (0.1 s)
N_MELS = 64
FMIN_HZ = 50.0
FMAX_HZ = 8000.0
POWER_FLOOR = 1e-10  # -100 dB re full scale: digital silence maps here, not to -inf
N_FRAMES = 1 + (WINDOW_SAMPLES - N_FFT) // HOP  # 59 frames per window

RESAMPLE_ZERO_CROSSINGS = 16  # sinc half-width in zero crossings of the (lower) cutoff
RESAMPLE_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist frequency
RESAMPLE_KAISER_BETA = 8.6  # ~ -80 dB stop band

SPEED_OF_SOUND_MPS = 343.0
SIREN_BAND_HZ = (400.0, 4500.0)  # siren fundamentals and their first harmonics (DOA band)
DOA_FRAME_S = 0.064
DOA_WINDOW_S = 0.5  # the detector takes the bearing from the newest 0.5 s (a passing car turns fast)
DOA_PEAK_DB = 20.0  # bins within this of the frame's strongest in-band bin count as siren bins
DOA_COARSE_DEG = 0.5
DOA_FINE_DEG = 0.02
# Other local maxima of the steered response at least this fraction of the best are kept as other possible
# bearings (see "Spatial aliasing" in the module docstring). In the simulated drive of seed 9208 the alias
# of a siren at the top of its sweep scored 0.8-1.1 of the true peak, while the sidelobes of a single
# bearing stay under a third of the peak.
DOA_ALIAS_RATIO = 0.7

# Network contract (perception/models/siren.py builds its NetworkSpec from these).
SIREN_NETWORK = "siren"
SIREN_INPUT = "log_mel"  # (1, 1, N_MELS, N_FRAMES) float32 [dB re full scale^2]
SIREN_OUTPUT = "siren_prob"  # (1, 1) float32 in [0, 1]

VEHICLE_CLASSES = ("car", "truck")  # the classes a siren can be attached to

# Bearings closer than this to the best count as a tie (one vehicle right behind another). Small: once the
# detections are moved back to where the sound left them (audio_stage), the array's bearing of a siren
# vehicle is within 0.1-0.5 degrees of its box, while the next car in the same lane is often 0.3-2 degrees
# away and may score higher (benchmarks/siren_attribute.py).
ASSOCIATION_TIE_RAD = math.radians(0.3)

SirenNetwork = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
"""A backend for the ``siren`` network: named float32 arrays in, named float32 arrays out."""


# ------------------------------------------------------------------------------------------- resampling
def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Change the sample rate by a rational factor with a polyphase windowed-sinc filter.

    Output sample k sits at input position ``k * rate_in / rate_out``; it is the sum of the input samples
    within RESAMPLE_ZERO_CROSSINGS zero crossings of a Kaiser-windowed sinc whose cutoff is
    RESAMPLE_ROLLOFF times the lower of the two Nyquist frequencies (anti-aliasing when going down,
    anti-imaging when going up). The rate ratio is reduced to ``up / down``; the k-th output uses phase
    ``k * down mod up`` of the filter, so only that many distinct filters exist. Each is normalised to
    unit DC gain. Samples outside the input count as zero.

    Args:
        audio: (..., N) float samples; the last axis is time.
        rate_in, rate_out: positive integer sample rates [Hz].
    Returns:
        (..., ceil(N * rate_out / rate_in)) float32.
    """
    if int(rate_in) != rate_in or int(rate_out) != rate_out or rate_in <= 0 or rate_out <= 0:
        raise ValueError(f"resample: sample rates must be positive integers [Hz], got {rate_in} -> {rate_out}")
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError("resample: audio must have a time axis (last axis)")
    if rate_in == rate_out:
        return x.astype(np.float32)
    g = math.gcd(int(rate_in), int(rate_out))
    up, down = int(rate_out) // g, int(rate_in) // g
    n_in = x.shape[-1]
    n_out = -(-n_in * up // down)
    fc = RESAMPLE_ROLLOFF * min(1.0, up / down)  # cutoff in units of the input Nyquist frequency
    half = int(math.ceil(RESAMPLE_ZERO_CROSSINGS / fc))  # filter half-width [input samples]
    k = np.arange(n_out, dtype=np.int64)
    base = (k * down) // up  # input sample at or left of the output position
    phase = (k * down) % up
    uniq, inverse = np.unique(phase, return_inverse=True)
    offsets = np.arange(-half + 1, half + 1)  # taps relative to ``base``
    t = offsets[None, :] - uniq[:, None] / up  # distance of each tap from the output position [samples]
    window = np.i0(RESAMPLE_KAISER_BETA * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, None)))
    taps = fc * np.sinc(fc * t) * window / np.i0(RESAMPLE_KAISER_BETA)
    taps /= taps.sum(axis=1, keepdims=True)
    padded = np.concatenate([np.zeros(x.shape[:-1] + (half,)), x, np.zeros(x.shape[:-1] + (half + 1,))],
                            axis=-1)
    idx = base[:, None] + offsets[None, :] + half  # (n_out, 2 half) into ``padded``
    out = np.einsum("...kt,kt->...k", padded[..., idx], taps[inverse])
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------- features
@functools.lru_cache(maxsize=4)
def mel_filterbank(sample_rate: int = FEATURE_RATE_HZ, n_fft: int = N_FFT, n_mels: int = N_MELS,
                   fmin: float = FMIN_HZ, fmax: float = FMAX_HZ) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 triangular filters, equally spaced on the HTK mel scale
    (``2595 log10(1 + f / 700)``), each with unit peak. Read-only (cached)."""
    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=1)
def _hann(n: int) -> np.ndarray:
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)  # periodic Hann
    w.setflags(write=False)
    return w


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel spectrogram, the siren network's input.

    Audio not at FEATURE_RATE_HZ is resampled to it first (:func:`resample`). Frames of N_FFT samples
    (periodic Hann window) every HOP samples, no padding; power ``|X|^2 / sum(w^2)`` (a full-scale sine
    gives about -3 dB in its band), averaged over channels, N_MELS triangular mel bands FMIN_HZ-FMAX_HZ,
    ``10 log10(power + POWER_FLOOR)``.

    Args:
        audio: (N,) or (C, N) float samples in [-1, 1] (C channels are mixed by averaging power).
        sample_rate: [Hz] of ``audio``, any positive integer.
    Returns:
        (N_MELS, 1 + (N' - N_FFT) // HOP) float32 [dB re full scale^2], N' the length at FEATURE_RATE_HZ;
        WINDOW_S of audio gives (N_MELS, N_FRAMES) = (64, 59) at any input rate.
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"log_mel: audio must be (N,) or (C, N), got shape {x.shape}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"log_mel: sample_rate must be a positive integer [Hz], got {sample_rate}")
    if sample_rate != FEATURE_RATE_HZ:
        x = resample(x, int(sample_rate), FEATURE_RATE_HZ)
    if x.shape[1] < N_FFT:
        raise ValueError(f"log_mel: need at least {N_FFT} samples at {FEATURE_RATE_HZ} Hz "
                         f"({N_FFT / FEATURE_RATE_HZ * 1e3:.0f} ms), got {x.shape[1]}")
    if not np.all(np.isfinite(x)):
        raise ValueError("log_mel: audio has non-finite samples")
    w = _hann(N_FFT)
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT, axis=1)[:, ::HOP]  # (C, T, N_FFT)
    spec = np.fft.rfft(frames * w, axis=-1)
    power = (spec.real ** 2 + spec.imag ** 2).mean(axis=0) / float(np.sum(w * w))  # (T, F)
    mel = power @ mel_filterbank().T  # (T, N_MELS)
    return (10.0 * np.log10(mel + POWER_FLOOR)).T.astype(np.float32)


def siren_input(features: np.ndarray) -> dict[str, np.ndarray]:
    """The network feed for one window: ``{SIREN_INPUT: (1, 1, N_MELS, N_FRAMES) float32}``.

    Args:
        features: (N_MELS, N_FRAMES) from :func:`log_mel` of WINDOW_S of audio.
    """
    if features.shape != (N_MELS, N_FRAMES):
        raise ValueError(f"siren_input: features must be ({N_MELS}, {N_FRAMES}) (log_mel of {WINDOW_S} s), "
                         f"got {features.shape}")
    return {SIREN_INPUT: np.ascontiguousarray(features, dtype=np.float32)[None, None]}


def siren_probability(network: SirenNetwork, audio: np.ndarray, sample_rate: int) -> float:
    """Siren probability of exactly one window of audio.

    Args:
        network: the ``siren`` network backend.
        audio: (N,) or (C, N) float samples covering WINDOW_S at ``sample_rate``.
        sample_rate: [Hz].
    Returns:
        probability in [0, 1].
    """
    out = network(siren_input(log_mel(audio, sample_rate)))
    if SIREN_OUTPUT not in out:
        raise ValueError(f"siren network returned {sorted(out)}, expected an output named {SIREN_OUTPUT!r}")
    prob = np.asarray(out[SIREN_OUTPUT])
    if prob.shape != (1, 1):
        raise ValueError(f"siren network output {SIREN_OUTPUT!r} has shape {prob.shape}, expected (1, 1)")
    return float(prob[0, 0])


def clip_siren_probability(network: SirenNetwork, audio: np.ndarray, sample_rate: int,
                           hop_s: float = 0.5) -> tuple[float, np.ndarray]:
    """Score a clip longer than one window: the maximum over WINDOW_S windows every ``hop_s`` seconds
    (the last window is aligned to the clip's end, so no audio is left out; a clip shorter than a window
    is zero-padded at the end).

    Args:
        network: the ``siren`` network backend.
        audio: (N,) or (C, N) float samples; sample_rate: [Hz]; hop_s: window spacing [s].
    Returns:
        (clip probability, (W,) float32 per-window probabilities in time order).
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"clip_siren_probability: audio must be (N,) or (C, N) with N > 0, got {x.shape}")
    if hop_s <= 0:
        raise ValueError(f"clip_siren_probability: hop_s must be > 0, got {hop_s}")
    if sample_rate != FEATURE_RATE_HZ:  # once for the whole clip, not per window
        x = resample(x, int(sample_rate), FEATURE_RATE_HZ)
    hop = max(1, int(round(hop_s * FEATURE_RATE_HZ)))
    if x.shape[1] < WINDOW_SAMPLES:
        x = np.pad(x, ((0, 0), (0, WINDOW_SAMPLES - x.shape[1])))
    starts = list(range(0, x.shape[1] - WINDOW_SAMPLES + 1, hop))
    if starts[-1] != x.shape[1] - WINDOW_SAMPLES:
        starts.append(x.shape[1] - WINDOW_SAMPLES)
    probs = np.array([siren_probability(network, x[:, s:s + WINDOW_SAMPLES], FEATURE_RATE_HZ) for s in starts],
                     np.float32)
    return float(probs.max()), probs


# ------------------------------------------------------------------------------------------- direction
def mic_positions_ego(ego_from_mic_array, mic_positions: np.ndarray) -> np.ndarray:
    """Microphone positions in the ego frame: the rig's ``ego_from_sensor`` (a
    calibration.transform.Transform) applied to the sensor's ``mic_positions`` (M, 3) [m].

    Returns:
        (M, 3) float64 [m], ego frame.
    """
    return ego_from_mic_array.apply(np.asarray(mic_positions, dtype=np.float64))


def _tonal_bins(where: str, x: np.ndarray, sample_rate: int,
                band_hz: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The siren's bins: 64 ms Hann frames at 50 % overlap, the band's spectra X (M, T, B), their
    frequencies fb (B,), the tonal mask (T, B) (each frame's bins within DOA_PEAK_DB of its strongest bin
    in the band, power averaged over the microphones) and ``n_fft * sum(w^2) / 2``, which turns a sum of
    one-sided |X|^2 into the mean square of the frame's samples (Parseval)."""
    n_fft = 1 << int(round(math.log2(DOA_FRAME_S * sample_rate)))
    if x.shape[1] < n_fft:
        raise ValueError(f"{where}: need at least {n_fft} samples ({DOA_FRAME_S * 1e3:.0f} ms), "
                         f"got {x.shape[1]}")
    f = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    band = (f >= band_hz[0]) & (f <= min(band_hz[1], 0.5 * sample_rate))
    window = np.hanning(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft, axis=1)[:, :: n_fft // 2]  # (M, T, n_fft)
    X = np.fft.rfft(frames * window, axis=-1)[..., band]  # (M, T, B)
    power = np.mean(np.abs(X) ** 2, axis=0)  # (T, B)
    peak = power.max(axis=1, keepdims=True)
    weight = (power >= peak * 10.0 ** (-DOA_PEAK_DB / 10.0)) & (peak > 0)  # the frame's tonal bins
    return X, f[band], weight, 0.5 * n_fft * float(np.sum(window * window))


def tonal_level_db(audio: np.ndarray, sample_rate: int, band_hz: tuple[float, float] = SIREN_BAND_HZ) -> float:
    """Level of the dominant tonal source (the siren) [dB re full scale, mean square]: the power of the
    bins :func:`doa_bearing` uses (each frame's tonal bins), summed per frame, averaged over frames and
    microphones. A full-scale sine in the band reads -3 dB; the broadband floor between the harmonics is
    left out, so road and wind noise add little while a siren is the loudest thing in the band.

    Args:
        audio: (M, N) float32 samples (M >= 1), N >= one 64 ms frame. sample_rate: [Hz].
    Returns:
        the level [dB]; -100 dB (POWER_FLOOR) for silence.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"tonal_level_db: audio must be (M, N) with M >= 1, got {x.shape}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"tonal_level_db: sample_rate must be a positive integer [Hz], got {sample_rate}")
    if not np.all(np.isfinite(x)):
        raise ValueError("tonal_level_db: audio has non-finite samples")
    X, _, weight, parseval = _tonal_bins("tonal_level_db", x, sample_rate, band_hz)
    return _tonal_level(X, weight, parseval)


def _tonal_level(X: np.ndarray, weight: np.ndarray, parseval: float) -> float:
    """:func:`tonal_level_db` from :func:`_tonal_bins`' output."""
    tonal = np.where(weight[None], np.abs(X) ** 2, 0.0).sum(axis=2)  # (M, T)
    return 10.0 * math.log10(max(float(tonal.mean()) / parseval, POWER_FLOOR))


def doa_bearing(audio: np.ndarray, mic_positions: np.ndarray, sample_rate: int,
                band_hz: tuple[float, float] = SIREN_BAND_HZ) -> tuple[float, float]:
    """Direction of arrival of the dominant tonal source (the siren) by SRP-PHAT (see module docstring).

    Args:
        audio: (M, N) float32 samples, one row per microphone, N >= one DOA frame (64 ms).
        mic_positions: (M, 3) [m] microphone positions in the ego frame (:func:`mic_positions_ego`), M >= 2,
            not all at one point.
        sample_rate: [Hz].
        band_hz: (low, high) [Hz] frequencies used.
    Returns:
        (bearing [rad] CCW from ego +x in (-pi, pi], quality in [0, 1]); quality 0 and bearing 0 when the
        band holds no signal.
    """
    return _doa(audio, mic_positions, sample_rate, band_hz)[:2]


def _doa(audio: np.ndarray, mic_positions: np.ndarray, sample_rate: int,
         band_hz: tuple[float, float] = SIREN_BAND_HZ) -> tuple[float, float, float, tuple[float, ...]]:
    """:func:`doa_bearing`'s bearing and quality, :func:`tonal_level_db` of the same audio (one spectrum),
    and the other possible bearings: the bearings [rad] of the other local maxima of the steered response
    scoring at least DOA_ALIAS_RATIO of the best, strongest first (usually none)."""
    x = np.asarray(audio, dtype=np.float64)
    mics = np.asarray(mic_positions, dtype=np.float64)
    if x.ndim != 2 or mics.shape != (x.shape[0], 3) or x.shape[0] < 2:
        raise ValueError(f"doa_bearing: audio must be (M, N) with M >= 2 and mic_positions (M, 3), got "
                         f"{x.shape} and {mics.shape}")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"doa_bearing: sample_rate must be a positive integer [Hz], got {sample_rate}")
    if not np.all(np.isfinite(x)):
        raise ValueError("doa_bearing: audio has non-finite samples")
    baseline = np.linalg.norm(mics[:, None, :2] - mics[None, :, :2], axis=2).max()
    if baseline < 1e-3:
        raise ValueError("doa_bearing: the microphones must be spread in the horizontal plane (>= 1 mm)")
    X, fb, weight, parseval = _tonal_bins("doa_bearing", x, sample_rate, band_hz)
    level = _tonal_level(X, weight, parseval)
    i, j = np.triu_indices(len(mics), k=1)
    cross = X[i] * np.conj(X[j])  # (P, T, B)
    cross = np.where(weight[None], cross / np.maximum(np.abs(cross), 1e-30), 0.0).sum(axis=1)  # (P, B)
    total = float(weight.sum()) * len(i)
    if total == 0.0:
        return 0.0, 0.0, level, ()
    # Only bins that were tonal in some frame carry anything: steering the others would multiply zeros
    # (a siren fills a few dozen of the band's ~260 bins, so this is most of the cost saved).
    used = np.any(cross != 0, axis=0)
    cross, fb = cross[:, used], fb[used]
    dp = mics[i, :2] - mics[j, :2]  # (P, 2) pair baselines [m]

    def srp(theta: np.ndarray) -> np.ndarray:
        u = np.stack([np.cos(theta), np.sin(theta)])  # (2, G)
        tau = dp @ u / SPEED_OF_SOUND_MPS  # (P, G) [s]
        steer = np.exp(-2j * np.pi * fb[None, :, None] * tau[:, None, :])  # (P, B, G)
        return np.einsum("pb,pbg->g", cross, steer).real

    def refine(theta: float) -> tuple[float, float]:
        fine = theta + np.radians(np.arange(-DOA_COARSE_DEG, DOA_COARSE_DEG + 1e-9, DOA_FINE_DEG))
        response = srp(fine)
        k = int(np.argmax(response))
        bearing = math.atan2(math.sin(fine[k]), math.cos(fine[k]))
        return (math.pi if bearing <= -math.pi else bearing), float(response[k])

    coarse = np.radians(np.arange(-180.0, 180.0, DOA_COARSE_DEG))
    response = srp(coarse)
    top = int(np.argmax(response))
    bearing, best = refine(coarse[top])
    # the other local maxima of the circular grid that come close to the best, strongest first
    local = np.flatnonzero((response > np.roll(response, 1)) & (response >= np.roll(response, -1)))
    close = [k for k in local[np.argsort(-response[local], kind="stable")]
             if k != top and response[k] > 0 and response[k] >= DOA_ALIAS_RATIO * response[top]]
    others = tuple(refine(coarse[k])[0] for k in close)
    return bearing, float(np.clip(best / total, 0.0, 1.0)), level, others


# ------------------------------------------------------------------------------------------- detector
@dataclass(frozen=True)
class SirenEstimate:
    """What the microphone array says about one window.

    Args:
        stamp_ns: stamp of the newest AudioChunk in the window [ns] (the window ends one chunk later).
        probability: siren detector output in [0, 1].
        bearing_rad: direction of arrival in the ego frame, CCW from +x [rad] in (-pi, pi], from the
            newest DOA_WINDOW_S of the window; NaN when the detector has no microphone positions (mono use).
        quality: DOA quality in [0, 1] (see :func:`doa_bearing`); 0 without microphone positions.
        level_db: the siren's level over the same newest DOA_WINDOW_S [dB re full scale, mean square]
            (:func:`tonal_level_db`); NaN when unknown.
        other_bearings_rad: other bearings the array's response allows almost as well [rad] (spatial
            aliases, see the module docstring), strongest first; usually empty.
    """

    stamp_ns: int
    probability: float
    bearing_rad: float
    quality: float
    level_db: float = float("nan")
    other_bearings_rad: tuple[float, ...] = ()


class SirenDetector:
    """Siren probability and bearing over the last WINDOW_S of a microphone array's audio.

    Args:
        network: backend of the ``siren`` network (e.g. ``perception.models.siren.torch_network(model)``
            or an ONNX Runtime session behind the same callable).
        sample_rate: [Hz] of the AudioChunks that will be pushed.
        n_channels: channels per chunk (microphones).
        mic_positions: (n_channels, 3) [m] microphone positions in the ego frame, or None to skip the
            bearing (mono microphones).
    """

    def __init__(self, network: SirenNetwork, sample_rate: int, n_channels: int,
                 mic_positions: np.ndarray | None = None):
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"SirenDetector: sample_rate must be a positive integer [Hz], got {sample_rate}")
        if n_channels < 1:
            raise ValueError(f"SirenDetector: n_channels must be >= 1, got {n_channels}")
        if mic_positions is not None:
            mic_positions = np.asarray(mic_positions, dtype=np.float64)
            if mic_positions.shape != (n_channels, 3):
                raise ValueError(f"SirenDetector: mic_positions must be ({n_channels}, 3), got "
                                 f"{mic_positions.shape}")
        self.network = network
        self.sample_rate = int(sample_rate)
        self.mic_positions = mic_positions
        self._n = int(round(WINDOW_S * sample_rate))
        self._buffer = np.zeros((n_channels, self._n), dtype=np.float32)
        self._filled = 0
        self._stamp_ns: int | None = None

    @classmethod
    def from_weights(cls, path: str | Path, sample_rate: int, n_channels: int,
                     mic_positions: np.ndarray | None = None,
                     backend: Literal["torch", "onnxruntime"] = "torch") -> "SirenDetector":
        """A detector running the model from a checkpoint written by ``perception train``, on torch (the
        reference) or on an ONNX Runtime session with one thread of its own (for use beside other
        networks: see :func:`perception.models.siren.onnxruntime_network`)."""
        from perception.models import siren  # torch only when asked for

        model = siren.load_siren_model(path)
        if backend == "torch":
            network = siren.torch_network(model)
        elif backend == "onnxruntime":
            network = siren.onnxruntime_network(model, num_threads=1)
        else:
            raise ValueError(f"SirenDetector: backend must be 'torch' or 'onnxruntime', got {backend!r}")
        return cls(network, sample_rate, n_channels, mic_positions)

    @property
    def ready(self) -> bool:
        """True once WINDOW_S of audio has been pushed."""
        return self._filled >= self._n

    def reset(self) -> None:
        """Forget the buffered audio (after a gap in the stream)."""
        self._buffer[:] = 0.0
        self._filled = 0
        self._stamp_ns = None

    def push(self, chunk: AudioChunk) -> None:
        """Append one chunk (C, S) to the ring buffer (the oldest samples drop out)."""
        s = np.asarray(chunk.samples, dtype=np.float32)
        if chunk.sample_rate != self.sample_rate or s.ndim != 2 or s.shape[0] != self._buffer.shape[0]:
            raise ValueError(f"SirenDetector: chunk from {chunk.sensor_id!r} is {s.shape} at {chunk.sample_rate} "
                             f"Hz, expected ({self._buffer.shape[0]}, S) at {self.sample_rate} Hz")
        s = s[:, -self._n:]
        k = s.shape[1]
        if k:
            self._buffer[:, :self._n - k] = self._buffer[:, k:]  # shift in place (numpy handles the overlap)
            self._buffer[:, self._n - k:] = s
        self._filled = min(self._n, self._filled + k)
        self._stamp_ns = int(chunk.stamp_ns)

    def detect(self) -> SirenEstimate | None:
        """Probability and bearing of the buffered window, or None until the buffer is full."""
        if not self.ready or self._stamp_ns is None:
            return None
        prob = siren_probability(self.network, self._buffer, self.sample_rate)
        recent = self._buffer[:, -int(round(DOA_WINDOW_S * self.sample_rate)):]
        if self.mic_positions is None:
            return SirenEstimate(self._stamp_ns, prob, float("nan"), 0.0, tonal_level_db(recent, self.sample_rate))
        return SirenEstimate(self._stamp_ns, prob, *_doa(recent, self.mic_positions, self.sample_rate))

    def __call__(self, chunk: AudioChunk) -> SirenEstimate | None:
        """:meth:`push` then :meth:`detect`."""
        self.push(chunk)
        return self.detect()


# ------------------------------------------------------------------------------------------- fusion
def _wrap(angle: np.ndarray) -> np.ndarray:
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def is_vehicle(dets: Detections3D) -> np.ndarray:
    """(N,) bool: the detections of a class a siren can be attached to (VEHICLE_CLASSES)."""
    return np.isin(dets.labels, [k for k, name in enumerate(dets.class_names) if name in VEHICLE_CLASSES])


def associate_sirens(dets: Detections3D, stamp_ns: int, probability: float, bearing_rad: float,
                     threshold: float, max_bearing_err_rad: float | np.ndarray, prefer: int = -1,
                     prefer_margin_rad: float = 0.0, bearing_err_rad: np.ndarray | None = None,
                     rank_err_rad: np.ndarray | None = None) -> Detections3D:
    """Late fusion: attach a heard siren to the vehicle it comes from.

    When ``probability >= threshold``: among the car/truck detections whose bearing error (from the box
    centre's bearing ``atan2(y, x)``, ego frame, to ``bearing_rad``; or ``bearing_err_rad``) is within
    ``max_bearing_err_rad``, the one with the smallest error (the bearing error, or ``rank_err_rad``) gets
    ``siren = True``; detections within ASSOCIATION_TIE_RAD of that best error count as a tie (one vehicle
    behind another), broken by higher score, then by smaller range. A SirenEvent with that detection's index
    is added; with no candidate the event is bearing-only (index -1). Below the threshold ``dets`` is
    returned unchanged.

    ``prefer`` (a detection index, -1 for none) is the vehicle the siren was on a moment ago, found again by
    the caller's track: while it is a candidate it keeps the attribute against any vehicle whose error is
    less than ``prefer_margin_rad`` smaller (a second vehicle in nearly the same direction does not take it).

    Args:
        dets: the frame's detections (ego frame at their stamp).
        stamp_ns: stamp of the event [ns] (the frame's).
        probability: siren probability in [0, 1]; bearing_rad: direction of arrival [rad], ego frame.
        threshold: probability needed to report a siren.
        max_bearing_err_rad: association gate [rad], one for all or one per detection (N,).
        prefer: index of the tracked siren vehicle or -1; prefer_margin_rad: its margin [rad].
        bearing_err_rad: (N,) >= 0 [rad], each detection's bearing error as the caller measured it (e.g.
            from where it was while the scored sound left it, to the nearest of the array's possible
            bearings), or None for the error of the box centre's bearing.
        rank_err_rad: (N,) the error candidates are ranked by (e.g. a bearing error accumulated over frames),
            or None for the bearing error itself.
    Returns:
        A new Detections3D (same boxes; ``siren`` and ``siren_events`` updated).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"associate_sirens: threshold must be in [0, 1], got {threshold}")
    gate = np.asarray(max_bearing_err_rad, np.float64)
    if gate.ndim > 1 or (gate.ndim == 1 and len(gate) != len(dets)) or not (gate >= 0).all():
        raise ValueError(f"associate_sirens: max_bearing_err_rad must be >= 0, one value or one per detection "
                         f"({len(dets)}), got {max_bearing_err_rad}")
    for name, arr in (("bearing_err_rad", bearing_err_rad), ("rank_err_rad", rank_err_rad)):
        if arr is not None and np.shape(arr) != (len(dets),):
            raise ValueError(f"associate_sirens: {name} must have one value per detection ({len(dets)}), "
                             f"got shape {np.shape(arr)}")
    if not math.isfinite(bearing_rad):
        raise ValueError(f"associate_sirens: bearing_rad must be finite, got {bearing_rad}")
    if probability < threshold:
        return dets
    x, y = dets.boxes[:, 0].astype(np.float64), dets.boxes[:, 1].astype(np.float64)
    if bearing_err_rad is None:
        err = np.abs(_wrap(np.arctan2(y, x) - bearing_rad))
    else:
        err = np.asarray(bearing_err_rad, np.float64)
    rank = err if rank_err_rad is None else np.asarray(rank_err_rad, np.float64)
    if not -1 <= prefer < len(dets):
        raise ValueError(f"associate_sirens: prefer must be -1 or a detection index < {len(dets)}, got {prefer}")
    candidate = is_vehicle(dets) & (err <= gate)
    index = -1
    if candidate.any():
        best = rank[candidate].min()
        tied = np.flatnonzero(candidate & (rank <= best + ASSOCIATION_TIE_RAD))
        # lexsort: last key is primary -> highest score first, then nearest range, then error.
        order = np.lexsort((rank[tied], np.hypot(x, y)[tied], -dets.scores[tied].astype(np.float64)))
        index = int(tied[order[0]])
        if prefer >= 0 and candidate[prefer] and rank[prefer] <= best + prefer_margin_rad:
            index = prefer
    siren = dets.siren.copy()
    if index >= 0:
        siren[index] = True
    bearing = float(_wrap(bearing_rad))
    if bearing <= -math.pi:
        bearing = math.pi
    event = SirenEvent(int(stamp_ns), bearing, float(probability), index)
    return Detections3D(dets.stamp_ns, dets.boxes, dets.velocities, dets.scores, dets.labels, siren,
                        dets.class_names, dets.siren_events + (event,), dets.track_ids)
