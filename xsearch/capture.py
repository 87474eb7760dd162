"""When, where and with what a photo or clip was captured: EXIF of pictures, container tags of videos.

The fields become columns of ``items`` (``CAPTURE_COLUMNS``), filled by the decode worker that reads the file
anyway. Cameras, phones and editors write these tags; so do broken firmware and hostile files, so each field
is read on its own and kept only when it is sane: a date before photography or after tomorrow, a latitude of
NaN or 91, a 10 MB camera name are dropped, and the other fields stay.

- ``taken``: the capture time as the camera's clock showed it, ISO 8601 text without a zone
  (``2024-06-01T18:03:00``: text, so that a ``--where`` filter compares it with a date as written, and it
  orders as time does); ``taken_zone`` its offset from UTC (``+02:00``) when the file says so, else null
  (then ``taken`` is local time of an unknown zone). Container tags say UTC (``creation_time``): their zone
  is ``+00:00``.
- ``latitude``, ``longitude`` (degrees, north and east positive), ``altitude`` (metres above sea level).
- ``camera_make``, ``camera_model``, ``lens``; ``orientation`` (EXIF 1-8: how the picture is turned).
"""

from __future__ import annotations

import datetime as dt
import math
import re

# Column -> Arrow type name (``pyarrow.<name>()``). Names, not types: decode workers import this module, and
# pyarrow's libraries do not fit the memory a worker may be limited to.
CAPTURE_COLUMNS = {
    "taken": "string",
    "taken_zone": "string",
    "latitude": "float64",
    "longitude": "float64",
    "altitude": "float64",
    "camera_make": "string",
    "camera_model": "string",
    "lens": "string",
    "orientation": "int32",
}

FIRST_PHOTOGRAPH = dt.datetime(1826, 1, 1)  # Niépce: a date before it is a camera's unset clock or a forgery
MAX_TEXT = 64  # a camera or lens name longer than this is not one

# EXIF tag numbers (EXIF 2.32): IFD0, the Exif IFD and the GPS IFD.
_MAKE, _MODEL, _ORIENTATION, _DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATETIME_ORIGINAL, _OFFSET_ORIGINAL, _LENS_MODEL = 0x9003, 0x9011, 0xA434
_LAT_REF, _LAT, _LON_REF, _LON, _ALT_REF, _ALT = 1, 2, 3, 4, 5, 6

_ZONE = re.compile(r"^([+-])(\d{2}):(\d{2})$")
_ISO6709 = re.compile(r"^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)?/?$")


def exif_tags(image) -> dict:
    """The capture columns of a PIL image's EXIF (an empty dict when it has none)."""
    try:
        exif = image.getexif()
    except Exception:  # PIL raises many kinds on a damaged EXIF block: then the picture simply has none
        return {}
    out: dict = {}
    _read(out, "camera_make", lambda: _text(exif.get(_MAKE)))
    _read(out, "camera_model", lambda: _text(exif.get(_MODEL)))
    _read(out, "orientation", lambda: _orientation(exif.get(_ORIENTATION)))
    details = _ifd(exif, _EXIF_IFD)
    _read(out, "taken", lambda: _iso(_exif_time(details.get(_DATETIME_ORIGINAL) or exif.get(_DATETIME))))
    if "taken" in out:
        _read(out, "taken_zone", lambda: _zone(details.get(_OFFSET_ORIGINAL)))
    _read(out, "lens", lambda: _text(details.get(_LENS_MODEL)))
    gps = _ifd(exif, _GPS_IFD)
    if gps:
        _read(out, "latitude", lambda: _degrees(gps.get(_LAT), gps.get(_LAT_REF), "N", "S", 90))
        _read(out, "longitude", lambda: _degrees(gps.get(_LON), gps.get(_LON_REF), "E", "W", 180))
        if "latitude" in out and "longitude" in out:  # an altitude belongs to a place
            _read(out, "altitude", lambda: _altitude(gps.get(_ALT), gps.get(_ALT_REF)))
        else:
            out.pop("latitude", None), out.pop("longitude", None)  # half a place is no place
    return out


