"""Synthetic 12-lead ECG signal model (pure numpy/scipy).

Why a dipole: the 12 leads of a real ECG are views of one cardiac electrical vector,
so synthesising that vector and projecting it keeps every lead consistent with the
others (and Einthoven/Goldberger hold exactly), which a per-lead template would not.

Geometry. The heart is a time-varying dipole d(t) in Frank axes: x to the patient's
left, y to the feet, z to the back. An approximate Dower matrix maps d(t) to
I, II and V1-V6; III, aVR, aVL and aVF are derived from I and II.

Waves. Every wave (P, q, R, S, R', delta, pathological Q, T) is a fixed 3-D dipole
vector in mV times an asymmetric Gaussian in time,
``g(t) = exp(-(t - c)^2 / (2 s^2))`` with ``s = sigma_left`` before the centre ``c``
and ``s = sigma_right`` after it. ST deviation is a Gaussian-smoothed plateau.

Timing convention of the ground truth: a wave starts at ``c - 2.5 sigma_left`` and
ends at ``c + 2.5 sigma_right`` (where it has fallen to 4.4 % of its peak).

* P onset = start of the first atrial wave; QRS onset / end = earliest start /
  latest end of the QRS waves; T end = end of the T wave.
* PR = QRS onset - P onset, QRS = QRS end - QRS onset, QT = T end - QRS onset.
* Intervals are constant across the beats of a record; QT follows Bazett with the
  record's true mean RR (plus any QRS widening beyond 100 ms).
* Pacemaker spikes sit just before QRS onset and belong to no interval.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.signal import resample_poly, sawtooth
from scipy.special import ndtr

FS = 500
FS_LOW = 100
DURATION_S = 10.0
PAD_S = 0.5
EDGE = 2.5
LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")

Vec = tuple[float, float, float]

# Approximate Dower matrix (Dower 1980): rows I, II, V1..V6; columns x, y, z.
DOWER = np.array(
    [
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ]
)
# Rows of lead I and aVF (= II - I/2): they define the frontal QRS axis.
_FRONTAL = np.array([DOWER[0], DOWER[1] - DOWER[0] / 2])

# Outward directions of the myocardial walls; a lead "faces" a wall when its
# Dower row points the same way (inferior: II/III/aVF, lateral: I/aVL/V5/V6 ...).
TERRITORIES: dict[str, Vec] = {
    "inferior": (0.1, 1.0, 0.1),
    "anterior": (0.3, 0.1, -1.0),
    "anteroseptal": (-0.3, 0.1, -1.0),
    "lateral": (1.0, -0.5, 0.4),
    "posterior": (0.1, 0.2, 1.0),
}
_APEX = (0.7, 0.6, 0.2)  # direction of subendocardial ischaemia (ST depression)
_SEPTAL_Q = (-0.55, 0.15, -0.8)
_S_WAVE = (-0.35, -0.15, 0.9)
_R_PRIME = (-0.6, 0.1, -0.8)
_P_RIGHT = (0.3, 0.9, -0.45)
_P_ECTOPIC = (0.3, -0.8, -0.2)
_SPIKE = (0.3, -0.8, -0.5)
_FIBRILLATION = (-0.3, 0.5, -0.8)
_FLUTTER = (0.1, -1.0, -0.3)

# Electrodes carrying noise: RA, LA, LL (limb) then V1..V6.
_LIMB = (0, 1, 2)
_CHEST = tuple(range(3, 9))


def unit(v: Vec | np.ndarray) -> np.ndarray:
    """Normalise a 3-vector (directions are given loosely, e.g. (1, -0.5, 0.4))."""
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def territory(*names: str) -> np.ndarray:
    """Unit vector of one wall or a combination such as ("inferior", "lateral")."""
    return unit(sum(unit(TERRITORIES[n]) for n in names))


def frontal_direction(axis_deg: float, z: float) -> np.ndarray:
    """Unit dipole whose projection on (I, aVF) points at ``axis_deg``.

    Solving against the Dower rows (rather than assuming ideal lead angles) makes the
    measured frontal axis of the synthetic ECG equal the requested one.
    """
    target = np.array([np.cos(np.radians(axis_deg)), np.sin(np.radians(axis_deg))])
    xy = np.linalg.solve(_FRONTAL[:, :2], target - _FRONTAL[:, 2] * z)
    return unit((xy[0], xy[1], z))


def _vec(v: np.ndarray) -> Vec:
    return (float(v[0]), float(v[1]), float(v[2]))


class Component(Protocol):
    """Anything with a dipole vector and a time course (ms relative to an anchor)."""

    vector: Vec

    def shape(self, t_ms: np.ndarray) -> np.ndarray: ...

    def support(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class Wave:
    """A dipole vector (mV) switched on by an asymmetric Gaussian."""

    centre: float
    sigma_left: float
    sigma_right: float
    vector: Vec

    @property
    def start(self) -> float:
        return self.centre - EDGE * self.sigma_left

    @property
    def end(self) -> float:
        return self.centre + EDGE * self.sigma_right

    def shape(self, t_ms: np.ndarray) -> np.ndarray:
        sigma = np.where(t_ms < self.centre, self.sigma_left, self.sigma_right)
        return np.exp(-0.5 * ((t_ms - self.centre) / sigma) ** 2)

    def support(self) -> tuple[float, float]:
        return self.centre - 5 * self.sigma_left, self.centre + 5 * self.sigma_right


@dataclass(frozen=True)
class Plateau:
    """Gaussian-smoothed box: a flat ST shift from the J point into the T wave."""

    rise_at: float
    rise: float
    fall_at: float
    fall: float
    vector: Vec

    def shape(self, t_ms: np.ndarray) -> np.ndarray:
        return ndtr((t_ms - self.rise_at) / self.rise) * ndtr((self.fall_at - t_ms) / self.fall)

    def support(self) -> tuple[float, float]:
        return self.rise_at - 5 * self.rise, self.fall_at + 5 * self.fall


@dataclass(frozen=True)
class Morphology:
    """Per-record beat shape. Pathologies are small edits of these knobs (see below)."""

    axis_deg: float = 50.0
    r_mv: float = 1.5
    r_back: float = 0.4
    r_shift: Vec = (0.0, 0.0, 0.0)
    qrs_ms: float = 95.0
    septal_q_mv: float = 0.2
    s_mv: float = 0.5
    r_split: float = 0.0
    r_prime_mv: float = 0.0
    delta_mv: float = 0.0
    spike_mv: float = 0.0
    infarcts: tuple[str, ...] = ()
    scar_q_mv: float = 0.0
    st: Vec = (0.0, 0.0, 0.0)
    t_mv: float = 0.35
    t_axis_deg: float = 45.0
    t_front: float = 0.3
    t_shift: Vec = (0.0, 0.0, 0.0)
    t_width: float = 1.0
    qtc_ms: float = 410.0
    p_ms: float = 100.0
    pr_ms: float = 160.0
    p_ra_mv: float = 0.11
    p_la_mv: float = 0.09
    p_la_back: float = 0.45
    p_sigma: float = 0.16
    conduction: str = "normal"


@dataclass(frozen=True)
class Rhythm:
    """How beats are timed. ``kind``: sinus, afib, aflutter, svt, av_block2, av_block3.

    ``rate_bpm`` is the sinus rate for sinus and AV-block rhythms (a paced sinus rhythm
    tracks it), the ventricular rate for afib, svt and fixed-rate pacing, and the
    flutter-wave rate for aflutter. ``pvc_every`` 2/3 gives bigeminy/trigeminy.
    """

    kind: str = "sinus"
    rate_bpm: float = 70.0
    resp_depth: float = 0.02
    escape_bpm: float = 40.0
    flutter_ratio: int = 0
    pvc: int = 0
    pvc_every: int = 0
    pac: int = 0
    paced: bool = False


@dataclass(frozen=True)
class Truth:
    """What was actually generated, for checking a model's estimates."""

    rhythm: str
    paced: int
    heart_rate_bpm: float
    rr_mean_ms: float
    rr_std_ms: float
    n_beats: int
    p_wave: int
    pr_ms: float
    qrs_ms: float
    qt_ms: float
    qtc_ms: float
    qrs_axis_deg: float
    conduction: str
    mi_territory: str
    n_pvc: int
    n_pac: int


