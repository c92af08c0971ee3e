"""Helpers every r3d_ros node shares: parameter descriptors, the map QoS and the lifecycle-node main loop."""

from __future__ import annotations

import threading

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

# The scene map is state, not a stream: reliable, and kept for late joiners (a reasoner started after the map).
MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def describe(text: str, ints: tuple[int, int] | None = None, floats: tuple[float, float] | None = None,
             read_only: bool = False, choices: list[str] | None = None) -> ParameterDescriptor:
    """A ParameterDescriptor with a description and, where given, a range or the allowed values."""
    d = ParameterDescriptor(description=text + (f' (one of {choices})' if choices else ''), read_only=read_only)
    if ints:
        d.integer_range = [IntegerRange(from_value=ints[0], to_value=ints[1], step=1)]
    if floats:
        d.floating_point_range = [FloatingPointRange(from_value=floats[0], to_value=floats[1], step=0.0)]
    return d


def report_unknown_overrides(node) -> list[str]:
    """Log an error for each parameter given to ``node`` (``-p``, a params file) that it does not declare; return
    them. rclpy keeps such an override without a word, so a misspelt name leaves the default in force unnoticed
    (the demo once set sim_sensor's ``period``, not ``orbit_period``, and mapped a third of the lap it meant).
    Read from ``Node._parameter_overrides``: rclpy has no public accessor for the overrides."""
    unknown = sorted(n for n in getattr(node, '_parameter_overrides', {}) if not node.has_parameter(n))
    known = ', '.join(sorted(node.get_parameters_by_prefix('')))
    for name in unknown:
        node.get_logger().error(f'parameter {name!r} is not a parameter of this node; ignored (known: {known})')
    return unknown


def run_lifecycle_node(node_class, args=None, threads: int = 2) -> None:
    """rclpy.init, build the node, configure + activate when its ``autostart`` parameter says so (no lifecycle
    manager exists here), spin a multi-threaded executor until shutdown, then stop the node's worker."""
    rclpy.init(args=args)
    node = node_class()
    report_unknown_overrides(node)
    if node.get_parameter('autostart').value:
        node.trigger_configure()
        node.trigger_activate()
    executor = MultiThreadedExecutor(num_threads=threads)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.stop_worker()
        node.destroy_node()
        rclpy.try_shutdown()


class SpinningNode:
    """An rclpy node in a context of its own, spun by a single-threaded executor in a daemon thread: how a process
    that is not itself a node (a test, the demo, a bench) talks to a graph. ``close`` undoes all of it."""

    def __init__(self, name: str):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - the context is shutting down under the spinning thread at close
            pass

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def wait_until_active(node, names: list[str], timeout: float) -> list[str]:
    """Poll each lifecycle node's ``<name>/get_state`` until it reports ``active``; return those that never did.

    A subscriber on a topic exists from ``configure``, but a lifecycle node only takes input once active, so a
    client that must not lose its first messages (r3d-play asking questions) waits for this, not for the topic.
    """
    import time

    from lifecycle_msgs.srv import GetState

    deadline = time.monotonic() + timeout
    missing = []
    for name in names:
        client = node.create_client(GetState, f'/{name.strip("/")}/get_state')
        try:
            while time.monotonic() < deadline:
                if client.wait_for_service(timeout_sec=0.5):
                    future = client.call_async(GetState.Request())
                    while not future.done() and time.monotonic() < deadline:
                        time.sleep(0.02)   # the caller's executor spins the node in another thread
                    state = future.result() if future.done() else None
                    if state is not None and state.current_state.label == 'active':
                        break
                time.sleep(0.1)
            else:
                missing.append(name)
        finally:
            node.destroy_client(client)
    return missing
