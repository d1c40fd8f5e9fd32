/* The face drawn from the 52 ARKit blendshape weights on a 360 x 440 canvas: the one drawing of the
   face, loaded by the stream viewer (index.html) and by emotalk-serve's demo page (serve/static/).

   const draw = emotalkFace(canvas);   // sizes the canvas for the display's pixel ratio
   draw({jawOpen: 0.4, ...});          // weights by ARKit name, missing ones 0; draw({}): the rest pose
*/
"use strict";

function emotalkFace(canvas) {
  // seen from the front, so the subject's Left side is drawn on the viewer's right
  const ctx = canvas.getContext("2d");
  const W = 360, H = 440, CX = W / 2;
  const SIDES = [{name: "Left", dir: 1}, {name: "Right", dir: -1}];
  const COLOURS = {skin: "#f1c9a5", skinLine: "#b98a66", hair: "#3b2a20", brow: "#4a3326", iris: "#4f7fa8",
                   lip: "#c4676a", mouth: "#3b1418", teeth: "#f4f1ea", tongue: "#d9606a", blush: "#e8818a"};

  function setupCanvas() {
    const scale = window.devicePixelRatio || 1;
    canvas.width = W * scale; canvas.height = H * scale;
    ctx.setTransform(scale, 0, 0, scale, 0, 0);
  }

  function stroke(colour, width, alpha = 1) {
    ctx.globalAlpha = alpha; ctx.strokeStyle = colour; ctx.lineWidth = width;
    ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.stroke(); ctx.globalAlpha = 1;
  }

  function fill(colour, alpha = 1) {
    ctx.globalAlpha = alpha; ctx.fillStyle = colour; ctx.fill(); ctx.globalAlpha = 1;
  }

  function drawFace(w) {
    const g = (name) => Math.min(Math.max(w[name] || 0, 0), 1);
    const jaw = g("jawOpen");
    const jawX = (g("jawLeft") - g("jawRight")) * 16;
    const cy = 190;
    ctx.clearRect(0, 0, W, H);

    // ears, head (the chin drops with the jaw), hair
    for (const {dir} of SIDES) {
      ctx.beginPath(); ctx.ellipse(CX + dir * 128, cy + 8, 15, 30, 0, 0, 2 * Math.PI);
      fill(COLOURS.skin); stroke(COLOURS.skinLine, 1.5);
    }
    const chinY = cy + 178 + jaw * 30 + g("jawForward") * 6, puff = g("cheekPuff") * 14;
    ctx.beginPath();
    ctx.ellipse(CX, cy, 128, 150, 0, Math.PI, 2 * Math.PI);
    ctx.bezierCurveTo(CX + 128 + puff, cy + 110, CX + 70 + jawX, chinY, CX + jawX, chinY);
    ctx.bezierCurveTo(CX - 70 + jawX, chinY, CX - 128 - puff, cy + 110, CX - 128, cy);
    ctx.closePath(); fill(COLOURS.skin); stroke(COLOURS.skinLine, 2);
    ctx.beginPath();
    ctx.ellipse(CX, cy - 6, 134, 158, 0, Math.PI * 1.06, Math.PI * 1.94);
    ctx.bezierCurveTo(CX + 112, cy - 78, CX + 44, cy - 112, CX - 8, cy - 94);
    ctx.bezierCurveTo(CX - 56, cy - 80, CX - 112, cy - 84, CX - 132, cy - 36);
    ctx.closePath(); fill(COLOURS.hair);

    // forehead lines when the inner brows rise
    const innerUp = g("browInnerUp");
    for (let i = 0; i < 2; i++) {
      ctx.beginPath(); ctx.moveTo(CX - 40, cy - 66 - i * 10);
      ctx.quadraticCurveTo(CX, cy - 74 - i * 10, CX + 40, cy - 66 - i * 10);
      stroke(COLOURS.skinLine, 1.5, innerUp * 0.7);
    }

    for (const {name: side, dir} of SIDES) {
      drawBrow(g, side, dir, cy - 38);
      drawEye(g, side, dir, cy - 2);
      const squint = g("cheekSquint" + side);
      ctx.beginPath(); ctx.ellipse(CX + dir * 76, cy + 62 - squint * 10, 22 + puff, 14 + puff * 0.6, 0, 0, 2 * Math.PI);
      fill(COLOURS.blush, 0.18 + 0.3 * Math.max(squint, g("cheekPuff")));
    }
    drawNose(g, cy + 62);
    drawMouth(g, cy + 108, jaw, jawX);
  }

  function drawBrow(g, side, dir, y) {
    const down = g("browDown" + side), outerUp = g("browOuterUp" + side), innerUp = g("browInnerUp");
    const innerY = y - 18 * innerUp + 18 * down, outerY = y + 2 - 18 * outerUp + 2 * down;
    ctx.beginPath();
    ctx.moveTo(CX + dir * 20, innerY);
    ctx.quadraticCurveTo(CX + dir * 52, Math.min(innerY, outerY) - 12 + 6 * down, CX + dir * 84, outerY);
    stroke(COLOURS.brow, 7);
  }

  function drawEye(g, side, dir, y) {
    const blink = g("eyeBlink" + side), wide = g("eyeWide" + side);
    const squint = Math.max(g("eyeSquint" + side), 0.6 * g("cheekSquint" + side));
    const x = CX + dir * 52, rx = 28;
    const lower = 9 * (1 - 0.6 * squint) + 3 * wide;               // how far the lower lid bulges down
    const upper = 17 * (1 - blink) * (1 + 0.6 * wide) * (1 - 0.5 * squint);
    const upperCtrl = y - 2 * upper + blink * 2 * lower, lowerCtrl = y + 2 * lower;  // shut: the lids meet
    const eyeShape = () => {
      ctx.beginPath(); ctx.moveTo(x - rx, y);
      ctx.quadraticCurveTo(x, upperCtrl, x + rx, y);
      ctx.quadraticCurveTo(x, lowerCtrl, x - rx, y);
    };
    if (blink < 0.97) {
      eyeShape(); fill("#fbfbf8");
      ctx.save(); eyeShape(); ctx.clip();
      const lookX = dir * (g("eyeLookOut" + side) - g("eyeLookIn" + side)) * 12;
      const lookY = (g("eyeLookDown" + side) - g("eyeLookUp" + side)) * 7;
      ctx.beginPath(); ctx.arc(x + lookX, y + 2 + lookY, 11, 0, 2 * Math.PI); fill(COLOURS.iris);
      ctx.beginPath(); ctx.arc(x + lookX, y + 2 + lookY, 5, 0, 2 * Math.PI); fill("#111");
      ctx.beginPath(); ctx.arc(x + lookX + 3, y - 1 + lookY, 2, 0, 2 * Math.PI); fill("#fff", 0.9);
      ctx.restore();
      ctx.beginPath(); ctx.moveTo(x - rx, y); ctx.quadraticCurveTo(x, lowerCtrl, x + rx, y);
      stroke(COLOURS.skinLine, 1.5);
    }
    ctx.beginPath(); ctx.moveTo(x - rx - 2, y); ctx.quadraticCurveTo(x, upperCtrl, x + rx + 2, y);
    stroke("#2a1d16", 3.5);                                          // upper lid and lashes
  }

  function drawNose(g, y) {
    const sneer = {Left: g("noseSneerLeft"), Right: g("noseSneerRight")};
    ctx.beginPath(); ctx.moveTo(CX - 6, y - 70); ctx.quadraticCurveTo(CX - 12, y - 30, CX - 16, y - 4);
    stroke(COLOURS.skinLine, 1.5, 0.6);
    ctx.beginPath();
    ctx.moveTo(CX - 20, y - 4 - sneer.Right * 6);
    ctx.quadraticCurveTo(CX - 24, y + 8 - sneer.Right * 6, CX - 9, y + 8 - sneer.Right * 3);
    ctx.quadraticCurveTo(CX, y + 13, CX + 9, y + 8 - sneer.Left * 3);
    ctx.quadraticCurveTo(CX + 24, y + 8 - sneer.Left * 6, CX + 20, y - 4 - sneer.Left * 6);
    stroke(COLOURS.skinLine, 2);
    for (const {name: side, dir} of SIDES) {                       // wrinkles on a sneer
      ctx.beginPath(); ctx.moveTo(CX + dir * 8, y - 50); ctx.lineTo(CX + dir * 16, y - 40);
      stroke(COLOURS.skinLine, 1.5, sneer[side] * 0.8);
    }
  }

  function drawMouth(g, y, jaw, jawX) {
    const round = Math.max(g("mouthPucker"), g("mouthFunnel"));
    const x = CX + (g("mouthLeft") - g("mouthRight")) * 14 + jawX * 0.5;
    const corner = {};
    for (const {name: side, dir} of SIDES) {
      const smile = g("mouthSmile" + side), frown = g("mouthFrown" + side);
      const half = 42 * (1 + 0.25 * smile + 0.3 * g("mouthStretch" + side) + 0.1 * g("mouthDimple" + side))
                   * (1 - 0.45 * round);
      corner[side] = {x: x + dir * half, y: y - 13 * smile + 13 * frown + 8 * jaw};
    }
    const left = corner.Right, right = corner.Left;                // the viewer's left is the subject's right
    const avg = (name) => (g(name + "Left") + g(name + "Right")) / 2;
    const closed = g("mouthClose"), press = avg("mouthPress");
    const openTop = 5 * avg("mouthUpperUp") + (4 * jaw + 6 * g("mouthFunnel")) * (1 - closed);
    const openBottom = 6 * avg("mouthLowerDown") + (46 * jaw + 8 * g("mouthFunnel")) * (1 - closed);
    const upperLip = 9 * (1 - 0.7 * g("mouthRollUpper")) * (1 - 0.4 * press) + 4 * round + 3 * g("mouthShrugUpper");
    const lowerLip = 11 * (1 - 0.7 * g("mouthRollLower")) * (1 - 0.4 * press) + 4 * round + 3 * g("mouthShrugLower");
    const bend = 0.45 + 0.35 * round;                              // rounder lips when puckered
    const span = (right.x - left.x) / 2;
    const curve = (from, to, ctrlY) => {                           // peak of a cubic ~ 3/4 of its control
      ctx.bezierCurveTo(x - (from === left ? 1 : -1) * span * bend, ctrlY,
                        x + (from === left ? 1 : -1) * span * bend, ctrlY, to.x, to.y);
    };
    const top = y - openTop, bottom = y + openBottom;

    ctx.beginPath(); ctx.moveTo(left.x, left.y);                   // lips
    curve(left, right, (top - upperLip) - (upperLip + openTop) / 3);
    curve(right, left, (bottom + lowerLip) + (lowerLip + openBottom) / 3);
    ctx.closePath(); fill(COLOURS.lip);

    const opening = () => {
      ctx.beginPath(); ctx.moveTo(left.x, left.y);
      curve(left, right, top - openTop / 3);
      curve(right, left, bottom + openBottom / 3);
      ctx.closePath();
    };
    if (openTop + openBottom > 1.5) {
      opening(); fill(COLOURS.mouth);
      ctx.save(); opening(); ctx.clip();
      ctx.fillStyle = COLOURS.teeth; ctx.fillRect(x - span, top - 20, 2 * span, 22 + openTop);
      ctx.beginPath(); ctx.ellipse(x, bottom + 6, span * 0.55, 14, 0, 0, 2 * Math.PI); fill(COLOURS.tongue);
      ctx.restore();
    }
    ctx.beginPath(); ctx.moveTo(left.x, left.y);                   // the line where the lips meet
    curve(left, right, top - openTop / 3);
    stroke(COLOURS.mouth, 1.6, 0.8);

    const tongue = g("tongueOut");
    if (tongue > 0.02) {                                           // out of the mouth, over the lower lip
      ctx.beginPath(); ctx.ellipse(x, bottom - 2, span * 0.4, (lowerLip + 6) * Math.min(1, tongue * 3) + tongue * 12,
                                   0, 0, Math.PI);
      fill(COLOURS.tongue); stroke("#a8434c", 1);
    }
    for (const {name: side, dir} of SIDES) {                       // smile folds and dimples
      const c = corner[side], smile = g("mouthSmile" + side);
      ctx.beginPath(); ctx.moveTo(CX + dir * 30, y - 38);
      ctx.quadraticCurveTo(c.x + dir * 14, y - 20, c.x + dir * 8, c.y + 6);
      stroke(COLOURS.skinLine, 1.5, 0.6 * smile);
      ctx.beginPath(); ctx.arc(c.x + dir * 6, c.y, 4, -0.8, 0.8);
      stroke(COLOURS.skinLine, 1.5, g("mouthDimple" + side));
    }
  }

  setupCanvas();
  return drawFace;
}
