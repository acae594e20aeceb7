"""One image's bytes: decode safely, convert to RGB, hash, re-encode as JPEG."""

import contextlib
import io
from typing import Optional
import warnings

import numpy as np
from PIL import Image, ImageOps

# Refuse anything larger before decoding: 40 MP is 8x the largest real photo in
# Animals-10 and keeps a decoded RGB image under 120 MB.
MAX_PIXELS = 40_000_000
JPEG_QUALITY = 90


class RefusedImage(ValueError):
  """A file we will not decode (too many pixels)."""


def orientation(width: int, height: int) -> str:
  """The study's orientation class of a width x height image."""
  if width > height:
    return "landscape"
  return "portrait" if width < height else "squared"


def _dct_matrix(size: int) -> np.ndarray:
  """Orthonormal DCT-II basis, so a 2-D DCT is two matrix products."""
  k = np.arange(size)[:, None]
  n = np.arange(size)[None, :]
  basis = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2 / size)
  basis[0] /= np.sqrt(2)
  return basis


_DCT32 = _dct_matrix(32)


def phash(image: Image.Image) -> int:
  """64-bit perceptual hash (the classic DCT pHash) of an RGB or L image."""
  gray = image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
  pixels = np.asarray(gray, dtype=np.float64)
  low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8]
  bits = (low > np.median(low)).ravel()
  return int(np.packbits(bits).view(">u8")[0])


def phash_to_int64(value: int) -> int:
  """The hash's 64 bits as the signed int64 a TFDS record stores."""
  return value - (1 << 64) if value >= 1 << 63 else value


def phash_from_int64(value: int) -> int:
  """The unsigned hash back from a record's int64."""
  return int(value) & ((1 << 64) - 1)


def to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
    pixels = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or pixels.max() > 255 else 255.0
    image = Image.fromarray(
        np.clip(pixels * (255.0 / top), 0, 255).astype(np.uint8), "L")
  has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
      image.mode == "P" and "transparency" in image.info)
  if has_alpha:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")


def is_plain_jpeg(image: Image.Image) -> bool:
  """Baseline RGB JPEG with no rotation to apply: its bytes can be stored as-is."""
  return (image.format == "JPEG" and image.mode == "RGB"
          and not image.info.get("progressive")
          and not image.info.get("progression")
          and image.getexif().get(0x0112, 1) == 1)


def resized(image: Image.Image, short_side: Optional[int]) -> Image.Image:
  """Downscaled so its shorter side is `short_side`; never upscaled."""
  width, height = image.size
  if short_side is None or min(width, height) <= short_side:
    return image
  scale = short_side / min(width, height)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  return image.resize(size, Image.Resampling.LANCZOS)


def _draft_size(size, short_side):
  width, height = size
  scale = short_side / min(width, height)
  return (int(np.ceil(width * scale)), int(np.ceil(height * scale)))


def decoded(data: bytes, draft_size=None) -> Image.Image:
  """Opens, refuses bombs before allocating, decodes and applies EXIF rotation."""
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  if width * height > MAX_PIXELS:
    raise RefusedImage(f"decompression bomb refused: {width}x{height} pixels is "
                       f"over the {MAX_PIXELS:,} limit")
  # MPO (a camera JPEG with a second frame) decodes through the same libjpeg
  # path: without the draft its 24 MP first frame took 424 ms instead of ~50.
  if draft_size and image.format in ("JPEG", "MPO"):
    image.draft(image.mode, draft_size)
  image.load()
  return ImageOps.exif_transpose(image)


def rgb_jpeg(data: bytes, header: Image.Image, short_side: Optional[int]) -> bytes:
  """The RGB JPEG to store for a file whose opened (not decoded) image is `header`.

  A baseline RGB JPEG already small enough keeps its bytes; anything else is
  decoded (drafted down to about `short_side` when it is a JPEG), rotated as
  its EXIF says, made RGB, downscaled and encoded at JPEG_QUALITY.
  """
  if is_plain_jpeg(header) and (short_side is None or min(header.size) <= short_side):
    return data
  draft = _draft_size(header.size, short_side) if short_side else None
  image = resized(to_rgb(decoded(data, draft)), short_side)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
  return buffer.getvalue()


def rgb_jpeg_or_reason(data: bytes, short_side: Optional[int] = None
                       ) -> tuple[Optional[bytes], str]:
  """(the RGB JPEG of a file's bytes, "") or (None, why it cannot be used).

  The file is decoded (small) even when its bytes are kept, so a truncated
  JPEG is caught here, not where TensorFlow decodes it.
  """
  if not data:
    return None, "empty file"
  try:
    with bombs_refused():
      decoded(data, draft_size=(64, 64))
      return rgb_jpeg(data, Image.open(io.BytesIO(data)), short_side), ""
  except Exception as error:  # pylint: disable=broad-except
    return None, reason(error)


@contextlib.contextmanager
def bombs_refused():
  """Pillow's decompression-bomb warning raises inside this block."""
  with warnings.catch_warnings():
    warnings.simplefilter("error", Image.DecompressionBombWarning)
    yield


def reason(error: Exception) -> str:
  """Why a file cannot be used, in a few words, from what decoding it raised.

  Pillow raises a zoo of types for bad files (OSError, SyntaxError,
  ValueError, struct.error, ...): any of them means "skip and report".
  """
  text = str(error).splitlines()[0] if str(error) else ""
  if isinstance(error, RefusedImage):
    return text
  if isinstance(error, Image.UnidentifiedImageError):
    return "not an image Pillow can read"
  if isinstance(error, (Image.DecompressionBombError,
                        Image.DecompressionBombWarning)):
    return f"decompression bomb refused: {text}"
  # Pillow has no type for a cut-short file: an OSError whose text says
  # "image file is truncated" (PIL.ImageFile, since Pillow 2.x) is the only sign.
  if "truncated" in text.lower():
    return "truncated image"
  return f"{type(error).__name__}: {text}" if text else type(error).__name__
