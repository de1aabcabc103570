"""Driving a segmenter node from outside, in one place.

Replay (``davss replay``), the node bench (``davss bench --node``), the soak (``davss
soak``) and the ROS tests all do the same five things: start a node (in this process, in
a child process) or attach to one that runs already, publish a camera, wait until both
sides of every topic have matched, collect the outputs, and tear everything down in an
order that cannot deadlock. This module is that code; they only say what to publish and
what to measure.

Each side is its own rclpy Context, so its own DDS participant: messages really cross
FastDDS (LARGE_DATA, see ``davss_ros.ros.env``) even when both sides live in one process.
Or both sides share one Context (``share=``): the tests of the node's behaviour do, so that
they do not hang on discovery between two participants (with LARGE_DATA a participant that
joins late is found only at the other's next announcement, every 3 s, and discovery has
been seen to time out under load); messages still pass FastDDS's writer and reader,
serialised. The transport tests (test_transport.py, test_large_frames.py, the node process
tests) keep the two participants apart.

- :class:`Participant`: a Context with its nodes and an executor spinning on a
  background thread (``davss_ros.ros.spin.BackgroundSpin``).
- :class:`NodeHost`: a participant holding ``SegmenterNode``\\ s, brought up through the
  lifecycle with a readable error.
- :class:`NodeProcess`: the node as a user starts it, in a child process.
- :class:`Camera`: the other side: publishers for frames, recording subscriptions,
  waiting on what arrived and on matching.
- :class:`Harness`: owns all of the above and closes them in order (see ``close``).

Tools read only the node's public state (``state``, ``configure_error``, ``stats``,
``camera_stats``, ``segmenter``, ``input_publisher_count``, and rclpy's ``publishers``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from davss_ros.ros.env import ensure_large_data_transport

DEFAULT_TIMEOUT_S = 20.0

# Participants that must outlive their user: deleting the last participant of a context
# while a node in another process, which this process does not own, still holds its
# LARGE_DATA TCP connection open blocks for good in FastDDS 3.2
# (TCPChannelResourceBasic::disconnect). They stay referenced until the process exits (the
# CLI leaves with os._exit; test processes too, see test/conftest.py).
_KEPT_FOR_PROCESS_EXIT: list = []


def kept_for_process_exit() -> bool:
    """Whether participants wait for the process exit: then leave with ``os._exit``."""
    return bool(_KEPT_FOR_PROCESS_EXIT)


class HarnessError(RuntimeError):
    """A node that would not come up, or a side that did not match in time."""


# Domain ids 1..100: above 101 a participant's ports (7400 + 250 * id + ...) fall into
# Linux's ephemeral port range, where the TCP connections of LARGE_DATA also live.
DOMAIN_IDS = 100
# scripts/run_tests.py gives each test file its own block of ids (DAVSS_TEST_DOMAIN_BASE),
# so a file never shares a domain with the one before it: a process that ends without
# deleting its participants (os._exit) stays in the others' discovery data until its
# lease runs out, and a participant meeting it can wait on its dead connection.
DOMAIN_BLOCK = 5


def unique_domain_id(salt: int = 0) -> int:
    """A ROS domain id for one run of a tool or test that no other run here shares.

    Under scripts/run_tests.py: the file's block (``DAVSS_TEST_DOMAIN_BASE``), ``salt``
    choosing within it; otherwise derived from the process id and ``salt``.
    """
    base = os.environ.get("DAVSS_TEST_DOMAIN_BASE")
    if base:
        return 1 + (int(base) - 1 + salt % DOMAIN_BLOCK) % DOMAIN_IDS
    return 1 + (os.getpid() * 7919 + 37 * salt) % DOMAIN_IDS


def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.02) -> None:
    """Poll ``predicate`` until true; HarnessError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise HarnessError(f"{what} within {timeout:g} s")
        time.sleep(poll_s)


