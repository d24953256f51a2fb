// The Firefox preferences every driver here launches with (firefox-viewer.mjs, firefox-tabs.mjs).

// What Firefox needs here on top of puppeteer's own defaults (which already point update,
// telemetry and safe-browsing URLs at a dummy host).
export const prefs = {
  // Host candidates on loopback, and as addresses (not mDNS names).
  'media.peerconnection.ice.loopback': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'permissions.default.camera': 1,
  'permissions.default.microphone': 1,
  // Decode H.264 with the system's libavcodec: stock Firefox would download OpenH264.
  'media.webrtc.hw.h264.enabled': true,
  'gfx.blacklist.webrtc.hw.acceleration.h264': 1,
  'media.gmp-manager.url': '',
  'media.gmp-gmpopenh264.autoupdate': false,
  'media.gmp-gmpopenh264.enabled': false,
  'media.autoplay.default': 0,
  // No background traffic: no captive-portal or connectivity probes, no prefetching, no
  // remote settings, no region look-up, no add-on or system updates.
  'network.captive-portal-service.enabled': false,
  'network.connectivity-service.enabled': false,
  'network.dns.disablePrefetch': true,
  'network.prefetch-next': false,
  'network.predictor.enabled': false,
  'browser.region.network.url': '',
  'browser.region.update.enabled': false,
  'services.settings.server': 'http://127.0.0.1:9/',
  'extensions.update.enabled': false,
  'extensions.getAddons.cache.enabled': false,
  'app.update.enabled': false,
  'app.normandy.enabled': false,
  'browser.newtabpage.enabled': false,
  'browser.startup.homepage': 'about:blank',
  'datareporting.policy.dataSubmissionEnabled': false,
  'toolkit.telemetry.enabled': false,
};
