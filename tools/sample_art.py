"""Drawing of the generated animals: one silhouette recipe per class.

Each recipe is a list of primitives in a unit frame (x to the right, y down,
body near the origin). `draw_animal` poses it (scale, rotation, mirror, shift),
colours it from the class palette with jitter, and draws it. The classes differ
in shape and texture the way the real animals do (legs, ears, wings, wool,
patches), so a CNN has to learn shapes, not a colour lookup.
"""

import math

import numpy as np
from PIL import ImageDraw


def _ellipse(cx, cy, rx, ry, points=24):
  angles = np.linspace(0, 2 * math.pi, points, endpoint=False)
  return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1)


def _rect(x0, y0, x1, y1):
  return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def _legs(xs, top, length, width):
  return [("body", _rect(x - width / 2, top, x + width / 2, top + length))
          for x in xs]


def _dog(rng):
  parts = [("body", _ellipse(0, 0, .55, .25)), ("body", _ellipse(.62, -.28, .2, .18)),
           ("dark", _ellipse(.55, -.2, .07, .16)), ("dark", _ellipse(.8, -.24, .06, .05)),
           ("body", _rect(-.62, -.25, -.52, .02))]
  return parts + _legs((-.4, -.25, .25, .4), .1, .38, .1)


def _horse(rng):
  neck = np.array([[.35, -.1], [.55, -.6], [.7, -.55], [.55, -.05]])
  parts = [("body", _ellipse(0, 0, .55, .22)), ("body", neck),
           ("body", _ellipse(.78, -.55, .2, .09)), ("dark", _rect(.48, -.6, .56, -.1)),
           ("dark", np.array([[-.55, -.05], [-.75, .45], [-.62, .45]]))]
  return parts + _legs((-.4, -.28, .28, .42), .1, .62, .07)


def _elephant(rng):
  trunk = np.array([[.75, -.05], [.95, .3], [.9, .65], [.8, .62], [.82, .3], [.65, .05]])
  parts = [("body", _ellipse(0, 0, .6, .42)), ("body", _ellipse(.62, -.15, .26, .26)),
           ("dark", _ellipse(.45, -.1, .2, .3)), ("body", trunk),
           ("light", np.array([[.8, .05], [.98, .12], [.82, .12]]))]
  return parts + _legs((-.4, -.15, .2, .42), .25, .45, .2)


def _butterfly(rng):
  parts = []
  for side in (-1, 1):
    parts += [("body", _ellipse(side * .42, -.25, .42, .32)),
              ("light", _ellipse(side * .3, .28, .28, .25)),
              ("dark", _ellipse(side * .5, -.3, .1, .08)),
              ("dark", _ellipse(side * .3, .3, .07, .06))]
  return parts + [("dark", _ellipse(0, 0, .05, .45)),
                  ("dark", _rect(-.18, -.75, -.15, -.42)), ("dark", _rect(.15, -.75, .18, -.42))]


def _chicken(rng):
  tail = np.array([[-.4, -.1], [-.75, -.55], [-.6, .05]])
  parts = [("body", _ellipse(0, 0, .45, .38)), ("body", _ellipse(.4, -.4, .17, .17)),
           ("body", tail), ("red", _ellipse(.38, -.6, .06, .06)),
           ("red", _ellipse(.46, -.58, .05, .05)), ("red", _ellipse(.48, -.3, .04, .07)),
           ("yellow", np.array([[.55, -.43], [.72, -.38], [.55, -.34]]))]
  return parts + [("yellow", _rect(x, .35, x + .04, .7)) for x in (-.1, .1)]


def _cat(rng):
  tail = np.array([[-.5, 0], [-.8, -.5], [-.7, -.55], [-.45, -.1]])
  parts = [("body", _ellipse(0, 0, .48, .22)), ("body", _ellipse(.55, -.3, .19, .17)),
           ("body", np.array([[.4, -.38], [.45, -.62], [.55, -.42]])),
           ("body", np.array([[.58, -.42], [.7, -.62], [.72, -.38]])), ("body", tail),
           ("light", _ellipse(.62, -.28, .04, .03)), ("light", _ellipse(.5, -.28, .04, .03))]
  stripes = [("dark", _rect(x, -.2, x + .05, .18)) for x in (-.3, -.15, 0, .15)]
  return parts + stripes + _legs((-.32, .32), .1, .3, .08)


