"""How often do a camera process and the in-process node never discover each other?

The set-up of test_large_frames' two-publisher test, repeated: a probe participant and a
SegmenterNode (the small untrained model) in this process, then two camera processes, one
after the other, each waiting up to 30 s to see the node's subscription. Each round uses a
new ROS domain. Prints each round and the failures with what both sides saw.

    .venv/bin/python scripts/discovery_loop.py --rounds 40                   # LARGE_DATA
    FASTDDS_BUILTIN_TRANSPORTS=DEFAULT .venv/bin/python scripts/discovery_loop.py --rounds 80
    .venv/bin/python scripts/discovery_loop.py --rounds 4 --camera-transports DEFAULT

Measured with FastDDS 3.2.2 on a 2-core machine (busy with other work): LARGE_DATA
everywhere, 6 of 40 rounds failed (the camera saw the probe but not the node's participant,
and the node did not see the camera); DEFAULT everywhere, 0 of 80; the node LARGE_DATA and
the cameras DEFAULT, 4 of 4 (the two modes do not discover each other at all).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "test"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--camera-transports", default=None,
                        help="FASTDDS_BUILTIN_TRANSPORTS of the camera processes "
                             "(default: this process's)")
    parser.add_argument("--one-participant", action="store_true",
                        help="the probe and the node share one rclpy Context (one DDS "
                             "participant in this process) instead of one each")
    args = parser.parse_args()
    os.environ.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    mine = os.environ["FASTDDS_BUILTIN_TRANSPORTS"]
    cameras = args.camera_transports or mine

    from test_large_frames import CameraProcess, _overrides
    from test_node import SMALL_MODEL_YAML, Probe, Segmenter

    from davss_ros.tools.harness import unique_domain_id

    yaml = pathlib.Path(tempfile.mkdtemp()) / "small.yaml"
    yaml.write_text(SMALL_MODEL_YAML)
    failures = 0
    for i in range(args.rounds):
        domain = unique_domain_id(salt=1000 + i)
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = mine  # this process's participants
        probe = Probe(domain)
        seg = Segmenter(domain, _overrides(str(yaml)), namespace="/two",
                        share=probe if args.one_participant else None)
        os.environ["FASTDDS_BUILTIN_TRANSPORTS"] = cameras  # inherited by the cameras
        seg.bring_up()
        cams, said, t0 = [], "ready", time.monotonic()
        for name in ("camera_a", "camera_b"):
            cams.append(CameraProcess(domain, name, "/two/image", 128, 64, 0))
            said = cams[-1].proc.stdout.readline().strip()
            if said != "ready":
                failures += 1
                print(f"[{i}] domain {domain} {name}: {said}; the node sees "
                      f"{seg.node.get_node_names_and_namespaces()}", flush=True)
                break
        took = time.monotonic() - t0
        for cam in cams:
            cam.close()
        seg.close()
        probe.close()
        print(f"[{i}] {'ok' if said == 'ready' else 'FAIL'} {took:.1f} s", flush=True)
    print(f"failures {failures} of {args.rounds} (this process {mine}, cameras {cameras}"
          f"{', one participant here' if args.one_participant else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
