#!/usr/bin/env node
// Sends one Web Push message with the `web-push` npm package, unchanged.
//
// `webpush.sendNotification` only speaks HTTPS, and the Herald under test
// listens on plain HTTP on loopback in one run, on HTTPS in the other: so
// this builds the request with the library's own `generateRequestDetails`
// (encryption, VAPID headers, TTL, all done by web-push) and sends exactly
// that request with Node's http or https module (the latter is what
// sendNotification uses; it trusts the test CA through NODE_EXTRA_CA_CERTS).
//
// stdin: JSON {subscription, payload (string or null), contentEncoding,
//              ttl, vapid: {subject, publicKey, privateKey}}
// stdout: JSON {status, headers, body, sent: {headers}}
'use strict';

const http = require('http');
const https = require('https');
const webpush = require('web-push');

function readStdin() {
  return new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (chunk) => { text += chunk; });
    process.stdin.on('end', () => resolve(text));
    process.stdin.on('error', reject);
  });
}

async function main() {
  const input = JSON.parse(await readStdin());
  const options = {
    TTL: input.ttl === undefined ? 60 : input.ttl,
    contentEncoding: input.contentEncoding || 'aes128gcm',
    vapidDetails: input.vapid,
  };
  const details = webpush.generateRequestDetails(
    input.subscription,
    input.payload === null ? null : input.payload,
    options,
  );
  const url = new URL(details.endpoint);
  const transport = { 'http:': http, 'https:': https }[url.protocol];
  if (transport === undefined) {
    throw new Error(`not an http(s) endpoint: ${details.endpoint}`);
  }
  const result = await new Promise((resolve, reject) => {
    const req = transport.request({
      method: details.method,
      hostname: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      headers: details.headers,
      timeout: 15000,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({
        status: res.statusCode,
        headers: res.headers,
        body: Buffer.concat(chunks).toString('utf8'),
      }));
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    if (details.body) {
      req.write(details.body);
    }
    req.end();
  });
  const sentHeaders = Object.assign({}, details.headers);
  result.sent = { headers: sentHeaders };
  process.stdout.write(JSON.stringify(result) + '\n');
}

main().catch((err) => {
  process.stderr.write(`send_webpush.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(1);
});