@dataclass(frozen=True)
class Ecg:
    """One synthetic record: 12 x 5000 at 500 Hz, 12 x 1000 at 100 Hz (mV)."""

    high: np.ndarray
    low: np.ndarray
    truth: Truth
    notes: dict[str, str]


# --------------------------------------------------------------------- morphology


def normal_morphology(rng: np.random.Generator, axis_deg: float, age: float = 60.0) -> Morphology:
    """A healthy beat; R voltage falls with age as in real populations."""
    years = age if np.isfinite(age) else 60.0
    voltage = float(np.clip(1.0 + 0.006 * (50.0 - years), 0.8, 1.25))
    pr = float(np.clip(rng.normal(155, 17), 120, 200))
    return Morphology(
        axis_deg=axis_deg,
        r_mv=rng.uniform(1.4, 2.2) * voltage,
        r_back=rng.uniform(0.25, 0.6),
        qrs_ms=float(np.clip(rng.normal(92, 7), 80, 110)),
        septal_q_mv=rng.uniform(0.1, 0.3),
        s_mv=rng.uniform(0.3, 0.7),
        t_mv=rng.uniform(0.3, 0.55),
        t_axis_deg=float(np.clip(axis_deg, 0, 75) + rng.normal(-5, 10)),
        t_front=rng.uniform(0.15, 0.5),
        qtc_ms=rng.uniform(385, 435),
        p_ms=min(rng.uniform(85, 110), pr - 30),
        pr_ms=pr,
        p_ra_mv=rng.uniform(0.08, 0.14),
        p_la_mv=rng.uniform(0.06, 0.11),
    )


def _add(v: Vec, w: np.ndarray) -> Vec:
    return _vec(np.asarray(v) + w)


def infarct(m: Morphology, wall: str, rng: np.random.Generator, st_mv: float, t_invert: float) -> Morphology:
    """Scar facing ``wall``: wide Q and lost R there, ST elevation, evolving T inversion.

    For a posterior wall the same vectors give the mirror image seen in V1-V3
    (tall R, ST depression, upright T), as clinically.
    """
    u = territory(*wall.split("+"))
    return dataclasses.replace(
        m,
        infarcts=(*m.infarcts, wall),
        scar_q_mv=max(m.scar_q_mv, rng.uniform(0.45, 0.8)),
        r_shift=_add(m.r_shift, -rng.uniform(0.4, 0.8) * u),
        st=_add(m.st, st_mv * u),
        t_shift=_add(m.t_shift, -t_invert * u),
    )