def container_tags(metadata: dict) -> dict:
    """The capture columns of an audio or video container's tags (PyAV's ``container.metadata``)."""
    tags = {str(k).lower(): v for k, v in (metadata or {}).items() if isinstance(v, str)}
    out: dict = {}
    when = tags.get("creation_time") or tags.get("com.apple.quicktime.creationdate")
    _read(out, "taken", lambda: _iso(_iso_utc(when)))
    if "taken" in out:
        out["taken_zone"] = "+00:00"
    place = tags.get("location") or tags.get("com.apple.quicktime.location.iso6709")
    _read(out, "latitude", lambda: _iso6709(place)[0])
    _read(out, "longitude", lambda: _iso6709(place)[1])
    _read(out, "altitude", lambda: _iso6709(place)[2])
    _read(out, "camera_make", lambda: _text(tags.get("com.apple.quicktime.make") or tags.get("make")))
    _read(out, "camera_model", lambda: _text(tags.get("com.apple.quicktime.model") or tags.get("model")))
    return out


def _read(out: dict, name: str, read) -> None:
    """``out[name] = read()`` when it gives a value; a field that cannot be read is left out, alone."""
    try:
        value = read()
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, AttributeError):
        return
    if value is not None:
        out[name] = value


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


def _ifd(exif, tag: int) -> dict:
    try:
        return dict(exif.get_ifd(tag))
    except Exception:  # a pointer to nowhere, a loop: no such block
        return {}


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = "".join(ch for ch in value if ch.isprintable()).strip()
    return value if value and len(value) <= MAX_TEXT else None


def _orientation(value) -> int | None:
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _sane_time(when: dt.datetime) -> dt.datetime | None:
    latest = dt.datetime.now() + dt.timedelta(days=1)  # a clock a day ahead, no more
    return when if FIRST_PHOTOGRAPH <= when <= latest else None


def _exif_time(value) -> dt.datetime | None:
    text = _text(value)
    if text is None:
        return None
    return _sane_time(dt.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S"))


def _zone(value) -> str | None:
    match = _ZONE.match(_text(value) or "")
    if match is None:
        return None
    hours, minutes = int(match[2]), int(match[3])
    return match[0] if hours <= 14 and minutes < 60 and hours * 60 + minutes <= 14 * 60 else None


def _iso_utc(value) -> dt.datetime | None:
    text = _text(value)
    if text is None:
        return None
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return _sane_time(when)


def _number(value) -> float:
    number = float(value)  # PIL's IFDRational, a tuple's parts
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _degrees(value, ref, positive: str, negative: str, limit: float) -> float | None:
    degrees, minutes, seconds = (_number(part) for part in value)
    if not (0 <= minutes < 60 and 0 <= seconds < 60):
        return None
    angle = degrees + minutes / 60 + seconds / 3600
    side = _text(ref)
    if side not in (positive, negative):
        return None
    angle = -angle if side == negative else angle
    return round(angle, 7) if abs(angle) <= limit else None


def _altitude(value, ref) -> float | None:
    metres = _number(value)
    if ref in (1, b"\x01"):
        metres = -metres  # below sea level
    return round(metres, 2) if -12_000 <= metres <= 100_000 else None


def _iso6709(text) -> tuple[float | None, float | None, float | None]:
    """``"+48.8577+002.2950+035.000/"`` -> (48.8577, 2.295, 35.0); (None, None, None) when it is not one."""
    match = _ISO6709.match((_text(text) or "").strip())
    if match is None:
        return None, None, None
    latitude, longitude = _number(match[1]), _number(match[2])
    if abs(latitude) > 90 or abs(longitude) > 180:
        return None, None, None
    altitude = _number(match[3]) if match[3] else None
    return latitude, longitude, altitude if altitude is None or -12_000 <= altitude <= 100_000 else None


EARTH_RADIUS_KM = 6371.0088  # the mean radius (IUGG)


def distance_km(lat1, lon1, lat2, lon2):
    """Great-circle distance (haversine) between points in degrees; numpy arrays broadcast."""
    import numpy as np

    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def describe(metadata: dict) -> str:
    """``"2024-06-01 18:03 +02:00 · 48.8577, 2.2950 · Canon EOS R5"``: what a result line or card shows of
    when, where and with what (an empty string when nothing is known)."""
    parts = []
    taken = metadata.get("taken")
    if taken:
        parts.append(
            taken[:16].replace("T", " ") + (f" {metadata['taken_zone']}" if metadata.get("taken_zone") else "")
        )
    if metadata.get("latitude") is not None and metadata.get("longitude") is not None:
        parts.append(f"{metadata['latitude']:.4f}, {metadata['longitude']:.4f}")
    make, model = metadata.get("camera_make") or "", metadata.get("camera_model") or ""
    camera = model if make and model.lower().startswith(make.split()[0].lower()) else f"{make} {model}".strip()
    if camera:
        parts.append(camera)
    return " · ".join(parts)
