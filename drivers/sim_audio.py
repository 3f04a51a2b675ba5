"""Simulated microphone array: emergency-vehicle sirens propagating through air, road and wind noise.

Sound pressure at each microphone is the sum of
  * sirens: every scene object with ``siren > 0`` (1 wail, 2 yelp) radiates a swept tone with a few
    harmonics from the top of its roof; the wave reaches microphone m at time t after leaving the source
    at the emission time tau that solves ``t - tau = |mic_m(t) - source(tau)| / c`` (c = 343 m/s), solved
    per sample by fixed-point iteration to 1e-11 s (it contracts by |v_source| / c). The waveform is an
    analytic function of tau (the phase is the closed-form integral of the instantaneous frequency), so
    Doppler shift, inter-microphone delays and chunk joins come out exactly. Amplitude falls as 1 / r
    (spherical spreading) with air absorption (ISO 9613-1 order of magnitude, about 5 dB/km at 1 kHz,
    growing ~f^1.6), plus one reflection from the ground (an image source below the road, coefficient
    0.5: hard asphalt, but partly incoherent over the rough surface).
  * road noise: the four tyre contact patches are noise sources (flat 50-400 Hz, -12 dB/octave above)
    whose level rises with ego speed (pressure ~ v^1.75); each reaches each microphone with its own
    delay and 1 / r.
  * wind noise: turbulence on each microphone's windscreen, independent per microphone, below ~100 Hz
    and -12 dB/octave above, pressure ~ v^2.
  * microphone self-noise: white, 30 dB SPL equivalent.
Samples are pressure divided by the full-scale pressure (130 dB SPL peak = 63.2 Pa), clipped to [-1, 1].

Chunking and determinism: everything is a function of the absolute sample index n = round(t0_s * rate) +
k (sample time n / rate). Noise comes from a counter-based hash of (key, stream, n) filtered by FIR
kernels, so no filter state is carried between calls and any split of the stream into chunks gives the
same samples (to float rounding). The key is derived from the rng's seed sequence without drawing from it
(``rng.bit_generator.seed_seq.generate_state``): the same rng seed gives the same audio, another seed other
noise, and the caller may advance or share the rng between chunks without creating clicks. The ego pose
is sampled on a grid of absolute times every 10 ms (linear interpolation), source positions every 50 ms
with the scene's velocities (cubic Hermite); at road speeds and curvatures both are exact to well below
a millimetre. Sources beyond 800 m are skipped after fading out over the last 200 m.

Cost: about 30-80 ms of one core per second of 4-channel 16 kHz audio (numpy FFT filtering and numba
kernels; the upper end with a siren in range and 100 ms chunks).
"""

from __future__ import annotations

import functools
import math

import numba as nb
import numpy as np

from drivers.sim_scene import Scene

SPEED_OF_SOUND_MPS = 343.0
FULL_SCALE_PA = 20e-6 * 10 ** (130.0 / 20.0)  # digital 1.0 = 130 dB SPL peak
SIREN_LEVEL_DB = 118.0  # dB SPL (rms) at 1 m from the light bar
SIREN_CENTER_HZ = 1000.0
SIREN_SWING_HZ = 400.0  # the sweep spans 600-1400 Hz
SIREN_HARMONICS = ((1, 1.0), (2, 0.15), (3, 0.2))  # (multiple, relative amplitude); multiples 1, 2, 3...
WAIL_PERIOD_S = (3.0, 4.0)  # per-source period drawn in this range (deterministic from the track id)
YELP_PERIOD_S = (0.25, 0.35)
SIREN_RANGE_M = 800.0  # sources further away are inaudible under road noise and skipped
SIREN_FADE_M = 200.0  # ...after fading out smoothly over this distance
GROUND_REFLECTION = 0.5
ROAD_NOISE_DB_AT_22MPS = 86.0  # dB SPL at 1 m from one tyre at 80 km/h
WIND_NOISE_DB_AT_20MPS = 75.0  # dB SPL at a windscreened microphone at 72 km/h
SELF_NOISE_DB = 30.0
TYRES_EGO = np.array([[0.0, 0.8, 0.0], [0.0, -0.8, 0.0], [2.8, 0.8, 0.0], [2.8, -0.8, 0.0]])
POSE_GRID_S = 0.01  # ego pose samples (linear interpolation)
SOURCE_GRID_S = 0.05  # siren source samples (cubic Hermite with the scene's velocities)
FIR_TAPS = 255  # odd, centred kernels; 16 ms at 16 kHz
EMISSION_MAX_ITERATIONS = 30


def _pa(db: float) -> float:
    """dB SPL -> rms pressure [Pa]."""
    return 20e-6 * 10 ** (db / 20.0)


def synth_audio(scene: Scene, t0_s: float, n_samples: int, sample_rate: int, mics_ego: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
    """Simulate one chunk of the microphone array.

    Args:
        scene: the simulated world.
        t0_s: time of the first sample [s] since the start of the drive.
        n_samples: samples per channel (>= 0).
        sample_rate: [Hz] (> 0).
        mics_ego: (M, 3) float64 [m] microphone positions in the ego frame (rigidly attached).
        rng: keys the noise through its seed sequence; it is not advanced (see the module docstring).
    Returns:
        (M, n_samples) float32 in [-1, 1]: pressure / 63.2 Pa.
    """
    mics = np.asarray(mics_ego, dtype=np.float64)
    if mics.ndim != 2 or mics.shape[1] != 3 or len(mics) == 0:
        raise ValueError(f"mics_ego must be (M, 3) microphone positions in the ego frame, got shape {mics.shape}")
    if not np.all(np.isfinite(mics)):
        raise ValueError("mics_ego has non-finite entries")
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer [Hz], got {sample_rate}")
    if int(n_samples) != n_samples or n_samples < 0:
        raise ValueError(f"n_samples must be a non-negative integer, got {n_samples}")
    if not math.isfinite(t0_s):
        raise ValueError(f"t0_s must be finite, got {t0_s}")
    fs = int(sample_rate)
    n = int(n_samples)
    M = len(mics)
    if n == 0:
        return np.zeros((M, 0), dtype=np.float32)
    key = _noise_key(rng, mics)
    n0 = int(round(t0_s * fs))
    index = n0 + np.arange(n, dtype=np.int64)
    t = index / fs  # reception times [s]

    ego = _EgoTrack(scene, t[0] - 0.05, t[-1] + 0.05)
    ex, ey, eyaw, speed = ego.at(t)
    c, s = np.cos(eyaw), np.sin(eyaw)
    # Microphone world positions per sample: (M, n) each.
    mx = ex[None, :] + c[None, :] * mics[:, 0:1] - s[None, :] * mics[:, 1:2]
    my = ey[None, :] + s[None, :] * mics[:, 0:1] + c[None, :] * mics[:, 1:2]
    mz = np.repeat(mics[:, 2:3], n, axis=1)

    p = np.zeros((M, n))
    p += _sirens(scene, t, mx, my, mz)
    p += _road_noise(key, index, fs, mics, speed)
    p += _wind_noise(key, index, fs, M, speed)
    p += _pa(SELF_NOISE_DB) * _counter_normal(key, 2000 + np.arange(M), index)
    return np.clip(p / FULL_SCALE_PA, -1.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------------- sirens


def siren_frequency(kind: int, tau: np.ndarray, period_s: float) -> np.ndarray:
    """Instantaneous emitted frequency [Hz] of a siren at emission times ``tau`` [s].

    Args:
        kind: 1 wail (slow sweep), 2 yelp (fast sweep); both sweep 600-1400 Hz sinusoidally.
        tau: emission times [s]; period_s: sweep period [s].
    """
    _check_kind(kind)
    return _sweep_frequency(np.asarray(tau, dtype=np.float64), float(period_s))


def siren_phase_cycles(kind: int, tau: np.ndarray, period_s: float) -> np.ndarray:
    """Phase [cycles] of the siren's fundamental: the closed-form integral of :func:`siren_frequency`
    from 0 to ``tau`` (so the waveform is continuous and exact at any emission time)."""
    _check_kind(kind)
    return _sweep_cycles(np.asarray(tau, dtype=np.float64), float(period_s))


@nb.njit(cache=True, nogil=True)
def _sweep_frequency(tau, period_s):
    """Sinusoidal sweep 600-1400 Hz with period ``period_s`` (scalars or arrays)."""
    return SIREN_CENTER_HZ + SIREN_SWING_HZ * np.sin(2 * np.pi * tau / period_s)


@nb.njit(cache=True, nogil=True)
def _sweep_cycles(tau, period_s):
    """Integral of :func:`_sweep_frequency` from 0 to tau [cycles] (scalars or arrays)."""
    w = period_s / (2 * np.pi)
    return SIREN_CENTER_HZ * tau + SIREN_SWING_HZ * w * (1.0 - np.cos(tau / w))


def _check_kind(kind: int) -> None:
    if kind not in (1, 2):
        raise ValueError(f"siren kind must be 1 (wail) or 2 (yelp), got {kind}")


def _siren_period(kind: int, track_id: int, seed: int) -> float:
    """Sweep period [s] of one source: fixed per vehicle (hash of scene seed and track id)."""
    lo, hi = WAIL_PERIOD_S if kind == 1 else YELP_PERIOD_S
    u = _hash_u64(np.array([(seed * 1_000_003 + track_id) % 2**63], dtype=np.uint64))[0] / 2.0**64
    return lo + (hi - lo) * float(u)


def _sirens(scene: Scene, t: np.ndarray, mx: np.ndarray, my: np.ndarray, mz: np.ndarray) -> np.ndarray:
    """Siren pressure [Pa], (M, n), at microphones (mx, my, mz) (M, n) world [m] at reception times t."""
    M, n = mx.shape
    out = np.zeros((M, n))
    now = scene.objects_world(float(t[0]))
    sources = np.flatnonzero(now.siren > 0)
    if len(sources) == 0:
        return out
    # Keep the audible ones: distance at the chunk start minus what can be closed during the chunk.
    dist0 = np.hypot(now.boxes[sources, 0] - mx[0, 0], now.boxes[sources, 1] - my[0, 0])
    reach = 60.0 * (t[-1] - t[0]) + 1.0  # how far sources and microphones can move during the chunk
    audible = dist0 - reach < SIREN_RANGE_M
    sources, dist0 = sources[audible], dist0[audible]
    if len(sources) == 0:
        return out
    # Source positions and velocities on a grid of absolute emission times (every SOURCE_GRID_S) that
    # covers every delay this chunk can see; cubic Hermite interpolation between them.
    lo = t[0] - (dist0.max() + reach + 20.0) / SPEED_OF_SOUND_MPS
    k0 = int(math.floor(lo / SOURCE_GRID_S)) - 1
    k1 = int(math.ceil(t[-1] / SOURCE_GRID_S)) + 1
    grid = np.arange(k0, k1 + 1) * SOURCE_GRID_S
    xs = np.empty((len(sources), len(grid)))
    ys = np.empty_like(xs)
    vxs = np.empty_like(xs)
    vys = np.empty_like(xs)
    for g, tg in enumerate(grid):
        w = scene.objects_world(float(tg))
        xs[:, g], ys[:, g] = w.boxes[sources, 0], w.boxes[sources, 1]
        vxs[:, g], vys[:, g] = w.velocities[sources, 0], w.velocities[sources, 1]
    heights = now.boxes[sources, 5] + 0.1  # light bar on the roof
    p_ref = math.sqrt(2.0) * _pa(SIREN_LEVEL_DB) / math.sqrt(sum(a * a for _, a in SIREN_HARMONICS))
    for j, src in enumerate(sources):
        kind = int(now.siren[src])
        period = _siren_period(kind, int(now.track_ids[src]), scene.seed)
        offset = float(_hash_u64(np.array([(scene.seed * 7 + int(now.track_ids[src])) % 2**63],
                                          dtype=np.uint64))[0] % 1000)
        for zs, gain in ((heights[j], 1.0), (-heights[j], GROUND_REFLECTION)):
            tau, r = _emission(t, np.ascontiguousarray(mx), np.ascontiguousarray(my), np.ascontiguousarray(mz),
                               float(grid[0]), xs[j], ys[j], vxs[j], vys[j], float(zs))
            _add_siren_wave(tau, r, offset, period, gain * p_ref, _HARMONIC_MULT, _HARMONIC_AMP,
                            _HARMONIC_ABSORB, out)
    return out


_HARMONIC_MULT = np.array([float(m) for m, _ in SIREN_HARMONICS])
_HARMONIC_AMP = np.array([a for _, a in SIREN_HARMONICS])
# Air absorption 4.7 dB/km at 1 kHz growing as f^1.6: amplitude factor exp(-coef * f^1.6 * r) per harmonic.
_HARMONIC_ABSORB = 4.7e-3 * (_HARMONIC_MULT / 1000.0) ** 1.6 * math.log(10.0) / 20.0


@nb.njit(cache=True, nogil=True)
def _add_siren_wave(tau, r, offset, period, amplitude, mult, amp, absorb, out):
    """Add one propagation path of one siren to ``out`` (M, n) [Pa].

    Args:
        tau, r: (M, n) emission times [s] and path lengths [m]; offset: the vehicle's sweep phase [s];
        period: sweep period [s]; amplitude: fundamental amplitude at 1 m [Pa] times the path's
        reflection gain; mult, amp, absorb: harmonic multiples (1, 2, 3, ... in order), relative
        amplitudes and absorption coefficients (_HARMONIC_ABSORB).
    Spreading 1 / r, air absorption 4.7 dB/km at 1 kHz growing as f^1.6, and a smooth fade to zero
    toward SIREN_RANGE_M (so dropping far sources never makes a step).
    """
    M, n = tau.shape
    for m in range(M):
        for k in range(n):
            te = tau[m, k] + offset
            cycles = _sweep_cycles(te, period)
            frac = cycles - math.floor(cycles)  # keep the phase argument small for sin's precision
            rr = r[m, k]
            path = _sweep_frequency(te, period) ** 1.6 * rr
            # Harmonics 1, 2, 3...: sin(h x) by the Chebyshev recurrence from sin x and cos x.
            x = 2 * math.pi * frac
            s_prev, s_cur, c2 = 0.0, math.sin(x), 2.0 * math.cos(x)
            wave = 0.0
            for h in range(mult.shape[0]):
                wave += amp[h] * math.exp(-absorb[h] * path) * s_cur
                s_prev, s_cur = s_cur, c2 * s_cur - s_prev
            fade = min(max((SIREN_RANGE_M - rr) / SIREN_FADE_M, 0.0), 1.0)
            out[m, k] += amplitude * wave * fade * fade * (3.0 - 2.0 * fade) / max(rr, 1.0)


@nb.njit(cache=True, nogil=True)
def _emission(t, mx, my, mz, g0, xs, ys, vxs, vys, zs):
    """Emission time and path length for every microphone and sample.

    Solves ``tau = t - |mic(t) - source(tau)| / c`` by fixed-point iteration (a contraction by
    |v_source| / c) until tau moves less than 1e-11 s, starting from the delay extrapolated from the
    previous two samples (the first samples of a chunk start from tau = t and simply take more steps,
    so the result does not depend on where chunks start). The source track is sampled every
    SOURCE_GRID_S from g0 (xs, ys positions [m], vxs, vys velocities [m/s], world frame) and interpolated
    by cubic Hermite; its height is zs [m].

    Args:
        t: (n,) reception times [s]; mx, my, mz: (M, n) microphone positions [m], world frame.
    Returns:
        tau (M, n) [s] and r (M, n) [m].
    """
    M, n = mx.shape
    G = xs.shape[0]
    h = SOURCE_GRID_S
    tau = np.empty((M, n))
    r = np.empty((M, n))
    for m in range(M):
        delay = 0.0
        prev = 0.0
        for k in range(n):
            guess = 0.0 if k == 0 else (delay if k == 1 else 2.0 * delay - prev)
            ta = t[k] - guess
            rr = 0.0
            for _ in range(EMISSION_MAX_ITERATIONS):
                f = (ta - g0) / h
                i = min(max(int(math.floor(f)), 0), G - 2)
                u = f - i
                u2 = u * u
                u3 = u2 * u
                h00 = 2 * u3 - 3 * u2 + 1
                h10 = u3 - 2 * u2 + u
                h01 = -2 * u3 + 3 * u2
                h11 = u3 - u2
                sx = h00 * xs[i] + h10 * h * vxs[i] + h01 * xs[i + 1] + h11 * h * vxs[i + 1]
                sy = h00 * ys[i] + h10 * h * vys[i] + h01 * ys[i + 1] + h11 * h * vys[i + 1]
                rr = math.sqrt((mx[m, k] - sx) ** 2 + (my[m, k] - sy) ** 2 + (mz[m, k] - zs) ** 2)
                new = t[k] - rr / SPEED_OF_SOUND_MPS
                done = abs(new - ta) < 1e-11
                ta = new
                if done:
                    break
            prev = delay
            delay = t[k] - ta
            tau[m, k] = ta
            r[m, k] = rr
    return tau, r


# -------------------------------------------------------------------------------------------- noise


def _noise_key(rng: np.random.Generator, mics: np.ndarray) -> int:
    """64-bit noise key from the rng's seed sequence (not advancing it) and the array geometry (two
    arrays on one vehicle get independent noise)."""
    seed_seq = getattr(rng.bit_generator, "seed_seq", None)
    if seed_seq is None or not hasattr(seed_seq, "generate_state"):
        raise TypeError("synth_audio needs an rng built from a SeedSequence (numpy.random.default_rng(seed))")
    base = np.uint64(seed_seq.generate_state(1, np.uint64)[0])
    geo = np.frombuffer(np.ascontiguousarray(mics, dtype=np.float64).tobytes(), dtype=np.uint64)
    return int(_hash_u64(np.array([base ^ np.bitwise_xor.reduce(_hash_u64(geo))], dtype=np.uint64))[0])


def _hash_u64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _counter_normal(key: int, streams, index: np.ndarray) -> np.ndarray:
    """Standard normal numbers that depend only on (key, stream, sample index): row r of the result
    belongs to stream ``streams[r]`` at the sample indices ``index[r]`` (``index`` (R, L), or (L,)
    shared by all rows). Returns (R, L) float64."""
    st = np.asarray(streams, dtype=np.int64).reshape(-1)
    idx = np.asarray(index, dtype=np.int64)
    if idx.ndim == 1:
        idx = np.broadcast_to(idx[None, :], (len(st), len(idx)))
    out = np.empty(idx.shape)
    _counter_normal_kernel(np.uint64(key), st, np.ascontiguousarray(idx), out)
    return out


@nb.njit(cache=True, nogil=True)
def _mix64(x):
    """splitmix64 finaliser (uint64 -> uint64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@nb.njit(cache=True, nogil=True)
def _counter_normal_kernel(key, streams, index, out):
    """Box-Muller normals from two hashes of (key, stream, index) per element."""
    R, L = index.shape
    for r in range(R):
        base = key ^ ((np.uint64(streams[r]) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15))
        for k in range(L):
            h1 = _mix64(base ^ (np.uint64(index[r, k]) * np.uint64(0xC2B2AE3D27D4EB4F)))
            h2 = _mix64(h1 ^ np.uint64(0x8CB92BA72F3D8DD7))
            u1 = (float(h1 >> np.uint64(11)) + 0.5) / 9007199254740992.0
            u2 = float(h2 >> np.uint64(11)) / 9007199254740992.0
            out[r, k] = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def _shaped_kernel(magnitude, fs: int, delay_samples: np.ndarray) -> np.ndarray:
    """FIR kernels (..., FIR_TAPS) with the given magnitude response and a delay of ``delay_samples``
    (any shape, fractional) beyond the kernel centre: frequency sampling on a fine grid with linear
    phase, then a Hann window. ``magnitude(f)`` maps frequencies [Hz] to linear gain."""
    nfft = 4096
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    d = FIR_TAPS // 2 + np.asarray(delay_samples, dtype=np.float64)[..., None]
    spectrum = magnitude(f) * np.exp(-2j * np.pi * f / fs * d)
    h = np.fft.irfft(spectrum, nfft)[..., :FIR_TAPS]
    return h * np.hanning(FIR_TAPS + 2)[1:-1]


def _road_magnitude(f: np.ndarray) -> np.ndarray:
    """Tyre/road noise spectrum: rises above 50 Hz, flat to 400 Hz, then -12 dB/octave."""
    return (f / 50.0) ** 2 / (1.0 + (f / 50.0) ** 2) / (1.0 + (f / 400.0) ** 2)


def _wind_magnitude(f: np.ndarray) -> np.ndarray:
    """Wind buffeting on a windscreen: below ~100 Hz, -12 dB/octave above."""
    return 1.0 / (1.0 + (f / 100.0) ** 2)


def _noise_gain(magnitude, fs: int) -> float:
    """1 / rms of unit white noise after ``magnitude``: scales filtered noise back to unit variance."""
    f = np.fft.rfftfreq(8192, 1.0 / fs)
    return 1.0 / math.sqrt(float(np.mean(magnitude(f) ** 2)))


def _filtered(white: np.ndarray, kernel_spectra: np.ndarray, nfft: int) -> np.ndarray:
    """'valid' convolution of white (..., n + FIR_TAPS - 1) with kernels given as their rfft (..., F)
    of length ``nfft`` -> (..., n)."""
    L = white.shape[-1]
    y = np.fft.irfft(np.fft.rfft(white, nfft) * kernel_spectra, nfft)
    return y[..., FIR_TAPS - 1:L]


def _fft_size(n: int) -> int:
    return 1 << int(math.ceil(math.log2(n + 2 * FIR_TAPS)))


def _white_span(index: np.ndarray) -> np.ndarray:
    """Absolute sample indices of the white noise a centred FIR_TAPS kernel needs for output ``index``."""
    half = FIR_TAPS // 2
    return np.arange(index[0] - half, index[-1] + half + 1)


@functools.lru_cache(maxsize=32)
def _road_filters(fs: int, mics: tuple, nfft: int) -> tuple[np.ndarray, np.ndarray]:
    """Per microphone and tyre: whole-sample delay (M, J) and the rfft (M, J, F) of the fractional-delay,
    1 / r attenuated road-noise kernel. Fixed for a rig, so cached."""
    m = np.array(mics)
    dist = np.linalg.norm(m[:, None, :] - TYRES_EGO[None, :, :], axis=2)  # (M, J) [m]
    delay = dist / SPEED_OF_SOUND_MPS * fs
    whole = np.floor(delay).astype(np.int64)
    kern = _shaped_kernel(_road_magnitude, fs, delay - whole) / np.maximum(dist, 0.3)[..., None]
    return whole, np.fft.rfft(kern, nfft) * _noise_gain(_road_magnitude, fs)


@functools.lru_cache(maxsize=32)
def _wind_filter(fs: int, nfft: int) -> np.ndarray:
    """rfft (F,) of the unit-variance wind-noise kernel."""
    return np.fft.rfft(_shaped_kernel(_wind_magnitude, fs, np.zeros(1))[0], nfft) * _noise_gain(_wind_magnitude, fs)


def _road_noise(key: int, index: np.ndarray, fs: int, mics: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """Tyre/road noise [Pa] (M, n): 4 tyre sources, each delayed and attenuated to every microphone.

    Each tyre is one noise stream; microphone m hears it ``delay = distance / c`` later: the whole
    samples of the delay shift the stream's index, the fraction is a fractional-delay FIR kernel
    (so the differences between microphones are exact, as an array sees them)."""
    M, J = len(mics), len(TYRES_EGO)
    nfft = _fft_size(len(index))
    whole, spectra = _road_filters(fs, tuple(map(tuple, mics.tolist())), nfft)
    span = _white_span(index)
    streams = np.tile(10 + np.arange(J), M)  # one stream per tyre, heard by every microphone
    white = _counter_normal(key, streams, span[None, :] - whole.reshape(-1, 1)).reshape(M, J, -1)
    out = _filtered(white, spectra, nfft).sum(axis=1)
    level = _pa(ROAD_NOISE_DB_AT_22MPS) * (np.maximum(speed, 0.0) / 22.0) ** 1.75
    return out * level[None, :]


def _wind_noise(key: int, index: np.ndarray, fs: int, M: int, speed: np.ndarray) -> np.ndarray:
    """Wind noise [Pa] (M, n): independent per microphone, below ~100 Hz, pressure ~ v^2."""
    nfft = _fft_size(len(index))
    white = _counter_normal(key, 1000 + np.arange(M), _white_span(index))
    level = _pa(WIND_NOISE_DB_AT_20MPS) * (np.maximum(speed, 0.0) / 20.0) ** 2
    return _filtered(white, _wind_filter(fs, nfft)[None, :], nfft) * level[None, :]


# -------------------------------------------------------------------------------------------- ego


class _EgoTrack:
    """Ego pose and speed on a grid of absolute times (every POSE_GRID_S) covering [t_lo, t_hi],
    interpolated linearly; the grid does not depend on where a chunk starts."""

    def __init__(self, scene: Scene, t_lo: float, t_hi: float):
        k0 = int(math.floor(t_lo / POSE_GRID_S)) - 1
        k1 = int(math.ceil(t_hi / POSE_GRID_S)) + 1
        self.grid = np.arange(k0, k1 + 1) * POSE_GRID_S
        states = [scene.ego_state(float(tg)) for tg in self.grid]
        self.x = np.array([e.x for e in states])
        self.y = np.array([e.y for e in states])
        self.yaw = np.unwrap(np.array([e.yaw for e in states]))
        self.speed = np.array([e.speed for e in states])

    def at(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, yaw, speed) at times t, world frame [m, m, rad, m/s]."""
        return (np.interp(t, self.grid, self.x), np.interp(t, self.grid, self.y),
                np.interp(t, self.grid, self.yaw), np.interp(t, self.grid, self.speed))
