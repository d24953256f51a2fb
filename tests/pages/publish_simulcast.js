// WebDriver async script (tests/common/chromium.rs): publishes the page's fake camera
// (1280x720, three simulcast layers) and microphone over WHIP to arguments[0].
const [url, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
  const video = { width: 1280, height: 720, frameRate: 30 };
  const media = await navigator.mediaDevices.getUserMedia({ video, audio: true });
  const pc = new RTCPeerConnection();
  for (const t of media.getTracks()) {
    const sendEncodings = t.kind === 'video' ? [
      { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 250000 },
      { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 800000 },
      { rid: 'f', maxBitrate: 2500000 },
    ] : undefined;
    pc.addTransceiver(t, { direction: 'sendonly', sendEncodings });
  }
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => setTimeout(r, 500));
  const res = await fetch(url, { method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: pc.localDescription.sdp });
  const text = await res.text();
  if (res.status !== 201) return done('refused ' + res.status + ': ' + text);
  window.publisher = { pc, location: res.headers.get('Location') };
  await pc.setRemoteDescription({ type: 'answer', sdp: text });
  done('ok');
})().catch(e => done('error ' + e));
