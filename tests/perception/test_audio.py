"""Audio perception: resampler, log-mel features, direction of arrival on the simulated roof array,
the siren detector on simulated drives, and late fusion with vehicle detections."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from drivers.messages import CLASS_NAMES, AudioChunk
from drivers.sim import default_rig
from drivers.sim_audio import SPEED_OF_SOUND_MPS, siren_phase_cycles, synth_audio
from drivers.sim_scene import Scene
from perception.audio import (
    DOA_WINDOW_S,
    N_FRAMES,
    N_MELS,
    WINDOW_S,
    SirenDetector,
    associate_sirens,
    doa_bearing,
    log_mel,
    mic_positions_ego,
    resample,
    tonal_level_db,
)
from perception.decode import Detections3D

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "recordings" / "models" / "siren.pt"
FS = 16000


def rig_mics() -> np.ndarray:
    """The default rig's microphones in the ego frame (4 in a 0.2 m square, 1.6 m up)."""
    sensor = default_rig()["mic_array"]
    return mic_positions_ego(sensor.ego_from_sensor, sensor.mic_positions)


def dominant_frequency(x: np.ndarray, rate: int) -> float:
    """Peak of a zero-padded, windowed spectrum, refined by parabolic interpolation [Hz]."""
    n = len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(n), 16 * n))
    k = int(np.argmax(spec))
    a, b, c = np.log(spec[k - 1:k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * rate / (16 * n)


def wrap_deg(a: np.ndarray) -> np.ndarray:
    return (np.asarray(a) + 180.0) % 360.0 - 180.0


# ------------------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("rate_in, rate_out", [(44100, 16000), (16000, 44100), (48000, 16000), (8000, 16000)])
def test_resampler_keeps_a_tones_frequency_and_level(rate_in, rate_out):
    f0 = 1234.5
    x = np.sin(2 * np.pi * f0 * np.arange(rate_in) / rate_in).astype(np.float32)
    y = resample(x, rate_in, rate_out)
    assert y.shape == (math.ceil(rate_in * rate_out / rate_in),) and y.dtype == np.float32
    inner = y[rate_out // 10: -rate_out // 10]  # away from the zero-padded ends
    assert abs(dominant_frequency(inner, rate_out) - f0) < 0.2
    assert abs(inner.std() * math.sqrt(2) - 1.0) < 0.01


def test_resampler_rejects_what_would_alias():
    # 12 kHz at 44.1 kHz has no place below 8 kHz: downsampling to 16 kHz must remove it, not fold it to 4 kHz.
    x = np.sin(2 * np.pi * 12000.0 * np.arange(44100) / 44100)
    y = resample(x, 44100, 16000)[1000:-1000]
    assert 20 * np.log10(y.std() * math.sqrt(2) + 1e-12) < -60.0


def test_resampler_keeps_channels_apart_and_rejects_bad_rates():
    x = np.stack([np.ones(4410), np.zeros(4410)]).astype(np.float32)
    y = resample(x, 44100, 16000)
    assert y.shape == (2, 1600)
    assert np.allclose(y[0, 100:-100], 1.0, atol=1e-4) and np.all(y[1] == 0.0)
    with pytest.raises(ValueError, match="positive integers"):
        resample(x, 44100.5, 16000)


# ------------------------------------------------------------------------------------------- features
def test_log_mel_is_shape_stable_across_sample_rates_and_channels():
    shapes = set()
    bands = set()
    for rate in (16000, 22050, 44100, 48000):
        x = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(int(WINDOW_S * rate)) / rate)
        m = log_mel(x.astype(np.float32), rate)
        shapes.add(m.shape)
        bands.add(int(np.argmax(m.mean(axis=1))))
        assert m.dtype == np.float32
    assert shapes == {(N_MELS, N_FRAMES)}
    assert len(bands) == 1  # the tone lands in the same mel band whatever the input rate
    tone = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(int(WINDOW_S * FS)) / FS)
    four = log_mel(np.tile(tone, (4, 1)).astype(np.float32), FS)
    assert four.shape == (N_MELS, N_FRAMES)
    assert np.abs(four - log_mel(tone, FS)).max() < 1e-3  # channels average power, not waveforms


def test_log_mel_maps_silence_to_the_floor_and_refuses_short_audio():
    assert np.all(log_mel(np.zeros(FS, np.float32), FS) == -100.0)
    with pytest.raises(ValueError, match="at least 1024 samples"):
        log_mel(np.zeros(500, np.float32), FS)


# ------------------------------------------------------------------------------------------- direction
def array_recording(bearing_rad: float, distance_m: float, kind: int, snr_db: float, rng: np.random.Generator,
                    mics: np.ndarray, t0: float = 3.0) -> np.ndarray:
    """DOA_WINDOW_S (what the detector steers on) of the simulator's siren (kind 1 wail, 2 yelp) from a source at ``bearing_rad`` and
    ``distance_m`` (light bar 1.7 m up) reaching each microphone with its exact delay (the analytic
    waveform at emission time t - r_m / c), plus road-like noise common to all microphones (arriving
    from the tyres, i.e. from below) and independent wind / self noise, at ``snr_db`` siren-to-noise."""
    centre = mics.mean(axis=0)
    src = centre + np.array([distance_m * math.cos(bearing_rad), distance_m * math.sin(bearing_rad), 0.1])
    n = int(DOA_WINDOW_S * FS)
    t = t0 + np.arange(n) / FS
    r = np.linalg.norm(mics - src, axis=1)
    period = 3.5 if kind == 1 else 0.3
    phase = [siren_phase_cycles(kind, t - rm / SPEED_OF_SOUND_MPS, period) for rm in r]
    siren = np.stack([(np.sin(2 * np.pi * p) + 0.15 * np.sin(4 * np.pi * p) + 0.2 * np.sin(6 * np.pi * p)) / rm
                      for p, rm in zip(phase, r)])
    f = np.fft.rfftfreq(n, 1.0 / FS)
    road_shape = (f / 50) ** 2 / (1 + (f / 50) ** 2) / (1 + (f / 400) ** 2)
    road = np.fft.irfft(np.fft.rfft(rng.normal(size=n)) * road_shape, n)
    own = np.fft.irfft(np.fft.rfft(rng.normal(size=(len(mics), n)), axis=1) / (1 + (f / 1000) ** 2), n, axis=1)
    noise = road[None, :] / road.std() + 0.5 * own / own.std()
    noise *= siren.std() / noise.std() * 10 ** (-snr_db / 20)
    return (siren + noise).astype(np.float32)


def bearing_errors_deg(snr_db: float, n: int = 24) -> np.ndarray:
    rng = np.random.default_rng(7)
    mics = rig_mics()
    errors = []
    for k, truth in enumerate(np.linspace(-np.pi, np.pi, n, endpoint=False) + 0.05):
        audio = array_recording(truth, rng.uniform(15.0, 120.0), 1 + k % 2, snr_db, rng, mics)
        bearing, quality = doa_bearing(audio, mics, FS)
        assert -math.pi < bearing <= math.pi and 0.0 <= quality <= 1.0
        errors.append(abs(wrap_deg(np.degrees(bearing - truth))))
    return np.array(errors)


def test_bearing_median_error_is_within_5_deg_over_24_bearings_at_10db_snr():
    errors = bearing_errors_deg(snr_db=10.0)
    assert np.median(errors) <= 5.0, errors
    assert np.percentile(errors, 90) <= 10.0, errors


def test_bearing_quality_drops_to_noise_without_a_siren():
    rng = np.random.default_rng(3)
    mics = rig_mics()
    siren = array_recording(0.7, 40.0, 2, 20.0, rng, mics)
    noise = rng.normal(size=(4, int(DOA_WINDOW_S * FS))).astype(np.float32)
    assert doa_bearing(siren, mics, FS)[1] > 0.5
    assert doa_bearing(noise, mics, FS)[1] < 0.2
    with pytest.raises(ValueError, match="mic_positions"):
        doa_bearing(noise, mics[:3], FS)


def test_a_steady_tone_reports_its_spatial_alias_as_another_bearing():
    from perception.audio import _doa

    # At the top of a wail the siren holds about 1.4 kHz for a few tenths of a second. The rig's microphones
    # are 0.2 m apart, ambiguous above 860 Hz: from 10 degrees, a second direction (-103 degrees) fits the
    # tone and its harmonics almost as well. The estimate keeps it as another bearing.
    rng = np.random.default_rng(0)
    mics = rig_mics()
    top = array_recording(math.radians(10.0), 30.0, 1, 20.0, rng, mics, t0=0.625)
    bearing, quality, _, others = _doa(top, mics, FS)
    assert abs(math.degrees(bearing) - 10.0) < 1.0 and quality > 0.9
    assert len(others) == 1 and abs(math.degrees(others[0]) + 103.2) < 1.0
    # Mid-sweep the bins spread over hundreds of hertz and only the true direction adds up.
    sweeping = array_recording(math.radians(10.0), 30.0, 1, 20.0, rng, mics, t0=3.0)
    bearing, _, _, others = _doa(sweeping, mics, FS)
    assert abs(math.degrees(bearing) - 10.0) < 1.0 and others == ()


def test_tonal_level_reads_a_tone_and_falls_off_as_one_over_range():
    t = np.arange(int(DOA_WINDOW_S * FS)) / FS
    sine = np.stack([np.sin(2 * np.pi * 1000.0 * t + k) for k in range(4)]).astype(np.float32)
    assert tonal_level_db(sine, FS) == pytest.approx(-3.01, abs=0.02)  # full-scale sine: mean square 1/2
    assert tonal_level_db(0.1 * sine, FS) == pytest.approx(-23.01, abs=0.02)
    assert tonal_level_db(np.zeros((1, len(t)), np.float32), FS) == -100.0
    # A wailing siren (fundamental + 2 harmonics; no noise of its own at 300 dB SNR) whose amplitude falls as
    # 1/r, over the same white noise at every range (10 dB below the siren at 40 m): the level follows
    # -20 log10(r).
    rng = np.random.default_rng(5)
    mics = rig_mics()
    sirens = {r: array_recording(0.4, r, 1, 300.0, rng, mics) for r in (10.0, 20.0, 40.0)}
    noise = (0.1 ** 0.5 * sirens[40.0].std() * rng.normal(size=sirens[40.0].shape)).astype(np.float32)
    levels = {r: tonal_level_db(x + noise, FS) for r, x in sirens.items()}
    assert levels[10.0] - levels[20.0] == pytest.approx(6.02, abs=1.0)
    assert levels[20.0] - levels[40.0] == pytest.approx(6.02, abs=1.0)
    # The detector reports the level of the window it takes the bearing from, and the same bearing.
    detector = SirenDetector(lambda feeds: {"siren_prob": np.ones((1, 1), np.float32)}, FS, 4, mics)
    second = np.concatenate([sirens[20.0] + noise, sirens[20.0] + noise], axis=1)
    detector.push(AudioChunk("mic_array", 0, 0, second.astype(np.float32), FS))
    estimate = detector.detect()
    assert estimate.level_db == tonal_level_db(sirens[20.0] + noise, FS)
    assert (estimate.bearing_rad, estimate.quality) == doa_bearing(sirens[20.0] + noise, mics, FS)
    with pytest.raises(ValueError, match="at least 1024 samples"):
        tonal_level_db(sine[:, :500], FS)


# ------------------------------------------------------------------------------------------- simulator
def siren_scene() -> tuple[Scene, float]:
    """A 30 s drive with one emergency vehicle and the time it passes the ego."""
    scene = Scene(seed=4, duration_s=30.0, n_sirens=1)
    times = np.arange(0.0, 30.0, 0.1)
    return scene, float(times[np.argmin([siren_distance(scene, t) for t in times])])


def siren_truth(scene: Scene, t: float) -> np.ndarray:
    o = scene.objects_at(t, max_range=1e5)
    k = np.flatnonzero(o.siren > 0)[0]
    return o.boxes[k, :2]


def siren_distance(scene: Scene, t: float) -> float:
    return float(np.hypot(*siren_truth(scene, t)))


@pytest.fixture(scope="module")
def detector_factory():
    if not WEIGHTS.is_file():
        pytest.skip(f"shipped siren weights missing at {WEIGHTS}")

    def make(backend: str = "torch") -> SirenDetector:
        return SirenDetector.from_weights(WEIGHTS, FS, 4, rig_mics(), backend=backend)

    return make


def feed_drive(detector: SirenDetector, scene: Scene, t_start: float, n_chunks: int) -> list:
    """Push ``n_chunks`` AudioChunks of 1600 samples of the simulated array, as the rig sends them."""
    mics = rig_mics()
    rng = np.random.default_rng(1)
    estimates = []
    for k in range(n_chunks):
        t0 = t_start + k * 0.1
        samples = synth_audio(scene, t0, 1600, FS, mics, rng)
        estimates.append(detector(AudioChunk("mic_array", int(round(t0 * 1e9)), k, samples, FS)))
    return estimates


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_detector_hears_the_simulated_emergency_vehicle_and_points_at_it(detector_factory, backend):
    scene, t_pass = siren_scene()
    detector = detector_factory(backend)
    estimates = feed_drive(detector, scene, t_pass - 4.0, 24)
    assert all(e is None for e in estimates[:9])  # the window fills after 1 s (10 chunks)
    ready = [e for e in estimates[9:] if e is not None]
    assert len(ready) == 15
    assert np.median([e.probability for e in ready]) > 0.8
    errors = []
    for e in ready:
        t_mid = e.stamp_ns / 1e9 + 0.1 - DOA_WINDOW_S / 2  # the centre of the audio the bearing comes from
        x, y = siren_truth(scene, t_mid)
        mics = rig_mics().mean(axis=0)
        errors.append(abs(wrap_deg(np.degrees(e.bearing_rad - math.atan2(y - mics[1], x - mics[0])))))
    assert np.median(errors) <= 5.0, errors


def test_detector_stays_quiet_on_a_drive_without_sirens(detector_factory):
    scene = Scene(seed=4, duration_s=30.0, n_sirens=0)
    detector = detector_factory()
    estimates = [e for e in feed_drive(detector, scene, 10.0, 20) if e is not None]
    assert len(estimates) == 11
    assert max(e.probability for e in estimates) < 0.5


def test_detector_rejects_a_chunk_from_another_array():
    detector = SirenDetector(lambda feeds: {"siren_prob": np.zeros((1, 1), np.float32)}, FS, 4, rig_mics())
    with pytest.raises(ValueError, match="expected \\(4, S\\) at 16000 Hz"):
        detector.push(AudioChunk("mic_array", 0, 0, np.zeros((2, 1600), np.float32), FS))


# ------------------------------------------------------------------------------------------- fusion
def frame(centres, labels, scores) -> Detections3D:
    n = len(centres)
    boxes = np.zeros((n, 7), np.float32)
    boxes[:, :2] = centres
    boxes[:, 3:6] = (4.5, 1.9, 1.6)
    return Detections3D(123, boxes, np.zeros((n, 2), np.float32), np.asarray(scores, np.float32),
                        np.asarray([CLASS_NAMES.index(c) for c in labels], np.int32), np.zeros(n, bool))


def test_siren_goes_to_the_vehicle_in_its_direction():
    dets = frame([(30.0, 0.0), (20.0, 20.0), (-10.0, 5.0), (20.0, 19.0)],
                 ["car", "truck", "car", "pedestrian"], [0.9, 0.6, 0.8, 0.99])
    out = associate_sirens(dets, 456, 0.9, math.radians(44.0), 0.5, math.radians(10.0))
    assert out.siren.tolist() == [False, True, False, False]  # the truck, not the pedestrian next to it
    assert len(out.siren_events) == 1
    event = out.siren_events[0]
    assert (event.stamp_ns, event.detection_index) == (456, 1)
    assert event.bearing_rad == pytest.approx(math.radians(44.0)) and event.probability == pytest.approx(0.9)
    assert not dets.siren.any()  # the input is left alone


def test_siren_with_no_vehicle_in_its_direction_is_bearing_only():
    dets = frame([(30.0, 0.0), (-10.0, 5.0)], ["car", "car"], [0.9, 0.8])
    out = associate_sirens(dets, 456, 0.7, math.radians(-90.0), 0.5, math.radians(10.0))
    assert not out.siren.any()
    assert [(e.detection_index, round(math.degrees(e.bearing_rad))) for e in out.siren_events] == [(-1, -90)]
    empty = associate_sirens(Detections3D.empty(1), 1, 0.7, 3.0, 0.5, 0.2)
    assert empty.siren_events[0].detection_index == -1


def test_two_vehicles_on_one_bearing_prefer_the_higher_score_then_the_nearer():
    # 0.14, 0.0 and 0.1 degrees: one bearing for the array
    dets = frame([(20.0, 0.05), (40.0, 0.0), (60.0, 0.1)], ["car", "car", "truck"], [0.5, 0.8, 0.8])
    out = associate_sirens(dets, 1, 0.9, 0.0, 0.5, math.radians(10.0))
    assert out.siren.tolist() == [False, True, False]  # 0.8 beats 0.5; 40 m beats 60 m at equal score


def test_the_nearest_bearing_beats_a_higher_score_a_degree_away():
    # The next car in the lane, 1 degree off the siren's bearing and more confident, does not take it.
    dets = frame([(30.0, 0.0), (25.0, 0.45)], ["car", "car"], [0.5, 0.9])
    out = associate_sirens(dets, 1, 0.9, math.radians(0.1), 0.5, math.radians(10.0))
    assert out.siren.tolist() == [True, False]


def test_a_siren_below_threshold_changes_nothing_and_bad_bearings_are_refused():
    dets = frame([(30.0, 0.0)], ["car"], [0.9])
    assert associate_sirens(dets, 1, 0.3, 0.0, 0.5, 0.2) is dets
    with pytest.raises(ValueError, match="bearing_rad must be finite"):
        associate_sirens(dets, 1, 0.9, float("nan"), 0.5, 0.2)


def test_association_survives_mask_indexing_of_the_detections():
    dets = frame([(30.0, -1.0), (20.0, 20.0), (25.0, 24.0)], ["car", "car", "car"], [0.2, 0.9, 0.7])
    out = associate_sirens(dets, 1, 0.9, math.radians(45.0), 0.5, math.radians(5.0))
    kept = out[out.scores > 0.5]
    assert kept.siren.tolist() == [True, False]
    assert kept.siren_events[0].detection_index == 0


def test_the_tracked_siren_vehicle_keeps_the_attribute_within_the_margin():
    # Two cars 2 degrees apart: the array's bearing is nearer the second, but the first was the siren vehicle
    # a moment ago (its track found it again) and is within the margin, so it keeps the siren.
    dets = frame([(30.0, 0.0), (30.0, 1.05)], ["car", "car"], [0.9, 0.9])
    free = associate_sirens(dets, 1, 0.9, math.radians(1.5), 0.5, math.radians(10.0))
    assert free.siren.tolist() == [False, True]
    kept = associate_sirens(dets, 1, 0.9, math.radians(1.5), 0.5, math.radians(10.0), prefer=0,
                            prefer_margin_rad=math.radians(5.0))
    assert kept.siren.tolist() == [True, False] and kept.siren_events[0].detection_index == 0
    # Beyond the margin the nearer bearing wins; outside the gate the tracked one is no candidate at all.
    assert associate_sirens(dets, 1, 0.9, math.radians(1.5), 0.5, math.radians(10.0), prefer=0,
                            prefer_margin_rad=math.radians(0.5)).siren.tolist() == [False, True]
    assert associate_sirens(dets, 1, 0.9, math.radians(1.9), 0.5, np.radians([0.5, 10.0]), prefer=0,
                            prefer_margin_rad=math.radians(5.0)).siren.tolist() == [False, True]


def test_per_detection_gates_and_bad_preferences_are_checked():
    dets = frame([(30.0, 5.0), (30.0, -5.0)], ["car", "car"], [0.9, 0.9])  # +-9.5 degrees
    wide_second = associate_sirens(dets, 1, 0.9, 0.0, 0.5, np.radians([5.0, 12.0]))
    assert wide_second.siren.tolist() == [False, True]
    with pytest.raises(ValueError, match="one value or one per detection"):
        associate_sirens(dets, 1, 0.9, 0.0, 0.5, np.radians([5.0, 12.0, 1.0]))
    with pytest.raises(ValueError, match="max_bearing_err_rad must be >= 0"):
        associate_sirens(dets, 1, 0.9, 0.0, 0.5, -0.1)
    with pytest.raises(ValueError, match="prefer must be -1 or a detection index"):
        associate_sirens(dets, 1, 0.9, 0.0, 0.5, 0.2, prefer=2)


def test_bearing_errors_measured_by_the_caller_replace_the_computed_ones():
    # The caller matched each car against several possible bearings: the second car (-9.5 degrees from the
    # array's best bearing) is 1 degree from another one, the first (+9.5) 6 degrees from every one.
    dets = frame([(30.0, 5.0), (30.0, -5.0)], ["car", "car"], [0.9, 0.9])
    out = associate_sirens(dets, 1, 0.9, math.radians(9.5), 0.5, math.radians(10.0),
                           bearing_err_rad=np.radians([6.0, 1.0]))
    assert out.siren.tolist() == [False, True]
    assert associate_sirens(dets, 1, 0.9, math.radians(9.5), 0.5, math.radians(10.0)).siren.tolist() == [True, False]
    with pytest.raises(ValueError, match="bearing_err_rad must have one value per detection"):
        associate_sirens(dets, 1, 0.9, 0.0, 0.5, 0.2, bearing_err_rad=np.zeros(3))


def _siren_stage(level_at_1m_db=None):
    from perception.audio_stage import SirenStage

    return SirenStage(SirenDetector(lambda feeds: {"siren_prob": np.ones((1, 1), np.float32)}, FS, 4, rig_mics()),
                      "mic_array", threshold=0.5, level_at_1m_db=level_at_1m_db)


def _staged(stage, stamp_ns, bearing_deg, cars, ids, level_db=float("nan"), others_deg=()):
    """One frame through the stage (ego standing still), on a given estimate: what the worker thread would
    have produced from the audio up to 100 ms before the frame. Returns the stage's detections."""
    from drivers.messages import VehicleSpeed
    from perception.audio import SirenEstimate
    from perception.sync import SyncedFrame

    stage._estimate = SirenEstimate(stamp_ns - 100_000_000, 0.99, math.radians(bearing_deg), 1.0, level_db,
                                    tuple(math.radians(b) for b in others_deg))
    synced = SyncedFrame(stamp_ns, 0, {}, (), (VehicleSpeed("vehicle_speed", stamp_ns, 0, 0.0),), (), frozenset())
    d = frame(cars, ["car"] * len(cars), [0.9] * len(cars))
    d = Detections3D(stamp_ns, d.boxes, d.velocities, d.scores, d.labels, d.siren, d.class_names, (),
                     None if ids is None else np.asarray(ids, np.int64))
    return stage(synced, d)


def _attributed(stage, stamp_ns, bearing_deg, cars, ids, level_db=float("nan")):
    """:func:`_staged`'s siren flags."""
    return _staged(stage, stamp_ns, bearing_deg, cars, ids, level_db).siren.tolist()


def test_siren_stage_keeps_the_siren_on_its_track():
    # Two parked cars 2 degrees apart (tracks 7 and 8), 60 m away: side by side with 0.2 m between them.
    two = [(60.0, 0.0), (60.0, 2.1)]
    stage, gap = _siren_stage(), _siren_stage()
    for st in (stage, gap):
        assert _attributed(st, 1_000_000_000, 0.5, two, [7, 8]) == [True, False]
        # The bearing drifts 1 degree nearer the second car: the first keeps the siren (its error over the
        # frames is not OWNER_MARGIN_RAD worse) ...
        assert _attributed(st, 1_100_000_000, 1.5, two, [7, 8]) == [True, False]
    # ... which a stage without that history would have given to the other.
    assert _attributed(_siren_stage(), 1_100_000_000, 1.5, two, [7, 8]) == [False, True]
    # Heard without a gap, the first car keeps it even 2.2 degrees off (0.2 from the second) ...
    assert _attributed(stage, 1_200_000_000, 2.2, two, [7, 8]) == [True, False]
    # ... but after a gap longer than OWNER_MAX_GAP_S it goes to the better match.
    assert _attributed(gap, 2_000_000_000, 2.2, two, [7, 8]) == [False, True]


def test_siren_stage_gives_up_a_wrong_first_choice():
    # The siren vehicle (track 2, at 0 degrees) is not detected yet: the siren goes to the only car in the
    # gate, 8 degrees off (track 1).
    stage = _siren_stage()
    far = (30.0, 30.0 * math.tan(math.radians(8.0)))
    assert _attributed(stage, 1_000_000_000, 0.0, [far], [1]) == [True]
    assert _attributed(stage, 1_100_000_000, 0.0, [far], [1]) == [True]
    # Once detected, it matches better by more than the margin and takes the siren.
    assert _attributed(stage, 1_200_000_000, 0.0, [far, (30.0, 0.3)], [1, 2]) == [False, True]


def test_siren_stage_hears_a_passing_vehicle_where_it_was():
    # Track 3 passes close by, its bearing sweeping from 10 to 90 degrees in 0.4 s; the array's bearing is
    # the mean over its window (the sweep so far, 50 degrees at the end). A parked car sits at 57 degrees.
    # Without the history the passing car (now at 90 degrees, 40 off) would be out of the gate and the
    # parked one would get the siren.
    stage = _siren_stage()
    stage._chunk_ns = 100_000_000
    parked = (20.0 * math.cos(math.radians(57.0)), 20.0 * math.sin(math.radians(57.0)))
    sweep = (10.0, 30.0, 50.0, 70.0, 90.0)
    for k, deg in enumerate(sweep):
        passing = (8.0 * math.cos(math.radians(deg)), 8.0 * math.sin(math.radians(deg)))
        heard = sum(sweep[: k + 1]) / (k + 1)
        assert _attributed(stage, 1_000_000_000 + k * 100_000_000, heard, [passing, parked], [3, 4]) == [True, False]
    assert _attributed(_siren_stage(), 1_400_000_000, 50.0, [passing, parked], [3, 4]) == [False, True]


def test_an_alias_taking_the_peak_does_not_take_the_siren_off_its_vehicle():
    # The siren vehicle (track 5) is at 9 degrees and has the siren. Then a spatial alias takes the array's
    # peak (-101 degrees, nothing there) and 9 degrees becomes the other bearing: the vehicle keeps the
    # siren, and the event reports the bearing it matched. A car at -60 degrees is out of the gate of both.
    car = (25.0 * math.cos(math.radians(9.0)), 25.0 * math.sin(math.radians(9.0)))
    other = (20.0 * math.cos(math.radians(-60.0)), 20.0 * math.sin(math.radians(-60.0)))
    stage = _siren_stage()
    assert _attributed(stage, 1_000_000_000, 9.0, [car, other], [5, 6]) == [True, False]
    out = _staged(stage, 1_100_000_000, -101.0, [car, other], [5, 6], others_deg=(9.0,))
    assert out.siren.tolist() == [True, False]
    event = out.siren_events[-1]
    assert event.detection_index == 0 and abs(math.degrees(event.bearing_rad) - 9.0) < 1e-9
    # An alias does not give the siren to a vehicle that does not have it: reported on its own, at the
    # best bearing.
    fresh = _staged(_siren_stage(), 1_100_000_000, -101.0, [car, other], [5, 6], others_deg=(9.0,))
    assert fresh.siren.tolist() == [False, False]
    assert fresh.siren_events[-1].detection_index == -1
    assert abs(math.degrees(fresh.siren_events[-1].bearing_rad) + 101.0) < 1e-9


def test_siren_stage_gives_the_siren_only_to_a_vehicle_at_the_range_its_level_says():
    # Two parked cars in one direction, 15 m and 45 m away; the siren is heard at the level of a siren 45 m
    # away (the siren's level at 1 m is -12 dB on the array's scale).
    cars, ids = [(15.0, 0.0), (45.0, 0.0)], [1, 2]
    at_45 = -12.0 - 20.0 * math.log10(45.0)
    # Without the level the two tie on bearing and the nearer one gets the siren.
    assert _attributed(_siren_stage(), 1_000_000_000, 0.0, cars, ids, at_45) == [True, False]
    # With it, only the car 45 m away agrees with what was heard (the nearer one would be 9.5 dB louder).
    assert _attributed(_siren_stage(-12.0), 1_000_000_000, 0.0, cars, ids, at_45) == [False, True]
    # A siren 200 m away matches neither: a bearing-only event.
    from drivers.messages import VehicleSpeed
    from perception.audio import SirenEstimate
    from perception.sync import SyncedFrame

    stage = _siren_stage(-12.0)
    stage._estimate = SirenEstimate(900_000_000, 0.99, 0.0, 1.0, -12.0 - 20.0 * math.log10(200.0))
    d = frame(cars, ["car", "car"], [0.9, 0.9])
    out = stage(SyncedFrame(1_000_000_000, 0, {}, (), (VehicleSpeed("vehicle_speed", 1_000_000_000, 0, 0.0),), (),
                            frozenset()), d)
    assert out.siren.tolist() == [False, False]
    assert [e.detection_index for e in out.siren_events] == [-1]
    # An estimate without a level (NaN) is matched on bearing alone.
    assert _attributed(_siren_stage(-12.0), 1_000_000_000, 0.0, cars, ids) == [True, False]
    with pytest.raises(ValueError, match="level_tolerance_db"):
        from perception.audio_stage import SirenStage

        SirenStage(None, "mic_array", 0.5, level_at_1m_db=-12.0, level_tolerance_db=0.0)


def test_between_vehicles_in_one_direction_the_level_picks_the_one_at_the_heard_range():
    # Two parked cars in one direction, 30 m and 40 m away (2.5 dB apart, both within the 6 dB check); the
    # siren is heard at the level of a siren 40 m away. They tie on bearing: the level breaks the tie.
    cars, ids = [(30.0, 0.0), (40.0, 0.0)], [1, 2]
    at_40 = -12.0 - 20.0 * math.log10(40.0)
    assert _attributed(_siren_stage(-12.0), 1_000_000_000, 0.0, cars, ids, at_40) == [False, True]
    at_30 = -12.0 - 20.0 * math.log10(30.0)
    assert _attributed(_siren_stage(-12.0), 1_000_000_000, 0.0, cars, ids, at_30) == [True, False]
    # A bearing error beats the level: a car 1.5 degrees off the heard bearing at the heard range loses to
    # one on the bearing 2.5 dB off.
    off = (40.0 * math.cos(math.radians(1.5)), 40.0 * math.sin(math.radians(1.5)))
    assert _attributed(_siren_stage(-12.0), 1_000_000_000, 0.0, [cars[0], off], ids, at_40) == [True, False]


def test_siren_stage_without_tracking_matches_frame_by_frame():
    # tracking: false in the pipeline config leaves no identities: each frame is matched on its own.
    two = [(60.0, 0.0), (60.0, 2.1)]
    stage = _siren_stage()
    assert _attributed(stage, 1_000_000_000, 0.5, two, None) == [True, False]
    assert _attributed(stage, 1_100_000_000, 1.5, two, None) == [False, True]
    assert stage._seen == {} and stage._owner == -1


def test_every_box_of_the_siren_vehicle_gets_the_siren():
    # A van-sized emergency vehicle seen twice: a truck box (score 0.4, 9 m long, its centre pushed 2 m out)
    # and a car box (score 0.1, below the stage's MIN_SCORE) on the same footprint. The car queued behind it
    # (the too-long truck box reaches 1 m into it) and a truck in the next lane are other vehicles.
    from drivers.messages import VehicleSpeed
    from perception.audio import SirenEstimate
    from perception.sync import SyncedFrame

    boxes = np.array([[32.0, 0.0, 1.0, 9.0, 2.6, 2.5, 0.0],     # the van as a truck
                      [30.0, 0.2, 1.0, 5.5, 2.2, 2.0, 0.0],     # the van as a car
                      [37.75, 0.0, 1.0, 4.5, 1.9, 1.6, 0.0],    # the car behind it
                      [31.0, 3.6, 1.0, 9.5, 2.6, 3.0, 0.0]],    # a truck in the next lane
                     np.float32)
    dets = Detections3D(1_000_000_000, boxes, np.zeros((4, 2), np.float32), np.array([0.4, 0.1, 0.3, 0.7], np.float32),
                        np.array([CLASS_NAMES.index(c) for c in ("truck", "car", "car", "truck")], np.int32),
                        np.zeros(4, bool), CLASS_NAMES, (), np.array([1, 2, 3, 4], np.int64))
    stage = _siren_stage()
    stage._estimate = SirenEstimate(900_000_000, 0.99, 0.0, 1.0, float("nan"))
    out = stage(SyncedFrame(1_000_000_000, 0, {}, (), (VehicleSpeed("vehicle_speed", 1_000_000_000, 0, 0.0),), (),
                            frozenset()), dets)
    assert out.siren.tolist() == [True, True, False, False]
    assert [e.detection_index for e in out.siren_events] == [0]  # the event names the chosen box


def test_footprint_overlap_is_the_shared_part_of_the_smaller_box():
    from perception.bev import footprint_overlap

    car = np.array([0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0])
    others = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],          # the same box
                       [2.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],          # half of it
                       [4.1, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],          # beside it
                       [0.0, 0.0, 0.0, 4.0, 2.0, 1.5, np.pi / 2],    # crossed: a 2 x 2 square of 8 m^2
                       [0.0, 0.0, 0.0, 10.0, 4.0, 1.0, 0.3],         # a larger box around it
                       [0.0, 0.0, 0.0, 4.0, 2.0, 1.5, np.pi]])       # turned around: the same footprint
    assert np.allclose(footprint_overlap(car, others), [1.0, 0.5, 0.0, 0.5, 1.0, 1.0])
    # A 2 x 2 square turned 45 degrees, centred on the car's front edge: the car holds its back half less
    # the two tips beyond |y| = 1, 2 * integral_0^1 (sqrt(2) - y) dy = 2 sqrt(2) - 1 of its 4 m^2.
    s = np.sqrt(2.0)
    diamond = np.array([[2.0, 0.0, 0.0, 2.0, 2.0, 1.0, np.pi / 4], [2.0 + s, 0.0, 0.0, 2.0, 2.0, 1.0, np.pi / 4]])
    assert np.allclose(footprint_overlap(car, diamond), [(2 * s - 1) / 4, 0.0])  # the second touches a point
    assert footprint_overlap(car, np.zeros((0, 7))).shape == (0,)
