#!/usr/bin/env bash
# Runs the status-page tests in a real browser: installs Debian's chromium when missing
# (through install-test-deps.sh), then the Rust tests that start the bridge in-process with a
# simulated controller and drive headless Chromium through the DevTools protocol: the page
# follows a state change within 1 s over /events, falls back to polling when /events is
# refused, shows the current values with JavaScript off, reports no CSP violation; they save
# screenshots: target/status-page.png (phone, light) and target/status-page-tablet.png (tablet,
# dark).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
# With CI=true the test fails, rather than skips, if Chromium is still missing.
CI=true cargo test --test http_browser -- --nocapture
