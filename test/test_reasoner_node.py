"""reasoner node: error paths keep it alive; plan safety; launch files and bring-up agree."""

from __future__ import annotations

import ast
import json
from pathlib import Path
import time

import pytest
from std_msgs.msg import String
import yaml

from r3d_ros.nodes.reasoner_node import parse_query
from r3d_ros.output_format import Box, PlanStep
from r3d_ros.plan_validation import validate_plan

ROOT = Path(__file__).resolve().parent.parent


def _answers(ros_node):
    return ros_node.listen('answer', String)


def _by_id(qid):
    return lambda m: json.loads(m.data).get('id') == qid


def _ask(pub, payload, listener, timeout=30.0, match=None):
    pub.publish(String(data=json.dumps(payload) if isinstance(payload, dict) else payload))
    return json.loads(listener.wait(match or _by_id(payload['id']), timeout).data)


@pytest.mark.ros
def test_model_load_failure_answers_every_query_with_an_error(launch_node, ros_node, tmp_path):
    node = launch_node('reasoner', params={'model_path': str(tmp_path / 'no_such_checkpoint')})
    answers = _answers(ros_node)
    pub = ros_node.publisher('query', String)
    assert ros_node.wait_for_subscriber('query', timeout=30), node.output()
    assert ros_node.wait_for_publisher('answer', timeout=60), node.output()  # its answers reach the listener
    for i in range(2):  # still answering after the first failure
        got = _ask(pub, {'id': f'q{i}', 'question': 'what is on the table?'}, answers)
        assert got['status'] == 'error' and 'model load failed' in got['message'], got
        assert 'no model checkpoint' in got['message']
    # malformed JSON: an error answer (no id to match on), and the node keeps going
    bad = _ask(pub, '{"id": "x", "question": ', answers, match=lambda m: 'malformed' in m.data)
    assert bad['status'] == 'error'
    assert node.alive()
    text = ros_node.listen('answer_text', String)
    pub.publish(String(data=json.dumps({'id': 'q9', 'question': 'x'})))
    assert text.wait(lambda m: m.data.startswith('[error]'), 20)


