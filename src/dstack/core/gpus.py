"""Known GPU names and their memory sizes (GB), used to validate `resources.gpu`."""

from __future__ import annotations

import difflib
import re

# Name -> memory options in GB. Names are the short marketing names users write in
# `.dstack.yml`; backends map their own labels (e.g. AWS "A100-80GB") onto these.
KNOWN_GPUS: dict[str, tuple[float, ...]] = {
    # NVIDIA
    "A10": (24,),
    "A10G": (24,),
    "A16": (16,),
    "A40": (48,),
    "A100": (40, 80),
    "A4000": (16,),
    "A5000": (24,),
    "A6000": (48,),
    "B200": (180,),
    "B300": (288,),
    "GB200": (186,),
    "GB300": (288,),
    "GH200": (96,),
    "H20": (96,),
    "H100": (80,),
    "H100NVL": (94,),
    "H200": (141,),
    "K80": (12,),
    "L4": (24,),
    "L40": (48,),
    "L40S": (48,),
    "M60": (8,),
    "P100": (16,),
    "RTX3090": (24,),
    "RTX4090": (24,),
    "RTX5090": (32,),
    "RTX6000": (24, 48),
    "RTXPRO6000": (96,),
    "T4": (16,),
    "T4G": (16,),
    "V100": (16, 32),
    # AMD
    "MI210": (64,),
    "MI250": (128,),
    "MI250X": (128,),
    "MI300X": (192,),
    "MI325X": (256,),
    "MI355X": (288,),
    "RadeonProV520": (8,),
    # Intel
    "Gaudi": (32,),
    "Gaudi2": (96,),
    "Gaudi3": (128,),
}

VENDORS = ("nvidia", "amd", "intel", "tpu", "tenstorrent")
_AMD = {"MI210", "MI250", "MI250X", "MI300X", "MI325X", "MI355X", "RadeonProV520"}
_INTEL = {"Gaudi", "Gaudi2", "Gaudi3"}
# NVIDIA compute capabilities (for `compute_capability`).
COMPUTE_CAPABILITY: dict[str, float] = {
    "K80": 3.7, "M60": 5.2, "P100": 6.0, "V100": 7.0, "T4": 7.5, "T4G": 7.5, "A100": 8.0, "A10": 8.6, "A10G": 8.6,
    "A16": 8.6, "A40": 8.6, "A4000": 8.6, "A5000": 8.6, "A6000": 8.6, "RTX3090": 8.6, "L4": 8.9, "L40": 8.9,
    "L40S": 8.9, "RTX4090": 8.9, "RTX6000": 8.9, "H100": 9.0, "H100NVL": 9.0, "H200": 9.0, "H20": 9.0, "GH200": 9.0,
    "B200": 10.0, "GB200": 10.0, "B300": 10.3, "GB300": 10.3, "RTX5090": 12.0, "RTXPRO6000": 12.0,
}
# Google TPU slices: v2-8, v3-32, v4-8, v5litepod-8, v5p-16, v6e-8.
TPU_RE = re.compile(r"^v\d+[a-z]*(pod)?-\d+\Z")


def vendor_of(name: str) -> str | None:
    """The vendor of a known GPU name or TPU slice (None for a name dstack does not know)."""
    if name in _AMD:
        return "amd"
    if name in _INTEL:
        return "intel"
    if TPU_RE.match(name):
        return "tpu"
    return "nvidia" if name in KNOWN_GPUS else None

_BY_LOWER = {name.lower(): name for name in KNOWN_GPUS}


def normalize_gpu_name(name: str) -> str:
    """The canonical spelling of a known GPU name (or TPU slice); an unknown name as given.

    As upstream, an unknown name is not a parse error: the plan finds no offers for it and says
    which names are close (`unknown_gpu_hint`)."""
    if TPU_RE.match(name.strip().lower().removeprefix("tpu-")):
        return name.strip().lower().removeprefix("tpu-")
    key = name.strip().replace(" ", "").replace("-", "").lower()
    return _BY_LOWER.get(key, name.strip())


def unknown_gpu_hint(name: str) -> str | None:
    """For a name no backend can offer: "A1000 is not a GPU dstack knows (did you mean A100?)"."""
    if name in KNOWN_GPUS or TPU_RE.match(name):
        return None
    key = name.replace(" ", "").replace("-", "").lower()
    close = difflib.get_close_matches(key, list(_BY_LOWER), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(_BY_LOWER[c] for c in close)}?" if close else \
        f"known names are {', '.join(sorted(KNOWN_GPUS))}"
    return f"{name} is not a GPU dstack knows ({hint})"
