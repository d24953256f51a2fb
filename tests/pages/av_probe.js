// Reads back the timing of av_source.js's media where a viewer sees and hears it.
// window.avProbe.watch(video, stream) records, until read:
// - for every frame the <video> presents (requestVideoFrameCallback): when it is expected on
//   screen (performance.timeOrigin + expectedDisplayTime), the sender's clock decoded from its
//   blocks (null when the check byte fails) and whether its flash region is lit;
// - for every tone onset in the stream's audio (an AudioWorklet on the received track; the
//   first sample above a threshold after 300 ms of quiet): when it reaches the output
//   (AudioContext.getOutputTimestamp maps the context's clock to the page's).
// Chromium only feeds a remote WebRTC track to WebAudio while the stream is also attached to
// a media element (muted is fine): `video` must play `stream`.
window.avProbe = (() => {
  const ONSET = `registerProcessor('onset', class extends AudioWorkletProcessor {
    constructor() { super(); this.quiet = 0; }
    process(inputs) {
      const ch = inputs[0] && inputs[0][0];
      if (!ch) return true;
      for (let i = 0; i < ch.length; i++) {
        if (Math.abs(ch[i]) > 0.1) {
          if (this.quiet > sampleRate * 0.3) this.port.postMessage(currentTime + i / sampleRate);
          this.quiet = 0;
        } else {
          this.quiet++;
        }
      }
      return true;
    }
  });`;
  let context = null;

  async function audioContext() {
    if (context) return context;
    context = new AudioContext();
    const url = URL.createObjectURL(new Blob([ONSET], { type: 'application/javascript' }));
    await context.audioWorklet.addModule(url);
    await context.resume();
    return context;
  }

  // The sender's clock in a frame drawn into `g` (160x90), or null.
  function decode(d) {
    const { COLS, ROWS } = { COLS: 8, ROWS: 4 };
    let word = 0;
    for (let i = 0; i < COLS * ROWS; i++) {
      const x = (i % COLS) * 20 + 10, y = Math.floor(i / COLS) * 15 + 7;
      let sum = 0;
      for (let dy = -2; dy <= 2; dy++) {
        for (let dx = -2; dx <= 2; dx++) sum += d[((y + dy) * 160 + x + dx) * 4 + 1];
      }
      word = word * 2 + (sum / 25 > 128 ? 1 : 0);
    }
    const v = Math.floor(word / 256), check = word % 256;
    const expect = (((v & 0xff) + ((v >> 8) & 0xff) + ((v >> 16) & 0xff)) & 0xff) ^ 0xa5;
    return check === expect ? v : null;
  }

  // Mean green level of the flash region (the bottom third).
  function flashLevel(d) {
    let sum = 0, n = 0;
    for (let y = 66; y < 88; y += 2) {
      for (let x = 4; x < 156; x += 4) { sum += d[(y * 160 + x) * 4 + 1]; n++; }
    }
    return sum / n;
  }

  async function watch(video, stream) {
    const rec = { frames: [], onsets: [] };
    const canvas = document.createElement('canvas');
    canvas.width = 160; canvas.height = 90;
    const g = canvas.getContext('2d', { willReadFrequently: true });
    const onFrame = (_, meta) => {
      g.drawImage(video, 0, 0, 160, 90);
      const d = g.getImageData(0, 0, 160, 90).data;
      const at = performance.timeOrigin + meta.expectedDisplayTime;
      const sent = decode(d);
      // The sender's clock is 24 bits of ms: its age is the difference modulo 2^24.
      const age = sent === null ? null : ((at - sent) % 0x1000000 + 0x1000000) % 0x1000000;
      rec.frames.push([at, age, flashLevel(d) > 128]);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    const ctx = await audioContext();
    const source = ctx.createMediaStreamSource(stream);
    const onset = new AudioWorkletNode(ctx, 'onset');
    const sink = ctx.createGain();
    sink.gain.value = 0;
    source.connect(onset).connect(sink).connect(ctx.destination);
    onset.port.onmessage = (e) => {
      const ts = ctx.getOutputTimestamp();
      rec.onsets.push(performance.timeOrigin + ts.performanceTime + (e.data - ts.contextTime) * 1000);
    };
    rec.node = onset;
    return rec;
  }

  return { watch };
})();
