#!/usr/bin/env bash
# make results: regenerate docs/RESULTS.md and the shipped model from nothing.
# Each step skips what is already done (finished training stages, rendered data), so a
# re-run after an interruption continues. On a 2-core CPU the whole run takes about two hours.
set -euo pipefail
cd "$(dirname "$0")/.."
DAVSS=(.venv/bin/python -m davss_ros.cli)

"${DAVSS[@]}" train --config config/train/synthetic_cpu.yaml --out out/train/cpu --no-progress
for ablation in no_dds no_dgfl no_dgfc; do
    "${DAVSS[@]}" train --config "config/train/ablation/${ablation}.yaml" \
        --out "out/train/cpu_${ablation}" --reuse out/train/cpu --no-progress
done
"${DAVSS[@]}" export --checkpoint out/train/cpu/final.pt --out davss_ros/weights/davss_cpu.pt \
    --half
"${DAVSS[@]}" report --config config/report.yaml --readme README.md \
    --model-card docs/MODEL_CARD.md --no-progress
