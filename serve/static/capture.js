/* The demo's AudioWorklet: the microphone's samples (mixed down to mono by the node) in blocks of
   `processorOptions.blockSamples`, each posted to the page as a Float32Array. The audio thread
   hands out 128 samples at a time; ~20 ms blocks keep the messages few and the latency low. */
"use strict";

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.size = options.processorOptions.blockSamples;
    this.block = new Float32Array(this.size);
    this.filled = 0;
  }

  process(inputs) {
    const samples = inputs[0][0];  // absent while the input is not connected
    for (let i = 0; samples && i < samples.length;) {
      const n = Math.min(samples.length - i, this.size - this.filled);
      this.block.set(samples.subarray(i, i + n), this.filled);
      this.filled += n; i += n;
      if (this.filled === this.size) {
        this.port.postMessage(this.block, [this.block.buffer]);  // transferred: no copy
        this.block = new Float32Array(this.size);
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("emotalk-capture", CaptureProcessor);
