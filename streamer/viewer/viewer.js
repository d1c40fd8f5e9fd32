/* The stream viewer (index.html): frames from ws://<this host>/ws drive the drawn face (face.js) or a
   VRM avatar (avatar.js, loaded only for one); the 52 weights as bars; every live control (controls.js); and, for
   a --wav source, its audio played in sync with the face. docs/viewer.md describes it all.

   ?token=T   passed on to the socket, the model and the audio, for a stream started with --token
   ?mode=obs  the face or the avatar alone on a transparent background, for OBS browser sources */
const RECONNECT_MAX_MS = 2000;
const LIVE_DELAY_S = 0.25;  // live audio plays this far behind the newest frame, so its frames are here in time
const RESYNC_S = 0.3;       // live audio that strays further than this from that point restarts there
const LIVE_RATE_MAX = 1.5;  // frames coming faster than this many seconds a second are a file sent at full speed
const KEEP_S = 15 * 60;     // frames kept for the audio, as long as the longest audio the server offers
const START_AHEAD_S = 0.05; // audio is scheduled this far ahead, so that its start time is known exactly
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");
const withToken = (path) => path + (token ? `?token=${encodeURIComponent(token)}` : "");
const obs = params.get("mode") === "obs";
if (obs) document.documentElement.classList.add("obs");

// ---- frames: every one kept (KEEP_S), so that the audio can be matched to them ----
let names = null;         // the weights' names, from the first frame: the server's order rules
let latest = null;        // the newest frame: {frame, time, fps, emotion, final, values, at}
let latestMessage = null; // ... as it came
let frames = 0, drawn = null;
const kept = [];          // frames in time order
const arrivals = [];      // the newest second's frames, for the rates

function receive(message) {
  names = names || Object.keys(message.weights);
  const entry = {frame: message.frame, time: message.time, fps: message.fps, emotion: message.emotion,
                 final: message.final, values: Float32Array.from(names, (name) => message.weights[name] || 0),
                 head: message.head || null, eyes: message.eyes || null, at: performance.now()};
  if (latest && entry.frame <= latest.frame) kept.length = 0;  // a new stream
  kept.push(entry);
  while (kept[0].time < entry.time - KEEP_S) kept.shift();
  latest = entry; latestMessage = message; frames += 1;
  arrivals.push(entry);
  forget(entry.at);
}

function forget(now) {  // arrivals more than a second old
  while (arrivals.length && arrivals[0].at < now - 1000) arrivals.shift();
}

function weightsOf(entry) {
  const weights = {};
  names.forEach((name, i) => { weights[name] = entry.values[i]; });
  return weights;
}

function frameAt(time) {  // the last frame at or before `time`, else the first
  let low = 0, high = kept.length - 1;
  while (low < high) {
    const mid = (low + high + 1) >> 1;
    if (kept[mid].time <= time + 1e-6) low = mid; else high = mid - 1;
  }
  return kept[low] || null;
}

function streamRate() {  // seconds of audio that arrive per second now
  if (arrivals.length < 2) return 1;
  const first = arrivals[0], last = arrivals[arrivals.length - 1];
  return last.at > first.at ? (last.time - first.time) / ((last.at - first.at) / 1000) : Infinity;
}

const live = () => latest !== null && !latest.final && performance.now() - latest.at < 1000;

// ---- the connection: frames, control replies in the order sent, and the controls in effect ----
let socket = null, connected = false, retryMs = 250, controls = null;
const sentControls = [];

function connect() {
  const query = new URLSearchParams({controls: "1", ...(token ? {token} : {})});
  socket = new WebSocket(`ws://${location.host}/ws?${query}`);
  socket.onopen = () => {
    connected = true; retryMs = 250; showConnection();
    audio.stop(); audio.clip = null;  // the stream may be another one, with other audio
    configure().catch((error) => { $("audio-state").textContent = `viewer.json: ${error.message}`; });
  };
  socket.onclose = () => {
    connected = false; sentControls.length = 0; showConnection();
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, RECONNECT_MAX_MS);
  };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if ("frame" in message) receive(message);
    else if ("controls" in message) showControls(message.controls);
    else showReply(sentControls.shift() || "", message);
  };
}

function showConnection() {
  const pill = $("connection");
  pill.textContent = connected ? "connected" : "disconnected";
  pill.className = "pill " + (connected ? "on" : "off");
}

// ---- controls: each change goes to the stream; the server's state comes back (?controls=1) ----
function sendControl(change) {
  const text = JSON.stringify(change);
  if (!connected) { showReply(text, {error: "not connected"}); return; }
  sentControls.push(text);
  socket.send(text);
}

