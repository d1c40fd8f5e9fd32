"""Tiny VRM models for the viewer tests, written here byte by byte as binary glTF (.vrm): a flat face
(skin, two eyes, a mouth) on the head bone of a minimal humanoid, with four morph targets that
expressions bind to. VRM 1.0 (the VRMC_vrm extension) or VRM 0.x (the VRM extension).

    MOUTH_OPEN   the mouth's lower edge drops 7 cm
    LEFT_EYE_SHUT, RIGHT_EYE_SHUT   an eye's lids meet (the model's left: +X in VRM 1.0)
    MOUTH_ROUND  the mouth narrows and opens 4 cm

The face looks along the model's forward axis (+Z in VRM 1.0, -Z in 0.x), its head bone 1.4 m up.
Both have a bone-type look-at without eye bones: three-vrm takes the eyes' angles, nothing turns.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence

import numpy as np

MOUTH_OPEN, LEFT_EYE_SHUT, RIGHT_EYE_SHUT, MOUTH_ROUND = range(4)
VRM1_PRESETS = {"aa", "ih", "ou", "ee", "oh", "blink", "blinkLeft", "blinkRight", "happy", "angry", "sad",
                "relaxed", "surprised", "neutral", "lookUp", "lookDown", "lookLeft", "lookRight"}
VRM0_PRESETS = {"a", "i", "u", "e", "o", "blink", "blink_l", "blink_r", "joy", "angry", "sorrow", "fun",
                "neutral", "lookup", "lookdown", "lookleft", "lookright"}
HEAD_Y = 1.4
# (name, parent, translation): the humanoid's required bones, then the face under the head
BONES = [("hips", None, (0, 0.9, 0)), ("spine", "hips", (0, 0.2, 0)), ("head", "spine", (0, 0.3, 0)),
         ("leftUpperLeg", "hips", (0.1, -0.05, 0)), ("leftLowerLeg", "leftUpperLeg", (0, -0.4, 0)),
         ("leftFoot", "leftLowerLeg", (0, -0.4, 0)), ("rightUpperLeg", "hips", (-0.1, -0.05, 0)),
         ("rightLowerLeg", "rightUpperLeg", (0, -0.4, 0)), ("rightFoot", "rightLowerLeg", (0, -0.4, 0)),
         ("leftUpperArm", "spine", (0.15, 0.15, 0)), ("leftLowerArm", "leftUpperArm", (0.25, 0, 0)),
         ("leftHand", "leftLowerArm", (0.25, 0, 0)), ("rightUpperArm", "spine", (-0.15, 0.15, 0)),
         ("rightLowerArm", "rightUpperArm", (-0.25, 0, 0)), ("rightHand", "rightLowerArm", (-0.25, 0, 0))]
SKIN, WHITE, LIPS = (0.95, 0.78, 0.65), (1.0, 1.0, 1.0), (0.35, 0.05, 0.08)
# quads in head space, seen from the front: (centre x, centre y, z, width, height, colour)
QUADS = {"skin": (0.0, 0.07, 0.05, 0.22, 0.28, SKIN), "left eye": (0.05, 0.11, 0.053, 0.045, 0.03, WHITE),
         "right eye": (-0.05, 0.11, 0.053, 0.045, 0.03, WHITE), "mouth": (0.0, 0.0, 0.053, 0.08, 0.012, LIPS)}


def face_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray]]:
    """Positions, colours, triangle indices and the four morph targets' position offsets."""
    positions, colours, indices = [], [], []
    corners = {}  # quad -> indices of its top-left, top-right, bottom-right, bottom-left vertices
    for name, (x, y, z, w, h, colour) in QUADS.items():
        start = len(positions)
        positions += [(x - w / 2, y + h / 2, z), (x + w / 2, y + h / 2, z), (x + w / 2, y - h / 2, z),
                      (x - w / 2, y - h / 2, z)]
        colours += [colour] * 4
        indices += [start, start + 2, start + 1, start, start + 3, start + 2]
        corners[name] = range(start, start + 4)
    count = len(positions)
    targets = [np.zeros((count, 3), np.float32) for _ in range(4)]
    top_left, top_right, bottom_right, bottom_left = corners["mouth"]
    targets[MOUTH_OPEN][[bottom_right, bottom_left], 1] = -0.07
    for target, eye in ((LEFT_EYE_SHUT, "left eye"), (RIGHT_EYE_SHUT, "right eye")):
        height = QUADS[eye][4]
        targets[target][list(corners[eye])[:2], 1] = -height / 2  # the upper lid down
        targets[target][list(corners[eye])[2:], 1] = height / 2  # the lower lid up
    half = QUADS["mouth"][3] / 2
    targets[MOUTH_ROUND][[top_left, bottom_left], 0] = half / 2
    targets[MOUTH_ROUND][[top_right, bottom_right], 0] = -half / 2
    targets[MOUTH_ROUND][[bottom_right, bottom_left], 1] = -0.04
    return (np.array(positions, np.float32), np.array(colours, np.float32), np.array(indices, np.uint16), targets)


