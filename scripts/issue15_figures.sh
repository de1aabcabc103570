#!/usr/bin/env bash
# The figures of issue 15 (docs/issue15_figures.md): synthetic labelled bags at 640x480,
# replayed in real time through the node. Writes under out/issue15/.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
D=(.venv/bin/python -m davss_ros.cli)
O=out/issue15
S=${RUN:-}  # a suffix for the real-time outputs of a repeated run (RUN=_2: b_budget_2, ...)
N=${FRAMES:-90}
mkdir -p "$O"
bag() { [ -e "$1" ] || "${D[@]}" make-bag --synthetic --frames "$N" --width 640 --height 480 \
    --rate 15 --start 1000 --no-progress -o "${@}"; }
bag "$O/cam0" --seed 0
bag "$O/cam1" --seed 1 --start 1000.0333333333     # half a 15 Hz period after cam0
bag "$O/two" --cameras 2 --seed 0                   # the same two clips in one bag
bag "$O/cam0_jpeg444q95" --seed 0 --compressed jpeg          # the default: 4:4:4, quality 95
bag "$O/cam0_jpeg420q90" --seed 0 --compressed jpeg --quality 90 --chroma 420  # the old one
bag "$O/cam0_png" --seed 0 --compressed png
R=(--no-progress --no-plots --overwrite -p model.threads:=1)
# KEY=file: every node runs its key frames on that exported key segmenter (davss export
# --onnx), the one-node and the two-node set-ups alike.
[ -n "${KEY:-}" ] && R+=(-p "model.key_segmenter:=$KEY")
FIXED=(-p schedule.policy:=fixed -p schedule.key_interval:=5)
BUDGET=(-p schedule.policy:=budget -p schedule.max_interval:=10)
# The one node of (a): two workers (one per core, each camera on its own) and a queue of
# three frames per camera; the budget policy at 30 Hz in (b): a queue of four frames (a key
# frame outlasts four 30 Hz periods on this CPU) and a key frame at least every 21.
ONE=(-p model.workers:=2 -p input.queue_depth:=3)
DEEP=(-p schedule.policy:=budget -p schedule.max_interval:=20 -p input.queue_depth:=4)

two_nodes() {  # $1: output suffix; the rest: options of both nodes
    local tag=$1; shift
    "${D[@]}" replay "$O/cam0" --rate 1 "${R[@]}" "$@" --namespace n0 --out "$O/a_node0_$tag$S" &
    "${D[@]}" replay "$O/cam1" --rate 1 "${R[@]}" "$@" --namespace n1 --out "$O/a_node1_$tag$S"
    wait
}
echo "== (a) two cameras at 15 Hz: one node, budget policy, two workers, queue of 3"
"${D[@]}" replay "$O/two" --cameras --rate 1 "${R[@]}" "${BUDGET[@]}" "${ONE[@]}" \
    --out "$O/a_one_node_budget$S"
echo "== (a) one node, budget policy, one worker, queue of 1 (the defaults)"
"${D[@]}" replay "$O/two" --cameras --rate 1 "${R[@]}" "${BUDGET[@]}" --out "$O/a_one_node_budget_w1$S"
echo "== (a) two nodes, fixed key interval 5, side by side (queue of 1, the default)"
two_nodes fixed "${FIXED[@]}"
echo "== (a) two nodes, fixed key interval 5, queue of 2"
two_nodes fixed_q2 "${FIXED[@]}" -p input.queue_depth:=2
echo "== (b) one camera at 2x (30 Hz): fixed key interval 5 (queue of 1, then 4), then budget"
"${D[@]}" replay "$O/cam0" --rate 2 "${R[@]}" "${FIXED[@]}" --out "$O/b_fixed$S"
"${D[@]}" replay "$O/cam0" --rate 2 "${R[@]}" "${FIXED[@]}" -p input.queue_depth:=4 \
    --out "$O/b_fixed_q4$S"
"${D[@]}" replay "$O/cam0" --rate 2 "${R[@]}" "${BUDGET[@]}" --out "$O/b_budget$S"
"${D[@]}" replay "$O/cam0" --rate 2 "${R[@]}" "${DEEP[@]}" --out "$O/b_budget_q4$S"
[ -n "$S" ] && exit 0  # a repeated run: the closed-loop (c) figures do not change
echo "== (c) compressed bags against the raw one (closed loop)"
"${D[@]}" replay "$O/cam0" "${R[@]}" --out "$O/c_raw"
"${D[@]}" replay "$O/cam0_jpeg444q95" "${R[@]}" --out "$O/c_jpeg444q95" --reference "$O/c_raw"
"${D[@]}" replay "$O/cam0_jpeg420q90" "${R[@]}" --out "$O/c_jpeg420q90" --reference "$O/c_raw"
"${D[@]}" replay "$O/cam0_png" "${R[@]}" --out "$O/c_png" --reference "$O/c_raw"
