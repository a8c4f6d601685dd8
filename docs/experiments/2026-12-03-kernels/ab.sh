#!/bin/bash
# Interleaved A/B of the engine before the kernels (687a08f, checked out as a worktree) and the working tree.
#     docs/experiments/2026-12-03-kernels/ab.sh implicit|explicit N
set -e
cd "$(git rev-parse --show-toplevel)"
[ -d /tmp/ab_old ] || git worktree add -f /tmp/ab_old 687a08f -q
here=docs/experiments/2026-12-03-kernels/round94.py
for i in $(seq "$2"); do
  echo -n "old "; PYTHONPATH=/tmp/ab_old .venv/bin/python $here "$1"
  echo -n "new "; .venv/bin/python $here "$1"
done
