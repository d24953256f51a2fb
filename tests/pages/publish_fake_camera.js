// WebDriver async script (tests/common/chromium.rs): publishes the page's fake camera
// (arguments[1]: its constraints; arguments[2]: the one video codec to offer, or null;
// arguments[3]: its scalability mode, e.g. 'L3T3_KEY', or null) and microphone over WHIP to
// arguments[0].
const [url, video, codec, scalabilityMode] = arguments;
const done = arguments[arguments.length - 1];
(async () => {
  const media = await navigator.mediaDevices.getUserMedia({ video, audio: true });
  const pc = new RTCPeerConnection();
  for (const t of media.getTracks()) {
    const layered = t.kind === 'video' && scalabilityMode;
    const sendEncodings = layered ? [{ scalabilityMode }] : undefined;
    const tr = pc.addTransceiver(t, { direction: 'sendonly', sendEncodings });
    if (t.kind !== 'video' || !codec) continue;
    const all = RTCRtpSender.getCapabilities('video').codecs;
    const only = all.filter((c) => c.mimeType === codec || c.mimeType === 'video/rtx');
    if (!only.some((c) => c.mimeType === codec)) return done('this Chromium cannot send ' + codec);
    tr.setCodecPreferences(only);
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