@pytest.mark.ros
def test_queries_are_taken_only_while_active_so_every_one_taken_is_answered(launch_node, ros_node, tmp_path):
    """An inactive reasoner's publishers are off: a query it took then would go unanswered. It serves `query`
    only while active: deactivated, the topic has no subscriber; active again, it answers."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    node = launch_node('reasoner', params={'model_path': str(tmp_path / 'none')})
    answers = _answers(ros_node)
    pub = ros_node.publisher('query', String)
    assert ros_node.wait_for_subscriber('query', timeout=60), node.output()

    def change(transition_id):
        req = ChangeState.Request()
        req.transition.id = transition_id
        assert ros_node.call_service(ChangeState, '/reasoner/change_state', req, timeout=30).success
    change(Transition.TRANSITION_DEACTIVATE)
    deadline = time.monotonic() + 30
    while ros_node.node.count_subscribers(ros_node._resolve('query')) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ros_node.node.count_subscribers(ros_node._resolve('query')) == 0, 'an inactive reasoner takes queries'
    change(Transition.TRANSITION_ACTIVATE)
    assert ros_node.wait_for_subscriber('query', timeout=30), node.output()
    got = _ask(pub, {'id': 'again', 'question': 'Where is the lamp?'}, answers)
    assert got['status'] == 'error' and 'model load failed' in got['message'], got   # answered (no model here)


def test_parse_query_plain_and_json():
    plain = parse_query('where is the red chair?')
    assert plain['question'] == 'where is the red chair?' and plain['id']
    q = parse_query('{"id": "a1", "question": "count the lamps", "task": "counting"}')
    assert (q['id'], q['question'], q['task']) == ('a1', 'count the lamps', 'counting')
    assert 'error' in parse_query('{"id": 1')


TABLE = Box('table_1', (2.0, 1.0, 0.4), (1.2, 0.8, 0.8))
CUP = Box('cup_2', (2.1, 1.0, 0.85), (0.1, 0.1, 0.1))
BOUNDS = ((0, 0, 0), (5, 4, 2.5))


def test_valid_plan_passes():
    steps = [PlanStep('navigate_to', 'table_1', (2.0, 0.3, 0.0)), PlanStep('pick', 'cup_2', (2.1, 1.0, 0.85))]
    check = validate_plan(steps, {'table_1': TABLE, 'cup_2': CUP}, BOUNDS)
    assert check.ok, check.errors


@pytest.mark.parametrize('steps, reason', [
    ([PlanStep('throw', 'cup_2', (2.1, 1.0, 0.85))], 'not one of'),
    ([PlanStep('navigate_to', 'sofa_9', (1.0, 1.0, 0.0))], 'not a known object'),
    ([PlanStep('navigate_to', 'table_1', (40.0, 1.0, 0.0))], 'outside the map bounds'),
    ([PlanStep('navigate_to', 'table_1', (float('nan'), 1.0, 0.0))], 'finite'),
    ([PlanStep('pick', 'cup_2', (2.1, 1.0, 0.85))], 'not navigated'),
    ([PlanStep('navigate_to', 'table_1', (2.0, 0.3, 0.0)), PlanStep('pick', 'cup_2', (4.5, 3.5, 0.85))], 'from cup_2'),
    ([], 'empty'),
])
def test_invalid_plans_are_rejected(steps, reason):
    check = validate_plan(steps, {'table_1': TABLE, 'cup_2': CUP}, BOUNDS)
    assert not check.ok and any(reason in e for e in check.errors), check.errors


def test_plan_without_known_objects_is_rejected():
    assert not validate_plan([PlanStep('navigate_to', 'table_1', (1, 1, 0))], {}, BOUNDS).ok


def _call_name(node) -> str | None:
    func = getattr(node, 'func', None)
    return getattr(func, 'id', None) or getattr(func, 'attr', None)


def _launch_nodes(path: Path) -> list[dict]:
    """Node(...) calls of a launch file, in order, following IncludeLaunchDescription of this package's other
    launch files: executable, parameter files, remappings and the launch arguments used / declared (AST only:
    `launch` cannot be installed here)."""
    tree = ast.parse(path.read_text())
    declared = {c.args[0].value for c in ast.walk(tree) if _call_name(c) == 'DeclareLaunchArgument'}
    nodes = []
    for call in (c for c in ast.walk(tree) if isinstance(c, ast.Call)):
        if _call_name(call) == 'IncludeLaunchDescription':
            files = [a.value for a in ast.walk(call) if isinstance(a, ast.Constant) and str(a.value).endswith('.py')]
            assert len(files) == 1, f'{path.name}: cannot tell which launch file is included'
            included = path.parent / files[0]
            assert included.exists(), f'{path.name} includes missing launch/{files[0]}'
            passed = {k.value for d in ast.walk(call) if isinstance(d, ast.Dict) for k in d.keys}
            takes = {c.args[0].value for c in ast.walk(ast.parse(included.read_text()))
                     if _call_name(c) == 'DeclareLaunchArgument'}
            assert passed <= takes, f'{path.name} passes {passed - takes} that {files[0]} does not declare'
            nodes += _launch_nodes(included)
        if _call_name(call) != 'Node':
            continue
        kw = {k.arg: k.value for k in call.keywords}
        params = [a.args[-1].value for a in ast.walk(kw['parameters'])
                  if _call_name(a) == 'join' and isinstance(a.args[-1], ast.Constant)]
        remaps = [tuple(ast.unparse(v) if not isinstance(v, ast.Constant) else v.value for v in r.elts)
                  for r in kw['remappings'].elts] if 'remappings' in kw else []
        used = {c.args[0].value for c in ast.walk(call) if _call_name(c) == 'LaunchConfiguration'}
        nodes.append({'package': kw['package'].value, 'executable': kw['executable'].value, 'params': params,
                      'remappings': remaps, 'undeclared': used - declared, 'file': path.name})
    return nodes


def _entry_points() -> set[str]:
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts = next(n for n in ast.walk(tree) if isinstance(n, ast.Dict) and any(
        isinstance(k, ast.Constant) and k.value == 'console_scripts' for k in n.keys))
    return {s.value.split('=')[0].strip() for s in scripts.values[0].elts}


@pytest.mark.parametrize('launch_file, graph', [('r3d.launch.py', 'r3d'), ('sim_demo.launch.py', 'sim_demo')])
def test_launch_files_name_real_executables_and_configs_and_match_bringup(launch_file, graph):
    nodes = _launch_nodes(ROOT / 'launch' / launch_file)
    assert nodes
    scripts = _entry_points()
    for node in nodes:
        assert node['package'] == 'r3d_ros'
        assert node['executable'] in scripts, f"{node['executable']} is not a console script"
        for p in node['params']:
            assert (ROOT / 'config' / p).exists(), f'{launch_file} names missing config/{p}'
        for src, dst in node['remappings']:
            assert src and dst
        assert not node['undeclared'], f"{node['file']} uses undeclared launch arguments {node['undeclared']}"
    bringup = yaml.safe_load((ROOT / 'config' / 'bringup.yaml').read_text())[graph]
    assert [(n['executable'], n['params']) for n in nodes] == [(b['executable'], [b['params']]) for b in bringup]


@pytest.mark.ros
@pytest.mark.ros
def test_bringup_starts_and_stops_its_graph_with_params_and_remaps(tmp_path, ros_node):
    import os

    from r3d_ros.nodes.bringup import Bringup, parse_overrides

    assert parse_overrides(['scene_map.points:=/cam/points'], ':=') == {'scene_map': {'points': '/cam/points'}}
    graph_file = tmp_path / 'graph.yaml'
    graph_file.write_text(yaml.safe_dump({'only_reasoner': [{'executable': 'reasoner', 'params': 'reasoner.yaml'}]}))
    with Bringup('only_reasoner', graph_file=graph_file, log_dir=str(tmp_path),
                 domain_id=int(os.environ['ROS_DOMAIN_ID']), remaps={'reasoner': {'query': 'ask_r3d'}},
                 overrides={'reasoner': {'model_path': str(tmp_path / 'none')}}) as graph:
        assert ros_node.wait_for_subscriber('ask_r3d', timeout=30), graph.processes['reasoner'].output()
        proc = graph.processes['reasoner']
        deadline = time.monotonic() + 30
        while 'model load failed' not in proc.output() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert 'model load failed' in proc.output()
        assert not graph.dead()
    assert not proc.alive()


@pytest.mark.ros
def test_each_bad_request_is_an_error_and_the_node_keeps_answering(launch_node, ros_node):
    """No map yet, a malformed map cloud, empty / oversized / malformed queries: each is an `error` result
    with a reason, and a good question afterwards is still answered."""
    import numpy as np
    from sensor_msgs.msg import PointCloud2

    from r3d_ros.nodes.common import MAP_QOS
    from r3d_ros.nodes.conversions import to_pointcloud2
    from r3d_ros.scenes.synthetic import generate_scene

    node = launch_node('reasoner', params={'max_new_tokens': 8, 'max_query_chars': 300, 'num_views': 2})
    answers = _answers(ros_node)
    pub = ros_node.publisher('query', String)
    maps = ros_node.publisher('scene_map/cloud', PointCloud2, MAP_QOS)
    assert ros_node.wait_for_subscriber('query', timeout=60), node.output()
    assert ros_node.wait_for_publisher('answer', timeout=60), node.output()  # its answers reach the listener

    got = _ask(pub, {'id': 'nomap', 'question': 'Where is the table?'}, answers, timeout=60)
    assert got['status'] == 'error' and 'no map' in got['message'], got

    broken = to_pointcloud2(np.zeros((10, 3), np.float32))
    broken.point_step = 7  # fields no longer fit the step: the codec must refuse it
    maps.publish(broken)
    time.sleep(1.0)
    got = _ask(pub, {'id': 'badmap', 'question': 'Where is the table?'}, answers, timeout=60)
    assert got['status'] == 'error' and 'no map' in got['message'], got  # the malformed cloud was ignored
    assert 'malformed map cloud' in node.output()

    scene = generate_scene(0, point_density=300.0)
    maps.publish(to_pointcloud2(scene.points, scene.colors))
    for qid, payload, reason in [('empty', {'id': 'empty', 'question': '   '}, 'empty question'),
                                 ('huge', {'id': 'huge', 'question': 'why ' * 200}, 'limit'),
                                 ('nojson', '{"id": "nojson", "question": ', 'malformed')]:
        match = _by_id(qid) if isinstance(payload, dict) else (lambda m: 'malformed' in m.data)
        got = _ask(pub, payload, answers, match=match)
        assert got['status'] == 'error' and reason in got['message'], (qid, got)
    for attempt in range(30):  # the map may reach the node a moment after the publisher matched
        got = _ask(pub, {'id': f'good{attempt}', 'question': 'Where is the table?'}, answers, timeout=120)
        if 'no map' not in got['message']:
            break
        time.sleep(1.0)
    assert got['status'] in ('ok', 'invalid_plan', 'ungrounded', 'not_found'), got
    assert got['views'] and got['timings']['view_encoding_s'] == 0.0
    # the embedded checkpoint has no view tower: the node says the selected views are not fed to it
    from diagnostic_msgs.msg import DiagnosticArray

    diag = ros_node.wait_for_message('diagnostics', DiagnosticArray, timeout=10)
    values = {kv.key: kv.value for kv in diag.status[0].values}
    assert values['views_used'] == 'False' and 'no view tower' in diag.status[0].message, diag
    assert 'no view tower' in node.output()
    assert node.alive()