function showReply(sent, reply) {
  const line = $("reply");
  line.className = reply.ok ? "ok" : "error";
  line.textContent = `${sent} → ` + (reply.ok ? "ok" : `error: ${reply.error}`);
}

const form = emotalkControls($("controls"), sendControl, {motion: true});  // controls.js

function showControls(state) {
  controls = state;
  form.show(state);
}

function showEmotion() {  // the emotion in effect: the one set, or the voice's when it is auto
  const setting = controls && controls.emotion !== "auto" ? controls.emotion : null;
  const heard = drawn ? drawn.emotion : null;
  $("emotion-now").textContent = setting ? setting.replace(":", " ") : heard || "–";
  $("emotion-source").textContent = setting ? "(set)" : heard ? "(heard)" : "";
}

// ---- the weights as bars, built from the first frame's names ----
const REGION_COLOURS = [["brow", "#e8c35a"], ["eye", "#5fb3ff"], ["cheek", "#e98bb5"], ["nose", "#e98bb5"],
                        ["jaw", "#f29b4b"], ["mouth", "#ef6a5e"], ["tongue", "#b58cf2"]];
const bars = new Map();  // name -> {fill, value, shown}

function updateBars(weights) {
  if (obs) return;
  if (bars.size === 0) {
    for (const name of names) {
      const row = document.createElement("div");
      row.className = "bar";
      row.title = name;
      row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span>' +
                      '<span class="value"></span>';
      row.querySelector(".name").textContent = name;
      const fill = row.querySelector(".fill");
      fill.style.background = (REGION_COLOURS.find(([prefix]) => name.startsWith(prefix)) || ["", "#9aa"])[1];
      $("bars").appendChild(row);
      bars.set(name, {fill, value: row.querySelector(".value"), shown: null});
    }
  }
  for (const [name, bar] of bars) {
    const v = Math.min(Math.max(weights[name] || 0, 0), 1);
    if (v === bar.shown) continue;
    bar.shown = v;
    bar.fill.style.transform = `scaleX(${v})`;
    bar.value.textContent = v.toFixed(3);
  }
}

// ---- the audio of a --wav source, played on the Web Audio clock ----
// The face shows the frame whose time is the audio's position at the speaker now; live, that
// position is kept LIVE_DELAY_S behind the newest frame. Browsers let a page play sound only
// after a click (OBS's browser source does not ask).
const audio = {
  url: null, context: null, clip: null, source: null, offset: 0, startedAt: 0, state: "none",

  set(state) {
    this.state = state;
    $("audio-state").textContent = "";
    $("play").hidden = state === "none";
    $("play").textContent = {loading: "… loading audio", playing: "■ stop audio"}[state] || "▶ play audio";
    $("play").disabled = state === "loading";
  },

  async play() {
    this.context = this.context || new AudioContext();
    await this.context.resume();  // allowed within a click
    if (this.context.state !== "running") return;
    if (!this.clip) {
      this.set("loading");
      try {
        const response = await fetch(withToken(this.url));
        if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
        this.clip = await this.context.decodeAudioData(await response.arrayBuffer());
      } catch (error) {
        this.set("ready");
        $("audio-state").textContent = `no audio: ${error.message}`;
        return;
      }
    }
    this.start(live() ? latest.time - LIVE_DELAY_S : (kept[0] ? kept[0].time : 0));
  },

  start(offset) {
    this.stop();
    const source = this.context.createBufferSource();
    source.buffer = this.clip;
    source.connect(this.context.destination);
    this.offset = Math.min(Math.max(offset, 0), this.clip.duration);
    this.startedAt = this.context.currentTime + START_AHEAD_S;
    source.start(this.startedAt, this.offset);
    source.onended = () => { if (this.source === source) { this.source = null; this.set("ready"); } };
    this.source = source;
    this.set("playing");
  },

  stop() {
    if (this.source) { const source = this.source; this.source = null; source.stop(); }
    if (this.state === "playing") this.set("ready");
  },

  position() {  // seconds into the clip of what the speaker plays now
    const stamp = this.context.getOutputTimestamp();
    const now = stamp.contextTime > 0 ? stamp.contextTime + (performance.now() - stamp.performanceTime) / 1000
      : this.context.currentTime - this.context.baseLatency - (this.context.outputLatency || 0);
    return this.offset + Math.max(0, now - this.startedAt);
  },

  follow() {  // live: keep the audio LIVE_DELAY_S behind the newest frame
    if (this.state !== "playing" || !live() || streamRate() > LIVE_RATE_MAX) return;
    const target = latest.time - LIVE_DELAY_S;
    if (Math.abs(this.position() - target) > RESYNC_S) this.start(target);
  },
};
$("play").addEventListener("click", () => audio.state === "playing" ? audio.stop() : audio.play());

