/* The live controls' form: the one set of controls, loaded by the stream viewer (index.html) and by
   emotalk-serve's demo page (serve/static/), each of which sends the changes in its own protocol.

   const controls = emotalkControls(form, send, {motion: true});
       fills the (empty, or ending in a status line) <form> with every control: emotion, strength,
       level (a number, or "voice": following the voice's arousal), person, smoothing, blink, with
       `motion` head and eye motion, and a gain per face region; each change calls send(change) with
       the control's JSON name and value, e.g. {level: 0.5}, {level: "voice"},
       {gain: {jaw: 2}}, {emotion: "happy:0.70"}
   controls.emotion()           "auto", or "LABEL:STRENGTH" (two decimals)
   controls.show(state)         sets the inputs to a stream's controls ({"controls": ...}, docs/viewer.md),
                                except the one under the user's hand
*/
"use strict";

function emotalkControls(form, send, {motion = false} = {}) {
  // The engine's face regions (training/blendshapes.py REGIONS; tests/test_serve_page.py compares).
  const REGIONS = ["brows", "eyes", "cheeks", "jaw", "mouth", "tongue"];
  const SLIDERS = ["strength", "level", "smoothing", ...(motion ? ["head_motion", "eye_motion"] : [])];
  const $ = (id) => document.getElementById(id);

  const label = (id, text) => `<label for="${id}">${text}</label>`;
  const range = (id, text, max, step, value, more = "") => label(id, text) +
    `<input id="${id}"${more} type="range" min="0" max="${max}" step="${step}" value="${value}">` +
    `<output id="${id}-value">${value.toFixed(2)}</output>`;
  form.insertAdjacentHTML("afterbegin", "<h2>Controls</h2>" +
    label("emotion", "emotion") + '<select id="emotion"><option value="auto">auto (from the voice)</option></select>' +
    "<span></span>" +
    range("strength", "strength", 1, 0.05, 1) +
    range("level", "level", 1, 0.05, 1) +
    label("level-voice", "level follows voice") + '<input id="level-voice" type="checkbox"><span></span>' +
    label("person", "person") + '<input id="person" type="number" min="0" step="1" value="0"><span></span>' +
    range("smoothing", "smoothing", 0.3, 0.01, 0) +
    label("blink", "blink") + '<input id="blink" type="checkbox" checked><span></span>' +
    (motion ? range("head_motion", "head motion", 2, 0.05, 1) + range("eye_motion", "eye motion", 2, 0.05, 1) : "") +
    '<h2>Region gains</h2><div id="gains" class="gains">' +
    REGIONS.map((region) => range(`gain-${region}`, region, 4, 0.05, 1, ` data-region="${region}"`)).join("") +
    "</div>");

  const emotion = () => $("emotion").value === "auto" ? "auto"
    : `${$("emotion").value}:${Number($("strength").value).toFixed(2)}`;

  function slider(id, onChange) {
    const input = $(id), out = $(`${id}-value`);
    input.addEventListener("input", () => { out.textContent = Number(input.value).toFixed(2); });
    input.addEventListener("change", onChange);
  }

  for (const region of REGIONS) {
    slider(`gain-${region}`, () => send({gain: {[region]: Number($(`gain-${region}`).value)}}));
  }
  $("emotion").addEventListener("change", () => send({emotion: emotion()}));
  slider("strength", () => { if ($("emotion").value !== "auto") send({emotion: emotion()}); });
  for (const id of SLIDERS.slice(1)) slider(id, () => send({[id]: Number($(id).value)}));
  $("level").addEventListener("change", () => { $("level-voice").checked = false; });
  $("level-voice").addEventListener("change", () =>
    send({level: $("level-voice").checked ? "voice" : Number($("level").value)}));
  $("person").addEventListener("change", () => send({person: Number($("person").value)}));
  $("blink").addEventListener("change", () => send({blink: $("blink").checked}));
  form.addEventListener("submit", (event) => event.preventDefault());

  function addEmotions(labels) {
    const known = new Set([...$("emotion").options].map((option) => option.value));
    for (const name of labels.filter((name) => !known.has(name))) $("emotion").add(new Option(name, name));
  }

  function show(state) {
    const [chosen, strength] = state.emotion.split(":");
    addEmotions(state.labels);
    const follows = state.level === "voice";
    const values = {emotion: chosen, strength: strength === undefined ? 1 : Number(strength),
                    level: follows ? undefined : state.level,
                    person: state.person, smoothing: state.smoothing,
                    ...(motion ? {head_motion: state.head_motion, eye_motion: state.eye_motion} : {}),
                    ...Object.fromEntries(REGIONS.map((region) => [`gain-${region}`, state.gain[region]]))};
    for (const [id, value] of Object.entries(values)) {
      if (value === undefined || document.activeElement === $(id)) continue;  // not under the user's hand
      $(id).value = value;
      if ($(`${id}-value`)) $(`${id}-value`).textContent = Number(value).toFixed(2);
    }
    $("person").max = state.persons - 1;
    if (document.activeElement !== $("blink")) $("blink").checked = state.blink;
    if (document.activeElement !== $("level-voice")) $("level-voice").checked = follows;
  }

  return Object.freeze({emotion, show});
}
