// Test media whose timing a viewer can read back from what it presents and plays
// (tests/lip_sync.rs, benches/glass_to_glass.rs). A 320x180 canvas, captured at 30 fps
// (small: two browsers encode and decode it twice on a 2-core machine):
// - the top two thirds carry the sender's clock (performance.timeOrigin + now(), in ms) in
//   32 black/white blocks of 40x30 px: 24 bits of time and an 8-bit check, big enough that
//   H.264 at any sane bitrate keeps each block clearly black or white;
// - the bottom third flashes white for FLASH_MS at the start of every second, and on the
//   same tick a 1 kHz tone (WebAudio oscillator → MediaStreamDestination) sounds as long.
// The clock changes every frame, so frames flow at the full rate between flashes.
// window.avSource.start() returns the MediaStream (one video and one audio track).
window.avSource = (() => {
  const W = 320, H = 180, COLS = 8, ROWS = 4, BLOCK_W = 40, BLOCK_H = 30, FLASH_MS = 100;
  const clock = () => performance.timeOrigin + performance.now();

  // 24 bits of the ms clock, then a check byte; the reader drops frames whose check fails
  // (a frame caught between two encodings of blocks).
  function bits(ms) {
    const v = Math.floor(ms) % 0x1000000;
    const check = (((v & 0xff) + ((v >> 8) & 0xff) + ((v >> 16) & 0xff)) & 0xff) ^ 0xa5;
    const word = v * 256 + check;
    const out = [];
    for (let i = 31; i >= 0; i--) out.push(Math.floor(word / 2 ** i) % 2);
    return out;
  }

  function start() {
    const canvas = document.createElement('canvas');
    canvas.width = W; canvas.height = H;
    const g = canvas.getContext('2d');
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    tone.frequency.value = 1000;
    const gain = audio.createGain();
    gain.gain.value = 0;
    const out = audio.createMediaStreamDestination();
    tone.connect(gain).connect(out);
    tone.start();
    const flashes = [];
    let second = Math.floor(clock() / 1000);
    const paint = () => {
      const now = clock();
      const s = Math.floor(now / 1000);
      if (s !== second) {
        // Video and audio on the same tick: the frame painted now and the tone from the
        // next render quantum.
        second = s;
        gain.gain.setValueAtTime(0.5, audio.currentTime);
        gain.gain.setValueAtTime(0, audio.currentTime + FLASH_MS / 1000);
        flashes.push(now);
      }
      const flash = now - s * 1000 < FLASH_MS;
      g.fillStyle = flash ? '#fff' : '#000';
      g.fillRect(0, BLOCK_H * ROWS, W, H - BLOCK_H * ROWS);
      bits(now).forEach((b, i) => {
        g.fillStyle = b ? '#fff' : '#000';
        g.fillRect((i % COLS) * BLOCK_W, Math.floor(i / COLS) * BLOCK_H, BLOCK_W, BLOCK_H);
      });
    };
    paint();
    // A timer, not requestAnimationFrame: headless windows may not animate.
    setInterval(paint, 5);
    const stream = canvas.captureStream(30);
    for (const t of out.stream.getAudioTracks()) stream.addTrack(t);
    return { stream, flashes, audio };
  }

  // Waits until ICE gathering is complete (loopback: at once), at most a second.
  const gathered = (pc) => new Promise((resolve) => {
    if (pc.iceGatheringState === 'complete') return resolve();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') resolve();
    });
    setTimeout(resolve, 1000);
  });

  // Publishes `stream` over WHIP to `url`; resolves to the peer connection once answered.
  async function whip(url, stream) {
    const pc = new RTCPeerConnection();
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const res = await fetch(url, {
      method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp,
    });
    const text = await res.text();
    if (res.status !== 201) throw new Error(`WHIP refused ${res.status}: ${text}`);
    await pc.setRemoteDescription({ type: 'answer', sdp: text });
    return pc;
  }

  // The floor: `stream` sent straight from one peer connection to another in this page, with
  // video limited to `codec` (e.g. 'video/H264', as whipcast negotiated), played by a muted
  // <video>. Resolves to { video, stream } of the receiving side.
  async function direct(stream, codec) {
    const a = new RTCPeerConnection(), b = new RTCPeerConnection();
    a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
    b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
    const received = new Promise((resolve) => {
      b.ontrack = (e) => { if (e.streams[0].getTracks().length === 2) resolve(e.streams[0]); };
    });
    for (const t of stream.getTracks()) {
      const tr = a.addTransceiver(t, { direction: 'sendonly', streams: [stream] });
      if (t.kind === 'video' && codec) {
        const all = RTCRtpSender.getCapabilities('video').codecs;
        tr.setCodecPreferences([...all.filter((c) => c.mimeType === codec), ...all.filter((c) => c.mimeType !== codec)]);
      }
    }
    await a.setLocalDescription();
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription();
    await a.setRemoteDescription(b.localDescription);
    const remote = await received;
    const video = document.createElement('video');
    Object.assign(video, { muted: true, autoplay: true, playsInline: true, srcObject: remote });
    document.body.append(video);
    await video.play();
    window.avDirect = { a, b };
    return { video, stream: remote };
  }

  return { start, whip, direct };
})();
