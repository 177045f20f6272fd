"""Plain radiographs: PA chest and AP pelvis. Soft tissue and bone add up; air (lung, gas) subtracts."""

from __future__ import annotations

import math

import numpy as np

from medblip.data.synth.canvas import (
    Frame,
    Layer,
    add,
    blur,
    ellipse,
    random_wobble,
    smooth_noise,
    smoothstep,
    to_full,
)
from medblip.data.synth.rendered import Rendered, lesion_radius, lesion_wobble
from medblip.data.synth.scene import Scene


def _clavicle(layer: Layer, s: float, break_at: float | None, drop: float) -> tuple[float, float, float]:
    """Draw one clavicle; with ``break_at`` the lateral fragment is displaced by ``drop``.

    Returns the fracture site (x, y) and the clavicle's angle there.
    """
    pts = [(s * (0.07 + 0.58 * t), -0.66 - 0.04 * math.sin(math.pi * t) - 0.12 * t * t) for t in np.linspace(0, 1, 12)]
    if break_at is None:
        layer.line(pts, 0.3, 0.045)
        return 0.0, 0.0, 0.0
    k = int(break_at * (len(pts) - 1))
    medial = pts[: k + 1]
    lateral = [(x + s * 0.035, y + drop) for x, y in pts[k + 1:]]
    layer.line(medial, 0.3, 0.045)
    layer.line(lateral, 0.3, 0.045)
    (x0, y0), (x1, y1) = pts[k], pts[k + 1]
    return (x0 + x1) / 2 + s * 0.0175, (y0 + y1) / 2 + drop / 2, math.atan2(y1 - y0, x1 - x0)


