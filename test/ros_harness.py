"""Test-side helpers for real ROS 2 graphs: an rclpy probe node spun in a background thread."""

from __future__ import annotations

from collections.abc import Callable
import threading
import time
from typing import Any

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from r3d_ros.nodes.common import SpinningNode
from r3d_ros.process import wait_until as _poll


class RosProbe(SpinningNode):
    """An rclpy node in its own context, spinning in a daemon thread, with waiting helpers."""

    def __init__(self, name: str = 'r3d_test_probe'):
        super().__init__(name)

    # -- discovery ---------------------------------------------------------------------------
    def _resolve(self, topic: str) -> str:
        return self.node.resolve_topic_name(topic)

    def wait_for_publisher(self, topic: str, timeout: float = 10.0) -> bool:
        name = self._resolve(topic)
        return _poll(lambda: self.node.count_publishers(name) > 0, timeout)

    def wait_for_subscriber(self, topic: str, timeout: float = 10.0) -> bool:
        name = self._resolve(topic)
        return _poll(lambda: self.node.count_subscribers(name) > 0, timeout)

    def matching_qos(self, topic: str) -> QoSProfile:
        """A QoS that matches the topic's publishers and gets latched data from transient-local ones."""
        infos = self.node.get_publishers_info_by_topic(self._resolve(topic))
        qos = QoSProfile(depth=10)
        if infos and any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
            qos.reliability = ReliabilityPolicy.BEST_EFFORT
        if infos and all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos):
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
        return qos

    # -- messages ----------------------------------------------------------------------------
    def wait_for_message(self, topic: str, msg_type: Any, qos: QoSProfile | None = None,
                         timeout: float = 10.0, predicate: Callable[[Any], bool] | None = None) -> Any:
        """The first message on ``topic`` (satisfying ``predicate``), or AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        if qos is None:
            self.wait_for_publisher(topic, timeout)
            qos = self.matching_qos(topic)
        got: list = []
        event = threading.Event()

        def on_msg(msg):
            if not event.is_set() and (predicate is None or predicate(msg)):
                got.append(msg)
                event.set()

        sub = self.node.create_subscription(msg_type, topic, on_msg, qos)
        try:
            if not event.wait(max(0.0, deadline - time.monotonic())):
                raise AssertionError(f'no {msg_type.__name__} on {topic!r} within {timeout:.1f}s')
            return got[0]
        finally:
            self.node.destroy_subscription(sub)

    def collect(self, topic: str, msg_type: Any, duration: float, qos: QoSProfile | None = None) -> list:
        """Every message received on ``topic`` during ``duration`` seconds."""
        qos = qos or self.matching_qos(topic)
        got: list = []
        lock = threading.Lock()

        def on_msg(msg):
            with lock:
                got.append(msg)

        sub = self.node.create_subscription(msg_type, topic, on_msg, qos)
        time.sleep(duration)
        self.node.destroy_subscription(sub)
        with lock:
            return list(got)

    def listen(self, topic: str, msg_type: Any, qos: QoSProfile | int | None = None) -> Listener:
        """Subscribe now and keep every message, for request/response patterns (subscribe before sending)."""
        listener = Listener()
        listener.sub = self.node.create_subscription(msg_type, topic, listener._on_msg, qos if qos is not None else 100)
        return listener

    def publisher(self, topic: str, msg_type: Any, qos: QoSProfile | int | None = None):
        return self.node.create_publisher(msg_type, topic, qos if qos is not None else 10)

    def call_service(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise AssertionError(f'service {name!r} not available within {timeout:.1f}s')
            future = client.call_async(request)
            if not _poll(future.done, timeout):
                raise AssertionError(f'service {name!r} did not answer within {timeout:.1f}s')
            return future.result()
        finally:
            self.node.destroy_client(client)


class Listener:
    """Messages received on one subscription; ``wait`` blocks until one satisfies a predicate."""

    def __init__(self):
        self.messages: list = []
        self._cond = threading.Condition()
        self.sub = None

    def _on_msg(self, msg) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait(self, predicate: Callable[[Any], bool] = lambda m: True, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for msg in self.messages[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'no matching message within {timeout:.1f}s ({seen} received)')
                self._cond.wait(left)
