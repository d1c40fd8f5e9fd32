"""The 52 ARKit blendshape names and every mapping to other orders and rigs.

This is the one place that knows names and orders. The model's output order is EmoTalk's
(alphabetical camelCase, `browDownLeft` ... `tongueOut`), so official checkpoints work unchanged.
Every other order is derived here *by name*, never by position.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# EmoTalk's output order (model_bsList in render.py, github.com/psyai-net/EmoTalk_release): the
# ARKit camelCase names (Apple's ARFaceAnchor.BlendShapeLocation), sorted.
NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft",
    "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
COUNT = len(NAMES)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}

# Regions, by name prefix. "lip" is what lip-sync metrics score; "upper" is the emotional upper face.
LIP = tuple(i for i, n in enumerate(NAMES) if n.startswith(("mouth", "jaw")))
UPPER = tuple(i for i, n in enumerate(NAMES) if n.startswith(("brow", "eye", "cheek", "nose")))
REGIONS: dict[str, tuple[int, ...]] = {
    "brows": tuple(i for i, n in enumerate(NAMES) if n.startswith("brow")),
    "eyes": tuple(i for i, n in enumerate(NAMES) if n.startswith("eye")),
    "cheeks": tuple(i for i, n in enumerate(NAMES) if n.startswith(("cheek", "nose"))),
    "jaw": tuple(i for i, n in enumerate(NAMES) if n.startswith("jaw")),
    "mouth": tuple(i for i, n in enumerate(NAMES) if n.startswith("mouth")),
    "tongue": (INDEX["tongueOut"],),
}

# The channels that speak: jaw, lips and tongue, without the mouth's expressions (smile, frown,
# dimple), which may stay in a pause. The voice-activity gate closes these where nobody speaks.
ARTICULATION: tuple[int, ...] = tuple(
    i for i in REGIONS["jaw"] + REGIONS["mouth"] + REGIONS["tongue"]
    if not NAMES[i].startswith(("mouthSmile", "mouthFrown", "mouthDimple")))

# Head and eye rotations that Live Link Face appends after the 52 shapes (PascalCase).
ROTATIONS: tuple[str, ...] = (
    "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)

# Unreal's EARFaceBlendShape order: the Live Link Face UDP packet's 61 values.
LIVELINK_UDP_ORDER: tuple[str, ...] = (
    "EyeBlinkLeft", "EyeLookDownLeft", "EyeLookInLeft", "EyeLookOutLeft", "EyeLookUpLeft",
    "EyeSquintLeft", "EyeWideLeft",
    "EyeBlinkRight", "EyeLookDownRight", "EyeLookInRight", "EyeLookOutRight", "EyeLookUpRight",
    "EyeSquintRight", "EyeWideRight",
    "JawForward", "JawLeft", "JawRight", "JawOpen",
    "MouthClose", "MouthFunnel", "MouthPucker", "MouthLeft", "MouthRight",
    "MouthSmileLeft", "MouthSmileRight", "MouthFrownLeft", "MouthFrownRight",
    "MouthDimpleLeft", "MouthDimpleRight", "MouthStretchLeft", "MouthStretchRight",
    "MouthRollLower", "MouthRollUpper", "MouthShrugLower", "MouthShrugUpper",
    "MouthPressLeft", "MouthPressRight", "MouthLowerDownLeft", "MouthLowerDownRight",
    "MouthUpperUpLeft", "MouthUpperUpRight",
    "BrowDownLeft", "BrowDownRight", "BrowInnerUp", "BrowOuterUpLeft", "BrowOuterUpRight",
    "CheekPuff", "CheekSquintLeft", "CheekSquintRight",
    "NoseSneerLeft", "NoseSneerRight", "TongueOut",
) + ROTATIONS


def _csv_order() -> tuple[str, ...]:
    """Live Link Face CSV columns: the UDP order with Jaw and Mouth Left/Right swapped."""
    order = list(LIVELINK_UDP_ORDER)
    for left, right in (("JawLeft", "JawRight"), ("MouthLeft", "MouthRight")):
        i, j = order.index(left), order.index(right)
        order[i], order[j] = order[j], order[i]
    return tuple(order)


LIVELINK_CSV_ORDER: tuple[str, ...] = _csv_order()


def pascal(name: str) -> str:
    """ARKit camelCase -> PascalCase (Live Link Face and VMC perfect-sync clip names)."""
    return name[:1].upper() + name[1:]


def camel(name: str) -> str:
    """PascalCase, camelCase or ARKit raw `_L`/`_R` spellings -> EmoTalk camelCase, or KeyError."""
    key = name.strip()
    if key.endswith(("_L", "_R")):
        key = key[:-2] + ("Left" if key.endswith("_L") else "Right")
    found = _BY_LOWER.get(key.lower())
    if found is None:
        raise KeyError(f"not an ARKit blendshape name: {name!r}")
    return found


_BY_LOWER = {n.lower(): n for n in NAMES}

# VMC perfect sync: the 52 PascalCase clip names, in EmoTalk order.
VMC_NAMES: tuple[str, ...] = tuple(pascal(n) for n in NAMES)


def to_named_order(weights: np.ndarray, order: tuple[str, ...], rotations: Sequence[float] = ()) -> np.ndarray:
    """Reorder (..., 52) EmoTalk-order weights into `order` (PascalCase or camelCase names).

    Names in `order` that are not blendshapes, the head/eye `ROTATIONS`, get `rotations` (9 values
    in ROTATIONS order), or 0 without.
    """
    out = np.zeros(weights.shape[:-1] + (len(order),), dtype=weights.dtype)
    for j, name in enumerate(order):
        known = _BY_LOWER.get(name.lower())
        if known is not None:
            out[..., j] = weights[..., INDEX[known]]
        elif rotations and name in ROTATIONS:
            out[..., j] = rotations[ROTATIONS.index(name)]
    return out


# VRM presets driven from ARKit weights. No standard viseme-from-ARKit table exists; these are the
# common mixes (jawOpen for A, pucker for U, funnel for O, as lip-sync scripts such as TalkingHead's
# use them), and the VRM 0.x / 1.0 preset names are those of the VMC protocol (protocol.vmc.info).
# Emotions read the expression channels they show in.
VRM0_FROM_ARKIT: dict[str, dict[str, float]] = {
    "A": {"jawOpen": 1.0},
    "I": {"mouthStretchLeft": 0.5, "mouthStretchRight": 0.5, "jawOpen": 0.3},
    "U": {"mouthPucker": 1.0},
    "E": {"mouthLowerDownLeft": 0.5, "mouthLowerDownRight": 0.5, "jawOpen": 0.3},
    "O": {"mouthFunnel": 1.0},
    "Blink_L": {"eyeBlinkLeft": 1.0},
    "Blink_R": {"eyeBlinkRight": 1.0},
    "Joy": {"mouthSmileLeft": 0.5, "mouthSmileRight": 0.5},
    "Angry": {"browDownLeft": 0.5, "browDownRight": 0.5},
    "Sorrow": {"mouthFrownLeft": 0.5, "mouthFrownRight": 0.5},
    "Fun": {"cheekSquintLeft": 0.5, "cheekSquintRight": 0.5},
}
VRM1_NAMES: dict[str, str] = {
    "A": "aa", "I": "ih", "U": "ou", "E": "ee", "O": "oh",
    "Blink_L": "blinkLeft", "Blink_R": "blinkRight",
    "Joy": "happy", "Angry": "angry", "Sorrow": "sad", "Fun": "relaxed",
}


def vrm_presets(weights: np.ndarray) -> dict[str, float]:
    """VRM 0.x preset values (0..1) for one frame of EmoTalk-order weights."""
    return {
        preset: float(np.clip(sum(weights[INDEX[n]] * w for n, w in mix.items()), 0.0, 1.0))
        for preset, mix in VRM0_FROM_ARKIT.items()
    }