class Participant:
    """One rclpy Context (one DDS participant), its nodes and a spinning executor."""

    def __init__(self, domain_id: int | None = None, *, threads: int = 1,
                 name: str = "davss_harness", share: Participant | None = None) -> None:
        """``share``: use that participant's Context (one DDS participant for both: the
        two sides then match inside FastDDS, with no discovery between participants)
        instead of a new one; the Context is shut down when the last of them closes."""
        ensure_large_data_transport()
        import rclpy
        from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

        from davss_ros.ros.spin import BackgroundSpin

        self._rclpy = rclpy
        if share is None:
            self.context = rclpy.Context()
            init = {} if domain_id is None else {"domain_id": domain_id}
            rclpy.init(context=self.context, **init)
            self._sharing: list[Participant] = []
        else:
            self.context, self._sharing = share.context, share._sharing
        self._sharing.append(self)
        self.nodes: list = []
        self.executor = (MultiThreadedExecutor(num_threads=threads, context=self.context)
                         if threads > 1 else SingleThreadedExecutor(context=self.context))
        self._spin = BackgroundSpin(self.executor, name=f"{name}_spin")
        self._stopped: bool | None = None
        self._closed = False

    def add_node(self, node):
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def create_node(self, name: str, **kwargs):
        return self.add_node(self._rclpy.create_node(name, context=self.context, **kwargs))

    @property
    def spinning(self) -> bool:
        """Whether the executor thread is alive (an exception in a callback ends it)."""
        return self._spin.thread.is_alive()

    def stop_spinning(self, timeout: float = 10.0) -> bool:
        """Stop the executor thread; True once it has ended (only then destroy nodes)."""
        if self._stopped is None:
            self._stopped = self._spin.stop(timeout)
        return self._stopped

    def _before_destroy(self) -> None:
        """What a subclass frees before its nodes are destroyed."""

    def close(self, *, keep_for_exit: bool = False) -> None:
        """Stop spinning, shut the executor down, destroy the nodes, shut the context.

        Why this order: ``destroy_node`` waits, holding the GIL, for handles that a thread
        still inside ``wait_for_ready_callbacks`` needs the GIL to release (see
        ``davss_ros.ros.spin``), so the spin thread must be gone first; a node whose thread
        did not stop is left to the process exit rather than deadlock.
        """
        if self._closed:
            return
        self._closed = True
        stopped = self.stop_spinning()
        if stopped:
            try:
                self.executor.shutdown(timeout_sec=2.0)
            except Exception:  # the context may be shutting down already
                pass
        self._before_destroy()
        if keep_for_exit:
            _KEPT_FOR_PROCESS_EXIT.append((self.nodes, self.context, self.executor))
            return
        if stopped:
            for node in self.nodes:
                try:
                    node.destroy_node()
                except Exception:
                    pass
        self._sharing.remove(self)
        if not self._sharing:
            self._rclpy.try_shutdown(context=self.context)


