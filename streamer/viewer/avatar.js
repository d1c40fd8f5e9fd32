/* The stream viewer's 3D avatar: a VRM model (0.x or 1.0) shown with three.js and @pixiv/three-vrm
   (vendor/, scripts/vendor_viewer.sh), its expressions driven by the 52 ARKit weights of each frame.
   Loaded by viewer.js only when there is a model to show.

   const avatar = await createAvatar(canvas, arrayBufferOfTheVrmFile);
   avatar.apply({jawOpen: 0.4, ...}, head, eyes);   // weights by ARKit name, missing ones 0; the
                                        // frame's head {pitch, yaw, roll} and eyes {pitch, yaw} in degrees, or null
   avatar.render(seconds);              // once per display refresh: spring bones, expressions, a picture
   avatar.info                          // {format, mode, expressions, driven}; avatar.values(): {name: weight};
   avatar.pose()                        // {head, eyes} as applied, in degrees
   avatar.dispose();

   Angles are the frames' (streamer/head_motion.py): about the face's own axes, pitch > 0 looks down,
   yaw > 0 turns to the face's own left, roll > 0 tilts to its own right. Those are the axes of a
   VRM 1.0 model's normalized bones; a 0.x model's X and Z point the other way.

   Which expressions are driven (docs/viewer.md):
   - a perfect-sync model, one with expressions named after more than half of the 52 ARKit
     blendshapes (names compared case-insensitively: JawOpen, jawOpen and jawopen are one), gets each
     of them set to its weight; its VRM presets are left alone;
   - any other model gets the VRM presets, each mixed from the weights by PRESETS_FROM_ARKIT: the
     same mixes as the VMC output (training/blendshapes.py VRM0_FROM_ARKIT; tests/test_viewer_avatar.py
     compares them), plus blink, for models without blinkLeft and blinkRight, and surprised. */
import * as THREE from "./vendor/three.module.min.js";
import {GLTFLoader} from "./vendor/GLTFLoader.min.js";
import {VRMLoaderPlugin, VRMUtils} from "./vendor/three-vrm.module.min.js";

export const ARKIT = [
  "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
  "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
  "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
  "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
  "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
  "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight",
  "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
  "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft",
  "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight", "tongueOut",
];

// VRM 1.0 preset -> {ARKit name: factor}; the preset's weight is the sum, clipped to 0..1.
export const PRESETS_FROM_ARKIT = {
  aa: {jawOpen: 1.0},
  ih: {mouthStretchLeft: 0.5, mouthStretchRight: 0.5, jawOpen: 0.3},
  ou: {mouthPucker: 1.0},
  ee: {mouthLowerDownLeft: 0.5, mouthLowerDownRight: 0.5, jawOpen: 0.3},
  oh: {mouthFunnel: 1.0},
  blinkLeft: {eyeBlinkLeft: 1.0},
  blinkRight: {eyeBlinkRight: 1.0},
  happy: {mouthSmileLeft: 0.5, mouthSmileRight: 0.5},
  angry: {browDownLeft: 0.5, browDownRight: 0.5},
  sad: {mouthFrownLeft: 0.5, mouthFrownRight: 0.5},
  relaxed: {cheekSquintLeft: 0.5, cheekSquintRight: 0.5},
  // not in the VMC output:
  blink: {eyeBlinkLeft: 0.5, eyeBlinkRight: 0.5},
  surprised: {browInnerUp: 0.5, eyeWideLeft: 0.25, eyeWideRight: 0.25},
};
const PERFECT_SYNC_MIN = ARKIT.length / 2;  // more ARKit-named expressions than this: a perfect-sync model
const HEAD_HEIGHT_M = 1.4;                  // the framing below is made for a head bone this high; others scale
const REST = {pitch: 0, yaw: 0, roll: 0};
const DEGREES = 180 / Math.PI;

export async function createAvatar(canvas, data) {
  const loader = new GLTFLoader();
  loader.register((parser) => new VRMLoaderPlugin(parser));
  const gltf = await loader.parseAsync(data, "");
  const vrm = gltf.userData.vrm;
  if (!vrm) throw new Error("no VRM in this file (a .vrm holds a VRM or VRMC_vrm extension with a humanoid)");
  return new Avatar(canvas, vrm);
}