def subendocardial_injury(m: Morphology, wall: str, rng: np.random.Generator) -> Morphology:
    """Non-Q injury: ST depression and T flattening in the leads facing ``wall``."""
    u = territory(*wall.split("+"))
    return dataclasses.replace(
        m, st=_add(m.st, -rng.uniform(0.1, 0.25) * u), t_shift=_add(m.t_shift, -rng.uniform(0.3, 0.8) * u)
    )


def ischaemia(m: Morphology, wall: str, rng: np.random.Generator) -> Morphology:
    """Ischaemic T inversion (with mild ST depression) in the leads facing ``wall``."""
    u = territory(*wall.split("+"))
    return dataclasses.replace(
        m, st=_add(m.st, -rng.uniform(0.04, 0.12) * u), t_shift=_add(m.t_shift, -rng.uniform(0.9, 1.6) * u)
    )


def st_shift(m: Morphology, mv: float, wall: str | None = None) -> Morphology:
    """ST elevation (mv > 0) toward ``wall``; without a wall, diffuse depression from the apex."""
    u = territory(*wall.split("+")) if wall else unit(_APEX)
    return dataclasses.replace(m, st=_add(m.st, mv * u))


def t_wave(
    m: Morphology, rng: np.random.Generator, gain: float, width: float = 1.0, invert_wall: str | None = None
) -> Morphology:
    """Low, flat, peaked or inverted T waves (non-specific ST-T change, electrolytes)."""
    shift = -rng.uniform(1.0, 1.6) * territory(*invert_wall.split("+")) if invert_wall else rng.normal(0, 0.3, 3)
    return dataclasses.replace(m, t_mv=m.t_mv * gain, t_width=m.t_width * width, t_shift=_add(m.t_shift, shift))


def bundle_branch_block(m: Morphology, side: str, complete: bool, rng: np.random.Generator) -> Morphology:
    """RBBB: terminal right-anterior R' (rSR' in V1, slurred S in I/V6).

    LBBB: no septal q, broad notched R in I/aVL/V5/V6, QS in V1-V3 and discordant ST-T.
    """
    if side == "right":
        return dataclasses.replace(
            m,
            qrs_ms=rng.uniform(125, 155) if complete else rng.uniform(102, 116),
            r_prime_mv=rng.uniform(0.6, 1.1) if complete else rng.uniform(0.25, 0.45),
            t_shift=_add(m.t_shift, np.array([0.3, 0.0, 0.7]) if complete else np.zeros(3)),
            conduction="rbbb" if complete else "irbbb",
        )
    lbbb = dataclasses.replace(
        m,
        qrs_ms=rng.uniform(130, 165) if complete else rng.uniform(104, 116),
        septal_q_mv=0.0,
        r_split=rng.uniform(0.5, 1.0) if complete else 0.0,
        r_mv=m.r_mv * (1.3 if complete else 1.1),
        r_shift=_add(m.r_shift, np.array([0.6, -0.1, 0.5]) if complete else np.array([0.3, 0.0, 0.25])),
        s_mv=m.s_mv * 0.4,
        conduction="lbbb" if complete else "ilbbb",
    )
    return _discordant(lbbb, rng) if complete else lbbb


def _discordant(m: Morphology, rng: np.random.Generator) -> Morphology:
    """Secondary repolarisation: ST-T opposite to the (wide) QRS."""
    r = unit(frontal_direction(m.axis_deg, m.r_back) + np.asarray(m.r_shift))
    t_now = frontal_direction(m.t_axis_deg, -m.t_front)
    return dataclasses.replace(
        m,
        t_shift=_add(m.t_shift, -2.2 * r - t_now + rng.normal(0, 0.2, 3)),
        t_mv=rng.uniform(0.3, 0.5),
        st=_add(m.st, -rng.uniform(0.08, 0.18) * r),
    )


def intraventricular_delay(m: Morphology, rng: np.random.Generator) -> Morphology:
    """Non-specific IVCD: wide (112-130 ms), slightly notched QRS without a BBB pattern."""
    return dataclasses.replace(m, qrs_ms=rng.uniform(112, 130), r_split=rng.uniform(0.1, 0.3), conduction="ivcd")


def preexcitation(m: Morphology, rng: np.random.Generator) -> Morphology:
    """WPW: short PR and a slurred delta wave widening the QRS."""
    pr = rng.uniform(90, 116)
    return dataclasses.replace(
        m,
        pr_ms=pr,
        p_ms=min(m.p_ms, pr - 20),
        qrs_ms=rng.uniform(112, 135),
        delta_mv=rng.uniform(0.25, 0.45) * m.r_mv,
        septal_q_mv=0.0,
        conduction="wpw",
    )


def av_delay(m: Morphology, rng: np.random.Generator) -> Morphology:
    """First-degree AV block: PR 210-320 ms."""
    return dataclasses.replace(m, pr_ms=rng.uniform(210, 320))


