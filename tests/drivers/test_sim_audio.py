"""Simulated microphone array: siren geometry (delays, Doppler band, level), chunk continuity, noise."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.sim_audio import SPEED_OF_SOUND_MPS, siren_frequency, siren_phase_cycles, synth_audio
from drivers.sim_scene import Scene

FS = 16000
# A 20 cm square array on the roof, 1.8 m above the ground (ego frame).
MICS = np.array([[0.1, 0.1, 1.8], [0.1, -0.1, 1.8], [-0.1, 0.1, 1.8], [-0.1, -0.1, 1.8]])


def siren_scene(kind: int) -> tuple[Scene, float]:
    """A 40 s drive with one emergency vehicle of the given siren kind, and its time of closest approach."""
    for seed in range(50):
        scene = Scene(seed=seed, duration_s=40.0, n_sirens=1)
        world = scene.objects_world(0.0)
        if world.siren[world.siren > 0][0] == kind:
            times = np.arange(0.0, 40.0, 0.1)
            return scene, float(times[np.argmin([siren_distance(scene, t) for t in times])])
    raise AssertionError(f"no scene seed below 50 has a siren of kind {kind}")


def siren_position(scene: Scene, t: float) -> np.ndarray:
    """Siren (light bar) position [m] in the ego frame at t."""
    o = scene.objects_at(t, max_range=1e5)
    k = np.flatnonzero(o.siren > 0)[0]
    return np.array([o.boxes[k, 0], o.boxes[k, 1], o.boxes[k, 5] + 0.1])


def siren_distance(scene: Scene, t: float) -> float:
    return float(np.linalg.norm(siren_position(scene, t) - MICS.mean(axis=0)))


def time_at_distance(scene: Scene, t_pass: float, distance: float) -> float:
    """The time before the pass-by when the siren is ``distance`` metres away (approaching)."""
    times = np.arange(t_pass - 15.0, t_pass, 0.01)
    d = np.array([siren_distance(scene, t) for t in times])
    return float(times[np.argmin(np.abs(d - distance))])


def gcc_phat(a: np.ndarray, b: np.ndarray, band=(550.0, 4500.0), interp: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """GCC-PHAT of ``a`` against ``b`` over the siren band, using only the bins where the cross-spectrum is
    within 20 dB of its peak (the siren's, not the noise's), interpolated x32: (lags [s], correlation)
    over the lags the array can produce (plus one sample)."""
    n = len(a) + len(b)
    cross = np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n))
    f = np.fft.rfftfreq(n, 1.0 / FS)
    keep = (f >= band[0]) & (f <= band[1])
    keep &= np.abs(cross) > 1e-2 * np.abs(cross[keep]).max()
    cross = np.where(keep, cross / (np.abs(cross) + 1e-30), 0.0)
    cc = np.fft.irfft(cross, n * interp)
    baseline = np.linalg.norm(MICS[:, None, :] - MICS[None, :, :], axis=2).max()
    max_lag = int(interp * FS * baseline / SPEED_OF_SOUND_MPS) + interp
    cc = np.concatenate([cc[-max_lag:], cc[:max_lag + 1]])
    return (np.arange(len(cc)) - max_lag) / (interp * FS), cc


def gcc_phat_delay(a: np.ndarray, b: np.ndarray) -> float:
    """Delay of ``a`` relative to ``b`` [s]: the GCC-PHAT peak."""
    lags, cc = gcc_phat(a, b)
    return float(lags[np.argmax(cc)])


def gcc_phat_candidates(a: np.ndarray, b: np.ndarray, within: float = 0.8) -> np.ndarray:
    """Delays [s] of every GCC-PHAT local maximum at least ``within`` of the highest. A nearly steady tone
    above c / (2 x spacing) (850 Hz for 0.2 m) correlates equally at delays one period apart (spatial
    aliasing), so a short window of a wail can have two or three such peaks."""
    lags, cc = gcc_phat(a, b)
    inner = (cc[1:-1] >= cc[:-2]) & (cc[1:-1] >= cc[2:]) & (cc[1:-1] >= within * cc.max())
    return lags[1:-1][inner]


def band_power(x: np.ndarray, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1.0 / FS)
    return float(spec[(f >= lo) & (f <= hi)].sum())


def welch(x: np.ndarray, nper: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    frames = np.lib.stride_tricks.sliding_window_view(x, nper)[:: nper // 2] * np.hanning(nper)
    return np.fft.rfftfreq(nper, 1.0 / FS), (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)


def synth(scene: Scene, t0: float, n: int, seed: int = 0) -> np.ndarray:
    return synth_audio(scene, t0, n, FS, MICS, np.random.default_rng(seed)).astype(np.float64)


# ------------------------------------------------------------------------------------------- geometry


def test_inter_microphone_delays_match_the_siren_geometry_within_one_sample():
    scene, t_pass = siren_scene(kind=1)
    checked = 0
    for distance in (40.0, 25.0, 15.0):
        t0 = time_at_distance(scene, t_pass, distance)
        x = synth(scene, t0, 4000)  # 0.25 s
        src = siren_position(scene, t0 + 0.125)
        dist = np.linalg.norm(src[None, :] - MICS, axis=1)
        for i, j in ((0, 1), (0, 2), (1, 3), (2, 3)):
            geometric = (dist[i] - dist[j]) / SPEED_OF_SOUND_MPS
            candidates = gcc_phat_candidates(x[i], x[j])
            assert len(candidates) <= 3, (distance, i, j, candidates * FS)
            error = np.abs(candidates - geometric).min()
            assert error * FS < 1.0, (distance, i, j, candidates * FS, geometric * FS)
            checked += 1
    assert checked == 12


def test_siren_bearing_from_the_array_matches_the_true_bearing():
    scene, t_pass = siren_scene(kind=2)
    t0 = time_at_distance(scene, t_pass, 15.0)
    x = synth(scene, t0, 4000)
    src = siren_position(scene, t0 + 0.125)
    # Far-field plane wave: delay(i, j) = -(m_i - m_j) . u / c; least squares over all pairs for u.
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    A = np.array([-(MICS[i, :2] - MICS[j, :2]) / SPEED_OF_SOUND_MPS for i, j in pairs])
    b = np.array([gcc_phat_delay(x[i], x[j]) for i, j in pairs])
    u = np.linalg.lstsq(A, b, rcond=None)[0]
    bearing = np.degrees(np.arctan2(u[1], u[0]))
    true = np.degrees(np.arctan2(src[1] - MICS[:, 1].mean(), src[0] - MICS[:, 0].mean()))
    assert abs((bearing - true + 180) % 360 - 180) < 6.0, (bearing, true)


# ------------------------------------------------------------------------------------------- spectrum


@pytest.mark.parametrize("kind", [1, 2])
def test_siren_dominant_frequency_lies_in_band_and_sweeps(kind):
    scene, t_pass = siren_scene(kind)
    x = synth(scene, t_pass - 2.0, 3 * FS)[0]  # from ~40 m before the pass-by to ~25 m after
    nper, hop = 1024, 512
    frames = np.lib.stride_tricks.sliding_window_view(x, nper)[::hop] * np.hanning(nper)
    f = np.fft.rfftfreq(nper, 1.0 / FS)
    dominant = f[np.argmax(np.abs(np.fft.rfft(frames, axis=1)), axis=1)]
    assert np.all((dominant >= 500) & (dominant <= 1600)), dominant
    assert dominant.max() - dominant.min() > 400  # it sweeps (600-1400 Hz, Doppler-shifted)
    # A yelp sweeps within a few frames, a wail takes seconds.
    steps = np.abs(np.diff(dominant))
    if kind == 2:
        assert np.median(steps) > 60
    else:
        assert np.median(steps) < 60


def test_siren_level_falls_with_distance():
    scene, t_pass = siren_scene(kind=1)
    power = {}
    for distance in (15.0, 30.0, 60.0):
        t0 = time_at_distance(scene, t_pass, distance)
        x = synth(scene, t0, FS // 2)
        power[distance] = band_power(x[0], 550.0, 1500.0)
    assert power[15.0] > power[30.0] > power[60.0]
    # Spherical spreading alone gives 1 / r^2 in power: a factor of 16 over 15 -> 60 m (comb filtering
    # with the ground reflection and the sweep position move it around a little).
    assert power[15.0] / power[60.0] > 6.0, power


def test_no_siren_in_the_scene_gives_no_peak_in_the_siren_band():
    quiet = Scene(seed=3, duration_s=40.0, n_sirens=0)
    scene, t_pass = siren_scene(kind=1)
    ratios = {}
    for name, sc, t0 in (("none", quiet, 18.0), ("siren", scene, t_pass - 1.0)):
        # 0.25 s in frames of 32 ms: a wail sweeps across a whole band in a second, not in a quarter of one
        f, psd = welch(synth(sc, t0, FS // 4)[0], 512)
        band = (f >= 500) & (f <= 1600)
        # Peakiness: the strongest bin against a running median of its neighbours (smooth noise ~ 1).
        smooth = np.array([np.median(psd[max(k - 8, 0):k + 9]) for k in range(len(psd))])
        ratios[name] = (psd[band] / smooth[band]).max()
    assert ratios["none"] < 3.0, ratios  # the scatter of an averaged smooth noise spectrum
    assert ratios["siren"] > 8.0, ratios


def test_road_and_wind_noise_grow_with_ego_speed():
    scene = Scene(seed=2, duration_s=40.0, n_sirens=0, stop=True)
    times = np.arange(0.5, 39.0, 0.5)
    speeds = np.array([scene.ego_state(t).speed for t in times])
    slow, fast = times[np.argmin(speeds)], times[np.argmax(speeds)]
    assert scene.ego_state(fast).speed > 3 * scene.ego_state(slow).speed + 1.0
    rms = {name: synth(scene, t, FS // 2).std() for name, t in (("slow", slow), ("fast", fast))}
    assert rms["fast"] > 4 * rms["slow"], rms


# ----------------------------------------------------------------------------------------- continuity


def test_two_consecutive_chunks_equal_one_chunk_of_double_length():
    scene, t_pass = siren_scene(kind=2)
    t0, n = t_pass - 0.3, 2400
    rng = np.random.default_rng(11)
    # The caller may draw from its rng between chunks; the audio must not change.
    first = synth_audio(scene, t0, n, FS, MICS, rng)
    rng.standard_normal(5)
    second = synth_audio(scene, t0 + n / FS, n, FS, MICS, rng)
    whole = synth_audio(scene, t0, 2 * n, FS, MICS, np.random.default_rng(11))
    joined = np.concatenate([first, second], axis=1)
    assert np.abs(joined - whole).max() < 1e-6
    # ...and the join is smooth: its step is no larger than the signal's typical steps.
    steps = np.abs(np.diff(joined[0]))
    assert steps[n - 1] < 4 * np.percentile(steps, 99)


def test_siren_phase_is_the_integral_of_its_frequency():
    tau = np.linspace(0.0, 7.0, 70001)
    for kind, period in ((1, 3.5), (2, 0.3)):
        cycles = siren_phase_cycles(kind, tau, period)
        f_numeric = np.gradient(cycles, tau)
        f = siren_frequency(kind, tau, period)
        assert np.abs(f_numeric[1:-1] - f[1:-1]).max() < 0.5  # Hz
        assert 599.0 < f.min() and f.max() < 1401.0


def test_same_rng_seed_gives_identical_audio_and_another_seed_other_noise():
    scene, t_pass = siren_scene(kind=1)
    a = synth(scene, t_pass - 1.0, 8000, seed=5)
    b = synth(scene, t_pass - 1.0, 8000, seed=5)
    c = synth(scene, t_pass - 1.0, 8000, seed=6)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-5
    # The siren itself does not depend on the seed: the two takes stay strongly correlated.
    assert np.corrcoef(a[0], c[0])[0, 1] > 0.9


def test_output_shape_dtype_and_range():
    scene, t_pass = siren_scene(kind=1)
    x = synth_audio(scene, t_pass, 1600, FS, MICS, np.random.default_rng(0))
    assert x.shape == (4, 1600) and x.dtype == np.float32
    assert np.abs(x).max() <= 1.0 and np.abs(x).max() > 1e-3
    assert synth_audio(scene, t_pass, 0, FS, MICS, np.random.default_rng(0)).shape == (4, 0)


@pytest.mark.parametrize("mics, rate, n, match", [
    (np.zeros((4, 2)), FS, 100, "mics_ego must be"),
    (MICS, 0, 100, "sample_rate"),
    (MICS, FS, -1, "n_samples"),
])
def test_bad_arguments_are_rejected(mics, rate, n, match):
    scene = Scene(seed=3, duration_s=10.0, n_sirens=0)
    with pytest.raises(ValueError, match=match):
        synth_audio(scene, 1.0, n, rate, mics, np.random.default_rng(0))