class NodeHost(Participant):
    """``SegmenterNode``\\ s in their own Context, in this process."""

    def __init__(self, domain_id: int | None = None, overrides: dict | None = None, *,
                 name: str | None = None, namespace: str = "", cli_args: list[str] | None = None,
                 threads: int = 2, share: Participant | None = None) -> None:
        super().__init__(domain_id, threads=threads, name="segmenter", share=share)
        if overrides is not None:
            self.add(overrides, name=name, namespace=namespace, cli_args=cli_args)

    def add(self, overrides: dict, namespace: str = "", *, name: str | None = None,
            cli_args: list[str] | None = None):
        """A new SegmenterNode with these parameter overrides, spinning here."""
        from rclpy.parameter import Parameter

        from davss_ros.ros.node import NODE_NAME, SegmenterNode

        try:
            node = SegmenterNode(
                name or NODE_NAME, context=self.context, namespace=namespace or "/",
                cli_args=cli_args,
                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        except Exception as exc:  # a parameter of the wrong type, a bad params file
            raise HarnessError(f"cannot start the node: {exc}") from None
        return self.add_node(node)

    @property
    def node(self):
        return self.nodes[0]

    def remove(self, node) -> None:
        """Close one node (worker, model) and take it out of the executor, then destroy it."""
        node.close()
        self.executor.remove_node(node)
        self.nodes.remove(node)
        node.destroy_node()

    def bring_up(self, node=None) -> None:
        """Configure and activate (what is left of it); HarnessError with the reason."""
        from davss_ros.ros.node import SUCCESS

        node = node or self.node
        if node.state == "unconfigured" and node.trigger_configure() != SUCCESS:
            raise HarnessError(f"the node did not configure: "
                               f"{node.configure_error or 'see the log above'}")
        if node.state == "inactive" and node.trigger_activate() != SUCCESS:
            raise HarnessError("the node did not activate (see the log above)")

    def wait_input_matched(self, publishers: int = 1, node=None,
                           timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Until the node's own input reader has matched ``publishers`` writers.

        The camera seeing the node's subscription is not enough: the node's reader may
        match the camera's writer a moment later, and a best-effort frame sent in between
        never arrives.
        """
        node = node or self.node
        wait_until(lambda: node.input_publisher_count() >= publishers, timeout,
                   f"the node's input did not match {publishers} publisher(s)")

    def wait_outputs_seen(self, topics: list[str], node=None,
                          timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Until the node's writer of each output topic has matched a reader (outputs such
        as the overlay are computed only while someone listens, and a reliable volatile
        message sent before the match is not delivered)."""
        node = node or self.node

        def seen() -> bool:
            matched = {p.topic_name: p.get_subscription_count() for p in node.publishers}
            return all(matched.get(t, 0) > 0 for t in topics)

        wait_until(seen, timeout, f"the node did not see subscribers on {', '.join(topics)}")

    def _before_destroy(self) -> None:
        for node in self.nodes:
            try:
                node.close()  # the worker thread stops, the model is freed
            except Exception:
                pass


class NodeProcess:
    """The node in a child process, started as a user would; stopped with Ctrl-C."""

    def __init__(self, cmd: list[str], *, env: dict | None = None,
                 log_path: str | Path | None = None) -> None:
        self.cmd = cmd
        self.log_path = Path(log_path) if log_path else None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
            out, err = self._log, subprocess.STDOUT
        else:
            self._log = None
            out, err = subprocess.PIPE, subprocess.STDOUT
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, text=True)
        self.output = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None:
            return self.output
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGINT, then kill after ``timeout``; the exit status (negative: killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate(timeout=10)
        self.output += out or ""
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


class Camera(Participant):
    """The other side of the node: publishes frames and records what comes back."""

    def __init__(self, domain_id: int | None = None, *, name: str = "davss_camera",
                 namespace: str = "", threads: int = 2, share: Participant | None = None) -> None:
        super().__init__(domain_id, threads=threads, name=name, share=share)
        self.node = self.create_node(name, namespace=namespace or None)
        self.cond = threading.Condition()
        self.got: dict[str, list] = {}
        self.subs: dict[str, object] = {}
        self.pubs: dict[str, object] = {}

    def listen(self, topic: str, msg_type, qos=None, callback=None) -> None:
        """Record every ``msg_type`` message on ``topic`` (reliable, depth 50 by default);
        ``callback(msg)`` runs first, on the executor thread, when given."""
        from rclpy.event_handler import SubscriptionEventCallbacks
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from davss_ros.ros.qos import no_event_handlers

        qos = qos or QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.got.setdefault(topic, [])

        def store(msg, topic=topic):
            if callback is not None:
                callback(msg)
            with self.cond:
                self.got[topic].append(msg)
                self.cond.notify_all()

        # Entities here have no QoS event handlers: destroying one while the executor
        # spins can kill its thread otherwise (davss_ros.ros.qos.no_event_handlers).
        self.subs[topic] = self.node.create_subscription(
            msg_type, topic, store, qos,
            event_callbacks=no_event_handlers(SubscriptionEventCallbacks))

    def publisher(self, topic: str, msg_type=None, qos=None):
        """The publisher of ``topic`` (created on first use: Image, reliable, depth 10)."""
        if topic not in self.pubs:
            from rclpy.event_handler import PublisherEventCallbacks
            from sensor_msgs.msg import Image

            from davss_ros.ros.qos import no_event_handlers

            self.pubs[topic] = self.node.create_publisher(
                msg_type or Image, topic, qos if qos is not None else 10,
                event_callbacks=no_event_handlers(PublisherEventCallbacks))
        return self.pubs[topic]

    def drop_publisher(self, topic: str) -> None:
        """Destroy the publisher of ``topic``: the camera goes away (while spinning)."""
        self.node.destroy_publisher(self.pubs.pop(topic))

    def wait(self, predicate, timeout: float = DEFAULT_TIMEOUT_S) -> bool:
        """Until ``predicate()`` (checked under the lock whenever a message arrives).

        Raises HarnessError at once when the executor thread has died: nothing can arrive.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                left = deadline - time.monotonic()
                if self.cond.wait_for(predicate, timeout=max(0.0, min(left, 1.0))):
                    return True
                if not self.spinning:
                    raise HarnessError(f"{self.node.get_name()}'s executor thread died "
                                       f"({self._spin.error!r}): nothing arrives any more")
                if left <= 1.0:
                    return False

    def messages(self, topic: str) -> list:
        with self.cond:
            return list(self.got.get(topic, []))

    def clear(self) -> None:
        with self.cond:
            for v in self.got.values():
                v.clear()

    def call(self, srv_type, name: str, request, timeout: float = 30.0):
        """Call a service (the node's lifecycle services, say) and return the response."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise HarnessError(f"no {name} service within {timeout:g} s")
            future = client.call_async(request)
            done = threading.Event()
            future.add_done_callback(lambda _f: done.set())
            if not done.wait(timeout):
                raise HarnessError(f"{name} did not answer within {timeout:g} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def lifecycle_state(self, node_fqn: str, timeout: float = 30.0) -> str:
        """The node's lifecycle state label, asked over its get_state service."""
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node_fqn}/get_state", GetState.Request(),
                         timeout).current_state.label

    def change_state(self, node_fqn: str, transition_id: int, timeout: float = 30.0) -> bool:
        """Ask for a lifecycle transition (lifecycle_msgs/Transition ids); its success."""
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(ChangeState, f"{node_fqn}/change_state", request, timeout).success

    def wait_matched(self, topics_in: list[str], topics_out: list[str],
                     timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Until each publisher here sees a subscriber and each listener a publisher."""
        try:
            wait_until(lambda: all(self.publisher(t).get_subscription_count() > 0
                                   for t in topics_in)
                       and all(self.subs[t].get_publisher_count() > 0 for t in topics_out),
                       timeout, f"no match on {topics_in} / {topics_out}")
        except HarnessError as exc:
            try:  # what this side knows of the graph, for the message
                nodes = sorted(f"{ns.rstrip('/')}/{n}" for n, ns in
                               self.node.get_node_names_and_namespaces())
            except Exception:
                nodes = ["?"]
            raise AssertionError(f"{exc}; nodes known here: {', '.join(nodes)}") from None


class Harness:
    """Everything one run starts, closed in an order that cannot hang. A context manager.

    ``close``: every executor thread stops first; then child processes get Ctrl-C (a node
    process must let go of its DDS connections before the participants here are
    deleted); then the node hosts (workers, models, nodes) and last the cameras. Deleting
    a participant while a peer still holds its LARGE_DATA TCP connection can block for good
    in FastDDS 3.2 (seen here with the camera side deleted first, both in one process and
    with the node in another); the node side first is the order that has not.
    Participants talking to a node this process does not own (``attach``) are kept until
    the process exits instead (see ``_KEPT_FOR_PROCESS_EXIT``).
    """

    def __init__(self, domain_id: int | None = None) -> None:
        self.domain_id = domain_id  # None: the environment's (ROS_DOMAIN_ID)
        self.participants: list[Participant] = []
        self.processes: list[NodeProcess] = []
        self.external = False

    def host(self, overrides: dict | None = None, **kwargs) -> NodeHost:
        return self._own(NodeHost(self.domain_id, overrides, **kwargs))

    def camera(self, **kwargs) -> Camera:
        return self._own(Camera(self.domain_id, **kwargs))

    def spawn(self, cmd: list[str], *, env: dict | None = None,
              log_path: str | Path | None = None) -> NodeProcess:
        env = dict(os.environ if env is None else env)
        if self.domain_id is not None:
            env["ROS_DOMAIN_ID"] = str(self.domain_id)
        proc = NodeProcess(cmd, env=env, log_path=log_path)
        self.processes.append(proc)
        return proc

    def attach(self) -> None:
        """The node runs elsewhere and is not ours to stop (``davss replay --external``)."""
        self.external = True

    def _own(self, participant):
        self.participants.append(participant)
        return participant

    def close(self) -> None:
        for p in self.participants:
            p.stop_spinning()
        for proc in self.processes:
            proc.stop()
        hosts = [p for p in self.participants if isinstance(p, NodeHost)]
        for p in hosts + [p for p in self.participants if p not in hosts]:
            p.close(keep_for_exit=self.external)
        self.participants, self.processes = [], []

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
