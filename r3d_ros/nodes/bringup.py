"""`r3d-bringup`: start an r3d_ros graph without `launch` (which cannot be installed from PyPI).

Reads the graph from ``config/bringup.yaml`` (the same nodes and parameter files as ``launch/*.launch.py``),
starts each node's console script as a child process on a loopback-only DDS domain, and stops them all
on Ctrl-C or when one of them dies (``--keep-going`` leaves the others running).

    r3d-bringup --graph sim_demo                     # sim_sensor + scene_map + reasoner
    r3d-bringup --graph r3d -p reasoner.device=cuda   # map + reasoner on a live robot's `points`
    r3d-bringup --graph r3d -r scene_map.points:=/camera/depth/points -p scene_map.use_sim_time=true
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import signal
import sys
import time

import yaml

from r3d_ros.process import ManagedProcess, find_executable
from r3d_ros.ros_env import DomainLease, config_path, loopback_env


def load_graph(name: str, file: str | Path | None = None) -> list[dict]:
    path = Path(file) if file else config_path('bringup.yaml')
    graphs = yaml.safe_load(path.read_text())
    if name not in graphs:
        raise SystemExit(f'graph {name!r} not in {path}; known: {sorted(graphs)}')
    return graphs[name]



class Bringup:
    """Start a graph's nodes as child processes; a context manager that always stops them."""

    def __init__(self, graph: str = 'sim_demo', domain_id: int | None = None,
                 overrides: dict[str, dict[str, object]] | None = None, log_dir: str | None = None,
                 env: dict | None = None, graph_file: str | Path | None = None,
                 remaps: dict[str, dict[str, str]] | None = None):
        self.nodes = load_graph(graph, graph_file)
        self._lease = None
        if domain_id is None:
            self._lease = DomainLease()
            domain_id = self._lease.domain_id
        self.domain_id = domain_id
        self.env = loopback_env(domain_id, base={**os.environ, **(env or {})})
        self.overrides = overrides or {}
        self.remaps = remaps or {}
        self.log_dir = log_dir
        if log_dir:  # a folder the user names need not exist yet
            Path(log_dir).mkdir(parents=True, exist_ok=True)
        self.processes: dict[str, ManagedProcess] = {}

    def start(self) -> Bringup:
        for spec in self.nodes:
            exe = spec['executable']
            argv = [find_executable(exe), '--ros-args', '--params-file', str(config_path(spec['params']))]
            for key, value in self.overrides.get(exe, {}).items():
                argv += ['-p', f'{key}:={value}']
            for src, dst in self.remaps.get(exe, {}).items():
                argv += ['-r', f'{src}:={dst}']
            self.processes[exe] = ManagedProcess(argv, env=self.env, name=exe, log_dir=self.log_dir)
        return self

    def params(self, executable: str) -> dict:
        """The parameters ``executable`` is started with: its YAML file's, then the overrides (as -p parses)."""
        spec = next(s for s in self.nodes if s['executable'] == executable)
        files = yaml.safe_load(config_path(spec['params']).read_text()) or {}
        values = dict(next(iter(files.values()), {}).get('ros__parameters', {}))
        values.update({k: yaml.safe_load(str(v)) for k, v in self.overrides.get(executable, {}).items()})
        return values

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if not p.alive()]

    def stop(self) -> None:
        for p in reversed(list(self.processes.values())):
            p.stop()
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> Bringup:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def parse_overrides(items: list[str], sep_token: str = '=',
                    what: str = 'NODE.PARAM=VALUE') -> dict[str, dict[str, str]]:
    """['node.key=value', ...] -> {'node': {'key': 'value'}} (``sep_token`` ':=' for remappings)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition(sep_token)
        node, dot, param = key.partition('.')
        if not sep or not dot:
            raise SystemExit(f'bad argument {item!r}: expected {what}')
        out.setdefault(node, {})[param] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description='Start an r3d_ros graph (no `launch` needed).')
    ap.add_argument('--graph', default='sim_demo', help='graph name in config/bringup.yaml')
    ap.add_argument('--graph-file', help='another bringup YAML')
    ap.add_argument('--domain-id', type=int, help='ROS_DOMAIN_ID (default: a free one, leased)')
    ap.add_argument('-p', '--param', action='append', default=[], metavar='NODE.PARAM=VALUE')
    ap.add_argument('-r', '--remap', action='append', default=[], metavar='NODE.FROM:=TO',
                    help="topic remapping for one node, e.g. scene_map.points:=/camera/depth/points")
    ap.add_argument('--log-dir', help='where node logs go, created when missing (default: a temporary folder)')
    ap.add_argument('--keep-going', action='store_true', help='keep the graph up when a node dies')
    args = ap.parse_args(argv)
    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with Bringup(args.graph, args.domain_id, parse_overrides(args.param), args.log_dir,
                 graph_file=args.graph_file, remaps=parse_overrides(args.remap, ':=', 'NODE.FROM:=TO')) as graph:
        names = ', '.join(graph.processes)
        print(f'r3d-bringup: {names} on ROS_DOMAIN_ID={graph.domain_id} (loopback only); '
              f'logs in {next(iter(graph.processes.values())).log_path.parent}', flush=True)
        reported: set[str] = set()
        while not stop:
            for name in graph.dead():
                if name not in reported:
                    reported.add(name)
                    print(f'r3d-bringup: {name} exited with {graph.processes[name].proc.returncode}; '
                          f'last lines:\n{graph.processes[name].output()[-2000:]}', file=sys.stderr, flush=True)
            if reported and not args.keep_going:
                return 1
            time.sleep(0.2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