// ---- the face: drawn (face.js), or a VRM avatar (avatar.js) from --avatar or dropped on the page ----
const drawFace = emotalkFace($("face"));
let avatar = null;

async function showAvatar(load, name) {
  $("avatar-state").textContent = `loading ${name} …`;
  $("avatar-state").className = "";
  try {
    const [{createAvatar}, data] = await Promise.all([import("./avatar.js"), load()]);
    $("avatar").hidden = false;
    const next = await createAvatar($("avatar"), data);
    if (avatar) avatar.dispose();
    avatar = next;
    $("face").hidden = true;
    $("avatar-off").hidden = false;
    drawn = null;  // draw the current frame on it
    const {format, mode, driven} = avatar.info;
    $("avatar-state").textContent = `${name}: ${format}, ${mode}, ${driven.length} expressions driven`;
  } catch (error) {
    $("avatar").hidden = avatar === null;
    $("avatar-state").textContent = `${name} cannot be shown: ${error.message}`;
    $("avatar-state").className = "error";
  }
}

function showDrawnFace() {
  if (avatar) avatar.dispose();
  avatar = null; drawn = null;
  $("avatar").hidden = true; $("face").hidden = false; $("avatar-off").hidden = true;
  $("avatar-state").textContent = "Drop a .vrm model here to see it speak.";
}

const showFile = (file) => showAvatar(() => file.arrayBuffer(), file.name);
$("avatar-file").addEventListener("change", () => { if ($("avatar-file").files[0]) showFile($("avatar-file").files[0]); });
$("avatar-off").addEventListener("click", showDrawnFace);
document.addEventListener("dragover", (event) => { event.preventDefault(); $("stage").classList.add("dropping"); });
document.addEventListener("dragleave", () => $("stage").classList.remove("dropping"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  $("stage").classList.remove("dropping");
  if (event.dataTransfer.files[0]) showFile(event.dataTransfer.files[0]);
});

let avatarAsked = false;
async function configure() {  // on each connection, what the server offers: audio (--wav), a model (--avatar)
  const config = await (await fetch("viewer.json")).json();
  audio.url = config.audio;
  audio.set(config.audio ? "ready" : "none");
  if (obs && config.audio) audio.play();  // OBS plays sound without a click; a browser waits for one
  if (config.avatar && !avatarAsked) {  // once: a model shown stays through reconnections
    avatarAsked = true;
    await showAvatar(async () => {
      const response = await fetch(withToken(config.avatar));
      if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
      return response.arrayBuffer();
    }, "--avatar");
  }
}

// ---- the render loop: once per display refresh, the frame for the audio's position, or the newest ----
function showStatus(now) {
  forget(now);
  $("fps").textContent = arrivals.length ? String(arrivals.length) : "–";
  showEmotion();
  if (!drawn) return;
  $("frame").textContent = drawn.final ? `${drawn.frame} (end)` : String(drawn.frame);
  $("time").textContent = drawn.time.toFixed(2);
  $("fps-stream").textContent = `(stream ${drawn.fps})`;
  if (audio.state === "playing") {
    $("audio-state").textContent = `audio ${audio.position().toFixed(2)} s` +
      (live() ? `, ${(latest.time - audio.position()).toFixed(2)} s behind the stream` : "");
  }
}

let last = performance.now();
function render(now) {
  audio.follow();
  const entry = audio.state === "playing" ? frameAt(audio.position()) : latest;
  if (entry && entry !== drawn) {
    const weights = weightsOf(entry);
    if (avatar) avatar.apply(weights, entry.head, entry.eyes); else drawFace(weights);
    updateBars(weights);
    drawn = entry;
  }
  if (avatar) avatar.render(Math.min((now - last) / 1000, 0.1));
  last = now;
  showStatus(now);
  requestAnimationFrame(render);
}

// Read-only view for tests and curious developers.
Object.defineProperty(window, "emotalkViewer", {value: Object.freeze({
  get frames() { return frames; },
  get last() { return latestMessage; },
  get drawn() { return drawn ? drawn.frame : -1; },
  get shown() { return drawn ? {frame: drawn.frame, time: drawn.time} : null; },
  get connected() { return connected; },
  get controls() { return controls; },
  get audio() { return {state: audio.state, position: audio.state === "playing" ? audio.position() : null}; },
  get avatar() { return avatar ? {...avatar.info, values: avatar.values(), ...avatar.pose()} : null; },
})});

drawFace({});
connect();
requestAnimationFrame(render);
