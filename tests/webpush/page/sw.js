// Service worker for tests/webpush/driver.py: reports every push event (the
// text Firefox decrypted, or that there was no data) to the page server.
'use strict';

self.addEventListener('install', (event) => event.waitUntil(self.skipWaiting()));
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  const report = { hasData: event.data !== null, text: null };
  if (event.data !== null) {
    try {
      report.text = event.data.text();
    } catch (e) {
      report.error = String(e);
    }
  }
  event.waitUntil(fetch('/push', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(report),
  }));
});

self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil(fetch('/log', { method: 'POST', body: 'sw: pushsubscriptionchange' }));
});