def pacing(m: Morphology, rng: np.random.Generator) -> Morphology:
    """Right-ventricular apical pacing: stimulus spike, superior axis, LBBB-like QRS."""
    paced = dataclasses.replace(
        m,
        axis_deg=rng.uniform(-90, -45),
        qrs_ms=rng.uniform(140, 180),
        septal_q_mv=0.0,
        r_split=rng.uniform(0.2, 0.6),
        r_back=m.r_back + 0.6,
        spike_mv=rng.uniform(1.5, 4.0),
        pr_ms=rng.uniform(130, 200),
        conduction="paced",
    )
    return _discordant(paced, rng)


def hypertrophy(m: Morphology, side: str, rng: np.random.Generator) -> Morphology:
    """LVH: high voltage, tall R V5/V6 and deep S V1/V2. RVH: tall R in V1, deep S laterally."""
    if side == "left":
        return dataclasses.replace(
            m,
            r_mv=m.r_mv * rng.uniform(1.6, 2.2),
            s_mv=m.s_mv * rng.uniform(1.3, 1.8),
            r_shift=_add(m.r_shift, np.array([0.25, 0.0, 0.3])),
            qrs_ms=max(m.qrs_ms, min(m.qrs_ms + rng.uniform(4, 12), 118.0)),
        )
    return dataclasses.replace(
        m, r_mv=m.r_mv * rng.uniform(1.1, 1.4), r_shift=_add(m.r_shift, np.array([-0.5, 0.2, -0.9]))
    )


def septal_hypertrophy(m: Morphology, rng: np.random.Generator) -> Morphology:
    """Deep narrow septal q waves."""
    return dataclasses.replace(m, septal_q_mv=rng.uniform(0.5, 0.8))


def atrial_enlargement(m: Morphology, side: str, rng: np.random.Generator) -> Morphology:
    """Left: wide bifid P with a deep terminal negative part in V1. Right: tall peaked P."""
    if side == "left":
        p_ms = rng.uniform(118, 140)
        return dataclasses.replace(
            m,
            p_ms=p_ms,
            pr_ms=max(m.pr_ms, p_ms + 30),
            p_la_mv=m.p_la_mv * rng.uniform(1.5, 2.0),
            p_la_back=1.0,
            p_sigma=0.13,
        )
    return dataclasses.replace(m, p_ra_mv=m.p_ra_mv * rng.uniform(1.9, 2.5))


def voltage(m: Morphology, gain: float) -> Morphology:
    """Scale QRS voltage (high-voltage criteria or low voltage)."""
    return dataclasses.replace(m, r_mv=m.r_mv * gain, s_mv=m.s_mv * gain, septal_q_mv=m.septal_q_mv * gain)


def qt(m: Morphology, qtc_ms: float) -> Morphology:
    """Set the corrected QT (long-QT, digitalis)."""
    return dataclasses.replace(m, qtc_ms=qtc_ms)


# ------------------------------------------------------------------------- waves


def atrial_waves(m: Morphology) -> list[Wave]:
    """Right then left atrial depolarisation; P onset at t = 0."""
    sigma = m.p_sigma * m.p_ms
    ra = Wave(EDGE * sigma, sigma, sigma, _vec(m.p_ra_mv * unit(_P_RIGHT)))
    la = Wave(m.p_ms - EDGE * sigma, sigma, sigma, _vec(m.p_la_mv * unit((0.85, 0.45, m.p_la_back))))
    return [ra, la]


def ectopic_atrial_waves() -> list[Wave]:
    """A low-atrial premature P: narrow and inverted in the inferior leads."""
    sigma = 0.16 * 85.0
    return [Wave(EDGE * sigma, sigma, sigma, _vec(0.12 * unit(_P_ECTOPIC)))]


def qrs_waves(m: Morphology) -> list[Wave]:
    """QRS forces with onset at t = 0 and end at t = ``m.qrs_ms``."""
    d = m.qrs_ms
    r_dir = unit(frontal_direction(m.axis_deg, m.r_back) + np.asarray(m.r_shift))
    span = min(d, 90.0) if m.r_prime_mv else (d - 35.0 if m.delta_mv else d)
    lv0 = d - span
    waves = _r_waves(m, r_dir, lv0, span)
    s_sigma = 0.1 * span
    waves.append(Wave(lv0 + span - EDGE * s_sigma, s_sigma, s_sigma, _vec(m.s_mv * unit(_S_WAVE))))
    if m.septal_q_mv:
        q_sigma = 0.1 * span
        waves.append(Wave(lv0 + EDGE * q_sigma, q_sigma, q_sigma, _vec(m.septal_q_mv * unit(_SEPTAL_Q))))
    if m.r_prime_mv:
        sigma = (d - 0.6 * span) / (2 * EDGE)
        waves.append(Wave(d - EDGE * sigma, sigma, sigma, _vec(m.r_prime_mv * unit(_R_PRIME))))
    if m.delta_mv:
        waves.append(Wave(0.12 * d * EDGE, 0.12 * d, 0.25 * d, _vec(m.delta_mv * r_dir)))
    for wall in m.infarcts:
        u = territory(*wall.split("+"))
        waves.append(Wave(25.0, 10.0, 15.0, _vec(-m.scar_q_mv * u)))
    return _fit(waves, d)


