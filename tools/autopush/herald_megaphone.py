"""A pytest plugin that lets autopush-rs's integration suite drive Herald's broadcasts.

autopush learns broadcast versions by polling a megaphone service; the suite
runs a mock megaphone in-process, changes its versions, and waits until the
server has polled. Herald does not poll anyone: an operator sets versions with
`PUT /v1/broadcasts/<id>`. This plugin stands in for the poll: at the moment a
test waits for "the server polled", it copies the mock's current versions into
Herald through that API, so the wait returns with Herald already up to date
(no race between the poll and the test's next step).

Loaded with `-p herald_megaphone` by tools/autopush-suite.sh, which sets
HERALD_BROADCAST_URL (the AS listener of the Herald serving broadcasts) and
HERALD_ADMIN_TOKEN.
"""

import os
import urllib.parse
import urllib.request

SUITE_MODULE = "test_integration_all_rust"


class PollBridge:
    """Replaces the suite's "megaphone was polled" event."""

    def __init__(self, suite, base_url: str, token: str) -> None:
        self.suite = suite
        self.base_url = base_url.rstrip("/")
        self.token = token

    def set(self) -> None:
        """The mock server reports a poll; Herald never polls it, so nothing to do."""

    def clear(self) -> None:
        """Nothing is cached between waits."""

    def is_set(self) -> bool:
        return True

    def wait(self, timeout=None) -> bool:
        for broadcast_id, version in self.suite.MOCK_MP_SERVICES.items():
            self.put(broadcast_id, version)
        return True

    def put(self, broadcast_id: str, version: str) -> None:
        url = f"{self.base_url}/v1/broadcasts/{urllib.parse.quote(broadcast_id, safe=':/')}"
        request = urllib.request.Request(
            url,
            method="PUT",
            data=urllib.parse.urlencode({"version": version}).encode(),
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"PUT {url} answered {response.status}")


def pytest_collection_modifyitems(session, config, items) -> None:
    base_url = os.environ["HERALD_BROADCAST_URL"]
    token = os.environ["HERALD_ADMIN_TOKEN"]
    suites = {item.module for item in items if item.module.__name__.endswith(SUITE_MODULE)}
    for suite in suites:
        suite.MOCK_MP_POLLED = PollBridge(suite, base_url, token)
