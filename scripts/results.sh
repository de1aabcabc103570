#!/usr/bin/env bash
# make results: regenerate docs/RESULTS.md and the shipped model from nothing.
# Each step skips what is already done (finished training stages, rendered data), so a
# re-run after an interruption continues. On a 2-core CPU the whole run takes about six
# hours (the strong key segmenter's stage 0 alone about 1.4 h at one thread); each training
# below runs at one thread, so two of them can run side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
DAVSS=(.venv/bin/python -m davss_ros.cli)

# The shipped model: a strong key segmenter, then the signals_mix distortion estimator and
# CFNet trained together (stage 4).
"${DAVSS[@]}" train --config config/train/synthetic_strong.yaml --out out/train/strong --no-progress
# Its ablations share its earlier stages.
for ablation in strong_paper strong_no_dds strong_no_dgfl strong_no_dgfc; do
    "${DAVSS[@]}" train --config "config/train/ablation/${ablation}.yaml" \
        --out "out/train/${ablation}" --reuse out/train/strong --no-progress
done
# The per-frame baseline at davss's cost.
"${DAVSS[@]}" train --config config/train/synthetic_matched.yaml --out out/train/matched \
    --no-progress
# Clips in a look nothing was trained on (the domain-shift table).
if [ ! -f out/data/synthetic_dusk/synthetic_test.json ]; then
    "${DAVSS[@]}" make-data --out out/data/synthetic_dusk --train 0 --val 16 --test 32 \
        --look dusk --workers 2 --quiet
fi
# The same scenes with a sudden pan mid-clip (the report's second schedule sweep).
if [ ! -f out/data/synthetic_pan/synthetic_test.json ]; then
    "${DAVSS[@]}" make-data --out out/data/synthetic_pan --train 0 --val 16 --test 32 \
        --pan 20 --pan-frames 4 --workers 2 --quiet
fi
# The previously shipped model, for the domain-shift table ("today's davss"): from history.
mkdir -p out/previous
if [ ! -f out/previous/davss_cpu.pt ]; then
    git show 11717ea:davss_ros/weights/davss_cpu.pt > out/previous/davss_cpu.pt
fi
"${DAVSS[@]}" export --checkpoint out/train/strong/final.pt --out davss_ros/weights/davss_cpu.pt \
    --half
"${DAVSS[@]}" report --config config/report.yaml --readme README.md \
    --model-card docs/MODEL_CARD.md --no-progress