class Avatar {
  constructor(canvas, vrm) {
    this.canvas = canvas;
    this.vrm = vrm;
    const format = vrm.meta.metaVersion === "0" ? "VRM 0.x" : "VRM 1.0";
    if (format === "VRM 0.x") VRMUtils.rotateVRM0(vrm);  // 0.x models face -Z; turn them to the camera
    this.axis = format === "VRM 0.x" ? -1 : 1;  // the sign of pitch and roll on this model's bones
    this.head = vrm.humanoid.getNormalizedBoneNode("head");
    VRMUtils.removeUnnecessaryVertices(vrm.scene);
    VRMUtils.combineSkeletons(vrm.scene);
    vrm.scene.traverse((object) => { object.frustumCulled = false; });

    const manager = vrm.expressionManager;
    const names = manager ? manager.expressions.map((expression) => expression.expressionName) : [];
    const byLowerName = new Map(names.map((name) => [name.toLowerCase(), name]));
    const arkit = ARKIT.filter((name) => byLowerName.has(name.toLowerCase()))
      .map((name) => [byLowerName.get(name.toLowerCase()), name]);
    this.perfectSync = arkit.length > PERFECT_SYNC_MIN ? arkit : [];
    const sided = byLowerName.has("blinkleft") && byLowerName.has("blinkright");
    this.presets = this.perfectSync.length ? [] : Object.entries(PRESETS_FROM_ARKIT)
      .filter(([preset]) => names.includes(preset) && !(preset === "blink" && sided));
    this.info = Object.freeze({
      format, expressions: names,
      mode: this.perfectSync.length ? "perfect-sync" : "presets",
      driven: [...this.perfectSync.map(([name]) => name), ...this.presets.map(([name]) => name)],
    });

    this.scene = new THREE.Scene();
    this.scene.add(vrm.scene);
    const light = new THREE.DirectionalLight(0xffffff, Math.PI);
    light.position.set(1, 1, 1).normalize();
    this.scene.add(light, new THREE.AmbientLight(0xffffff, 0.6));
    this.renderer = new THREE.WebGLRenderer({canvas, alpha: true, antialias: true});
    this.renderer.setClearColor(0x000000, 0);  // transparent: the page (or OBS) shows behind the model
    this.renderer.setPixelRatio(window.devicePixelRatio || 1);
    this.camera = new THREE.PerspectiveCamera(30, 1, 0.01, 50);
    this.frame();
    this.size = "";
  }

  /* Head and shoulders: the camera in front of the head bone, at a distance that scales with its height. */
  frame() {
    this.vrm.scene.updateMatrixWorld(true);
    const at = new THREE.Vector3();
    this.head.getWorldPosition(at);
    const scale = at.y > 0.1 ? at.y / HEAD_HEIGHT_M : 1;
    at.y += 0.07 * scale;
    this.camera.position.set(at.x, at.y, at.z + 0.75 * scale);
    this.camera.lookAt(at);
  }

  apply(weights, head, eyes) {
    const {pitch, yaw, roll} = head || REST;
    this.head.rotation.set(this.axis * pitch / DEGREES, yaw / DEGREES, this.axis * roll / DEGREES);
    if (this.vrm.lookAt) {
      this.vrm.lookAt.pitch = eyes ? eyes.pitch : 0;
      this.vrm.lookAt.yaw = eyes ? eyes.yaw : 0;
    }
    const manager = this.vrm.expressionManager;
    if (!manager) return;
    for (const [expression, name] of this.perfectSync) manager.setValue(expression, weights[name] || 0);
    for (const [preset, mix] of this.presets) {
      let sum = 0;
      for (const [name, factor] of Object.entries(mix)) sum += (weights[name] || 0) * factor;
      manager.setValue(preset, sum);  // clipped to 0..1 by three-vrm
    }
  }

  pose() {
    const {x, y, z} = this.head.rotation;
    const lookAt = this.vrm.lookAt;
    return {head: {pitch: this.axis * x * DEGREES, yaw: y * DEGREES, roll: this.axis * z * DEGREES},
            eyes: lookAt ? {pitch: lookAt.pitch, yaw: lookAt.yaw} : null};
  }

  values() {
    const manager = this.vrm.expressionManager;
    return Object.fromEntries(this.info.expressions.map((name) => [name, manager.getValue(name)]));
  }

  render(seconds) {
    const width = this.canvas.clientWidth, height = this.canvas.clientHeight;
    if (`${width}x${height}` !== this.size && width > 0 && height > 0) {
      this.size = `${width}x${height}`;
      this.renderer.setSize(width, height, false);
      this.camera.aspect = width / height;
      this.camera.updateProjectionMatrix();
    }
    this.vrm.update(seconds);
    this.renderer.render(this.scene, this.camera);
  }

  dispose() {
    VRMUtils.deepDispose(this.vrm.scene);
    this.renderer.dispose();
  }
}
