/* emotalk-serve's live demo: the microphone, through an AudioWorklet (capture.js), in ~20 ms
   Float32 blocks to /v1/stream on this server; the frames that come back drive the face (face.js),
   and the live controls (controls.js) go along.
   The protocol is in docs/serving.md: hello, ready, binary PCM, {"type":"controls"}, {"type":"end"},
   frames, the final frame, close 1000. */
"use strict";
(() => {
  const BLOCK_S = 0.02;
  const WINDOW_MS = 3000;  // latency statistics and the playout delay follow the last 3 s
  const INSECURE = "This browser allows the microphone only on https:// pages or on this machine " +
    "(http://localhost, http://127.0.0.1). Start emotalk-serve with --tls-cert FILE --tls-key FILE and open " +
    "https://HOST:PORT/ (docs/serving.md shows how to make a certificate), or open the page on the server's machine.";
  const $ = (id) => document.getElementById(id);
  const drawFace = emotalkFace($("face"));
  const token = new URLSearchParams(location.search).get("token");
  const tokenQuery = token ? `?token=${encodeURIComponent(token)}` : "";

  // ---- what the page shows ----
  let state = "idle", frames = 0, latest = null, drawn = null;
  const arrivals = [];  // arrival times (ms) over the last second: the measured rate
  const lags = [];      // per frame: [arrival, ms since its audio block was sent, ms since its sound was heard]
  const queue = [];     // frames waiting for their audio time: {frame, at}

  function show(name, pill, text, error = false) {
    state = name;
    $("state").textContent = name;
    $("state").className = `pill ${pill}`;
    $("message").textContent = text;
    $("message").className = error ? "error" : "";
  }

  // ---- controls (controls.js): the ones the user chose go in the hello, the others are the server's
  // defaults (a calm face), which "ready" reports; each change goes as {"type":"controls"} while live ----
  const controls = emotalkControls($("controls"), sendControls, {motion: true});
  const chosen = {};

  function sendControls(changes) {
    Object.assign(chosen, changes, changes.gain ? {gain: {...chosen.gain, ...changes.gain}} : {});
    $("emotion-set").textContent = controls.emotion();
    if (session && session.ready && !session.ended) session.socket.send(JSON.stringify({type: "controls", ...changes}));
  }

  // ---- a session: microphone -> worklet -> socket; frames -> queue ----
  let session = null;

  async function start() {
    if (!window.isSecureContext || !navigator.mediaDevices) { show("no microphone", "off", INSECURE, true); return; }
    const context = new AudioContext({latencyHint: "interactive"});  // made in the click, so allowed to play
    const s = session = {context, mic: null, source: null, socket: null, ready: null, ended: false,
                         closing: false, blocks: [], samples: 0};
    frames = 0; latest = null; arrivals.length = 0; lags.length = 0; queue.length = 0;
    $("start").disabled = true; $("stop").disabled = false;
    $("emotion-set").textContent = controls.emotion();
    show("starting", "wait", "Asking for the microphone…");
    let problem = null;
    try {
      s.mic = await navigator.mediaDevices.getUserMedia(
        {audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
      await context.audioWorklet.addModule("/capture.js");
      await context.resume();
    } catch (error) {
      problem = error;
    }
    if (s.ended) { finish(s, "idle", "Stopped."); return; }  // Stop was pressed meanwhile
    if (problem) { finish(s, "no microphone", microphoneProblem(problem), true); return; }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    s.socket = new WebSocket(`${scheme}//${location.host}/v1/stream${tokenQuery}`);
    s.socket.onopen = () => s.socket.send(JSON.stringify({type: "hello", sample_rate: context.sampleRate,
      format: "f32le", channels: 1, frames: "json", controls: chosen}));
    s.socket.onmessage = (event) => receive(s, JSON.parse(event.data));
    s.socket.onclose = (event) => closed(s, event);
    show("connecting", "wait", "Connecting…");
  }

  function microphoneProblem(error) {
    if (error.name === "NotAllowedError" || error.name === "SecurityError") {
      return "Microphone access was refused. Allow it for this site (the icon at the left of the address bar), " +
             "then press Start again.";
    }
    if (error.name === "NotFoundError" || error.name === "OverconstrainedError") {
      return "No microphone found: connect one, then press Start again.";
    }
    if (error.name === "NotReadableError") return "The microphone cannot be opened: another program may hold it.";
    return `Audio capture failed: ${error.name}: ${error.message}`;
  }

  function receive(s, message) {
    if (message.type === "ready") {
      s.ready = message;
      controls.show(message.controls);  // what the server chose for the controls left to it
      $("emotion-set").textContent = message.controls.emotion;
      $("fps-stream").textContent = `(stream ${message.fps})`;
      capture(s);
      show("live", "on", "Live: speak, and the face follows. Stop ends the session.");
    } else if (message.type === "frame") {
      arrived(s, message);
    } else if (message.type === "error") {
      $("message").textContent = `Control refused: ${message.reason}`;
      $("message").className = "error";
    }
  }

  function capture(s) {
    const blockSamples = Math.round(s.context.sampleRate * BLOCK_S);
    const node = new AudioWorkletNode(s.context, "emotalk-capture", {numberOfInputs: 1, numberOfOutputs: 0,
      channelCount: 1, channelCountMode: "explicit", processorOptions: {blockSamples}});
    node.port.onmessage = (event) => {
      if (s.ended || s.socket.readyState !== WebSocket.OPEN) return;
      s.socket.send(event.data.buffer);  // f32le: typed arrays are little-endian on every browser's platform
      s.samples += event.data.length;
      s.blocks.push({end: s.samples / s.context.sampleRate, sentAt: performance.now()});
    };
    s.source = s.context.createMediaStreamSource(s.mic);
    s.source.connect(node);
  }

  // Frame `frame` shows the audio at `time` s from the session's first sample: the block that held
  // that sample tells when it was sent (the latency) and when it was heard. Each frame is drawn at
  // its sound's time plus the largest recent lag, so the face keeps the voice's pace even when
  // frames arrive in bursts; the final frame (past the audio) comes straight after the others.
  function arrived(s, frame) {
    const now = performance.now();
    frames += 1; latest = frame; arrivals.push(now);
    while (s.blocks.length && s.blocks[0].end <= frame.time) s.blocks.shift();
    const block = s.blocks[0];
    let at = now;
    if (block && !frame.final) {
      const heard = block.sentAt - (block.end - frame.time) * 1000;
      lags.push([now, now - block.sentAt, now - heard]);
      forget(now);
      at = heard + Math.max(...lags.map((lag) => lag[2]));
    }
    queue.push({frame, at});
  }

  function stop() {
    const s = session;
    if (!s || s.ended) return;
    s.ended = true;
    $("stop").disabled = true;
    release(s);
    if (s.ready && s.socket.readyState === WebSocket.OPEN) {
      s.socket.send(JSON.stringify({type: "end"}));
      show("stopping", "wait", "Finishing: the last frames are coming…");
    } else if (s.socket) {
      s.socket.close();
    }
  }

  async function closed(s, event) {
    if (s.ended && event.code === 1000) {
      finish(s, "ended", "Stopped: every frame arrived, and the final one shows the face at rest.");
    } else if (s.ended && !s.ready) {
      finish(s, "idle", "Stopped.");
    } else if (!s.ready && event.code === 1006) {
      finish(s, "refused", await refusal(), true);  // the handshake failed: browsers do not say why
    } else if (event.code === 1013) {
      finish(s, "server full", `The server is full: ${event.reason}`, true);
    } else if (event.code === 1006) {
      finish(s, "lost", "Connection lost: the server stopped or the network dropped. Press Start to try again.", true);
    } else {
      finish(s, "closed", `The server closed the session (${event.code}): ${event.reason || "no reason given"}`, true);
    }
  }

  // Why the server refused the WebSocket handshake: /stats answers with the same token check.
  async function refusal() {
    try {
      const response = await fetch(`/stats${tokenQuery}`, {cache: "no-store"});
      if (response.status === 401) {
        return `The server refused the connection (${(await response.text()).trim()}): open this page as ` +
               `${location.origin}/?token=TOKEN, with the token emotalk-serve was started with.`;
      }
      return "The server refused the connection: it is busy or shutting down. Try again in a moment.";
    } catch {
      return "The server cannot be reached: is emotalk-serve running?";
    }
  }

  function finish(s, name, text, error = false) {
    release(s);
    if (session !== s) return;
    session = null;
    $("start").disabled = false; $("stop").disabled = true;
    show(name, error ? "off" : "rest", text, error);
  }

  // Again after a Stop pressed while the microphone was being opened: that stops its tracks too.
  function release(s) {
    if (s.source) s.source.disconnect();
    if (s.mic) for (const track of s.mic.getTracks()) track.stop();
    if (!s.closing) { s.closing = true; s.context.close(); }
  }

  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);

  // ---- drawing: once per display refresh, the newest frame whose time has come ----
  const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

  function forget(now) {
    while (arrivals.length && arrivals[0] < now - 1000) arrivals.shift();
    while (lags.length && lags[0][0] < now - WINDOW_MS) lags.shift();
  }

  function showStatus(now) {
    forget(now);
    $("fps").textContent = arrivals.length ? String(arrivals.length) : "–";
    const sorted = lags.map((lag) => lag[1]).sort((a, b) => a - b);
    $("latency").textContent = sorted.length ? percentile(sorted, 0.5).toFixed(0) : "–";
    $("latency-p95").textContent = sorted.length ? `(p95 ${percentile(sorted, 0.95).toFixed(0)})` : "";
    if (drawn) {
      $("frame").textContent = drawn.final ? `${drawn.frame} (end)` : String(drawn.frame);
      $("emotion-heard").textContent = drawn.emotion || "–";
    }
  }

  function render(now) {
    let next = null;
    while (queue.length && queue[0].at <= now) next = queue.shift().frame;
    if (next) { drawFace(next.weights); drawn = next; }
    showStatus(now);
    requestAnimationFrame(render);
  }

  // Read-only view for tests and curious developers.
  Object.defineProperty(window, "emotalkDemo", {value: Object.freeze({
    get state() { return state; },
    get frames() { return frames; },
    get last() { return latest; },
    get drawn() { return drawn; },
  })});

  drawFace({});
  if (!window.isSecureContext) show("no microphone", "off", INSECURE, true);
  requestAnimationFrame(render);
})();