def _fit(waves: list[Wave], duration: float) -> list[Wave]:
    """Stretch the QRS forces so that onset is exactly 0 and end exactly ``duration``."""
    start, end = min(w.start for w in waves), max(w.end for w in waves)
    k = duration / (end - start)
    return [Wave((w.centre - start) * k, w.sigma_left * k, w.sigma_right * k, w.vector) for w in waves]


def _r_waves(m: Morphology, r_dir: np.ndarray, lv0: float, span: float) -> list[Wave]:
    """Main R force: one Gaussian, or two (a notched R) when conduction is slow."""
    if not m.r_split:
        return [Wave(lv0 + 0.45 * span, 0.13 * span, 0.11 * span, _vec(m.r_mv * r_dir))]
    gap = (0.2 + 0.15 * m.r_split) * span
    sigma = 0.11 * span
    first = Wave(lv0 + 0.47 * span - gap / 2, sigma, sigma, _vec(0.62 * m.r_mv * r_dir))
    second = Wave(lv0 + 0.47 * span + gap / 2, sigma, sigma, _vec(0.72 * m.r_mv * r_dir))
    return [first, second]


def repolarisation(m: Morphology, qt_ms: float, j_ms: float) -> list[Component]:
    """T wave ending exactly at ``qt_ms`` plus the ST plateau from the J point."""
    sigma_r = 0.085 * qt_ms * m.t_width
    sigma_l = 0.16 * qt_ms * m.t_width
    centre = qt_ms - EDGE * sigma_r
    t_dir = unit(frontal_direction(m.t_axis_deg, -m.t_front) + np.asarray(m.t_shift))
    parts: list[Component] = [Wave(centre, sigma_l, sigma_r, _vec(m.t_mv * t_dir))]
    if any(m.st):
        parts.append(Plateau(0.75 * j_ms, 0.1 * j_ms, centre, 0.3 * max(centre - j_ms, 20.0), m.st))
    return parts


def pvc_waves(rng: np.random.Generator, qt_ms: float) -> list[Component]:
    """A unifocal ventricular ectopic beat: wide bizarre QRS with discordant ST-T."""
    d = rng.uniform(130, 170)
    origin = (0.6, 0.5, 0.7) if rng.random() < 0.6 else (-0.5, 0.6, -0.6)
    axis = unit(unit(origin) + rng.normal(0, 0.3, 3))
    bend = unit(axis + rng.normal(0, 0.4, 3))
    amp = rng.uniform(1.5, 2.5)
    first = Wave(0.35 * d, 0.14 * d, 0.14 * d, _vec(0.7 * amp * axis))
    second = Wave(d - EDGE * 0.128 * d, 0.12 * d, 0.128 * d, _vec(0.8 * amp * bend))
    t_qt = qt_ms + 40.0
    sigma_r = 0.09 * t_qt
    centre = t_qt - EDGE * sigma_r
    t = Wave(centre, 0.16 * t_qt, sigma_r, _vec(-rng.uniform(0.4, 0.7) * axis))
    st = Plateau(0.75 * d, 0.1 * d, centre, 0.3 * max(centre - d, 20.0), _vec(-0.15 * axis))
    return [first, second, t, st]


def spike_waves(m: Morphology) -> list[Wave]:
    """Pacemaker stimulus: a ~1 ms pulse 4 ms before QRS onset."""
    return [Wave(-4.0, 0.6, 0.6, _vec(m.spike_mv * unit(_SPIKE)))] if m.spike_mv else []


def template(components: list[Component]) -> tuple[int, np.ndarray]:
    """Sum components on the 500 Hz grid; returns (index of t = 0, dipole (3, L))."""
    lo = min(c.support()[0] for c in components)
    hi = max(c.support()[1] for c in components)
    idx = np.arange(int(np.floor(lo * FS / 1000)), int(np.ceil(hi * FS / 1000)) + 1)
    t_ms = idx * 1000.0 / FS
    dipole = sum(np.outer(c.vector, c.shape(t_ms)) for c in components)
    return int(-idx[0]), dipole


def qrs_axis(waves: list[Wave]) -> float:
    """Frontal axis from the net QRS area in I and aVF (areas of the Gaussians)."""
    area = sum(np.asarray(w.vector) * (w.sigma_left + w.sigma_right) for w in waves)
    lead_i, avf = _FRONTAL @ area
    return float(np.degrees(np.arctan2(avf, lead_i)))


# ------------------------------------------------------------------------ timing


@dataclass(frozen=True)
class _Modulation:
    """Respiration and LF (Mayer wave) oscillators shared by RR, amplitude and baseline."""

    resp_hz: float
    resp_phase: float
    lf_hz: float
    lf_phase: float
    lf_depth: float

    @staticmethod
    def draw(rng: np.random.Generator) -> _Modulation:
        return _Modulation(
            rng.uniform(0.15, 0.35),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(0.08, 0.12),
            rng.uniform(0, 2 * np.pi),
            rng.uniform(0.01, 0.03),
        )

    def resp(self, t_s: np.ndarray | float) -> np.ndarray | float:
        return np.sin(2 * np.pi * self.resp_hz * t_s + self.resp_phase)

    def lf(self, t_s: float) -> float:
        return float(np.sin(2 * np.pi * self.lf_hz * t_s + self.lf_phase))