class _Buffer:
    """The binary chunk and its accessors, appended one array at a time."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, kind: str, target: int | None = None, bounds: bool = False) -> int:
        while len(self.data) % 4:
            self.data.append(0)
        view = {"buffer": 0, "byteOffset": len(self.data), "byteLength": array.nbytes}
        if target is not None:
            view["target"] = target
        self.views.append(view)
        self.data += array.tobytes()
        accessor = {"bufferView": len(self.views) - 1, "componentType": 5126 if array.dtype == np.float32 else 5123,
                    "count": len(array), "type": kind}
        if bounds:
            accessor["min"] = array.min(axis=0).tolist()
            accessor["max"] = array.max(axis=0).tolist()
        self.accessors.append(accessor)
        return len(self.accessors) - 1


def vrm(version: str, expressions: Mapping[str, Sequence[tuple[int, float]]]) -> bytes:
    """A .vrm file of `version` "1.0" or "0.x" whose expressions are `expressions`: name -> [(morph
    target, weight 0-1)]. VRM 1.0 names that are presets (aa, blink ...) are presets, others custom;
    VRM 0.x names that are 0.x presets (a, blink_l, joy ...) are presets, others custom ("unknown")."""
    if version not in ("1.0", "0.x"):
        raise ValueError(version)
    facing = 1.0 if version == "1.0" else -1.0  # 0.x models look along -Z: turn the face around
    positions, colours, indices, targets = face_mesh()
    positions = positions * np.array([facing, 1.0, facing], np.float32)
    targets = [t * np.array([facing, 1.0, facing], np.float32) for t in targets]
    buffer = _Buffer()
    primitive = {
        "attributes": {"POSITION": buffer.add(positions, "VEC3", 34962, bounds=True),
                       "COLOR_0": buffer.add(colours, "VEC3", 34962)},
        "indices": buffer.add(indices, "SCALAR", 34963),
        "targets": [{"POSITION": buffer.add(t, "VEC3", 34962, bounds=True)} for t in targets],
        "material": 0,
    }
    nodes = [{"name": name, "translation": [facing * translation[0], *translation[1:]]}
             for name, _, translation in BONES]
    index = {name: i for i, (name, _, _) in enumerate(BONES)}
    for name, parent, _ in BONES:
        if parent is not None:
            nodes[index[parent]].setdefault("children", []).append(index[name])
    face = len(nodes)
    nodes.append({"name": "face", "mesh": 0})
    nodes[index["head"]]["children"] = [face]
    gltf = {
        "asset": {"version": "2.0", "generator": "emotalk-stream tests"},
        "scene": 0, "scenes": [{"nodes": [index["hips"]]}], "nodes": nodes,
        "meshes": [{"name": "face", "primitives": [primitive],
                    "weights": [0.0] * len(targets), "extras": {"targetNames": ["open", "left", "right", "round"]}}],
        "materials": [{"name": "face", "doubleSided": True, "extensions": {"KHR_materials_unlit": {}},
                       "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0,
                                                "roughnessFactor": 1}}],
        "buffers": [{"byteLength": 0}], "bufferViews": buffer.views, "accessors": buffer.accessors,
    }
    if version == "1.0":
        gltf["extensionsUsed"] = ["KHR_materials_unlit", "VRMC_vrm"]
        gltf["extensions"] = {"VRMC_vrm": _vrm1(index, face, expressions)}
    else:
        gltf["extensionsUsed"] = ["KHR_materials_unlit", "VRM"]
        gltf["extensions"] = {"VRM": _vrm0(index, expressions)}
    return _glb(gltf, buffer.data)


def _vrm1(index: Mapping[str, int], face: int, expressions: Mapping[str, Sequence[tuple[int, float]]]) -> dict:
    preset, custom = {}, {}
    for name, binds in expressions.items():
        (preset if name in VRM1_PRESETS else custom)[name] = {
            "morphTargetBinds": [{"node": face, "index": target, "weight": weight} for target, weight in binds]}
    return {
        "specVersion": "1.0",
        "meta": {"name": "test face", "version": "1", "authors": ["emotalk-stream tests"],
                 "licenseUrl": "https://vrm.dev/licenses/1.0/", "avatarPermission": "onlyAuthor",
                 "commercialUsage": "personalNonProfit", "creditNotation": "required", "modification": "prohibited"},
        "humanoid": {"humanBones": {name: {"node": node} for name, node in index.items()}},
        "lookAt": {"type": "bone", "offsetFromHeadBone": [0, 0.11, 0.05]},  # no eye bones: the angles only
        "expressions": {"preset": preset, "custom": custom},
    }


def _vrm0(index: Mapping[str, int], expressions: Mapping[str, Sequence[tuple[int, float]]]) -> dict:
    groups = [{"name": name, "presetName": name if name in VRM0_PRESETS else "unknown", "isBinary": False,
               "binds": [{"mesh": 0, "index": target, "weight": 100 * weight} for target, weight in binds],
               "materialValues": []} for name, binds in expressions.items()]
    return {
        "exporterVersion": "emotalk-stream tests", "specVersion": "0.0",
        "meta": {"title": "test face", "version": "1", "author": "emotalk-stream tests",
                 "allowedUserName": "OnlyAuthor", "licenseName": "Redistribution_Prohibited"},
        "humanoid": {"humanBones": [{"bone": name, "node": node, "useDefaultValues": True}
                                    for name, node in index.items()]},
        "blendShapeMaster": {"blendShapeGroups": groups},
        "firstPerson": {"firstPersonBone": index["head"], "firstPersonBoneOffset": {"x": 0, "y": 0.11, "z": -0.05},
                        "lookAtTypeName": "Bone", "meshAnnotations": []},
        "materialProperties": [],
    }


def _glb(gltf: dict, binary: bytearray) -> bytes:
    """Binary glTF: the header, the JSON chunk (padded with spaces), the BIN chunk (padded with zeros)."""
    while len(binary) % 4:
        binary.append(0)
    gltf["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text + struct.pack("<I4s", len(binary), b"BIN\0") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks
