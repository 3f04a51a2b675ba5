"""Simulated microphone array: emergency-vehicle sirens propagating through air, road and wind noise.

Sound pressure at each microphone is the sum of
  * sirens: every scene object with ``siren > 0`` (1 wail, 2 yelp) radiates a swept tone with a few
    harmonics from the top of its roof; the wave reaches microphone m at time t after leaving the source
    at the emission time tau that solves ``t - tau = |mic_m(t) - source(tau)| / c`` (c = 343 m/s), solved
    per sample by fixed-point iteration to 1e-11 s (it contracts by |v_source| / c). The waveform is an analytic function of tau (the phase is the closed-form integral of
    the instantaneous frequency), so Doppler shift, inter-microphone delays and chunk joins come out
    exactly. Amplitude falls as 1 / r (spherical spreading) with air absorption (ISO 9613-1 order of
    magnitude, about 5 dB/km at 1 kHz, growing ~f^1.6), plus one reflection from the ground (an image
    source below the road, coefficient 0.5: hard asphalt, but partly incoherent over the rough surface).
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
noise, and the caller may advance or share the rng between chunks without creating clicks. Positions of
the ego and of the sources are sampled on a grid of absolute times every 10 ms and interpolated linearly
(the error is below a micrometre at road speeds and curvatures).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from drivers.sim_scene import Scene

SPEED_OF_SOUND_MPS = 343.0
FULL_SCALE_PA = 20e-6 * 10 ** (130.0 / 20.0)  # digital 1.0 = 130 dB SPL peak
SIREN_LEVEL_DB = 118.0  # dB SPL (rms) at 1 m from the light bar
SIREN_CENTER_HZ = 1000.0
SIREN_SWING_HZ = 400.0  # the sweep spans 600-1400 Hz
SIREN_HARMONICS = ((1, 1.0), (2, 0.15), (3, 0.2))  # (multiple, relative amplitude)
WAIL_PERIOD_S = (3.0, 4.0)  # per-source period drawn in this range (deterministic from the track id)
YELP_PERIOD_S = (0.25, 0.35)
SIREN_RANGE_M = 800.0  # sources further away are inaudible under road noise and skipped
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
    p += _pa(SELF_NOISE_DB) * _counter_normal(key, 100, index, M)
    return np.clip(p / FULL_SCALE_PA, -1.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------------- sirens


def siren_frequency(kind: int, tau: np.ndarray, period_s: float) -> np.ndarray:
    """Instantaneous emitted frequency [Hz] of a siren at emission times ``tau`` [s].

    Args:
        kind: 1 wail (slow sweep), 2 yelp (fast sweep); both sweep 600-1400 Hz sinusoidally.
        tau: emission times [s]; period_s: sweep period [s].
    """
    _check_kind(kind)
    return SIREN_CENTER_HZ + SIREN_SWING_HZ * np.sin(2 * np.pi * np.asarray(tau) / period_s)


def siren_phase_cycles(kind: int, tau: np.ndarray, period_s: float) -> np.ndarray:
    """Phase [cycles] of the siren's fundamental: the closed-form integral of :func:`siren_frequency`
    from 0 to ``tau`` (so the waveform is continuous and exact at any emission time)."""
    _check_kind(kind)
    tau = np.asarray(tau, dtype=np.float64)
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
            te = tau + offset  # each vehicle's sweep starts at its own phase
            cycles = siren_phase_cycles(kind, te, period)
            f_inst = siren_frequency(kind, te, period)
            frac = cycles - np.floor(cycles)  # keep the phase argument small for sin's precision
            wave = np.zeros_like(r)
            for mult, amp in SIREN_HARMONICS:
                absorb_db = 4.7e-3 * (mult * f_inst / 1000.0) ** 1.6 * r
                wave += amp * 10.0 ** (-absorb_db / 20.0) * np.sin(2 * np.pi * mult * frac)
            out += gain * p_ref * wave / np.maximum(r, 1.0)
    return out


@nb.njit(cache=True, nogil=True)
def _emission(t, mx, my, mz, g0, xs, ys, vxs, vys, zs):
    """Emission time and path length for every microphone and sample.

    Solves ``tau = t - |mic(t) - source(tau)| / c`` by fixed-point iteration (a contraction by
    |v_source| / c) until tau moves less than 1e-11 s, starting from the previous sample's delay (the
    first sample of a chunk starts from tau = t and simply takes a few more steps, so the result does
    not depend on where chunks start). The source track is sampled every SOURCE_GRID_S from g0 (xs, ys
    positions [m], vxs, vys velocities [m/s], world frame) and interpolated by cubic Hermite; its height
    is zs [m]. Args t: (n,) reception times [s]; mx, my, mz: (M, n) microphone positions [m].
    Returns tau (M, n) [s] and r (M, n) [m].
    """
    M, n = mx.shape
    G = xs.shape[0]
    h = SOURCE_GRID_S
    tau = np.empty((M, n))
    r = np.empty((M, n))
    for m in range(M):
        delay = 0.0
        for k in range(n):
            ta = t[k] - delay
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


def _counter_normal(key: int, stream: int, index: np.ndarray, rows: int) -> np.ndarray:
    """(rows, len(index)) standard normal numbers that depend only on (key, stream, row, index)."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    row = np.arange(rows, dtype=np.uint64)[:, None]
    with np.errstate(over="ignore"):
        base = (np.uint64(key) ^ (np.uint64(stream) * np.uint64(0x9E3779B97F4A7C15))
                ^ ((row + np.uint64(1)) * np.uint64(0xD1B54A32D192ED03)))
        h1 = _hash_u64(base ^ (idx[None, :] * np.uint64(0xC2B2AE3D27D4EB4F)))
    h2 = _hash_u64(h1 ^ np.uint64(0x8CB92BA72F3D8DD7))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)  # Box-Muller


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


