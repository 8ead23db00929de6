#!/usr/bin/env bash
# System packages that some tests need, from Debian: prometheus (and its promtool) for the
# metrics, alert-rule and scrape tests; chromium for the run report's browser check.
# `make test` runs this first. It installs what is missing with apt-get where that works (root,
# or sudo without a password); anywhere else it says so, and the tests that need a missing tool
# skip with that reason (pytest -ra lists them).
set -u
need=()
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
why=""
if ! command -v apt-get >/dev/null; then
  why="there is no apt-get here"
elif [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then
  why="apt-get needs root (or sudo without a password)"
fi
if [ -n "$why" ]; then
  echo "system-deps: not installing ${need[*]}: $why; the tests that need them will skip" >&2
  exit 0
fi
sudo=""
[ "$(id -u)" != 0 ] && sudo="sudo -n"
echo "system-deps: apt-get install ${need[*]}" >&2
if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/trainingjob-system-deps.log 2>&1; then
  tail -5 /tmp/trainingjob-system-deps.log >&2
  echo "system-deps: apt-get install ${need[*]} failed (log: /tmp/trainingjob-system-deps.log); the tests that need them will skip" >&2
fi
exit 0