def _cow(rng):
  parts = [("light", _rect(-.6, -.28, .45, .2)), ("light", _ellipse(.6, -.2, .17, .2)),
           ("dark", np.array([[.5, -.35], [.47, -.5], [.55, -.37]])),
           ("red", _ellipse(.05, .24, .1, .06))]
  for _ in range(4):
    parts.append(("dark", _ellipse(rng.uniform(-.45, .3), rng.uniform(-.18, .1),
                                   rng.uniform(.08, .18), rng.uniform(.06, .12))))
  return parts + _legs((-.5, -.35, .2, .35), .2, .35, .1)


def _sheep(rng):
  parts = [("light", _ellipse(rng.uniform(-.45, .4), rng.uniform(-.25, .2), .17, .17))
           for _ in range(14)]
  return parts + [("dark", _ellipse(.62, -.18, .15, .11))] + [
      ("dark", _rect(x, .2, x + .05, .55)) for x in (-.35, -.15, .15, .35)]


def _spider(rng):
  parts = [("body", _ellipse(-.12, 0, .22, .17)), ("body", _ellipse(.15, 0, .12, .1))]
  for index in range(8):
    side = -1 if index < 4 else 1
    angle = (index % 4 - 1.5) * .45
    knee = (.05 + .45 * math.sin(angle), side * (.35 + .1 * math.cos(angle)))
    foot = (.05 + .8 * math.sin(angle), side * .55)
    for (x0, y0), (x1, y1) in (((.05, 0), knee), (knee, foot)):
      parts.append(("dark", np.array([[x0, y0], [x1, y1], [x1 + .03, y1], [x0 + .03, y0]])))
  return parts


def _squirrel(rng):
  tail = _ellipse(-.45, -.3, .3, .45)
  parts = [("light", tail), ("body", _ellipse(0, 0, .3, .22)),
           ("body", _ellipse(.3, -.25, .14, .13)),
           ("body", np.array([[.25, -.35], [.28, -.5], [.34, -.36]])),
           ("dark", _ellipse(.36, -.27, .03, .03))]
  return parts + _legs((-.1, .15), .12, .2, .08)


# Class index (see animals10_tfds.source.CLASSES) -> (recipe, body, light, dark
# base colours). Colours are jittered per image; several classes share hues.
RECIPES = (
    (_dog, (140, 95, 55), (200, 170, 120), (40, 30, 25)),
    (_horse, (120, 70, 40), (170, 120, 80), (30, 20, 15)),
    (_elephant, (125, 125, 130), (170, 170, 170), (85, 85, 90)),
    (_butterfly, (230, 140, 30), (240, 200, 60), (20, 20, 20)),
    (_chicken, (230, 225, 210), (200, 150, 90), (60, 40, 30)),
    (_cat, (150, 150, 150), (230, 220, 200), (60, 60, 60)),
    (_cow, (60, 40, 30), (240, 240, 235), (20, 20, 20)),
    (_sheep, (210, 205, 190), (235, 230, 215), (40, 35, 30)),
    (_spider, (50, 40, 35), (120, 100, 80), (25, 20, 20)),
    (_squirrel, (160, 90, 45), (190, 120, 70), (30, 20, 15)),
)
_FIXED = {"red": (200, 30, 30), "yellow": (235, 190, 40)}


def draw_animal(canvas, label, rng, center, size, alpha=255):
  """Draws one animal of class `label` on a PIL image.

  Args:
    canvas: RGB PIL image to draw on.
    label: class index.
    rng: numpy Generator for pose and colour.
    center: (x, y) pixel position.
    size: half-width of the animal in pixels.
    alpha: unused for RGB canvases; kept for API symmetry.
  """
  del alpha
  recipe, *base = RECIPES[label]
  angle = rng.uniform(-.5, .5)
  mirror = -1.0 if rng.random() < .5 else 1.0
  rotation = np.array([[math.cos(angle), -math.sin(angle)],
                       [math.sin(angle), math.cos(angle)]])
  squash = np.array([mirror, rng.uniform(.85, 1.15)])
  jitter = rng.normal(0, 22, 3)
  if rng.random() < .25:  # an unusual colour morph of the animal
    jitter = jitter + rng.normal(0, 60, 3)
  colours = {role: tuple(int(c) for c in np.clip(np.array(rgb) + jitter, 0, 255))
             for role, rgb in zip(("body", "light", "dark"), base)}
  colours.update(_FIXED)
  draw = ImageDraw.Draw(canvas)
  for role, points in recipe(rng):
    posed = (points * squash) @ rotation.T * size + np.array(center)
    draw.polygon([tuple(point) for point in posed], fill=colours[role])