def _filtered(white: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """'valid' convolution of white (..., n + FIR_TAPS - 1) with kernels (..., FIR_TAPS) -> (..., n)."""
    L = white.shape[-1]
    nfft = 1 << int(math.ceil(math.log2(L + FIR_TAPS)))
    y = np.fft.irfft(np.fft.rfft(white, nfft) * np.fft.rfft(kernels, nfft), nfft)
    return y[..., FIR_TAPS - 1:L]


def _road_noise(key: int, index: np.ndarray, fs: int, mics: np.ndarray, speed: np.ndarray) -> np.ndarray:
    """Tyre/road noise [Pa] (M, n): 4 tyre sources, each delayed and attenuated to every microphone."""
    M = len(mics)
    extra = FIR_TAPS // 2  # kernels are centred: look ahead by half a kernel
    span = np.arange(index[0] - (FIR_TAPS - 1) + extra, index[-1] + 1 + extra)
    white = _counter_normal(key, 1, span, len(TYRES_EGO))  # (4, n + taps - 1)
    dist = np.linalg.norm(mics[:, None, :] - TYRES_EGO[None, :, :], axis=2)  # (M, 4)
    delay = dist / SPEED_OF_SOUND_MPS * fs
    # The kernel is delayed by the acoustic delay on top of its centre; the common part of the delay is
    # irrelevant for a stationary source, the differences between microphones are what an array sees.
    kern = _shaped_kernel(_road_magnitude, fs, delay - delay.min()) / np.maximum(dist, 0.3)[..., None]
    out = np.zeros((M, len(index)))
    for tyre in range(len(TYRES_EGO)):
        out += _filtered(np.broadcast_to(white[tyre], (M, white.shape[1])), kern[:, tyre])
    level = _pa(ROAD_NOISE_DB_AT_22MPS) * (np.maximum(speed, 0.0) / 22.0) ** 1.75
    return out * level[None, :] * _noise_gain(_road_magnitude, fs)


def _wind_noise(key: int, index: np.ndarray, fs: int, M: int, speed: np.ndarray) -> np.ndarray:
    """Wind noise [Pa] (M, n): independent per microphone, below ~200 Hz, pressure ~ v^2."""
    extra = FIR_TAPS // 2
    span = np.arange(index[0] - (FIR_TAPS - 1) + extra, index[-1] + 1 + extra)
    white = _counter_normal(key, 2, span, M)
    kern = _shaped_kernel(_wind_magnitude, fs, np.zeros(M))
    level = _pa(WIND_NOISE_DB_AT_20MPS) * (np.maximum(speed, 0.0) / 20.0) ** 2
    return _filtered(white, kern) * level[None, :] * _noise_gain(_wind_magnitude, fs)


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
