#!/usr/bin/env bash
# Run HERE (a machine with pip and the network) before bench/gpu.sh goes to a GPU machine:
# the GPU image has torch, transformers, peft and accelerate but not these; pip cannot reach
# the network there, so they travel as wheels in .whl/ (git-ignored via .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
# Versions from requirements/constraints.txt; the GPU image's Python is 3.12.
wheels=(
  "alembic==1.20.1" "Mako==1.4.3" "SQLAlchemy==2.1.9" "greenlet==3.5.6"
  "pydantic==2.14.3" "pydantic_core==2.50.4" "pydantic-settings==2.16.3"
  "annotated-types==0.8.0" "typing-inspection==0.4.5" "python-dotenv==1.2.4"
)
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "${wheels[@]}"
du -sh .whl