def _chest(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    n = frame.n
    X, Y = frame.X, frame.Y
    tissue = np.zeros((n, n), dtype=np.float32)
    body = np.maximum.reduce([
        to_full(frame, ellipse(frame, 0.0, 0.75, rng.uniform(0.95, 1.05), 1.65, soft_px=3)),
        to_full(frame, ellipse(frame, 0.0, -1.0, 0.2, 0.4, soft_px=3)),
        to_full(frame, ellipse(frame, -0.8, -0.72, 0.45, 0.22, soft_px=3)),
        to_full(frame, ellipse(frame, 0.8, -0.72, 0.45, 0.22, soft_px=3)),
    ])
    tissue += body * (0.5 + 0.08 * smoothstep(-0.2, 0.9, Y))
    lungs = {}
    for s in (-1, 1):
        cx = s * rng.uniform(0.4, 0.44)
        base = rng.uniform(0.38, 0.46) + (-0.05 if s < 0 else 0.0)  # right hemidiaphragm sits higher
        # Wide at the base, narrow at the apex, flat along the mediastinum.
        lung = to_full(frame, ellipse(frame, cx, base - 0.62, rng.uniform(0.32, 0.36), 0.74,
                                      wobble=random_wobble(rng, 0.02), soft_px=1.5))
        lung *= smoothstep(0.07, 0.1, X * s)
        dome = base - 0.12 * (1.0 - np.clip(((X - cx) / 0.32) ** 2, 0.0, 1.5))
        lung *= 1.0 - smoothstep(-0.01, 0.01, Y - dome)
        lungs[s] = (lung, cx, base)
        tissue -= 0.36 * lung
    lung_all = np.maximum(lungs[-1][0], lungs[1][0])
    # Vascular markings fanning out from each hilum, fading to the periphery.
    marks = Layer(frame)
    for s in (-1, 1):
        for _ in range(9):
            x, y, ang = s * 0.17, rng.uniform(-0.2, 0.05), rng.uniform(-1.1, 1.1) + (0 if s > 0 else math.pi)
            pts = [(x, y)]
            for _ in range(5):
                ang += rng.uniform(-0.35, 0.35)
                x, y = x + 0.08 * math.cos(ang), y + 0.08 * math.sin(ang)
                pts.append((x, y))
            marks.line(pts, 0.07, 0.012)
    tissue += blur(marks.array(), 0.8) * lung_all * smoothstep(1.0, 0.3, np.abs(X) / 0.8)
    tissue += 0.04 * smooth_noise(rng, n, 20) * lung_all
    # Mediastinum, heart and aortic knob bring soft-tissue density back over the lungs.
    heart = to_full(frame, ellipse(frame, 0.1 + rng.uniform(-0.03, 0.03), 0.24, rng.uniform(0.26, 0.32), 0.22,
                                   rot=-0.25, soft_px=2))
    medi = to_full(frame, ellipse(frame, 0.0, -0.35, 0.13, 0.55, soft_px=4))
    knob = to_full(frame, ellipse(frame, 0.13, -0.36, 0.065, 0.06, soft_px=2))
    tissue += np.maximum.reduce([heart, medi, knob]) * (0.33 * lung_all + 0.1)
    tissue -= 0.1 * to_full(frame, ellipse(frame, 0.0, -0.62, 0.03, 0.32, soft_px=2))  # trachea
    tissue -= 0.16 * to_full(frame, ellipse(frame, 0.38, lungs[1][2] + 0.1, 0.09, 0.05))  # gastric bubble

    bone = Layer(frame)
    y_spine = np.linspace(-0.95, 1.0, 16)
    for y in y_spine:
        bone.polygon([(-0.06, y), (0.06, y), (0.06, y + 0.1), (-0.06, y + 0.1)], 0.06)
    for k in range(10):
        for s in (-1, 1):
            y0 = -0.72 + 0.12 * k
            post = [(s * (0.06 + 0.68 * t), y0 - 0.07 * math.sin(math.pi * t * 0.9) + 0.3 * t**3)
                    for t in np.linspace(0, 1, 12)]
            bone.line(post, 0.09, 0.034)
            ant = [(s * (0.7 - 0.5 * t), y0 + 0.1 + 0.25 * t) for t in np.linspace(0, 1, 6)]
            bone.line(ant, 0.04, 0.028)
    for s in (-1, 1):
        bone.disc(s * 0.92, -0.74, 0.13, 0.3)  # humeral heads
        bone.line([(s * 0.92, -0.74), (s * 1.05, 0.1)], 0.3, 0.13)  # humeral shafts
        bone.polygon([(s * 0.6, -0.75), (s * 0.82, -0.72), (s * 0.68, -0.25)], 0.07)  # scapula
    fracture = scene.finding == "fracture"
    site = None
    for s in (-1, 1):
        if fracture and s == scene.side_sign:
            site = _clavicle(bone, s, float(rng.uniform(0.35, 0.6)), float(rng.uniform(0.05, 0.08)))
        else:
            _clavicle(bone, s, None, 0.0)
    img = 0.03 + tissue + blur(bone.array(), 0.7) * body

    lesion = None
    if fracture:
        assert site is not None
        half = scene.size_mm / scene.fov_mm
        lesion = to_full(frame, ellipse(frame, site[0], site[1], max(half, 0.06), 0.06, rot=site[2]))
    elif scene.finding == "effusion":
        lung, cx, base = lungs[int(scene.side_sign)]
        depth = scene.size_mm / (scene.fov_mm / 2.0)
        lateral = np.clip((X * scene.side_sign - 0.1) / 0.55, 0.0, 1.0)
        meniscus = base - depth * (0.45 + 0.9 * lateral)  # fluid climbs the lateral chest wall
        lesion = lung * smoothstep(-0.012, 0.012, Y - meniscus)
        img += 0.34 * lesion
    elif scene.has_finding:
        s = scene.side_sign
        lung, cx, base = lungs[int(s)]
        r = lesion_radius(scene)
        upper = "upper" in (scene.location or "")
        lx = s * rng.uniform(0.27, 0.52)
        ly = rng.uniform(-0.52, -0.25) if upper else rng.uniform(-0.05, base - 0.15 - r)
        soft = 3.0 if scene.appearance == "ill-defined" else 1.0
        shape = ellipse(frame, lx, ly, r, r * rng.uniform(0.85, 1.0), wobble=lesion_wobble(rng, scene.appearance),
                        soft_px=soft)
        add(img, shape, 0.3)
        lesion = to_full(frame, shape)
    return _expose(img, rng, lesion)


def _pelvis(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    n = frame.n
    img = np.full((n, n), 0.05, dtype=np.float32)
    body = to_full(frame, ellipse(frame, 0.0, 0.1, rng.uniform(1.05, 1.15), 1.4, soft_px=4))
    img += 0.36 * body
    for _ in range(int(rng.integers(4, 9))):  # bowel gas
        add(img, ellipse(frame, rng.uniform(-0.6, 0.6), rng.uniform(-0.95, -0.15), rng.uniform(0.04, 0.12),
                         rng.uniform(0.03, 0.07), rot=rng.uniform(0, 3), soft_px=2), -0.1)
    # Bone densities add up where bones overlap, as on a real projection radiograph.
    bone = np.zeros((n, n), dtype=np.float32)
    add(bone, ellipse(frame, 0.0, -0.92, 0.15, 0.08), 0.22)  # L5 body
    for s in (-1, 1):
        add(bone, ellipse(frame, s * 0.2, -0.92, 0.08, 0.025), 0.15)  # transverse processes
    add(bone, ellipse(frame, 0.0, -0.45, 0.17, 0.3, wobble=[(3, 0.05, 1.0)]), 0.2)  # sacrum
    for k in range(4):
        for s in (-1, 1):
            add(bone, ellipse(frame, s * 0.07, -0.62 + 0.1 * k, 0.022, 0.018), -0.1)  # sacral foramina
    wings = Layer(frame)
    for s in (-1, 1):
        # Iliac wing: a fan from the sacroiliac joint and acetabulum up to the crest.
        crest = [(s * 0.16, -0.72), (s * 0.32, -0.9), (s * 0.56, -0.92), (s * 0.76, -0.78), (s * 0.84, -0.55)]
        wings.polygon(crest + [(s * 0.62, -0.1), (s * 0.36, -0.02), (s * 0.2, -0.32)], 0.15)
        wings.line(crest, 0.24, 0.035)
        wings.line([(s * 0.2, -0.32), (s * 0.36, -0.02), (s * 0.3, 0.22)], 0.22, 0.03)  # pelvic brim
        add(bone, ellipse(frame, s * 0.44, 0.1, 0.16, 0.15), 0.1)  # acetabulum
        # Pubic and ischial rami around the obturator foramen.
        add(bone, ellipse(frame, s * 0.25, 0.47, 0.19, 0.15, rot=-s * 0.3, soft_px=1.5), 0.2)
        add(bone, ellipse(frame, s * 0.27, 0.47, 0.12, 0.085, rot=-s * 0.45, soft_px=2.5,
                          wobble=[(3, 0.08, 0.5)]), -0.2)
    bone += blur(wings.array(), 1.2) * (0.85 + 0.15 * smooth_noise(rng, n, 18))
    add(bone, ellipse(frame, 0.0, 0.5, 0.08, 0.09), 0.1)  # pubic bodies at the symphysis
    bone[np.abs(frame.X) < 0.012] *= 0.6  # symphysis / sacral midline gap

    femur = Layer(frame)
    site = None
    for s in (-1, 1):
        head = (s * 0.45, 0.13)
        neck_end = (s * 0.64, 0.38)
        broken = scene.finding == "fracture" and s == scene.side_sign
        # Displaced neck fracture: the shaft rides up and the head stays in the acetabulum.
        dx, dy = (s * 0.03, -0.08) if broken else (0.0, 0.0)
        mid = ((head[0] + neck_end[0]) / 2, (head[1] + neck_end[1]) / 2)
        neck_start = (head[0] + s * 0.06, head[1] + 0.07)
        if broken:
            femur.line([neck_start, mid], 0.25, 0.12)
            femur.line([(mid[0] + dx, mid[1] + dy), (neck_end[0] + dx, neck_end[1] + dy)], 0.25, 0.12)
            axis = math.atan2(neck_end[1] - head[1], neck_end[0] - head[0])
            site = (mid[0] + dx / 2, mid[1] + dy / 2, axis)
            # Fracture cleft across the neck, perpendicular to its axis.
            px, py = -math.sin(axis) * 0.09, math.cos(axis) * 0.09
            femur.line([(mid[0] + dx / 2 - px, mid[1] + dy / 2 - py), (mid[0] + dx / 2 + px, mid[1] + dy / 2 + py)],
                       0.0, 0.03)
        else:
            femur.line([neck_start, neck_end], 0.25, 0.12)
        femur.line([(s * 0.64 + dx, 0.38 + dy), (s * 0.6 + dx, 1.15 + dy)], 0.28, 0.17)  # shaft
        femur.line([(s * 0.64 + dx, 0.45 + dy), (s * 0.6 + dx, 1.15 + dy)], 0.16, 0.08)  # medullary canal
        femur.disc(s * 0.7 + dx, 0.34 + dy, 0.085, 0.26)  # greater trochanter
        femur.disc(s * 0.53 + dx, 0.5 + dy, 0.04, 0.24)  # lesser trochanter
    fem = femur.array()
    for s in (-1, 1):
        add(fem, ellipse(frame, s * 0.45, 0.13, 0.115, 0.115), 0.2)  # femoral heads (over the acetabulum)
    img += 0.85 * blur(bone + fem, 0.7) * body

    lesion = None
    if site is not None:
        half = scene.size_mm / scene.fov_mm
        # The fracture line runs across the neck, perpendicular to its axis.
        lesion = to_full(frame, ellipse(frame, site[0], site[1], 0.07, max(half, 0.08), rot=site[2]))
    return _expose(img, rng, lesion)


def _expose(img: np.ndarray, rng: np.random.Generator, lesion: np.ndarray | None) -> Rendered:
    img = blur(img, rng.uniform(0.5, 1.0))
    img += rng.uniform(0.008, 0.02) * rng.standard_normal(img.shape).astype(np.float32)
    return Rendered(img * rng.uniform(0.95, 1.15), lesion)


def render_xray(scene: Scene, frame: Frame, rng: np.random.Generator) -> Rendered:
    return _chest(scene, frame, rng) if scene.region == "chest" else _pelvis(scene, frame, rng)