@dataclass(frozen=True)
class _Schedule:
    """Event onsets in 500 Hz samples from the record start (may be negative)."""

    p_onsets: np.ndarray
    p_ectopic: np.ndarray
    qrs_onsets: np.ndarray
    pvc: np.ndarray


_FIRST_S = -PAD_S - 1.2
_LAST_S = DURATION_S + PAD_S + 1.5


def _sinus_seconds(rate_bpm: float, depth: float, mod: _Modulation, rng: np.random.Generator) -> np.ndarray:
    """SA-node firing times with respiratory, LF and random RR modulation (HRV)."""
    rr0 = 60.0 / rate_bpm
    t = _FIRST_S - rng.uniform(0, rr0)
    times = []
    while t < _LAST_S:
        times.append(t)
        t += rr0 * (1 + depth * mod.resp(t) + mod.lf_depth * mod.lf(t) + rng.normal(0, 0.008))
    return np.array(times)


def _regular_seconds(rate_bpm: float, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Nearly fixed-rate beats (pacemaker, escape rhythm, SVT)."""
    rr = 60.0 / rate_bpm
    count = int((_LAST_S - _FIRST_S) / (rr * (1 - 3 * jitter))) + 2
    steps = rr * (1 + rng.normal(0, jitter, count))
    return _FIRST_S - rng.uniform(0, rr) + np.concatenate([[0.0], np.cumsum(steps[:-1])])


def _afib_seconds(rate_bpm: float, rng: np.random.Generator) -> np.ndarray:
    """Irregularly irregular ventricular response: i.i.d. gamma RR, CV 0.15-0.3."""
    shape = 1.0 / rng.uniform(0.15, 0.3) ** 2
    rr0 = 60.0 / rate_bpm
    count = int((_LAST_S - _FIRST_S) / (0.5 * rr0)) + 2
    steps = np.maximum(rng.gamma(shape, rr0 / shape, count), 0.33)
    return _FIRST_S - rng.uniform(0, rr0) + np.concatenate([[0.0], np.cumsum(steps[:-1])])


def _flutter_seconds(flutter_hz: float, ratio: int, rng: np.random.Generator) -> np.ndarray:
    """QRS locked to every 2nd-4th flutter wave (``ratio`` 0 = variable block)."""
    count = int((_LAST_S - _FIRST_S) * flutter_hz / 2) + 2
    ratios = np.full(count, ratio) if ratio else rng.choice([2, 3, 4], count, p=[0.4, 0.2, 0.4])
    return _FIRST_S + 0.18 + np.concatenate([[0.0], np.cumsum(ratios[:-1])]) / flutter_hz


def _to_samples(t_s: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(t_s) * FS).astype(np.int64)


def _pick(onsets: np.ndarray, count: int, rng: np.random.Generator, taken: set[int]) -> list[int]:
    """Up to ``count`` non-adjacent beat indices inside the recorded window."""
    inside = np.flatnonzero((onsets > 0.6 * FS) & (onsets < (DURATION_S - 0.6) * FS))
    chosen: list[int] = []
    for i in rng.permutation(inside):
        if len(chosen) == count:
            break
        if not {i - 1, i, i + 1} & (taken | set(chosen)):
            chosen.append(int(i))
    return sorted(chosen)


def _insert_pacs(p: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Premature atrial beats reset the sinus node (non-compensatory pause)."""
    ectopic = np.zeros(len(p), dtype=bool)
    for k in _pick(p, count, rng, set()):
        early = p[k - 1] + round(rng.uniform(0.6, 0.8) * (p[k] - p[k - 1]))
        p[k:] -= p[k] - early
        ectopic[k] = True
    return ectopic


def _insert_pvcs(v: np.ndarray, rhythm: Rhythm, rng: np.random.Generator, taken: set[int]) -> np.ndarray:
    """Premature ventricular beats replace a conducted one (compensatory pause)."""
    pvc = np.zeros(len(v), dtype=bool)
    if rhythm.pvc_every:
        chosen = list(range(int(rng.integers(1, rhythm.pvc_every + 1)), len(v), rhythm.pvc_every))
    else:
        chosen = _pick(v, rhythm.pvc, rng, taken)
    for k in chosen:
        v[k] = v[k - 1] + round(rng.uniform(0.55, 0.7) * (v[k] - v[k - 1]))
        pvc[k] = True
    return pvc


def _schedule(rhythm: Rhythm, pr_ms: float, mod: _Modulation, rng: np.random.Generator) -> _Schedule:
    """Atrial and ventricular event onsets for the chosen rhythm."""
    p = np.zeros(0, dtype=np.int64)
    ectopic = np.zeros(0, dtype=bool)
    if rhythm.kind in ("sinus", "av_block2", "av_block3"):
        p = _to_samples(_sinus_seconds(rhythm.rate_bpm, rhythm.resp_depth, mod, rng))
        ectopic = _insert_pacs(p, rhythm.pac, rng)
    v = _ventricular_onsets(rhythm, p, pr_ms, rng)
    pvc = _insert_pvcs(v, rhythm, rng, {int(i) for i in np.flatnonzero(ectopic)})
    return _Schedule(p, ectopic, v, pvc)


def _ventricular_onsets(rhythm: Rhythm, p: np.ndarray, pr_ms: float, rng: np.random.Generator) -> np.ndarray:
    """QRS onsets: conducted from the P waves (a paced sinus rhythm tracks them) or self-driven."""
    pr = round(pr_ms * FS / 1000)
    if rhythm.kind == "sinus":
        return p + pr
    if rhythm.kind == "av_block2":
        conducted = np.ones(len(p), dtype=bool)
        conducted[int(rng.integers(0, 3)) :: int(rng.choice([3, 4]))] = False
        return p[conducted] + pr
    if rhythm.kind == "av_block3":
        return _to_samples(_regular_seconds(rhythm.escape_bpm, 0.01, rng))
    if rhythm.paced:
        return _to_samples(_regular_seconds(rhythm.rate_bpm, 0.0, rng))
    if rhythm.kind == "afib":
        return _to_samples(_afib_seconds(rhythm.rate_bpm, rng))
    if rhythm.kind == "aflutter":
        return _to_samples(_flutter_seconds(rhythm.rate_bpm / 60.0, rhythm.flutter_ratio, rng))
    return _to_samples(_regular_seconds(rhythm.rate_bpm, 0.005, rng))


# ---------------------------------------------------------------------- rendering


_N = round((DURATION_S + 2 * PAD_S) * FS)
_PAD = round(PAD_S * FS)
_T = (np.arange(_N) - _PAD) / FS  # seconds from the record start, padding included
_T_SLOW = np.linspace(_T[0], _T[-1], _N // 10 + 1)  # 50 Hz grid for sub-Hz baseline wander


def _stamp(out: np.ndarray, anchor: int, shape: np.ndarray, onsets: np.ndarray, gains: np.ndarray) -> None:
    """Add ``shape`` (3, L) at each onset (samples from record start) into ``out``."""
    length = shape.shape[1]
    for onset, gain in zip(onsets, gains, strict=True):
        lo = onset + _PAD - anchor
        a, b = max(lo, 0), min(lo + length, _N)
        if a < b:
            out[:, a:b] += gain * shape[:, a - lo : b - lo]


def _atrial_activity(rhythm: Rhythm, rng: np.random.Generator) -> np.ndarray:
    """Continuous atrial signal: fibrillatory f-waves or flutter sawtooth (dipole, 3 x N)."""
    if rhythm.kind == "afib":
        waves = _band_noise(rng, (2, _N), rng.uniform(4.0, 5.5), rng.uniform(7.5, 9.5))
        waves *= rng.uniform(0.03, 0.08) / waves.std()
        spread = unit(unit(_FIBRILLATION) + rng.normal(0, 0.6, 3))
        return np.outer(unit(_FIBRILLATION), waves[0]) + 0.6 * np.outer(spread, waves[1])
    if rhythm.kind == "aflutter":
        wave = sawtooth(2 * np.pi * rhythm.rate_bpm / 60.0 * _T, width=0.8)
        smooth = np.convolve(wave, np.ones(5) / 5, mode="same")
        return np.outer(unit(_FLUTTER) * rng.uniform(0.1, 0.2), smooth)
    return np.zeros((3, _N))


def _band_noise(rng: np.random.Generator, shape: tuple[int, int], low_hz: float, high_hz: float) -> np.ndarray:
    """White noise band-limited in the frequency domain (irregular fibrillatory waves)."""
    spectrum = np.fft.rfft(rng.standard_normal(shape), axis=-1)
    freqs = np.fft.rfftfreq(shape[-1], 1 / FS)
    return np.fft.irfft(spectrum * ((freqs >= low_hz) & (freqs <= high_hz)), n=shape[-1], axis=-1)


def _electrode_noise(mod: _Modulation, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
    """Per-electrode wander and noise (RA, LA, LL, V1..V6) plus PTB-XL-style notes.

    Noise lives on electrodes, not leads, so derived leads share it as in real recordings.
    """
    freqs = rng.uniform(0.05, 0.5, (9, 3))
    amps = rng.uniform(0.0, 0.04, (9, 3))
    phases = rng.uniform(0, 2 * np.pi, (9, 3))
    slow = np.einsum("ek,ekn->en", amps, np.sin(2 * np.pi * freqs[..., None] * _T_SLOW + phases[..., None]))
    wander = np.stack([np.interp(_T, _T_SLOW, electrode) for electrode in slow])
    wander += rng.uniform(0.0, 0.05, (9, 1)) * mod.resp(_T)
    sigma = np.full((9, 1), rng.uniform(0.007, 0.02))
    notes = {"baseline_drift": "", "static_noise": "", "burst_noise": "", "electrodes_problems": ""}
    if rng.random() < 0.07:
        group, notes["baseline_drift"] = _electrode_group(rng)
        f = rng.uniform(0.1, 0.4)
        wander[group] += rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * f * _T + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.12:
        group, notes["static_noise"] = _electrode_group(rng)
        sigma[group] *= rng.uniform(1.8, 3.0)
    noise = wander + sigma * rng.standard_normal((9, _N))
    if rng.random() < 0.03:
        group, notes["burst_noise"] = _electrode_group(rng)
        for _ in range(int(rng.integers(1, 4))):
            length = int(rng.uniform(0.2, 1.0) * FS)
            start = int(rng.integers(_PAD, _N - _PAD - length))
            burst = np.hanning(length) * rng.standard_normal((len(group), length))
            noise[group, start : start + length] += rng.uniform(0.05, 0.15) * burst
    return noise, notes


def _electrode_group(rng: np.random.Generator) -> tuple[list[int], str]:
    """A set of electrodes and its PTB-XL annotation (e.g. "V2-V4", "I-AVF", "alles")."""
    roll = rng.random()
    if roll < 0.2:
        return list(range(9)), "alles"
    if roll < 0.45:
        return list(_LIMB), "I-AVF"
    first = int(rng.integers(1, 7))
    last = int(rng.integers(first, min(first + 3, 7)))
    name = f"V{first}" if first == last else f"V{first}-V{last}"
    return [_CHEST[i - 1] for i in range(first, last + 1)], name


def to_twelve_leads(dipole: np.ndarray, electrodes: np.ndarray) -> np.ndarray:
    """Project the dipole (3, N) and add electrode signals (9, N); derive the limb leads."""
    eight = DOWER @ dipole
    ra, la, ll = electrodes[:3]
    eight[0] += la - ra
    eight[1] += ll - ra
    eight[2:] += electrodes[3:] - (ra + la + ll) / 3
    lead_i, lead_ii = eight[0], eight[1]
    limb = [lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2, lead_ii - lead_i / 2]
    return np.vstack([lead_i, lead_ii, *limb, eight[2:]])


def downsample(signal: np.ndarray) -> np.ndarray:
    """500 Hz -> 100 Hz with an anti-aliasing polyphase FIR, as PTB-XL's records100."""
    return resample_poly(signal, FS_LOW, FS, axis=-1)


def _rr_stats(v: np.ndarray) -> tuple[float, float, int]:
    inside = v[(v >= 0) & (v < DURATION_S * FS)]
    rr = np.diff(inside) * 1000.0 / FS
    return float(rr.mean()), float(rr.std()), len(inside)


def simulate(rhythm: Rhythm, morph: Morphology, rng: np.random.Generator) -> Ecg:
    """Render one 10 s record and its ground truth."""
    mod = _Modulation.draw(rng)
    sched = _schedule(rhythm, morph.pr_ms, mod, rng)
    rr_mean = _rr_stats(sched.qrs_onsets)[0]
    qrs = qrs_waves(morph)
    qt_ms = morph.qtc_ms * np.sqrt(rr_mean / 1000.0) + max(0.0, morph.qrs_ms - 100.0)

    dipole = _atrial_activity(rhythm, rng)
    gains = 1 + rng.uniform(0.02, 0.06) * mod.resp(sched.qrs_onsets / FS)
    beats = [*spike_waves(morph), *qrs, *repolarisation(morph, qt_ms, morph.qrs_ms)]
    _stamp(dipole, *template(beats), sched.qrs_onsets[~sched.pvc], gains[~sched.pvc])
    if sched.pvc.any():
        _stamp(dipole, *template(pvc_waves(rng, qt_ms)), sched.qrs_onsets[sched.pvc], gains[sched.pvc])
    sinus = ~sched.p_ectopic
    _stamp(dipole, *template(atrial_waves(morph)), sched.p_onsets[sinus], np.ones(sinus.sum()))
    if sched.p_ectopic.any():
        pac = sched.p_onsets[sched.p_ectopic]
        _stamp(dipole, *template(ectopic_atrial_waves()), pac, np.ones(len(pac)))

    electrodes, notes = _electrode_noise(mod, rng)
    padded = to_twelve_leads(dipole, electrodes)
    low_pad = _PAD * FS_LOW // FS
    low = downsample(padded)[:, low_pad : low_pad + round(DURATION_S * FS_LOW)]
    high = padded[:, _PAD : _PAD + round(DURATION_S * FS)]
    return Ecg(high, low, _truth(rhythm, morph, sched, qrs, qt_ms), notes)


def _truth(rhythm: Rhythm, morph: Morphology, sched: _Schedule, qrs: list[Wave], qt_ms: float) -> Truth:
    """Ground truth from what was rendered (QRS onset is t = 0 by construction)."""
    rr_mean, rr_std, n_beats = _rr_stats(sched.qrs_onsets)
    in_window = (sched.qrs_onsets >= 0) & (sched.qrs_onsets < DURATION_S * FS)
    p_in_window = (sched.p_onsets >= 0) & (sched.p_onsets < DURATION_S * FS)
    fixed_pr = rhythm.kind in ("sinus", "av_block2")
    return Truth(
        rhythm=rhythm.kind,
        paced=int(rhythm.paced),
        heart_rate_bpm=60000.0 / rr_mean,
        rr_mean_ms=rr_mean,
        rr_std_ms=rr_std,
        n_beats=n_beats,
        p_wave=int(len(sched.p_onsets) > 0),
        pr_ms=round(morph.pr_ms * FS / 1000) * 1000.0 / FS if fixed_pr else float("nan"),
        qrs_ms=max(w.end for w in qrs) - min(w.start for w in qrs),
        qt_ms=float(qt_ms),
        qtc_ms=float(qt_ms / np.sqrt(rr_mean / 1000.0)),
        qrs_axis_deg=qrs_axis(qrs),
        conduction=morph.conduction,
        mi_territory=";".join(morph.infarcts),
        n_pvc=int(sched.pvc[in_window].sum()),
        n_pac=int(sched.p_ectopic[p_in_window].sum()),
    )
