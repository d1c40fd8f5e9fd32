"""Two Ray nodes on this machine (one CPU each), started from this fresh process, for
tests/test_serve_ray.py: prints the cluster's address, then keeps the nodes until its stdin closes.

Why a process of its own: Ray starts its GCS and raylets with a `preexec_fn`, Python run in the
child between fork and exec. In the pytest process, by then full of threads (gRPC's, ONNX
Runtime's), a child could hang there on a lock another thread held at the fork, and the node
never came up (twice in full runs: "Timed out waiting for file .../gcs_server_port_..."). Here
no other thread runs.
"""
from __future__ import annotations

import sys

from ray.cluster_utils import Cluster


def main() -> None:
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        nodes.add_node(num_cpus=1)
        nodes.wait_for_nodes()
        print(nodes.address, flush=True)
        sys.stdin.read()  # until the test closes it
    finally:
        nodes.shutdown()


if __name__ == "__main__":
    main()
