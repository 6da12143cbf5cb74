#!/usr/bin/env bash
# Install what the tests need and run them. Extra arguments go to pytest (and then only
# that one pytest run happens).
#   scripts/test.sh                 the quick set, then the `slow` tests when time allows
#   scripts/test.sh -m "not slow"   the quick set only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# The browser test drives Debian's Chromium through Playwright (no browser download):
# install it where we can; without it that one test file skips and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: the browser test will skip"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTEST=(.venv/bin/python -m pytest -q)
if [ $# -gt 0 ]; then
  exec "${PYTEST[@]}" "$@"
fi
"${PYTEST[@]}" -m "not slow"
# The slow tests (real-model acceptance runs, long notebooks) follow when the run so far
# leaves room: SLOW_BUDGET_S is how long this script may have taken by then (default 50 min).
budget="${SLOW_BUDGET_S:-3000}"
if [ "$SECONDS" -lt "$budget" ]; then
  echo "running the slow tests ($SECONDS s used so far, budget $budget s)"
  "${PYTEST[@]}" -m slow
else
  echo "skipping the slow tests: $SECONDS s used, past the $budget s budget (SLOW_BUDGET_S)"
fi
