// The Firefox side of tests/webpush/driver.py. Everything it learns goes back
// to the driver's page server with fetch(); the driver owns all deadlines, the
// page only bounds its own waits so that a hang is reported, not silent.
'use strict';

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

async function log(message) {
  document.getElementById('log').textContent += message + '\n';
  try {
    await fetch('/log', { method: 'POST', body: 'page: ' + message });
  } catch (e) { /* the driver may be gone */ }
}

async function post(path, value) {
  const r = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(value),
  });
  if (!r.ok) throw new Error(`POST ${path}: ${r.status}`);
}

function b64urlToBytes(text) {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function withTimeout(promise, ms, what) {
  return Promise.race([
    promise,
    sleep(ms).then(() => { throw new Error(`${what} did not settle within ${ms} ms`); }),
  ]);
}

async function main() {
  const config = await (await fetch('/config')).json();
  const registration = await navigator.serviceWorker.register('/sw.js', { scope: '/' });
  await withTimeout(navigator.serviceWorker.ready, 20000, 'serviceWorker.ready');
  await log('service worker ready');

  // Firefox starts its push client a few seconds after launch, and a
  // subscribe() made before it is connected hangs: the driver says "go" once
  // Herald has seen Firefox's hello.
  while ((await fetch('/go')).status !== 200) {
    await sleep(200);
  }
  await log('go: subscribing');

  let subscription = null;
  for (let attempt = 1; subscription === null; attempt++) {
    try {
      subscription = await withTimeout(registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: b64urlToBytes(config.applicationServerKey),
      }), 15000, 'pushManager.subscribe()');
    } catch (e) {
      await log(`subscribe attempt ${attempt} failed: ${e}`);
      if (attempt >= 4) {
        await post('/subscription', { error: String(e) });
        return;
      }
      await sleep(1000);
    }
  }
  await post('/subscription', subscription.toJSON());
  await log('subscribed: ' + subscription.endpoint);

  for (;;) {
    const command = await (await fetch('/command')).json();
    if (command.cmd === 'unsubscribe') {
      try {
        const current = await registration.pushManager.getSubscription();
        const ok = await withTimeout(current.unsubscribe(), 15000, 'unsubscribe()');
        const after = await registration.pushManager.getSubscription();
        await post('/result', { cmd: 'unsubscribe', ok, subscriptionAfter: after === null ? null : after.endpoint });
      } catch (e) {
        await post('/result', { cmd: 'unsubscribe', ok: false, error: String(e) });
      }
    } else if (command.cmd === 'exit') {
      await log('done');
      return;
    }
    await sleep(200);
  }
}

main().catch((e) => log('page error: ' + e + (e && e.stack ? '\n' + e.stack : '')));
